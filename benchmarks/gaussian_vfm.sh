#!/usr/bin/env bash
# PaDiM, Gaussian AD and AnomalyVFM v1.1 (seed design) beside PatchCore on MVTec AD screw and
# Magnetic Tile, EfficientNet-Lite0, each method at its default settings.
#
#   bash benchmarks/gaussian_vfm.sh [METHOD ...]   (default: patchcore padim gaussian vfm)
#
# Reads ../shared/data/mvtec_ad (screw) and ../shared/data/magnetic_tile (category
# magnetic_tile); override with MVTEC=... MTILE=.... Magnetic Tile has 761 train images of
# variable size: every method uses 200 of them (--shots 200, seed 0) so that PatchCore's coreset
# and VFM's training stay within minutes; SHOTS_MT=... changes that. Writes
# benchmarks/results/gaussian-vfm/<dataset>_<method>.json (committed) and
# runs/gaussian_vfm/<dataset>_<method>/ (git-ignored). Run it under the shared CPU lock;
# its timings are then taken with other jobs running (the speed table is separate).
set -euo pipefail
cd "$(dirname "$0")/.."
MVTEC=${MVTEC:-../shared/data/mvtec_ad}
MTILE=${MTILE:-../shared/data/magnetic_tile}
SHOTS_MT=${SHOTS_MT:-200}
PY=${PY:-.venv/bin/python}
# one torch thread: with two, ops stall whenever another job holds the other core
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
res=benchmarks/results/gaussian-vfm
for method in "${@:-patchcore padim gaussian vfm}"; do
  for m in $method; do
    for ds in screw magnetic_tile; do
      if [ "$ds" = screw ]; then
        args=(--dataset mvtec --root "$MVTEC" --category screw)
      else
        args=(--dataset mvtec --root "$MTILE" --category magnetic_tile --shots "$SHOTS_MT")
      fi
      # VFM trains inside fit: 256 px (as PaDiM / Gaussian AD) keeps the training short
      [ "$m" = vfm ] && args+=(--image-size 256)
      out=runs/gaussian_vfm/${ds}_$m
      rm -rf "$out"
      $PY -m anomalens benchmark --method "$m" --backbone efficientnet-lite0 "${args[@]}" \
        --output "$out" --save-maps 4 --no-progress
      $PY benchmarks/results_table.py collect "$out/results.json" "$res/${ds}_$m.json"
    done
  done
done
