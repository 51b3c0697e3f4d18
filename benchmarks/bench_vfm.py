"""AnomalyVFM v1.1 (seed design) training-step and inference speed.

Rows: a random-weight DINOv2-base (ViT-B/14, 768 wide, 12 blocks; nothing is downloaded, the
model is written to a temp folder) at 224 px, fp32 and bf16 autocast, and EfficientNet-Lite0
(real weights) at 256 px, fp32. On a CPU without native bf16 (AVX2 only, such as the AMD EPYC
this project is measured on) bf16 is emulated by torch and slow; ``precision="auto"`` picks
fp32 there.

* training step: ``VFMTrainer.step_loss`` (synthetic anomalies, adapted forward, head,
  confidence loss) + backward + AdamW step on the LoRA factors and the head, batch ``--batch``;
* inference: ``VFM.predict`` on ``--images`` images (adapted features, head, Mahalanobis maps,
  fusion) after statistics from the same images, against the plain backbone forward;
* for comparison, ``predict`` of PaDiM, Gaussian AD (256 px) and PatchCore (320 px) on
  EfficientNet-Lite0, fitted on 16 random images (rows ``padim``, ``gaussian``, ``patchcore``).

One warm-up, then the best of ``--repeats`` (default 1: the exclusive CPU lock is held
briefly). Run it alone on the machine (the project takes timings under the exclusive CPU lock)::

    flock -x /tmp/anomalens-cpu.lock python benchmarks/bench_vfm.py \\
        --json benchmarks/results/vfm-speed/main.json
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch

from anomalens import testing as tm
from anomalens.atomic import atomic_write_json
from anomalens.evaluate import environment
from anomalens.methods import create_detector
from anomalens.methods.vfm import VFM, VFMTrainer
from anomalens.runtime import keep_freed_memory

#: DINOv2-base vision tower (patch 14, position embeddings for 518 px)
DINOV2_BASE = tm.vit(768, 3072, 12, 12, image=518, patch=14)


def best_of(fn: Callable[[], None], repeats: int) -> float:
    """Seconds of the fastest of ``repeats`` calls after one warm-up call."""
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def measure(label: str, spec: str, size: int, precision: str, args) -> dict:
    det = VFM(backbone=spec, image_size=size, precision=precision, train_batch_size=args.batch)
    images = tm.images(max(args.batch, args.images), seed=1, shape=(size, size))
    net = det.network
    trainer = VFMTrainer(net, det.config, det.prepare_images(images), progress=False)
    for p in net.trainable_parameters():
        p.requires_grad_(True)
    opt = torch.optim.AdamW(net.trainable_parameters(), lr=1e-4)
    positions = list(range(args.batch))

    def step() -> None:
        loss = trainer.step_loss(0, positions)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    step_s = best_of(step, args.repeats)
    for p in net.trainable_parameters():
        p.requires_grad_(False)
    batch = images[: args.images]
    det.finish(batch, batch[:2], progress=False)
    predict_s = best_of(lambda: det.predict(batch), args.repeats)
    bb = det.backbone
    pixels = bb.preprocess(batch)
    backbone_s = best_of(
        lambda: bb.encode_image(pixels, net.layers, with_global=False), args.repeats
    )
    n_lora = sum(p.numel() for p in net.lora_tensors().values())
    return {
        "model": label,
        "precision": bb.precision,
        "image_size": size,
        "train_s_per_step": step_s,
        "train_ms_per_image": 1000 * step_s / args.batch,
        "inference_ms_per_image": 1000 * predict_s / len(batch),
        "backbone_ms_per_image": 1000 * backbone_s / len(batch),
        "lora_parameters": n_lora,
        "head_parameters": sum(p.numel() for p in net.head.parameters()),
    }


def measure_detector(method: str, args) -> dict:
    """``predict`` ms/image of a Lite0 detector at its default size (fitted on 16 images)."""
    det = create_detector(method, backbone="efficientnet-lite0")
    size = det.backbone.image_size
    det.fit(tm.images(16, seed=2, shape=(size, size)), progress=False)
    batch = tm.images(args.images, seed=3, shape=(size, size))
    predict_s = best_of(lambda: det.predict(batch), args.repeats)
    return {
        "model": f"EfficientNet-Lite0, {method}",
        "precision": det.backbone.precision,
        "image_size": size,
        "train_s_per_step": None,
        "train_ms_per_image": None,
        "inference_ms_per_image": 1000 * predict_s / len(batch),
        "backbone_ms_per_image": None,
        "lora_parameters": None,
        "head_parameters": None,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch", type=int, default=4, help="training batch (4)")
    parser.add_argument("--images", type=int, default=4, help="inference images (4)")
    parser.add_argument("--repeats", type=int, default=1, help="timed runs after the warm-up (1)")
    parser.add_argument(
        "--rows",
        nargs="+",
        default=["dinov2-fp32", "dinov2-bf16", "lite0-fp32", "padim", "gaussian", "patchcore"],
    )
    parser.add_argument("--json", type=Path, help="write the results here")
    args = parser.parse_args()
    keep_freed_memory()
    tmp = Path(tempfile.mkdtemp(prefix="bench_vfm_"))
    rows = []
    try:
        folder = tm.make_dinov2(tmp / "dinov2-base", seed=0, vision=DINOV2_BASE)
        specs = {
            "dinov2-fp32": ("DINOv2-base (random weights)", f"dinov2:{folder}", 224, "fp32"),
            "dinov2-bf16": ("DINOv2-base (random weights)", f"dinov2:{folder}", 224, "bf16"),
            "lite0-fp32": ("EfficientNet-Lite0", "efficientnet-lite0", 256, "fp32"),
        }
        for name in args.rows:
            row = measure(*specs[name], args) if name in specs else measure_detector(name, args)
            print(json.dumps(row))
            rows.append(row)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    doc = {
        "benchmark": "vfm_speed",
        "run": {"batch_size": args.batch, "images": args.images, "repeats": args.repeats},
        "environment": environment(),
        "rows": rows,
    }
    if args.json:
        atomic_write_json(args.json, doc, indent=2, allow_nan=True)
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
