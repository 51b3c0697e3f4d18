"""PatchCore fit and predict time: the former defaults, the new geometry without pose, the
new defaults (pose auto: on for screw), back to back on one machine.

    python benchmarks/bench_defaults_speed.py --json benchmarks/results/defaults-speed/screw.json

Images are decoded before the clock starts; ``predict`` is the best of ``--repeats`` passes
over the test images. Run it alone on the machine (2 busy cores make torch threads stall).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from anomalens.atomic import atomic_write_json
from anomalens.evaluate import build_detector, load_samples
from anomalens.results import environment

SETTINGS = {
    "previous defaults": {"resize": "square", "border": 0.0, "top_fraction": 0.0, "pose": "off"},
    "new geometry, pose off": {"pose": "off"},
    "defaults": {},
}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--root", default="../shared/data/mvtec_ad")
    ap.add_argument("--category", default="screw")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    train = [s.image for s in load_samples("mvtec", args.root, args.category, "train", False)[0]]
    test = [s.image for s in load_samples("mvtec", args.root, args.category, "test", False)[0]]
    rows = []
    for name, options in SETTINGS.items():
        detector = build_detector("patchcore", **options)
        start = time.perf_counter()
        detector.fit(train, progress=False)
        fit = time.perf_counter() - start
        best = float("inf")
        for _ in range(args.repeats):
            start = time.perf_counter()
            detector.predict(test)
            best = min(best, time.perf_counter() - start)
        row = {
            "setting": name,
            "options": options,
            "fit_seconds": fit,
            "fit_phases": detector.fit_report.seconds,
            "ms_per_image": 1000 * best / len(test),
            "pose_on": bool(detector.pose.on),
        }
        rows.append(row)
        print(f"{name:24s} fit {fit:5.1f} s   predict {row['ms_per_image']:5.1f} ms/image")
    if args.json is not None:
        doc = {
            "category": args.category,
            "n_train": len(train),
            "n_test": len(test),
            "repeats": args.repeats,
            "rows": rows,
            "environment": environment(),
        }
        atomic_write_json(args.json, doc)


if __name__ == "__main__":
    main()
