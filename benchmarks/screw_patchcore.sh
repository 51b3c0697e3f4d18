#!/usr/bin/env bash
# The PatchCore numbers in the README, in one run (about 5 minutes on 2 cores):
# full-shot and 1/2/4/8-shot (and 8-shot with --augment) on MVTec AD screw with the default backbone, fp32 vs bf16, and
# predict time against the backbone's forward time. Usage:
#   benchmarks/screw_patchcore.sh [MVTEC_ROOT] [OUT]
set -euo pipefail
root=${1:-../shared/data/mvtec_ad}
out=${2:-runs/screw_patchcore}
run() { anomalens benchmark --dataset mvtec --root "$root" --category screw "$@" 2>/dev/null | grep -E '^(category|screw)'; }
echo "== full-shot, defaults (bf16 backbone)"; run --output "$out/full"
echo "== full-shot, fp32 backbone";           run --precision fp32 --output "$out/full_fp32"
for k in 1 2 4 8; do echo "== $k-shot"; run --shots "$k" --output "$out/shot$k"; done
echo "== 8-shot, memory with rotated and flipped copies"
run --shots 8 --augment rot90,rot180,rot270,hflip,vflip --output "$out/shot8_aug"
echo "== predict vs backbone forward"
python "$(dirname "$0")/bench_patchcore_speed.py" --root "$root" --category screw --repeats 5 2>/dev/null
