"""PatchCore and PaDiM at their defaults on one category, image AUROC per defect type, and the
sum of their two maps.

    python benchmarks/methods_by_type.py --root ../shared/data/magnetic_tile \
        --category magnetic_tile --json benchmarks/results/methods-by-type/magnetic_tile.json

Per defect type: the image AUROC of the good test images against that type's images. The map
sum is a probe, not a method of the library: each detector's map divided by its own pixel
threshold (the 99th percentile of the map maxima of held-out good training images, so nothing
comes from the test split), added, and scored like PatchCore (mean of the top 0.3 % of the
map). ``--train N`` keeps N training images spread evenly over the sorted list.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from anomalens.atomic import atomic_write_json
from anomalens.data.transforms import spread_indices
from anomalens.evaluate import build_detector, load_samples
from anomalens.metrics import compute_all, image_auroc
from anomalens.postprocess import image_score
from anomalens.results import environment

METHODS = ("patchcore", "padim")
METRICS = ("image_auroc", "pixel_auroc", "aupro")


def by_type(labels: list[int], types: list[str], scores: list[float]) -> dict[str, float]:
    """Image AUROC of the good images against each defect type's images."""
    out = {}
    for t in sorted(set(types) - {"good"}):
        keep = [i for i, name in enumerate(types) if name in ("good", t)]
        out[t] = image_auroc([labels[i] for i in keep], [scores[i] for i in keep])
    return out


def row(name: str, labels, types, masks, scores, maps, **extra) -> dict:
    metrics = compute_all(labels, scores, masks, maps)
    result = {
        "name": name,
        **{k: float(metrics[k]) for k in METRICS},
        "by_type": by_type(labels, types, scores),
        **extra,
    }
    print(
        f"{name:24s} " + " ".join(f"{result[k]:.3f}" for k in METRICS) + "  "
        + " ".join(f"{t}={v:.3f}" for t, v in result["by_type"].items()),
        flush=True,
    )  # fmt: skip
    return result


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--root", required=True)
    ap.add_argument("--category", required=True)
    ap.add_argument("--train", type=int, default=None, help="at most N training images")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    train = load_samples("mvtec", args.root, args.category, "train", False)[0]
    test = load_samples("mvtec", args.root, args.category, "test", False)[0]
    if args.train is not None and len(train) > args.train:
        idx = spread_indices(len(train), args.train)
        train = [train[i] for i in idx]
    labels = [int(s.label) for s in test]
    types = [s.defect_type for s in test]
    masks = [s.mask for s in test]
    images = [s.image for s in test]
    rows, fitted = [], {}
    for method in METHODS:
        det = build_detector(method)
        det.fit([s.image for s in train], progress=False)
        t0 = time.perf_counter()
        pred = det.predict(images)
        ms = 1000 * (time.perf_counter() - t0) / len(images)
        fitted[method] = (pred, det.calibration.pixel_threshold)
        seconds = det.fit_report.seconds["total"]
        rows.append(
            row(method, labels, types, masks, pred.scores, pred.maps, fit_seconds=seconds, ms=ms)
        )
    maps = [
        sum(p.maps[i] / thr for p, thr in fitted.values()) for i in range(len(images))
    ]  # fmt: skip
    scores = [image_score(m, 0.003) for m in maps]
    rows.append(row("map sum", labels, types, masks, scores, maps))
    if args.json is not None:
        atomic_write_json(
            args.json,
            {
                "category": args.category,
                "n_train": len(train),
                "n_test": len(test),
                "rows": rows,
                "environment": environment(),
            },
        )


if __name__ == "__main__":
    main()
