"""Few-shot AnomalyDINO and PatchCore (offline EfficientNet-Lite0) with and without pose
normalisation.

For each category, variant, K (shots) and seed of the shot choice: fit on K good training images,
predict the whole test split, and record image AUROC, pixel AUROC and AUPRO, the pose decision
of ``fit`` and the times. Variants (``--variants``, see :data:`VARIANTS`) are the baseline
(AnomalyDINO's defaults), foreground on, a rotation-augmented memory, pose normalisation with
and without the brightness match, the two image scores, and PatchCore (its defaults) with and
without pose.

The image score of the recommended setting is chosen WITHOUT the test split: for each K and seed,
16 held-out good training images (not among the shots) and the same images with one synthetic
defect on the object (:func:`anomalens.data.synthetic.add_synthetic_defect`) form a validation
set; the score (``top_fraction`` or ``max``) with the higher validation AUROC, averaged over all
K and seeds of the category, is chosen (``--validate``). Test figures of every variant are
reported as an ablation. Usage (from the repository root)::

    OMP_NUM_THREADS=1 flock -s /tmp/anomalens-cpu.lock python benchmarks/fewshot_pose.py \\
        --dataset-root ../shared/data/mvtec_ad --category screw --validate
    ... --dataset-root ../shared/data/magnetic_tile --category magnetic_tile \\
        --variants baseline pose_max

``--fit-only`` records the decisions of ``fit`` (pose, foreground) without predicting;
``--timing N`` times ``predict`` on N test images with pose off and on (run it alone, under
``flock -x``; writes the ``--json`` file, e.g. ``results/fewshot-speed/screw.json``).
Writes ``benchmarks/results/fewshot/<category>.json`` (per run and mean over seeds per K),
with the machine and the date.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from anomalens.atomic import atomic_write_json
from anomalens.data.synthetic import add_synthetic_defect
from anomalens.evaluate import load_samples
from anomalens.methods import AnomalyDINO, PatchCore
from anomalens.methods.base import select_shots
from anomalens.metrics import compute_all, image_auroc
from anomalens.postprocess import foreground_mask
from anomalens.results import environment

BACKBONE = "efficientnet-lite0"
#: variant -> AnomalyDINO options (on top of the backbone, shots and seed)
#: the settings of AnomalyDINO before pose normalisation existed (every variant starts from them)
OLD_DEFAULTS = {"pose": "off", "foreground": "off", "image_score": "top_fraction"}
VARIANTS: dict[str, dict] = {
    "baseline": OLD_DEFAULTS,
    "foreground": OLD_DEFAULTS | {"foreground": "auto"},
    "rotaug": OLD_DEFAULTS | {"foreground": "auto", "augment": ("rot90", "rot180", "rot270")},
    "pose_nobright": OLD_DEFAULTS
    | {"foreground": "auto", "pose": "auto", "pose_brightness": False},
    "pose_top": OLD_DEFAULTS | {"foreground": "auto", "pose": "auto"},
    "pose_max": OLD_DEFAULTS | {"foreground": "auto", "pose": "auto", "image_score": "max"},
    "pose_max_448": OLD_DEFAULTS
    | {"foreground": "auto", "pose": "auto", "image_score": "max", "image_size": 448},
    "patchcore": {"method": "patchcore", "pose": "off"},
    "patchcore_pose": {"method": "patchcore", "pose": "auto"},
}
METHOD_CLASSES = {"anomalydino": AnomalyDINO, "patchcore": PatchCore}
#: the variants whose image score the validation rule chooses between
SCORE_CHOICE = {"top_fraction": "pose_top", "max": "pose_max"}
N_VALIDATION = 16
PIXEL_KEYS = ("image_auroc", "pixel_auroc", "aupro")


def validation_set(images: list[np.ndarray], shots: list[int], seed: int):
    """Held-out good training images and their synthetic-defect copies (labels 0 / 1)."""
    rest = [i for i in range(len(images)) if i not in set(shots)]
    rng = np.random.default_rng(1000 + seed)
    chosen = sorted(rng.choice(rest, size=min(N_VALIDATION, len(rest)), replace=False).tolist())
    good = [images[i] for i in chosen]
    bad = [add_synthetic_defect(img, rng, region=foreground_mask(img))[0] for img in good]
    return good + bad, [0] * len(good) + [1] * len(bad)


def run(args) -> dict:
    torch.set_num_threads(args.threads)
    train, _, _ = load_samples("mvtec", args.dataset_root, args.category, "train", progress=False)
    train_images = [s.image for s in train]
    test, has_masks = [], False
    if not args.fit_only:
        test, has_masks, _ = load_samples(
            "mvtec", args.dataset_root, args.category, "test", progress=False
        )
    test_images = [s.image for s in test]
    labels = [int(s.label) for s in test]
    masks = [s.mask for s in test] if has_masks else None
    runs: list[dict] = []
    validation: list[dict] = []
    decisions: list[dict] = []
    for variant in args.variants:
        for k in args.shots:
            for seed in args.seeds:
                options = dict(VARIANTS[variant], backbone=BACKBONE, shots=k, seed=seed)
                det = METHOD_CLASSES[options.pop("method", "anomalydino")](**options)
                t0 = time.perf_counter()
                det.fit(train_images, progress=False)
                fit_s = time.perf_counter() - t0
                if args.fit_only:  # the decisions of fit only (pose, foreground)
                    row = {"variant": variant, "shots": k, "seed": seed, "pose": det.pose.on}
                    row |= {"pose_reason": det.pose.reason, "foreground": det.use_foreground}
                    decisions.append(row)
                    print(json.dumps(row), flush=True)
                    continue
                t0 = time.perf_counter()
                pred = det.predict(test_images)
                ms = 1000 * (time.perf_counter() - t0) / len(test_images)
                m = compute_all(labels, pred.scores, masks, pred.maps if masks else None)
                row = {
                    "variant": variant,
                    "shots": k,
                    "seed": seed,
                    **{key: round(float(m[key]), 4) for key in PIXEL_KEYS},
                    "pose": det.pose.on,
                    "pose_reason": det.pose.reason,
                    "foreground": det.use_foreground,
                    "fit_seconds": round(fit_s, 2),
                    "ms_per_image": round(ms, 1),
                }
                runs.append(row)
                print(json.dumps(row), flush=True)
                if args.validate and variant in SCORE_CHOICE.values():
                    shots = select_shots(len(train_images), k, seed)
                    val_images, val_labels = validation_set(train_images, shots, seed)
                    auc = image_auroc(val_labels, det.predict(val_images).scores)
                    validation.append(
                        {"variant": variant, "shots": k, "seed": seed, "val_auroc": round(auc, 4)}
                    )
                    print(json.dumps(validation[-1]), flush=True)
    return {"runs": runs, "validation": validation, "decisions": decisions}


def timing(args) -> dict:
    """ms/image of ``predict`` with pose off and on (4 shots, the new AnomalyDINO defaults
    otherwise), median of 3 repeats over the first ``args.timing`` test images; run it alone
    (``flock -x``)."""
    torch.set_num_threads(args.threads)
    train, _, _ = load_samples("mvtec", args.dataset_root, args.category, "train", progress=False)
    test, _, _ = load_samples("mvtec", args.dataset_root, args.category, "test", progress=False)
    images = [s.image for s in test[: args.timing]]
    out = {}
    for pose in ("off", "auto"):
        det = AnomalyDINO(backbone=BACKBONE, shots=4, seed=0, pose=pose)
        det.fit([s.image for s in train], progress=False)
        det.predict(images[:2])  # warm-up
        times = []
        for _ in range(3):
            t0 = time.perf_counter()
            det.predict(images)
            times.append(1000 * (time.perf_counter() - t0) / len(images))
        out[f"pose_{pose}"] = {"ms_per_image": round(float(np.median(times)), 1),
                               "pose": det.pose.on}  # fmt: skip
        print(pose, out[f"pose_{pose}"], flush=True)
    return out


def summarise(runs: list[dict]) -> dict:
    """Mean and min/max over seeds of each metric, per variant and K."""
    out: dict = {}
    for r in runs:
        out.setdefault(r["variant"], {}).setdefault(str(r["shots"]), []).append(r)
    table = {}
    for variant, by_k in out.items():
        table[variant] = {}
        for k, rows in by_k.items():
            cell = {"seeds": [r["seed"] for r in rows]}
            for key in PIXEL_KEYS:
                vals = [r[key] for r in rows if r[key] == r[key]]  # drop NaN
                cell[key] = round(float(np.mean(vals)), 4) if vals else None
                cell[key + "_range"] = [min(vals), max(vals)] if vals else None
            table[variant][k] = cell
    return table


def choose_score(validation: list[dict]) -> dict | None:
    """The image score whose variant has the higher mean validation AUROC over all K, seeds."""
    means = {}
    for score, variant in SCORE_CHOICE.items():
        vals = [v["val_auroc"] for v in validation if v["variant"] == variant]
        if vals:
            means[score] = round(float(np.mean(vals)), 4)
    if len(means) < 2:
        return None
    return {"mean_val_auroc": means, "chosen": max(means, key=means.get)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dataset-root", type=Path, required=True, help="MVTec-layout root")
    ap.add_argument("--category", required=True)
    ap.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    ap.add_argument("--shots", nargs="+", type=int, default=[1, 2, 4, 8])
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    ap.add_argument("--validate", action="store_true", help="choose the image score (see doc)")
    ap.add_argument("--fit-only", action="store_true", help="record fit's decisions only")
    ap.add_argument("--timing", type=int, default=0, metavar="N", help="time predict only")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--json", type=Path, default=None, help="default: results/fewshot/CAT.json")
    args = ap.parse_args()
    out = args.json or Path(__file__).parent / "results" / "fewshot" / f"{args.category}.json"
    t0 = time.perf_counter()
    if args.timing:
        doc = {"script": "benchmarks/fewshot_pose.py --timing", "category": args.category}
        doc |= {"images": args.timing, "timing": timing(args), "environment": environment()}
        out.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_json(out, doc)
        print(f"wrote {out}")
        return
    result = run(args)
    doc = {
        "script": "benchmarks/fewshot_pose.py",
        "category": args.category,
        "dataset_root": str(args.dataset_root),
        "backbone": BACKBONE,
        "variants": {v: VARIANTS[v] for v in args.variants},
        "shots": args.shots,
        "seeds": args.seeds,
        "summary": summarise(result["runs"]),
        "score_choice": choose_score(result["validation"]),
        "validation": result["validation"],
        "decisions": result["decisions"],
        "runs": result["runs"],
        "seconds": round(time.perf_counter() - t0, 1),
        "environment": environment(),
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out, doc)
    print(f"wrote {out}")
    for variant, by_k in doc["summary"].items():
        cells = "  ".join(
            f"K={k}: {c['image_auroc']}/{c['pixel_auroc']}/{c['aupro']}" for k, c in by_k.items()
        )
        print(f"{variant:14s} {cells}")
    if doc["score_choice"]:
        print("image score chosen on the validation set:", doc["score_choice"])


if __name__ == "__main__":
    main()
