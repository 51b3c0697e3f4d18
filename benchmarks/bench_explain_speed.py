"""Speed of explanations on CPU: VLM seconds per explanation and tokens/s (random weights at the
size of LLaVA-OneVision-0.5B and SmolVLM-256M, fp32 and bf16, 64 new tokens), and the grounded
explainer's ms/image next to the detector's predict ms/image.

    flock -x /tmp/anomalens-cpu.lock python benchmarks/bench_explain_speed.py \
        --model runs/models/screw --images ../shared/data/mvtec_ad/screw/test/scratch_head \
        --json benchmarks/results/explain-speed/main.json

Random weights: the timings are those of the real architectures and sizes (vision tower,
projector, language model, 64 decoding steps), not of trained models; the answers are noise.
bf16 on a CPU without native bf16 (AVX2 only, like the AMD EPYC used here) is emulated and slow.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from anomalens import testing as tm
from anomalens.atomic import atomic_write_json
from anomalens.data.io import load_image
from anomalens.explain import build_explainer
from anomalens.explain.defect_types import BACKBONE_KEY
from anomalens.explain.vlm_hf import _load_processor
from anomalens.methods.base import Prediction, load_detector
from anomalens.results import environment
from anomalens.runtime import keep_freed_memory

MODELS = {
    "llava-onevision-0.5b": ("llava_onevision", tm.LLAVA_OV_05B),
    "smolvlm-256m": ("idefics3", tm.SMOLVLM_256M),
}


def machine() -> dict:
    """:func:`anomalens.results.environment` plus whether bf16 is native here."""
    from anomalens.runtime import native_bf16

    return environment() | {"native_bf16": bool(native_bf16())}


def one_defect(size: int = 512) -> tuple[np.ndarray, Prediction]:
    img = tm.object_images(1, size=size)[0]
    m = np.zeros((size, size), np.float32)
    m[size // 3 : size // 3 + 20, size // 2 : size // 2 + 12] = 2.0
    return img, Prediction(np.array([2.0], np.float32), [m], 1.0, 1.0)


def time_vlm(name: str, precision: str, tokens: int, folder: Path) -> dict:
    family, sizes = MODELS[name]
    model = tm.build_vlm(family, folder / name, sizes).eval()
    if precision == "bf16":
        model = model.to(torch.bfloat16)
    explainer = build_explainer(f"hf:{folder / name}", max_new_tokens=tokens, precision=precision)
    explainer._loaded = (model, _load_processor(str(folder / name), True, False), family)
    explainer.family = family
    img, pred = one_defect()

    def run(n: int) -> tuple[float, object]:
        model.generation_config.min_new_tokens = n  # random weights: never stop early
        explainer.max_new_tokens = n
        start = time.perf_counter()
        e = explainer.explain([img], pred)[0]
        return time.perf_counter() - start, e

    run(1)  # warm-up
    first, _ = run(1)  # images, prompt and the first token
    seconds, e = run(tokens)
    n_params = sum(p.numel() for p in model.parameters())
    return {
        "model": name,
        "precision": precision,
        "params_millions": round(n_params / 1e6, 1),
        "new_tokens": tokens,
        "seconds_per_explanation": round(seconds, 2),
        "tokens_per_second": round(tokens / seconds, 2),
        "seconds_to_first_token": round(first, 2),
        "decode_tokens_per_second": round((tokens - 1) / max(seconds - first, 1e-9), 2),
        "images_sent": 2,
        "answer_chars": len(e.vlm_text or ""),
    }


def time_grounded(
    model_dir: str, image_dir: str, n: int, repeats: int = 5, defect_types: str | None = None
) -> dict:
    """Predict and grounded ms/image on the same images; with ``defect_types`` (a folder of
    labelled examples) also the grounded explainer that names types (regions pooled on the
    detector's patch features when it keeps them)."""
    detector = load_detector(model_dir)
    paths = sorted(Path(image_dir).glob("*.png"))[:n]
    images = [load_image(p) for p in paths]
    explainers = {"grounded": build_explainer("grounded")}
    if defect_types:
        explainers["grounded_types"] = build_explainer(
            "grounded", defect_types=defect_types, detector=detector
        )
    detector.predict(images[:2])
    predict: list[float] = []
    explain: dict[str, list[float]] = {name: [] for name in explainers}
    for _ in range(repeats):
        start = time.perf_counter()
        pred = detector.predict(images)
        predict.append(time.perf_counter() - start)
        pred.threshold = pred.pixel_threshold = float(np.median(pred.scores))  # half explained
        for name, explainer in explainers.items():
            start = time.perf_counter()
            explainer.explain(images, pred)
            explain[name].append(time.perf_counter() - start)
    p = 1000 * min(predict) / len(images)
    out = {"images": len(images), "image_dir": image_dir, "predict_ms_per_image": round(p, 1)}
    for name, times in explain.items():
        g = 1000 * min(times) / len(images)
        out[f"{name}_ms_per_image"] = round(g, 2)
        out[f"{name}_share_of_predict"] = round(g / p, 4)
    out["defect_types"] = defect_types
    if defect_types:  # the features the types pool regions on (see DefectTypes.feature_key)
        rule = explainers["grounded_types"].defect_types
        out["types_features"] = "backbone" if rule.feature_key == BACKBONE_KEY else "detector"
    out["repeats"] = repeats
    out["note"] = (
        "threshold set to the median score so half the images get findings; "
        f"fastest of {repeats} passes for both predict and explain"
    )
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", help="fitted detector folder for the grounded timing")
    ap.add_argument("--images", help="folder of images for the grounded timing")
    ap.add_argument("--n-images", type=int, default=16)
    ap.add_argument("--defect-types", help="labelled examples <type>/*.png: also time naming")
    ap.add_argument("--repeats", type=int, default=5, help="passes; the fastest is kept")
    ap.add_argument("--vlms", default=",".join(MODELS))
    ap.add_argument("--precisions", default="fp32,bf16")
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--work", default="runs/explain-speed", help="processor files of the VLMs")
    ap.add_argument("--json", required=True)
    args = ap.parse_args()
    keep_freed_memory()
    torch.set_flush_denormal(True)
    torch.manual_seed(0)
    result = {"environment": machine(), "vlm": [], "grounded": None}
    result["random_weights"] = True
    out = Path(args.json)
    previous = json.loads(out.read_text()) if out.is_file() else {}
    new: list[dict] = []

    def save() -> None:  # after every row: a call cut short keeps what it measured
        keys = {(r["model"], r["precision"]) for r in new}
        old = [r for r in previous.get("vlm", []) if (r["model"], r["precision"]) not in keys]
        result["vlm"] = old + new
        result["grounded"] = result["grounded"] or previous.get("grounded")
        atomic_write_json(out, result, indent=1, allow_nan=True)

    if args.model and args.images:
        result["grounded"] = time_grounded(
            args.model, args.images, args.n_images, args.repeats, args.defect_types
        )
        print(result["grounded"], flush=True)
        save()
    for name in filter(None, args.vlms.split(",")):
        for precision in filter(None, args.precisions.split(",")):
            new.append(time_vlm(name, precision, args.tokens, Path(args.work)))
            print(new[-1], flush=True)
            save()


if __name__ == "__main__":
    main()
