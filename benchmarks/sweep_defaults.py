"""Choose PatchCore's defaults across categories: every setting on every category we have.

Categories: MVTec AD screw (an object at random orientation), Magnetic Tile Defects (a surface,
non-square grayscale crops of many sizes) and the demo textures (brick, grass, gravel; written by
``make_demo_dataset`` with 30 good and 30 defective test images each, more than the demo's 20,
so that one image moves AUROC less). The decision is the mean over the categories, never one
category. ``plain`` is a reference PatchCore written here from scratch (independent of the
library's PatchCore): EfficientNet-Lite0 stages 2+3 at 256 px stretched square, stage-3 grid,
3 x 3 averaging, a random 10 % of the training patches as memory, no foreground weighting,
image score = map maximum.

    python benchmarks/sweep_defaults.py --setting defaults --setting plain \\
        --setting letterbox='{"resize": "letterbox"}' --out benchmarks/results/defaults

A setting is ``name`` (``defaults``, ``plain``) or ``name=JSON`` (PatchCore options on top of
the defaults). Each setting is written to ``--out/<name>.json`` (every category, the machine and
date) and printed as a row with the mean; for PatchCore settings the image AUROC of other image
scores (the mean of the top 0.1 to 3 % of map pixels) on the same maps follows.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from anomalens.atomic import atomic_write_json
from anomalens.backbones.registry import load_backbone
from anomalens.data.synthetic import make_demo_dataset
from anomalens.data.transforms import resize_square, spread_indices
from anomalens.evaluate import build_detector, load_samples
from anomalens.methods.common import pool_patches
from anomalens.metrics import compute_all, image_auroc
from anomalens.neighbors import MemoryBank
from anomalens.postprocess import gaussian_blur, image_score, resize_map
from anomalens.results import environment

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"
METRICS = ("image_auroc", "pixel_auroc", "pixel_ap", "aupro")
CATEGORIES = ("screw", "magnetic_tile", "brick", "grass", "gravel")


def load_categories(names: list[str], demo_dir: Path, limits: dict[str, int]) -> dict:
    """``{category: (train, test)}`` samples in memory (``limits``: at most that many training
    images of a category, spread evenly over its sorted list)."""
    out = {}
    textures = [n for n in names if n in ("brick", "grass", "gravel")]
    if textures:
        make_demo_dataset(demo_dir, n_train=20, n_test_good=30, n_test_bad=30, textures=textures)
    for name in names:
        if name == "screw":
            root = SHARED / "mvtec_ad"
        elif name == "magnetic_tile":
            root = SHARED / "magnetic_tile"
        else:
            root = demo_dir
        train = load_samples("mvtec", root, name, "train", progress=False)[0]
        test = load_samples("mvtec", root, name, "test", progress=False)[0]
        limit = limits.get(name)
        if limit is not None and len(train) > limit:
            idx = spread_indices(len(train), limit)
            train = [train[i] for i in idx]
        out[name] = (train, test)
    return out


def plain_patchcore(train, test, seed: int = 0) -> dict:
    """The reference PatchCore of the module docstring; returns metrics and timings."""
    bb = load_backbone("efficientnet-lite0", image_size=256, precision="fp32")

    def embed(images):
        out = []
        for k in range(0, len(images), 4):
            batch = [resize_square(im, 256) for im in images[k : k + 4]]
            feats = bb.encode_image(bb.preprocess(batch), [2, 3])
            out.append(pool_patches(feats, 3, 1))
        return torch.cat(out)

    t0 = time.perf_counter()
    feats = embed([s.image for s in train])
    flat = feats.reshape(-1, feats.shape[-1])
    rng = torch.Generator().manual_seed(seed)
    keep = torch.randperm(flat.shape[0], generator=rng)[: max(1, flat.shape[0] // 10)]
    bank = MemoryBank(flat[keep].clone(), "fp32")
    fit_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    scores, maps = [], []
    for k in range(0, len(test), 4):
        batch = [s.image for s in test[k : k + 4]]
        f = embed(batch)
        b, h, w, d = f.shape
        dist = bank.search(f.reshape(-1, d))[0].view(b, h, w)
        grid = gaussian_blur(dist, 4.0 * h / 256)
        for i, img in enumerate(batch):
            m = resize_map(grid[i].numpy(), img.shape[:2])
            maps.append(m)
            scores.append(float(m.max()))
    ms = 1000 * (time.perf_counter() - t0) / len(test)
    metrics = compute_all([int(s.label) for s in test], scores, [s.mask for s in test], maps)
    return {**{k: float(metrics[k]) for k in METRICS}, "fit_seconds": fit_s, "ms_per_image": ms}


#: Image scores compared on the same maps: the mean of the top fraction of map pixels.
SCORE_FRACTIONS = (0.001, 0.003, 0.01, 0.03)


def run_setting(name: str, options: dict, train, test, category: str) -> dict:
    if name == "plain":
        return plain_patchcore(train, test)
    detector = build_detector("patchcore", **options)
    detector.fit([s.image for s in train], progress=False)
    fit_seconds = detector.fit_report.seconds["total"]
    images = [s.image for s in test]
    t0 = time.perf_counter()
    pred = detector.predict(images)
    ms = 1000 * (time.perf_counter() - t0) / len(test)
    labels = [int(s.label) for s in test]
    metrics = compute_all(labels, pred.scores, [s.mask for s in test], pred.maps)
    other = {
        f"image_auroc_top{f}": image_auroc(labels, [image_score(m, f) for m in pred.maps])
        for f in SCORE_FRACTIONS
    }
    return {
        **{k: float(metrics[k]) for k in METRICS},
        **other,
        "fit_seconds": fit_seconds,
        "ms_per_image": ms,
        "use_foreground": bool(detector.use_foreground),
        "notes": detector.fit_report.notes,
    }


def parse_setting(text: str) -> tuple[str, dict]:
    if "=" not in text:
        return text, {}
    name, _, spec = text.partition("=")
    return name, json.loads(spec)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--setting", action="append", required=True)
    ap.add_argument("--categories", default=",".join(CATEGORIES), help="comma-separated")
    ap.add_argument(
        "--limit", action="append", default=[], help="CATEGORY=N: at most N training images"
    )
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", type=Path, default=None, help="folder for <setting>.json")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    names = args.categories.split(",")
    limits = {k: int(v) for k, v in (item.split("=") for item in args.limit)}
    with tempfile.TemporaryDirectory() as tmp:
        data = load_categories(names, Path(tmp), limits)
    header = f"{'setting':28s} " + " ".join(f"{c[:8]:>17s}" for c in names) + "   mean I / P"
    print(header, flush=True)
    for text in args.setting:
        name, options = parse_setting(text)
        rows = {}
        for cat in names:
            train, test = data[cat]
            rows[cat] = {"n_train": len(train), "n_test": len(test)}
            rows[cat] |= run_setting(name, options, train, test, cat)
        if args.out is not None:
            doc = {
                "setting": name,
                "options": options,
                "limits": limits,
                "categories": rows,
                "environment": environment(),
            }
            path = args.out / f"{name}.json"
            if path.is_file():  # the same setting run on other categories (another process)
                old = json.loads(path.read_text(encoding="utf-8"))
                if old.get("options") == options and old.get("limits") == limits:
                    doc["categories"] = old["categories"] | rows
            atomic_write_json(path, doc)
        cells = " ".join(
            f"{rows[c]['image_auroc']:.3f}/{rows[c]['pixel_auroc']:.3f}/{rows[c]['aupro']:.2f}"
            for c in names
        )
        mi = np.mean([rows[c]["image_auroc"] for c in names])
        mp = np.mean([rows[c]["pixel_auroc"] for c in names])
        fg = "".join("F" if rows[c].get("use_foreground") else "." for c in names)
        print(f"{name:28s} {cells}   {mi:.3f} / {mp:.3f} {fg}", flush=True)
        for f in SCORE_FRACTIONS if name != "plain" else ():
            key = f"image_auroc_top{f}"
            vals = " ".join(f"{rows[c][key]:17.3f}" for c in names)
            mean = np.mean([rows[c][key] for c in names])
            print(f"{'  image score top ' + str(f):28s} {vals}   {mean:.3f}", flush=True)


if __name__ == "__main__":
    main()
