"""EfficientNet-Lite0 forward in fp32 and in bf16 autocast on this CPU, and what ``auto`` picks.

Why: bf16 is fast only where the CPU computes it natively (AVX512-BF16, AMX); elsewhere it is
emulated. Prints ms/image and images/s per precision (best of ``--repeats``).

    python benchmarks/bench_precision.py [--threads 2] [--batch 4] [--size 320]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from anomalens.backbones.base import resolve_precision
from anomalens.backbones.registry import load_backbone
from anomalens.evaluate import environment


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--size", type=int, default=320)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (args.size, args.size, 3), dtype=np.uint8)] * args.batch
    env = environment()
    print(f"{env['date'][:10]}, {env['cpu']} ({env['cpu_isa']}), {args.threads} threads")
    print(f"auto -> {resolve_precision('auto')}")
    for precision in ("fp32", "bf16"):
        bb = load_backbone("efficientnet-lite0", image_size=args.size, precision=precision)
        pixels = bb.preprocess(images)
        bb.encode_image(pixels, [2, 3])  # warm-up
        best = float("inf")
        for _ in range(args.repeats):
            start = time.perf_counter()
            bb.encode_image(pixels, [2, 3])
            best = min(best, time.perf_counter() - start)
        ms = 1000 * best / args.batch
        print(f"{precision}: {ms:8.1f} ms/image {1000 / ms:8.1f} images/s")


if __name__ == "__main__":
    main()
