#!/usr/bin/env bash
# AA-CLIP with learned / centroid anchors on EfficientNet-Lite0, trained in synthetic-anomaly mode
# on MVTec AD screw train/good only (no real defect is seen), then tested on screw test.
# Usage: benchmarks/screw_aaclip.sh [ANCHORS ...]   (default: learned centroid)
# Needs ../shared/data/mvtec_ad/screw; writes runs/aaclip_screw_<anchors>/{ckpt,bench}.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=${ROOT:-../shared/data/mvtec_ad}
PY=${PY:-.venv/bin/python}
for anchors in "${@:-learned centroid}"; do
  for a in $anchors; do
    out=runs/aaclip_screw_$a
    rm -rf "$out"
    /usr/bin/time -f "train wall %e s" $PY -m anomalens train --method aaclip \
      --backbone efficientnet-lite0 --anchors "$a" --dataset mvtec --root "$ROOT" \
      --category screw --mode synthetic --image-epochs 10 --output "$out/ckpt" \
      --no-progress
    $PY -m anomalens benchmark --method aaclip --checkpoint "$out/ckpt" --dataset mvtec \
      --root "$ROOT" --category screw --output "$out/bench" --save-maps 8 --no-progress
  done
done
