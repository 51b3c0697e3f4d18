#!/usr/bin/env bash
# AA-CLIP with learned / centroid anchors on EfficientNet-Lite0, trained in synthetic-anomaly mode
# on MVTec AD screw train/good only (no real defect is seen), then tested on screw test.
# About 4 minutes of training plus 1 of testing per anchor type on a 2-core AMD EPYC.
#
#   bash benchmarks/screw_aaclip.sh [ANCHORS ...]   (default: learned centroid; from the repo root)
#
# Needs ../shared/data/mvtec_ad/screw (or ROOT=...). Writes
# benchmarks/results/aaclip-screw/<anchors>.json (committed: the benchmark results plus the
# training wall time) and runs/aaclip_screw_<anchors>/{ckpt,bench} (git-ignored).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=${ROOT:-../shared/data/mvtec_ad}
PY=${PY:-.venv/bin/python}
res=benchmarks/results/aaclip-screw
for anchors in "${@:-learned centroid}"; do
  for a in $anchors; do
    out=runs/aaclip_screw_$a
    rm -rf "$out"
    SECONDS=0
    $PY -m anomalens train --method aaclip \
      --backbone efficientnet-lite0 --anchors "$a" --dataset mvtec --root "$ROOT" \
      --category screw --mode synthetic --image-epochs 10 --output "$out/ckpt" \
      --no-progress
    train_s=$SECONDS
    echo "train wall $train_s s"
    $PY -m anomalens benchmark --method aaclip --checkpoint "$out/ckpt" --dataset mvtec \
      --root "$ROOT" --category screw --output "$out/bench" --save-maps 8 --no-progress
    $PY benchmarks/results_table.py collect "$out/bench/results.json" "$res/$a.json" \
      --set "training_seconds=$train_s"
  done
done
