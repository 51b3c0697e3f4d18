"""ms/image of one saved model in torch (fp32 and bf16), ONNX fp32 and ONNX INT8.

    python benchmarks/bench_export.py --model runs/screw_model --root ../shared/data/mvtec_ad \
        --category screw --json benchmarks/results/export-speed/screw.json

Exports the model (ONNX fp32 and INT8, calibrated on good train images) unless ``--onnx`` /
``--int8`` give exported folders, then times the whole ``predict`` (resize, backbone, search,
maps at each image's size) on the same ``--images`` test images held in memory, at batch 1 and
4, the variants taking turns, best of ``--repeats``. Run it alone (under the exclusive lock on a
shared machine). torch bf16 is emulated on CPUs without AVX512-BF16/AMX (slow there): torch
fp32 is what ``precision=auto`` runs on such CPUs. The JSON records the CPU, its instruction
sets (INT8 speed depends on AVX512-VNNI / AVX-VNNI / AMX), threads and date.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import torch

from anomalens.atomic import atomic_write_json
from anomalens.data.transforms import spread_indices
from anomalens.evaluate import environment, load_samples
from anomalens.export import OnnxDetector, export_model
from anomalens.export.quantize import int8_instruction_sets
from anomalens.methods.base import load_detector
from anomalens.runtime import cpu_isa


def _best_interleaved(fns: dict, repeats: int) -> dict[str, float]:
    best = dict.fromkeys(fns, float("inf"))
    for _ in range(repeats):
        for name, fn in fns.items():
            t = time.perf_counter()
            fn()
            best[name] = min(best[name], time.perf_counter() - t)
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--model", required=True, type=Path)
    ap.add_argument("--dataset", default="mvtec")
    ap.add_argument("--root", default="../shared/data/mvtec_ad")
    ap.add_argument("--category", default="screw")
    ap.add_argument("--onnx", type=Path, help="exported fp32 folder (default: export now)")
    ap.add_argument("--int8", type=Path, help="exported INT8 folder (default: export now)")
    ap.add_argument("--images", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--no-bf16", action="store_true", help="skip torch bf16 (emulated: slow)")
    ap.add_argument("--json")
    args = ap.parse_args()

    test, _, _ = load_samples(args.dataset, args.root, args.category, "test", progress=False)
    images = [test[i].image for i in spread_indices(len(test), args.images)]
    work = Path("runs/bench_export") / args.category
    fp32_dir, int8_dir = args.onnx, args.int8
    if fp32_dir is None or int8_dir is None:
        train, _, _ = load_samples(args.dataset, args.root, args.category, "train", progress=False)
        calib = [train[i].image for i in spread_indices(len(train), 32)]
        source = load_detector(args.model)
        fp32_dir = fp32_dir or export_model(source, work / "fp32")
        int8_dir = int8_dir or export_model(source, work / "int8", int8=True, calibration=calib)

    models = {"torch fp32": load_detector(args.model)}
    if not args.no_bf16:
        bf16 = load_detector(args.model)
        bf16.config.precision = "bf16"
        if hasattr(bf16.config, "search_precision"):
            bf16.config.search_precision = "bf16"
        models["torch bf16 (emulated)"] = bf16
    models["onnx fp32"] = OnnxDetector.load(fp32_dir)
    models["onnx int8"] = OnnxDetector.load(int8_dir)
    models["torch fp32"].config.precision = "fp32"

    def setter(model, b: int):
        if isinstance(model, OnnxDetector):
            model.batch_size = b
        else:
            model.config.batch_size = b

    rows: dict[str, dict[str, float]] = {name: {} for name in models}
    for batch in (1, 4):
        for model in models.values():
            setter(model, batch)
            model.predict(images[:batch])  # warm-up: backbone load, session, allocator
        fns = {name: (lambda m=m: m.predict(images)) for name, m in models.items()}
        best = _best_interleaved(fns, args.repeats)
        for name, seconds in best.items():
            rows[name][f"batch{batch}_ms_per_image"] = round(1000 * seconds / len(images), 1)
        print(f"batch {batch}:", {k: v[f"batch{batch}_ms_per_image"] for k, v in rows.items()})
    out = {
        "model": str(args.model),
        "method": models["torch fp32"].method,
        "backbone": models["torch fp32"].config.backbone,
        "category": args.category,
        "n_images": len(images),
        "image_size": models["onnx fp32"].config["image_size"],
        "repeats": args.repeats,
        "rows": rows,
        "onnxruntime_threads": "default (all cores)",
        "cpu_flags": int8_instruction_sets(),
        "environment": environment()
        | {"cpu_isa": cpu_isa(), "torch_threads": torch.get_num_threads(), "pid": os.getpid()},
    }
    print("cpu:", out["environment"]["cpu"], "| isa:", cpu_isa(), "| flags:", out["cpu_flags"])
    if args.json:
        atomic_write_json(Path(args.json), out, indent=2, allow_nan=True)
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
