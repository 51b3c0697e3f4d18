"""Batch inference throughput: images/s of ``anomalens predict --engine`` on one machine.

    python benchmarks/bench_batch.py prepare [--root ../shared/data/mvtec_ad] [--images 1000]
    python benchmarks/bench_batch.py run local:1 process:2 ray:2 ray:1 \\
        --json benchmarks/results/batch-speed/screw.json

(The committed results: 2,000 images, the 4 settings in one call of 7.5 minutes alone on the
2-core machine.)

``prepare`` (not timed) fits PatchCore (defaults) on MVTec AD screw's good training images and
saves it to ``runs/bench_batch/model``, and makes ``runs/bench_batch/images/`` with
``--images`` symbolic links cycling over the screw train and test PNGs (512 px; distinct paths,
no copies of the data). ``run ENGINE:WORKERS ...`` scores all of them with each setting into a
fresh output folder and records the wall time of :func:`anomalens.batch.run_batch` (listing,
fingerprints, model loads / worker or actor start-up, decoding, scoring, writing the shards),
images/s over that wall time, the time to the first result rows (start-up) and, for Ray, the
seconds ``ray.init`` took to start a local Ray (not part of the wall time). Workers and actors
use 1 CPU and 1 torch thread each; ``local`` uses every core (torch's default threads).
Each ``run`` call merges its rows into ``--json`` (one row per setting, a rerun replaces it);
run it under the exclusive CPU lock, one setting per call if time is short.
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

import torch

from anomalens.atomic import atomic_write_json
from anomalens.batch import run_batch
from anomalens.data.datasets import MVTecAD
from anomalens.evaluate import environment
from anomalens.methods import PatchCore

WORK = Path("runs/bench_batch")


def prepare(root: Path, n_images: int) -> None:
    model = WORK / "model"
    if not (model / "config.json").is_file():
        train = MVTecAD(root, "screw", "train")
        PatchCore().fit([s.image for s in train], progress=True).save(model)
    sources = sorted((root / "screw" / "train").rglob("*.png"))
    sources += sorted((root / "screw" / "test").rglob("*.png"))
    images = WORK / "images"
    shutil.rmtree(images, ignore_errors=True)
    images.mkdir(parents=True)
    for i in range(n_images):
        (images / f"{i:05d}.png").symlink_to(sources[i % len(sources)].resolve())
    print(f"model in {model}; {n_images} links to {len(sources)} screw images in {images}")


def run(setting: str) -> dict:
    engine, _, workers = setting.partition(":")
    workers = int(workers or 1)
    ray_init = None
    if engine == "ray":
        import ray

        t = time.perf_counter()
        ray.init(include_dashboard=False, log_to_driver=False)
        ray_init = time.perf_counter() - t
    out = WORK / f"out-{engine}-{workers}"
    shutil.rmtree(out, ignore_errors=True)
    try:
        result = run_batch(
            WORK / "model",
            [WORK / "images"],
            out,
            engine=engine,
            workers=None if engine == "local" else workers,
            progress=False,
        )
    finally:
        if engine == "ray":
            ray.shutdown()
    last = result.summary["last_run"]
    assert result.n_errors == 0, f"{result.n_errors} images failed"
    row = {
        "engine": engine,
        "workers": workers,
        "images": result.n_new,
        "seconds": round(result.seconds, 2),
        "images_per_second": round(result.images_per_second, 2),
        "startup_seconds": round(last["startup_seconds"], 2),
        "ray_init_seconds": None if ray_init is None else round(ray_init, 2),
        "torch_threads": torch.get_num_threads() if engine == "local" else 1,
    }
    print(json.dumps(row))
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("prepare")
    p.add_argument("--root", type=Path, default=Path("../shared/data/mvtec_ad"))
    p.add_argument("--images", type=int, default=2000)
    p = sub.add_parser("run")
    p.add_argument("settings", nargs="+", metavar="ENGINE:WORKERS")
    p.add_argument("--json", type=Path, help="merge the rows into this JSON file")
    args = ap.parse_args()
    if args.cmd == "prepare":
        prepare(args.root, args.images)
        return
    for setting in args.settings:
        row = run(setting)
        if args.json:  # merged after every setting, so a cut-short call keeps what it measured
            merge(args.json, row)
            print(f"wrote {args.json}")


def merge(path: Path, row: dict) -> None:
    """Put ``row`` into the JSON file ``path`` (replacing the row of the same setting)."""
    doc = json.loads(path.read_text()) if path.is_file() else {}
    keep = {(r["engine"], r["workers"]): r for r in doc.get("rows", [])}
    keep[(row["engine"], row["workers"])] = row
    order = {"local": 0, "process": 1, "ray": 2}
    doc.update(
        benchmark="batch_speed",
        category="screw",
        model="PatchCore defaults (efficientnet-lite0, fp32 on this CPU)",
        rows=sorted(keep.values(), key=lambda r: (order[r["engine"]], r["workers"])),
        environment=environment(),
    )
    atomic_write_json(path, doc, indent=2, allow_nan=True)


if __name__ == "__main__":
    main()
