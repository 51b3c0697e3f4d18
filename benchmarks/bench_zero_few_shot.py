"""Speed of WinCLIP zero-shot and WinCLIP+ few-shot ``predict`` vs the backbone forward.

Random-weight CLIP (or SigLIP) models with the vision towers of ViT-B/16@224 and ViT-L/14@336
(text towers are tiny: the text encoder never runs in ``predict``) are saved to a cache folder
once. For each size and precision the script times, on the same images:

* ``backbone``: ``preprocess`` + ``encode_image`` of the layers the token variant needs, with
  the global embedding: the forward pass every variant pays;
* ``predict`` of the token variant (zero-shot and few-shot with ``--shots`` good images) and of
  the paper's window variant (zero-shot and few-shot);

and prints ms/image, images/s and the backbone's share of ``predict``. The target for the
token variant is ``predict <= 1.2 x backbone``. Usage::

    python benchmarks/bench_zero_few_shot.py                         # both sizes, fp32 + bf16
    python benchmarks/bench_zero_few_shot.py --sizes b16 --precisions bf16 --images 8
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from anomalens import testing as tm
from anomalens.atomic import atomic_write_json
from anomalens.methods.winclip import WinCLIP

SIZES = {
    "b16": ("ViT-B/16@224", tm.VIT_B16_224, 512),
    "l14": ("ViT-L/14@336", tm.VIT_L14_336, 768),
    "so400m": ("SO400M/14@384", tm.SO400M_14_384, 1152),
}


def model_folder(cache: Path, family: str, size: str) -> Path:
    """Random-weight model of ``size`` (vision tower at full size, tiny text tower)."""
    folder = cache / f"{family}-{size}"
    if (folder / "model.safetensors").is_file():
        return folder
    _, vision, proj = SIZES[size]
    if family == "clip":
        tm.make_clip(folder, vision=vision, projection_dim=proj)
    else:
        text = dict(tm.TINY_TEXT, hidden_size=vision["hidden_size"])
        tm.make_siglip(folder, vision=vision, text=text)
    return folder


def cpu_name() -> str:
    """The CPU model from /proc/cpuinfo (or platform)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def timed(fn, repeats: int) -> float:
    """Median wall time of ``fn()`` over ``repeats`` runs (after one warm-up run)."""
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def bench(args) -> list[dict]:
    cache = Path(args.cache or tempfile.mkdtemp(prefix="anomalens-bench-"))
    rng = np.random.default_rng(0)
    rows = []
    for size in args.sizes:
        folder = model_folder(cache, args.family, size)
        spec = f"{args.family}:{folder}"
        for precision in args.precisions:
            base = dict(backbone=spec, precision=precision, batch_size=args.images)
            side = args.input_size or SIZES[size][1]["image_size"]
            images = [
                rng.integers(0, 256, (side, side, 3), dtype=np.uint8) for _ in range(args.images)
            ]
            good = [
                rng.integers(0, 256, (side, side, 3), dtype=np.uint8) for _ in range(args.shots)
            ]
            zero = WinCLIP(shots=0, **base).fit([], progress=False)
            bb = zero.backbone
            layers = tuple(dict.fromkeys(zero._text_layers() + zero._memory_layers()))

            def forward(bb=bb, layers=layers, images=images):
                bb.encode_image(bb.preprocess(images), layers, with_global=True)

            t_bb = timed(forward, args.repeats)
            variants = [("tokens", 0), ("tokens", args.shots)]
            if size in args.window_sizes_for:
                variants += [("windows", 0), ("windows", args.shots)]
            for scoring, shots in variants:
                det = WinCLIP(scoring=scoring, shots=shots, **base)
                det._backbone = bb  # share the loaded weights
                det.fit(good if shots else [], progress=False)
                reps = args.repeats if scoring == "tokens" else max(1, args.repeats // 3)
                t = timed(lambda det=det, images=images: det.predict(images), reps)
                rows.append(
                    dict(
                        model=SIZES[size][0],
                        family=args.family,
                        precision=precision,
                        variant=f"{scoring} {'zero-shot' if shots == 0 else f'{shots}-shot'}",
                        input=side,
                        images=args.images,
                        backbone_ms=1000 * t_bb / args.images,
                        predict_ms=1000 * t / args.images,
                        ratio=t / t_bb,
                    )
                )
                r = rows[-1]
                print(
                    f"{r['model']:<13} {precision:<5} {r['variant']:<18} "
                    f"backbone {r['backbone_ms']:8.1f} ms/img  predict {r['predict_ms']:8.1f} "
                    f"ms/img ({1000 / r['predict_ms']:6.2f} img/s)  predict/backbone "
                    f"{r['ratio']:5.2f}  backbone share {100 / r['ratio']:5.1f}%",
                    flush=True,
                )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--family", choices=("clip", "siglip"), default="clip")
    parser.add_argument("--sizes", nargs="+", choices=sorted(SIZES), default=["b16", "l14"])
    parser.add_argument(
        "--precisions", nargs="+", choices=("fp32", "bf16"), default=["fp32", "bf16"]
    )
    parser.add_argument("--images", type=int, default=4, help="images per predict call")
    parser.add_argument("--shots", type=int, default=4, help="good images of the few-shot runs")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--input-size", type=int, default=0, help="image side (0: model size)")
    parser.add_argument(
        "--window-sizes-for",
        nargs="*",
        choices=sorted(SIZES),
        default=["b16"],
        help="model sizes on which to also time the (slow) window variant",
    )
    parser.add_argument("--cache", help="folder for the random models (default: a temp dir)")
    parser.add_argument(
        "--json",
        help="also write the rows, the run options and the environment to this JSON file "
        "(e.g. benchmarks/results/zero-few-shot-speed/main.json, for results_table.py)",
    )
    parser.add_argument(
        "--threads",
        type=int,
        help="torch threads (on a machine shared with other jobs, 1 avoids OpenMP stalls)",
    )
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(
        f"# {datetime.date.today()}  {cpu_name()}  "
        f"torch {torch.__version__}  threads {torch.get_num_threads()}  "
        f"load average {' '.join(f'{v:.1f}' for v in os.getloadavg())}",
        flush=True,
    )
    rows = bench(args)
    if args.json:
        from anomalens.evaluate import environment

        run = dict(
            family=args.family,
            images=args.images,
            shots=args.shots,
            repeats=args.repeats,
            load_average=list(os.getloadavg()),
        )
        out = dict(benchmark="zero_few_shot_speed", run=run, environment=environment(), rows=rows)
        atomic_write_json(Path(args.json), out, indent=2, allow_nan=True)


if __name__ == "__main__":
    main()
