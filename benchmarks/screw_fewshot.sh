#!/usr/bin/env bash
# Few-shot memory branches on MVTec AD screw with the offline backbone: AnomalyDINO-style kNN and
# the WinCLIP+ memory branch (winclip on a backbone without text tower), K = 1, 2, 4, 8 good
# images. About 1 minute per run, 8 to 10 minutes in all, on a 2-core AMD EPYC (1 torch thread).
#
#   bash benchmarks/screw_fewshot.sh [MVTEC_ROOT]        (run from the repository root)
#
# Writes benchmarks/results/fewshot-screw/<method>_k<K>.json (committed) and the run folders to
# runs/screw_fewshot/ (git-ignored).
set -euo pipefail
cd "$(dirname "$0")/.."
root=${1:-${ROOT:-../shared/data/mvtec_ad}}
PY=${PY:-.venv/bin/python}
out=runs/screw_fewshot
res=benchmarks/results/fewshot-screw
export OMP_NUM_THREADS=1   # two OpenMP threads stall on a shared 2-core machine
for method in anomalydino winclip; do
  for k in 1 2 4 8; do
    echo "== $method, K=$k"
    $PY -m anomalens benchmark --dataset mvtec --root "$root" --category screw --no-progress \
      --method "$method" --backbone efficientnet-lite0 --shots "$k" \
      --output "$out/${method}_k$k" 2>/dev/null | grep -E '^(category|screw)'
    $PY benchmarks/results_table.py collect "$out/${method}_k$k/results.json" \
      "$res/${method}_k$k.json"
  done
done
echo "== done in ${SECONDS} s"
