#!/usr/bin/env bash
# PatchCore on MVTec AD screw with the default backbone: full-shot (bf16 and fp32), 1/2/4/8-shot,
# 8-shot with rotated and flipped copies, then predict time against the backbone forward.
# A few minutes on a quiet 2-core AMD EPYC (2 torch threads); far longer when other jobs share
# the cores, so time it alone.
#
#   bash benchmarks/screw_patchcore.sh [MVTEC_ROOT]        (run from the repository root)
#
# Writes the small result files benchmarks/results/patchcore-screw/*.json and
# benchmarks/results/patchcore-speed/screw.json (committed; the README tables are rendered from
# them by benchmarks/results_table.py) and the full run folders to runs/screw_patchcore/
# (figures, predictions.csv; git-ignored).
set -euo pipefail
cd "$(dirname "$0")/.."
root=${1:-${ROOT:-../shared/data/mvtec_ad}}
PY=${PY:-.venv/bin/python}
out=runs/screw_patchcore
res=benchmarks/results/patchcore-screw
mkdir -p "$res"
run() {
  local name=$1
  shift
  echo "== $name: $*"
  $PY -m anomalens benchmark --dataset mvtec --root "$root" --category screw --no-progress \
    --output "$out/$name" "$@" 2>/dev/null | grep -E '^(category|screw)'
  $PY benchmarks/results_table.py collect "$out/$name/results.json" "$res/$name.json"
}
run full
run full_fp32 --precision fp32
for k in 1 2 4 8; do run "shot$k" --shots "$k"; done
run shot8_aug --shots 8 --augment rot90,rot180,rot270,hflip,vflip
echo "== predict vs backbone forward"
$PY benchmarks/bench_patchcore_speed.py --root "$root" --category screw --repeats 5 \
  --json benchmarks/results/patchcore-speed/screw.json 2>/dev/null
echo "== done in ${SECONDS} s"
