"""The MVTec AD 2 protocol: metrics on ``test_public``, thresholds from ``validation/good`` and
the evaluation server's submission files for ``test_private`` / ``test_private_mixed``.

MVTec AD 2 (Heckler-Kram et al., 2025) ships per category ``train/good``, ``validation/good``,
``test_public/{good,bad}`` with ``test_public/ground_truth/bad/<stem>_mask.png``, and the
unlabelled ``test_private`` and ``test_private_mixed`` images, which only the benchmark server
scores. This module:

* fits a detector on ``train/good``, takes the thresholds from ``validation/good`` only (pixel
  threshold: ``mean + k * std`` of all validation pixels' map values, ``k = 3`` by default, or
  their ``quantile``; image threshold: the same rule on the validation image scores), never
  from test labels;
* computes on ``test_public``: image AUROC, pixel AUROC, AU-PRO up to FPR 0.05 and 0.3, and
  SegF1: the F1 score of all test pixels with maps binarised at the validation pixel
  threshold;
* writes the submission layout the server expects (paths relative to the dataset root, as in
  MVTec's ``mvtec_ad_2_public_offline.py``): ``anomaly_images/<cat>/<split>/<name>.tiff``
  (float16 maps at the image's resolution) and ``anomaly_images_thresholded/<cat>/<split>/
  <name>.png`` (0/255 masks at the same threshold).
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from tqdm import tqdm

from anomalens.atomic import atomic_write_with
from anomalens.data.datasets import IMAGE_EXTENSIONS, is_image_file
from anomalens.data.io import load_image
from anomalens.errors import DatasetError
from anomalens.metrics import aupro, image_auroc, pixel_auroc

#: The unlabelled splits only the benchmark server scores.
PRIVATE_SPLITS = ("test_private", "test_private_mixed")
#: Threshold rules on validation/good values.
THRESHOLD_RULES = ("mean_std", "quantile")
MAPS_DIR = "anomaly_images"
MASKS_DIR = "anomaly_images_thresholded"
RESULTS_FILE = "ad2_results.json"

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ThresholdRule:
    """How thresholds come from validation/good values: ``mean_std`` (``mean + k * std``) or
    ``quantile`` (the ``q`` quantile)."""

    rule: str = "mean_std"
    k: float = 3.0
    q: float = 0.999

    def __post_init__(self) -> None:
        if self.rule not in THRESHOLD_RULES:
            raise ValueError(f"threshold rule must be one of {THRESHOLD_RULES}, got {self.rule!r}")
        if not 0.0 < self.q <= 1.0:
            raise ValueError(f"quantile must be in (0, 1], got {self.q}")

    def __call__(self, values: np.ndarray) -> float:
        v = np.asarray(values, dtype=np.float64).reshape(-1)
        if v.size == 0:
            raise ValueError("no validation values to take a threshold from")
        if self.rule == "mean_std":
            return float(v.mean() + self.k * v.std())
        return float(np.quantile(v, self.q))


def seg_f1(masks: Sequence[np.ndarray], maps: Sequence[np.ndarray], threshold: float) -> float:
    """F1 of all pixels of all images, a pixel predicted anomalous when its map value is
    ``>= threshold`` (nonzero mask = anomalous); NaN when no pixel is anomalous in either."""
    tp = fp = fn = 0
    for i, (mask, m) in enumerate(zip(masks, maps, strict=True)):
        if np.shape(mask) != np.shape(m):
            raise ValueError(f"masks[{i}] has shape {np.shape(mask)} but maps[{i}] {np.shape(m)}")
        truth = np.asarray(mask) != 0
        pred = np.asarray(m) >= threshold
        tp += int(np.count_nonzero(truth & pred))
        fp += int(np.count_nonzero(~truth & pred))
        fn += int(np.count_nonzero(truth & ~pred))
    denominator = 2 * tp + fp + fn
    return float("nan") if denominator == 0 else 2.0 * tp / denominator


def ad2_metrics(
    labels: Sequence[int],
    scores: Sequence[float],
    masks: Sequence[np.ndarray],
    maps: Sequence[np.ndarray],
    pixel_threshold: float,
) -> dict[str, float]:
    """``image_auroc, pixel_auroc, aupro_05, aupro_30, seg_f1`` of ``test_public``."""
    return {
        "image_auroc": image_auroc(labels, scores),
        "pixel_auroc": pixel_auroc(list(masks), list(maps)),
        "aupro_05": aupro(list(masks), list(maps), fpr_limit=0.05),
        "aupro_30": aupro(list(masks), list(maps), fpr_limit=0.3),
        "seg_f1": seg_f1(masks, maps, pixel_threshold),
    }


def private_images(root: str | os.PathLike, category: str, split: str) -> list[Path]:
    """Sorted image files of ``<root>/<category>/<split>`` (subfolders included)."""
    if split not in PRIVATE_SPLITS:
        raise ValueError(f"split must be one of {PRIVATE_SPLITS}, got {split!r}")
    folder = Path(root) / category / split
    if not folder.is_dir():
        raise DatasetError(f"{folder}: folder not found (MVTec AD 2 private test images)")
    files = sorted(p for p in folder.rglob("*") if is_image_file(p))
    if not files:
        exts = ", ".join(e.lstrip(".") for e in IMAGE_EXTENSIONS)
        raise DatasetError(f"{folder}: no images found (extensions {exts})")
    return files


def submission_paths(root: str | os.PathLike, image: str | os.PathLike) -> tuple[Path, Path]:
    """``(map .tiff, mask .png)`` paths of an image, relative to the submission folder:
    ``anomaly_images/<path relative to root>.tiff`` and ``anomaly_images_thresholded/...png``."""
    rel = Path(image).resolve().relative_to(Path(root).resolve())
    return Path(MAPS_DIR) / rel.with_suffix(".tiff"), Path(MASKS_DIR) / rel.with_suffix(".png")


def write_map_tiff(path: Path, anomaly_map: np.ndarray) -> None:
    """A float16 single-channel TIFF, written with ``tifffile`` (a dependency of
    scikit-image; PIL cannot write float16)."""
    try:
        import tifffile
    except ImportError as exc:  # pragma: no cover - installed with scikit-image
        raise ImportError("writing float16 TIFF maps needs tifffile: pip install tifffile") from exc

    data = np.asarray(anomaly_map, dtype=np.float16)
    atomic_write_with(
        path, lambda tmp: tifffile.imwrite(tmp, data, photometric="minisblack"), fsync=False
    )


def write_mask_png(path: Path, mask: np.ndarray) -> None:
    """A 0/255 8-bit PNG."""
    image = Image.fromarray(np.where(mask, 255, 0).astype(np.uint8))
    atomic_write_with(path, lambda tmp: image.save(tmp, format="PNG"), fsync=False)


def write_submission(
    output: str | os.PathLike,
    root: str | os.PathLike,
    paths: Sequence[str | os.PathLike],
    maps: Sequence[np.ndarray],
    pixel_threshold: float,
) -> list[Path]:
    """Write the float16 maps and the 0/255 masks (``map >= pixel_threshold``) of ``paths``
    (images under ``root``) into ``output``; returns the written files."""
    out = Path(output)
    written = []
    for path, m in zip(paths, maps, strict=True):
        tiff, png = submission_paths(root, path)
        write_map_tiff(out / tiff, m)
        write_mask_png(out / png, np.asarray(m) >= pixel_threshold)
        written += [out / tiff, out / png]
    return written


@dataclass
class AD2Result:
    """Metrics and thresholds of one category under the MVTec AD 2 protocol."""

    category: str
    metrics: dict[str, float]
    threshold: float
    pixel_threshold: float
    rule: dict[str, Any]
    n_train: int
    n_validation: int
    n_test: int
    fit_seconds: float
    ms_per_image: float
    submission: dict[str, int] = field(default_factory=dict)


def evaluate_ad2(
    detector: Any,
    train: Sequence[np.ndarray],
    validation: Sequence[np.ndarray],
    test: Sequence[Any],
    category: str,
    rule: ThresholdRule | None = None,
    progress: bool = True,
) -> tuple[AD2Result, Any]:
    """Fit on ``train`` images, thresholds from ``validation`` (good images), metrics on the
    ``test`` samples (``test_public``). Returns the result and the fitted detector."""
    rule = rule or ThresholdRule()
    start = time.perf_counter()
    detector.fit(list(train), progress=progress)
    fit_seconds = time.perf_counter() - start
    val = detector.predict(list(validation), progress=progress)
    pixel_threshold = rule(np.concatenate([m.reshape(-1) for m in val.maps]))
    threshold = rule(val.scores)
    images = [s.image for s in test]
    start = time.perf_counter()
    pred = detector.predict(images, progress=progress)
    ms = 1000.0 * (time.perf_counter() - start) / max(len(images), 1)
    metrics = ad2_metrics(
        [s.label for s in test], pred.scores, [s.mask for s in test], pred.maps, pixel_threshold
    )
    result = AD2Result(
        category=category,
        metrics=metrics,
        threshold=threshold,
        pixel_threshold=pixel_threshold,
        rule=asdict(rule),
        n_train=len(train),
        n_validation=len(validation),
        n_test=len(test),
        fit_seconds=fit_seconds,
        ms_per_image=ms,
    )
    return result, detector


def run_ad2(
    root: str | os.PathLike,
    category: str,
    method: str = "patchcore",
    options: Mapping[str, Any] | None = None,
    *,
    output: str | os.PathLike,
    rule: ThresholdRule | None = None,
    submission: bool = True,
    skip_bad: bool = False,
    progress: bool = True,
) -> AD2Result:
    """The whole protocol for one category of an MVTec AD 2 root: ``output/ad2_results.json``
    and, with ``submission``, the server files of the private splits under ``output``."""
    from anomalens.evaluate import build_detector, environment, load_samples
    from anomalens.report import write_json

    detector = build_detector(method, category, **dict(options or {}))
    splits = {
        split: load_samples("mvtec_ad2", root, category, split, skip_bad, progress)
        for split in ("train", "validation", "test")
    }
    train, validation = splits["train"][0], splits["validation"][0]
    test, has_masks, _ = splits["test"]
    if not has_masks:
        raise DatasetError(f"{root}/{category}/test_public: defective images without masks")
    result, detector = evaluate_ad2(
        detector,
        [s.image for s in train],
        [s.image for s in validation],
        test,
        category,
        rule,
        progress,
    )
    out = Path(output)
    if submission:
        for split in PRIVATE_SPLITS:
            if not (Path(root) / category / split).is_dir():
                logger.info("%s/%s: no %s folder, nothing to submit", root, category, split)
                continue
            files = private_images(root, category, split)
            written = 0
            for chunk in tqdm(
                [files[i : i + 8] for i in range(0, len(files), 8)],
                desc=f"{category} {split}",
                disable=not progress,
            ):
                pred = detector.predict([load_image(p) for p in chunk])
                written += len(
                    write_submission(out, root, chunk, pred.maps, result.pixel_threshold)
                )
            result.submission[split] = written // 2
    write_json(
        out / RESULTS_FILE,
        {"method": method, "options": dict(options or {}), "environment": environment()}
        | asdict(result),
    )
    return result


__all__ = [
    "PRIVATE_SPLITS",
    "THRESHOLD_RULES",
    "AD2Result",
    "ThresholdRule",
    "ad2_metrics",
    "evaluate_ad2",
    "private_images",
    "run_ad2",
    "seg_f1",
    "submission_paths",
    "write_submission",
]
