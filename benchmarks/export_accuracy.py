"""Accuracy of exported models: torch fp32 against ONNX fp32 and ONNX INT8 on one category.

    python benchmarks/export_accuracy.py --model runs/screw_model --root ../shared/data/mvtec_ad \
        --category screw --json benchmarks/results/export-accuracy/screw.json

Loads the saved torch model, exports it to ONNX fp32 and INT8 (static QDQ, per-channel weights,
calibrated on ``--calibration-images`` good TRAIN images spread over the split; never test
images), predicts the test split with all three and writes the metrics (image/pixel AUROC,
pixel AP, AUPRO, F1-max), the largest score and map differences to torch, and the machine.
``--max-test N`` scores an evenly spread subset of the test split (said in the JSON).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from anomalens.atomic import atomic_write_json
from anomalens.data.transforms import spread_indices
from anomalens.evaluate import environment, load_samples
from anomalens.export import OnnxDetector, export_model
from anomalens.export.quantize import int8_instruction_sets
from anomalens.methods.base import load_detector
from anomalens.metrics import compute_all
from anomalens.runtime import cpu_isa


def _metrics(pred, labels, masks) -> dict[str, float]:
    pixel = any(m.any() for m in masks)
    m = compute_all(labels, pred.scores, masks if pixel else None, pred.maps if pixel else None)
    return {k: round(float(v), 4) for k, v in m.items()}


def _diff(ref, other) -> dict[str, float]:
    rel = np.abs(other.scores - ref.scores) / np.maximum(np.abs(ref.scores), 1e-12)
    maps = [
        float(np.abs(a - b).max() / max(float(a.max() - a.min()), 1e-12))
        for a, b in zip(ref.maps, other.maps, strict=True)
    ]
    return {"score_rel_max": float(rel.max()), "map_rel_range_max": float(max(maps))}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--model", required=True, type=Path, help="saved torch model folder")
    ap.add_argument("--dataset", default="mvtec")
    ap.add_argument("--root", default="../shared/data/mvtec_ad")
    ap.add_argument("--category", default="screw")
    ap.add_argument("--calibration-images", type=int, default=32)
    ap.add_argument("--max-test", type=int, default=None, help="score a spread subset")
    ap.add_argument("--work", type=Path, default=Path("runs/export_accuracy"))
    ap.add_argument("--json", help="write the numbers to this JSON file")
    args = ap.parse_args()

    torch_model = load_detector(args.model)
    test, _, _ = load_samples(args.dataset, args.root, args.category, "test", progress=False)
    n_all = len(test)
    if args.max_test is not None:
        test = [test[i] for i in spread_indices(len(test), args.max_test)]
    train, _, _ = load_samples(args.dataset, args.root, args.category, "train", progress=False)
    calib = [train[i].image for i in spread_indices(len(train), args.calibration_images)]
    del train
    images = [s.image for s in test]
    labels = [int(s.label) for s in test]
    masks = [s.mask for s in test]

    work = args.work / args.category
    t = time.perf_counter()
    export_model(torch_model, work / "fp32")
    fp32_s = time.perf_counter() - t
    t = time.perf_counter()
    export_model(torch_model, work / "int8", int8=True, calibration=calib)
    int8_s = time.perf_counter() - t

    rows, diffs, seconds = {}, {}, {}
    ref = None
    for name, model in (
        ("torch fp32", torch_model),
        ("onnx fp32", OnnxDetector.load(work / "fp32")),
        ("onnx int8", OnnxDetector.load(work / "int8")),
    ):
        t = time.perf_counter()
        pred = model.predict(images)
        seconds[name] = round(time.perf_counter() - t, 2)
        rows[name] = _metrics(pred, labels, masks)
        if ref is None:
            ref = pred
        else:
            diffs[name] = _diff(ref, pred)
        print(f"{name:<11}", json.dumps(rows[name]), f"{seconds[name]} s", flush=True)
    drop = rows["torch fp32"]["image_auroc"] - rows["onnx int8"]["image_auroc"]
    out = {
        "dataset": args.dataset,
        "category": args.category,
        "model": str(args.model),
        "method": torch_model.method,
        "backbone": torch_model.config.backbone,
        "n_test": len(test),
        "n_test_available": n_all,
        "calibration_images": len(calib),
        "rows": rows,
        "differences_to_torch": diffs,
        "int8_image_auroc_drop": round(drop, 4),
        "export_seconds": {"fp32": round(fp32_s, 1), "int8": round(int8_s, 1)},
        "predict_seconds": seconds,
        "cpu_flags": int8_instruction_sets(),
        "environment": environment() | {"cpu_isa": cpu_isa()},
    }
    print(json.dumps(diffs))
    if args.json:
        atomic_write_json(Path(args.json), out, indent=2, allow_nan=True)
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
