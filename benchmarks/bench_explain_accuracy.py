"""Accuracy of the grounded explainer on a real dataset: defect type and location.

Defect type: leave-one-image-out over the defective test images. The labelled regions are the
ground-truth masks of all other defective images (with their type); the queries are the
detector's own top 3 hotspots on the held-out image (peaks at or above the pixel threshold, else
above 80% of the map's peak, each out to its half maximum, as the explainer does), and the
image's type is that of the hotspot closest to a labelled example, as the explainer states it
(``type_accuracy_strongest``: the strongest hotspot's type instead). Location, for the strongest
hotspot (the explainer without defect types):
the location words stated for that hotspot contain the centre of the ground-truth mask (the
3 x 3 cell of the part or surface, or the third along an elongated part's axis; qualifiers
such as "along the edge" are not scored); ``location_accuracy_component`` uses the centre of
the ground-truth component the hotspot overlaps most (the largest one when it overlaps none),
for images whose mask has several separate regions.

    python benchmarks/bench_explain_accuracy.py --root ../shared/data/mvtec_ad --category screw \
        --model runs/models/screw --json benchmarks/results/explain-accuracy/screw.json
    python benchmarks/bench_explain_accuracy.py --root ../shared/data/magnetic_tile \
        --category magnetic_tile --model runs/models/magnetic_tile --shots 200 \
        --json benchmarks/results/explain-accuracy/magnetic_tile.json

The model is a fitted detector folder; when ``--model`` holds none, it is fitted first with the
detector's default configuration (``anomalens fit``, ``--shots`` passed on). Nothing is chosen on
the test split: the descriptors and k-NN rule are fixed in anomalens.explain.defect_types, and
the weight of position is chosen on the labelled regions of each leave-one-out fold alone.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import torch
from tqdm import tqdm

from anomalens.atomic import atomic_write_json
from anomalens.evaluate import load_samples
from anomalens.explain.defect_types import (
    DefectTypes,
    hand_vector,
    match_order,
    region_embeddings,
)
from anomalens.explain.geometry import location_contains, region_from_mask
from anomalens.explain.grounded import analyse, describe_region, region_threshold
from anomalens.methods.base import load_detector
from anomalens.results import environment


def describe_all(detector, bad, category, features="detector"):
    """Ground-truth region descriptors, query descriptors (the top 3 hotspots: ``[n, D]`` deep,
    ``[n, H]`` hand, ``[n]`` overlaps the ground truth) and per-image rows. ``features``:
    ``detector`` pools regions on the patch features the prediction kept (as the explainer
    does), ``backbone`` on a separate backbone pass (``backbone_features``)."""
    gt_deep, gt_hand, queries, rows = [], [], [], []
    if features == "detector":
        detector.keep_features = True  # PatchCore; other detectors keep none (backbone pass)
    for s in tqdm(bad, desc=f"{category}: describe", unit="img"):
        pred = detector.predict([s.image])
        thr = region_threshold(pred.maps[0], pred.pixel_threshold, pred.threshold)
        analysis = analyse(s.image, pred.maps[0], thr, top_k=TOP_K, force=True)
        part, gray = analysis.part, analysis.gray
        gt = region_from_mask(s.mask, gray.shape)
        _, gt_numbers = describe_region(gt, part, gray, None)
        masks = [gt.mask] + [r.mask for r in analysis.regions]
        kept = pred.features[0] if features == "detector" and pred.features else None
        deep = region_embeddings(s.image, masks, kept)
        gt_deep.append(deep[0])
        gt_hand.append(hand_vector(gt_numbers))
        gx, gy = gt.centroid
        row = {
            "path": s.path,
            "type": s.defect_type,
            "flagged": bool(pred.is_defective[0]) if pred.threshold is not None else None,
        }
        if analysis.regions:
            region = analysis.regions[0]
            finding, _ = describe_region(region, part, gray, pred.pixel_threshold)
            hand = [hand_vector(describe_region(r, part, gray, None)[1]) for r in analysis.regions]
            hits = [bool((r.mask & gt.mask).any()) for r in analysis.regions]
            queries.append((deep[1:], np.stack(hand), np.array(hits)))
            row["location"] = finding.location
            row["location_ok"] = location_contains(part, finding.where, gx, gy)
            row["location_ok_component"] = location_contains(
                part, finding.where, *component_centre(gt.mask, region.mask)
            )
            row["hit"] = bool((region.mask & gt.mask).any())
        else:
            queries.append(None)
        rows.append(row)

    return gt_deep, gt_hand, queries, rows


#: Hotspots described per image (the explainer's default).
TOP_K = 3


def component_centre(gt: np.ndarray, found: np.ndarray) -> tuple[float, float]:
    """Centre ``(x, y)`` of the 8-connected component of ``gt`` that ``found`` overlaps most
    (the largest component when it overlaps none)."""
    n, labels, stats, centres = cv2.connectedComponentsWithStats(gt.astype(np.uint8), 8)
    overlap = np.bincount(labels[found], minlength=n)
    overlap[0] = 0
    k = int(np.argmax(overlap)) if overlap.any() else 1 + int(np.argmax(stats[1:, 4]))
    return float(centres[k][0]), float(centres[k][1])


def ensure_model(args: argparse.Namespace) -> None:
    """Fit the detector with its default configuration when ``--model`` holds none."""
    if (Path(args.model) / "config.json").is_file():
        return
    cmd = [sys.executable, "-m", "anomalens", "fit", "--dataset", args.dataset, "--root"]
    cmd += [args.root, "--category", args.category, "--output", args.model, "--no-progress"]
    if args.shots:
        cmd += ["--shots", str(args.shots)]
    print("fitting:", " ".join(cmd[1:]), flush=True)
    subprocess.run(cmd, check=True)


def confusion(rows: list[dict], types: list[str]) -> dict[str, dict[str, int]]:
    """``{true type: {predicted type: count}}`` (hotspot queries; "none" without a hotspot)."""
    out: dict[str, dict[str, int]] = {t: {} for t in types}
    for r in rows:
        key = r.get("predicted") or "none"
        out[r["type"]][key] = out[r["type"]].get(key, 0) + 1
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dataset", default="mvtec")
    ap.add_argument("--root", required=True)
    ap.add_argument("--category", required=True)
    ap.add_argument("--model", required=True, help="fitted detector folder")
    ap.add_argument("--json", required=True)
    ap.add_argument("--model-note", default="", help="how the model was fitted (for the JSON)")
    ap.add_argument("--shots", type=int, help="when fitting: use K good training images")
    ap.add_argument("--cache", help="npz + json of the descriptors (reused when present)")
    ap.add_argument(
        "--features",
        choices=("detector", "backbone"),
        default="detector",
        help="regions pooled on the detector's own patch features (as the explainer does when "
        "the detector keeps them) or on a separate backbone pass",
    )
    args = ap.parse_args()
    torch.set_num_threads(1)

    ensure_model(args)
    if not args.model_note:
        shots = f" --shots {args.shots}" if args.shots else ""
        args.model_note = f"anomalens fit --dataset {args.dataset} --category {args.category}"
        args.model_note += f"{shots} (default configuration)"
    t0 = time.perf_counter()
    detector = load_detector(args.model)
    samples, _, _ = load_samples(args.dataset, args.root, args.category, "test", progress=False)
    bad = [s for s in samples if s.label == 1 and s.mask.any()]
    types = sorted({s.defect_type for s in bad})
    cache = Path(args.cache) if args.cache else None
    cached = cache is not None and cache.is_file()
    if cached:
        arrays = np.load(cache)
        rows = json.loads(cache.with_suffix(".json").read_text())
        gt_deep, gt_hand = list(arrays["gt_deep"]), list(arrays["gt_hand"])
        queries = [
            (arrays["q_deep"][i, :n], arrays["q_hand"][i, :n], arrays["q_hit"][i, :n])
            if n
            else None
            for i, n in enumerate(arrays["q_count"])
        ]
    else:
        gt_deep, gt_hand, queries, rows = describe_all(detector, bad, args.category, args.features)
        if cache is not None:  # padded to TOP_K rows per image, q_count real ones
            cache.parent.mkdir(parents=True, exist_ok=True)
            n, dims = len(queries), (len(gt_deep[0]), len(gt_hand[0]))
            q_deep, q_hand = np.zeros((n, TOP_K, dims[0])), np.zeros((n, TOP_K, dims[1]))
            q_hit, q_count = np.zeros((n, TOP_K), bool), np.zeros(n, int)
            for i, q in enumerate(queries):
                if q is not None:
                    k = len(q[0])
                    q_deep[i, :k], q_hand[i, :k], q_hit[i, :k], q_count[i] = *q, k
            np.savez(
                cache,
                gt_deep=np.stack(gt_deep),
                gt_hand=np.stack(gt_hand),
                q_deep=q_deep,
                q_hand=q_hand,
                q_hit=q_hit,
                q_count=q_count,
            )
            cache.with_suffix(".json").write_text(json.dumps(rows))
    labels = np.array([types.index(s.defect_type) for s in bad])
    rule = DefectTypes(
        tuple(types), np.stack(gt_deep), np.stack(gt_hand), labels, np.arange(len(bad))
    )
    for i, (row, query) in enumerate(zip(rows, queries, strict=True)):
        if query is None:
            row["predicted"] = row["predicted_strongest"] = None
            continue
        held_out = rule.subset(np.arange(len(bad)) != i)
        matches = held_out.match(query[0], query[1])
        # the explainer's type of the image: its finding closest to a labelled defect
        lead = match_order(matches)[0]
        row["predicted"], row["confidence"] = matches[lead][0], matches[lead][1]
        row["type_hit"] = bool(query[2][lead])
        row["predicted_strongest"] = matches[0][0]
        # upper bound: the ground-truth region itself as the query
        row["predicted_from_mask"] = held_out.classify(rule.deep[i][None], rule.hand[i][None])[0][0]

    def rate(key, subset=rows):
        vals = [r[key] for r in subset if r.get(key) is not None]
        return (float(np.mean(vals)) if vals else None), len(vals)

    type_ok = [dict(r, ok=r.get("predicted") == r["type"]) for r in rows]
    type_from_mask = [dict(r, ok=r.get("predicted_from_mask") == r["type"]) for r in rows]
    counts = {t: int((labels == k).sum()) for k, t in enumerate(types)}
    result = {
        "dataset": args.dataset,
        "category": args.category,
        "model": args.model,
        "model_note": args.model_note,
        "n_images": len(rows),
        "types": counts,
        "chance": 1.0 / len(types),
        "majority": max(counts.values()) / len(rows),
        "type_accuracy": rate("ok", type_ok)[0],
        "type_accuracy_flagged": rate("ok", [r for r in type_ok if r["flagged"]])[0],
        "type_accuracy_hits": rate("ok", [r for r in type_ok if r.get("type_hit")])[0],
        "type_accuracy_strongest": rate(
            "ok", [dict(r, ok=r.get("predicted_strongest") == r["type"]) for r in rows]
        )[0],
        "type_hit_rate": rate("type_hit")[0],
        "type_accuracy_gt_query": rate("ok", type_from_mask)[0],
        "unknown_rate": float(np.mean([r.get("predicted") == "unknown type" for r in rows])),
        "location_accuracy": rate("location_ok")[0],
        "location_accuracy_hits": rate("location_ok", [r for r in rows if r.get("hit")])[0],
        "location_accuracy_component": rate("location_ok_component")[0],
        "position_weight": rule.hand_weight,
        "hit_rate": rate("hit")[0],
        "flagged_rate": rate("flagged")[0],
        "seconds": round(time.perf_counter() - t0, 1),
        "descriptors_from_cache": bool(cache is not None and cached),
        # where regions were pooled: detectors without patch features of their own (not
        # PatchCore) fall back to the separate backbone pass
        "features": "detector"
        if args.features == "detector" and getattr(detector, "feature_key", None)
        else "backbone",
        "environment": environment(),
        "command": "python benchmarks/bench_explain_accuracy.py --root "
        f"{args.root} --category {args.category} --model {args.model}"
        + (f" --shots {args.shots}" if args.shots else "")
        + f" --json {args.json}",
        "confusion": confusion(rows, types),
    }
    per_image = Path("runs") / "explain-accuracy" / f"{args.category}_images.json"
    atomic_write_json(per_image, rows, indent=1, allow_nan=True)
    result["per_image"] = str(per_image)
    atomic_write_json(Path(args.json), result, indent=1, allow_nan=True)
    keys = ("category", "type_accuracy", "type_accuracy_strongest", "type_accuracy_gt_query")
    keys += ("location_accuracy",)
    keys += ("location_accuracy_component", "hit_rate")
    print({k: result[k] for k in keys})


if __name__ == "__main__":
    main()
