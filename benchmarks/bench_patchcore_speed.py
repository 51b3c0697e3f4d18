"""PatchCore predict time against the backbone's forward time alone, in one run.

    python benchmarks/bench_patchcore_speed.py [--root ../shared/data/mvtec_ad --category screw]
        [--image-size 320] [--precision bf16] [--batch-size 16] [--repeats 3] [--json OUT.json]

Fits PatchCore (defaults unless overridden) on the category's good training images, then times,
on the test images already in memory and with the same batch size:
  backbone   preprocess + backbone forward (the taps PatchCore uses), nothing else;
  predict    the whole ``PatchCore.predict`` (backbone, patch embedding, nearest-neighbour
             search, smoothing, foreground weighting, resizing to the input size);
and a breakdown of predict. Prints ms/image, images/s and the ratio predict / backbone.
Best of ``--repeats`` runs for each, the two taking turns. ``--json`` also writes the numbers
with the environment (CPU model, cores, threads, torch, date) for ``benchmarks/results_table.py``.
"""

from __future__ import annotations

import argparse
import time
from datetime import date
from pathlib import Path

import torch

from anomalens.atomic import atomic_write_json
from anomalens.data.datasets import MVTecAD
from anomalens.evaluate import environment
from anomalens.methods import PatchCore, PatchCoreConfig
from anomalens.methods.base import batches


def _best_interleaved(fns, repeats: int) -> list[float]:
    """Best wall time of each function, the functions taking turns (fair under drift)."""
    best = [float("inf")] * len(fns)
    for _ in range(repeats):
        for i, fn in enumerate(fns):
            t = time.perf_counter()
            fn()
            best[i] = min(best[i], time.perf_counter() - t)
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--root", default="../shared/data/mvtec_ad")
    ap.add_argument("--category", default="screw")
    ap.add_argument("--image-size", type=int, default=None)
    ap.add_argument("--precision", choices=("fp32", "bf16"), default=None)
    ap.add_argument("--backbone", default=None)
    ap.add_argument("--batch-size", type=int, default=None)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--json", help="also write the numbers to this JSON file")
    args = ap.parse_args()
    overrides = {
        k: v
        for k, v in dict(
            image_size=args.image_size,
            precision=args.precision,
            backbone=args.backbone,
            batch_size=args.batch_size,
        ).items()
        if v is not None
    }
    train = [s.image for s in MVTecAD(args.root, args.category, "train").load_all()]
    test = [s.image for s in MVTecAD(args.root, args.category, "test").load_all()]
    model = PatchCore(PatchCoreConfig(**overrides))
    t = time.perf_counter()
    model.fit(train)
    fit_s = time.perf_counter() - t
    c = model.config
    bb = model.backbone
    layers = list(c.layers or bb.default_layers)
    n = len(test)

    def backbone_only() -> None:
        for batch in batches(test, c.batch_size):
            bb.encode_image(bb.preprocess(batch), layers)

    model.predict(test[: c.batch_size])  # warm-up
    backbone_only()
    t_bb, t_pred = _best_interleaved([backbone_only, lambda: model.predict(test)], args.repeats)

    # breakdown of one pass
    parts = {"embed (backbone + pooling)": 0.0, "search + maps (rest of predict)": 0.0}
    for batch in batches(test, c.batch_size):
        t0 = time.perf_counter()
        feats = model.embed_images(batch)
        t1 = time.perf_counter()
        model._score(feats, batch)
        t2 = time.perf_counter()
        parts["embed (backbone + pooling)"] += t1 - t0
        parts["search + maps (rest of predict)"] += t2 - t1

    print(
        f"\n{environment()['cpu']}, {torch.get_num_threads()} threads, "
        f"torch {torch.__version__}, {date.today()}"
    )
    print(
        f"{args.category}: {len(train)} train / {n} test images, input "
        f"{test[0].shape[1]}x{test[0].shape[0]}"
    )
    print(
        f"config: backbone {c.backbone}, image_size {c.image_size}, layers {c.layers}, "
        f"batch {c.batch_size}, "
        f"precision {c.precision}, memory {model.memory.shape[0]} x {model.memory.shape[1]}, "
        f"search {c.search_precision}, foreground {model.use_foreground}"
    )
    print(f"fit: {fit_s:.1f} s ({model.fit_report.seconds})")
    print(f"{'':28s}{'ms/image':>10s}{'images/s':>10s}")
    for name, sec in (("backbone forward alone", t_bb), ("PatchCore predict", t_pred)):
        print(f"{name:28s}{1e3 * sec / n:10.1f}{n / sec:10.1f}")
    print(f"ratio predict / backbone: {t_pred / t_bb:.2f}")
    print("breakdown of one predict pass (ms/image):")
    for name, sec in parts.items():
        print(f"  {name:26s}{1e3 * sec / n:8.1f}")
    if args.json:
        out = {
            "benchmark": "patchcore_speed",
            "category": args.category,
            "n_train": len(train),
            "n_test": n,
            "config": {
                "backbone": c.backbone,
                "image_size": c.image_size,
                "layers": list(layers),
                "batch_size": c.batch_size,
                "precision": c.precision,
                "memory_rows": int(model.memory.shape[0]),
                "memory_dim": int(model.memory.shape[1]),
                "search_precision": c.search_precision,
                "foreground": bool(model.use_foreground),
            },
            "repeats": args.repeats,
            "fit_seconds": fit_s,
            "fit_breakdown_seconds": dict(model.fit_report.seconds),
            "backbone_ms_per_image": 1e3 * t_bb / n,
            "backbone_images_per_second": n / t_bb,
            "predict_ms_per_image": 1e3 * t_pred / n,
            "predict_images_per_second": n / t_pred,
            "ratio_predict_backbone": t_pred / t_bb,
            "breakdown_ms_per_image": {k: 1e3 * v / n for k, v in parts.items()},
            "environment": environment(),
        }
        atomic_write_json(Path(args.json), out, indent=2, allow_nan=True)


if __name__ == "__main__":
    main()
