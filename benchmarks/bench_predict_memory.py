"""Peak memory (RSS) of ``anomalens predict`` over many large images: it must stay bounded.

    python benchmarks/bench_predict_memory.py [--n-images 2000] [--size 1024] [--work runs/mem]
        [--limit-gib 2] [--json benchmarks/results/predict-memory/main.json]

Writes ``--n-images`` distinct ``--size`` px JPEG photos (textured noise with a few shapes, so
the maps and hotspots are not trivial) into ``WORK/images``, fits PatchCore with its defaults
(EfficientNet-Lite0, 320 px, 10240 memory rows) on 8 of them, then runs
``anomalens predict --model WORK/model --input WORK/images --output WORK/report`` (overlay
figures included unless ``--no-figures``) in a child process. The child's resident memory is
sampled every 0.2 s from ``/proc`` (its peak ``ru_maxrss`` from ``wait4`` is the final word),
so the JSON holds the peak and the peak in each tenth of the run: a leak shows as a rising
curve. This is a memory figure, not a timing (the wall time is recorded for information only;
it depends on what else runs).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import cv2
import numpy as np

GIB = 1024**3


def make_images(folder: Path, n: int, size: int, seed: int = 0) -> None:
    """``n`` distinct JPEG photos of ``size`` px (skipped when already there)."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    base = cv2.GaussianBlur(rng.integers(0, 255, (size, size, 3), dtype=np.uint8), (0, 0), 3)
    for i in range(n):
        path = folder / f"img_{i:05d}.jpg"
        if path.is_file():
            continue
        img = np.roll(base, (i * 37) % size, axis=i % 2).copy()
        for _ in range(3):
            x, y = (int(v) for v in rng.integers(0, size - 64, 2))
            color = tuple(int(c) for c in rng.integers(0, 255, 3))
            cv2.circle(img, (x + 32, y + 32), int(rng.integers(8, 32)), color, -1)
        cv2.imwrite(str(path), img, [cv2.IMWRITE_JPEG_QUALITY, 90])


def _rss(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def run_predict(cmd: list[str]) -> dict:
    """Run ``cmd``; sample its RSS; return peak, curve and wall time."""
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    samples: list[tuple[float, int]] = []
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            samples.append((time.perf_counter() - start, _rss(proc.pid)))
            stop.wait(0.2)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    _, status, usage = os.wait4(proc.pid, 0)
    stop.set()
    thread.join()
    proc.returncode = os.waitstatus_to_exitcode(status)
    err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
    if proc.returncode != 0:
        raise SystemExit(f"predict failed ({proc.returncode}):\n{err[-2000:]}")
    total = samples[-1][0] if samples else 0.0
    curve = []  # peak RSS in each tenth of the run's wall time: a leak shows as a rising curve
    for tenth in range(10):
        part = [rss for t, rss in samples if tenth * total / 10 <= t <= (tenth + 1) * total / 10]
        curve.append(round(max(part) / GIB, 3) if part else None)
    return {
        "peak_rss_gib": round(usage.ru_maxrss * 1024 / GIB, 3),
        "peak_rss_sampled_gib": round(max(s[1] for s in samples) / GIB, 3),
        "rss_by_tenth_of_time_gib": curve,
        "seconds": round(time.perf_counter() - start, 1),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--n-images", type=int, default=2000)
    ap.add_argument("--size", type=int, default=1024)
    ap.add_argument("--work", type=Path, default=Path("runs/predict_memory"))
    ap.add_argument("--limit-gib", type=float, default=2.0)
    ap.add_argument("--no-figures", action="store_true")
    ap.add_argument("--json", type=Path, help="write the numbers to this JSON file")
    args = ap.parse_args()

    from anomalens.data.io import load_image
    from anomalens.evaluate import environment
    from anomalens.methods import PatchCore

    images = args.work / "images"
    make_images(images, args.n_images, args.size)
    model_dir = args.work / "model"
    train = [load_image(images / f"img_{i:05d}.jpg") for i in range(8)]
    PatchCore().fit(train, progress=False).save(model_dir)
    del train

    report = args.work / "report"
    cmd = [sys.executable, "-m", "anomalens", "predict", "-q", "--model", str(model_dir)]
    cmd += ["--input", str(images), "--output", str(report)]
    cmd += ["--no-figures"] * args.no_figures
    measured = run_predict(cmd)
    summary = json.loads((report / "summary.json").read_text(encoding="utf-8"))
    if summary["n_images"] != args.n_images:
        raise SystemExit(f"predict scored {summary['n_images']} of {args.n_images} images")
    result = {
        "benchmark": "predict_memory",
        "n_images": args.n_images,
        "image_size_px": args.size,
        "figures": not args.no_figures,
        "method": "patchcore (defaults: efficientnet-lite0, 320 px, 10240 memory rows)",
        "limit_gib": args.limit_gib,
        **measured,
        "under_limit": measured["peak_rss_gib"] < args.limit_gib,
        "command": " ".join(["anomalens", *cmd[3:]]),
        "environment": environment(),
    }
    print(json.dumps(result, indent=2))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    if not result["under_limit"]:
        raise SystemExit(f"peak RSS {measured['peak_rss_gib']} GiB >= {args.limit_gib} GiB")


if __name__ == "__main__":
    main()
