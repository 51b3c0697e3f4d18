"""Score image files and folders with a fitted detector and write a report folder.

The Python API behind ``anomalens predict``::

    from anomalens.inference import predict_paths
    result = predict_paths("models/screw", ["photos/", "extra.png"], "runs/photos")
    print(result.summary["n_defective"], "of", result.summary["n_images"], "defective")
    for record in result.records:  # one dict per image, as in scores.json
        print(record["path"], record["score"], record["is_defective"])

Images are loaded, predicted and drawn :data:`PREDICT_CHUNK` at a time, so a large folder never
sits in memory at once. The output folder is the report folder of :mod:`anomalens.report`:
``scores.csv``, ``scores.json`` (with hotspot boxes), ``summary.json`` (with ``model``,
``method`` and ``skipped``) and ``overlays/<name>.png``. Unreadable images raise
:class:`~anomalens.errors.ImageLoadError`, or with ``skip_bad`` are skipped with a
:class:`~anomalens.data.datasets.SkippedImageWarning`. Progress is logged to the ``logging``
logger ``anomalens.inference`` (DEBUG: model, image count, chunks).
"""

from __future__ import annotations

import logging
import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tqdm import tqdm

from anomalens.atomic import check_output_path, staged_folder
from anomalens.data.datasets import (
    IMAGE_EXTENSIONS,
    SkippedImageWarning,
    file_kind,
    list_images,
    warn_ignored,
)
from anomalens.data.io import load_image
from anomalens.errors import DatasetError, ImageLoadError
from anomalens.methods.base import Detector, load_detector
from anomalens.report import OVERLAY_DIR, SCORES_CSV, SUMMARY_JSON, ReportWriter, figure_names

__all__ = ["PREDICT_CHUNK", "PredictResult", "collect_images", "predict_paths"]

logger = logging.getLogger(__name__)

#: Images loaded, predicted and drawn at a time by :func:`predict_paths`.
PREDICT_CHUNK = 32
#: A chunk also ends once its images hold this many pixels (a few huge photos at a time).
CHUNK_PIXELS = 64_000_000


@dataclass
class PredictResult:
    """What :func:`predict_paths` wrote.

    ``summary`` is the content of ``summary.json``; ``records`` has one dict per scored image
    (``path, score, threshold, is_defective``, ``boxes`` when the detector has a pixel
    threshold, ``figure``), in input order, as in ``scores.json``; ``skipped`` lists the
    unreadable images skipped with ``skip_bad``.
    """

    folder: Path
    summary: dict[str, Any]
    records: list[dict[str, Any]] = field(default_factory=list, repr=False)
    skipped: list[Path] = field(default_factory=list)

    @property
    def scores_csv(self) -> Path:
        return self.folder / SCORES_CSV

    @property
    def overlays(self) -> Path:
        return self.folder / OVERLAY_DIR


def collect_images(
    inputs: Sequence[str | os.PathLike],
    recursive: bool = False,
    exclude: Sequence[str | os.PathLike] = (),
) -> list[Path]:
    """Image files named directly or found in folders (sorted per folder, duplicates dropped).

    A folder contributes its image files (with ``recursive``, those of its subfolders too,
    except hidden folders and the folders in ``exclude``, e.g. the report folder being written).
    Entries that look like images but cannot be read as files (FIFOs, dangling links, folders
    named ``x.png``, ``.webp`` / ``.gif`` files) are skipped with an
    :class:`~anomalens.data.datasets.IgnoredFileWarning`. Raises DatasetError naming the path
    when it does not exist, is not a regular image file, or is a folder without images.
    """
    exts = ", ".join(e.lstrip(".") for e in IMAGE_EXTENSIONS)
    skip = {Path(p).resolve() for p in exclude}
    found: list[Path] = []
    for path in map(Path, inputs):
        if path.is_dir():
            images = _walk_images(path, skip) if recursive else list_images(path)
            if not recursive:
                warn_ignored([path])
            if not images:
                hint = "" if recursive else " (subfolders are searched with --recursive)"
                raise DatasetError(f"{path}: no images found (extensions {exts}){hint}")
            found += images
        elif path.is_file():
            if path.suffix.lower() not in IMAGE_EXTENSIONS:
                raise DatasetError(f"{path}: not an image file (extensions {exts})")
            found.append(path)
        elif path.exists():
            raise DatasetError(f"{path}: not a regular file ({file_kind(path)})")
        elif path.is_symlink():
            raise DatasetError(f"{path}: dangling symbolic link (its target does not exist)")
        else:
            raise DatasetError(f"{path}: file or folder not found")
    return list(dict.fromkeys(found))


def _walk_images(folder: Path, skip: set[Path]) -> list[Path]:
    """Image files under ``folder`` (sorted), not descending into hidden or skipped folders."""
    images: list[Path] = []
    for dirpath, dirnames, _ in os.walk(folder):
        here = Path(dirpath)
        dirnames[:] = sorted(
            d for d in dirnames if not d.startswith(".") and (here / d).resolve() not in skip
        )
        images += list_images(here)
        warn_ignored([here])
    return sorted(images)


def is_report_folder(folder: str | os.PathLike) -> bool:
    """True when ``folder`` holds a ``summary.json`` (an earlier report)."""
    return (Path(folder) / SUMMARY_JSON).is_file()


def predict_paths(
    model: Detector | str | os.PathLike,
    inputs: Sequence[str | os.PathLike],
    output: str | os.PathLike,
    *,
    recursive: bool = False,
    skip_bad: bool = False,
    figures: bool = True,
    progress: bool = True,
    chunk_size: int = PREDICT_CHUNK,
    explain: Any = None,
    explain_options: dict[str, Any] | None = None,
    report: bool = False,
) -> PredictResult:
    """Score the images of ``inputs`` (files and folders, see :func:`collect_images`) with
    ``model`` (a fitted detector or a saved model folder) and write the report to ``output``.

    ``figures`` draws ``overlays/<name>.png`` per image; ``progress`` shows a tqdm bar. Raises
    CheckpointError for an unusable model folder, DatasetError for bad inputs or when no image
    could be read, and ImageLoadError for an unreadable image unless ``skip_bad``.

    The report is written into a staging folder beside ``output`` and replaces it only when
    the run completes (:func:`anomalens.atomic.staged_folder`): a failed or interrupted run, or
    a full disk, leaves an earlier report untouched. An existing non-empty ``output`` that is
    not a report folder (no ``summary.json``) is refused. ``output`` is never read as input.

    ``explain`` (an explainer spec such as ``"grounded"``, or an explainer object, see
    :mod:`anomalens.explain`) explains each chunk; ``explain_options`` go to
    :func:`~anomalens.explain.build_explainer`; ``report`` writes ``report.html``.
    """
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    if isinstance(model, Detector):
        detector, model_dir = model, None
    else:
        detector, model_dir = load_detector(model), str(model)
    inputs = [Path(p) for p in inputs]
    output = check_output_path(output)
    paths = collect_images(inputs, recursive, exclude=[output])
    logger.debug(
        "predict: %s model%s, %d images in chunks of %d",
        detector.method,
        f" from {model_dir}" if model_dir else "",
        len(paths),
        chunk_size,
    )
    names = dict(zip(paths, figure_names(paths), strict=True))
    explainer = explain
    if isinstance(explain, str):
        from anomalens.explain import build_explainer

        explainer = build_explainer(explain, detector=detector, **(explain_options or {}))
        if hasattr(explainer, "load"):  # a VLM that cannot load fails before any image
            explainer.load()
    skipped: list[Path] = []
    bar = tqdm(total=len(paths), desc="predict", unit="img", disable=not progress)
    with bar, staged_folder(output, replaceable=is_report_folder, what="report folder") as folder:
        writer = ReportWriter(folder, title=None, explainer=explainer, html=report)
        loaded: list[Path] = []
        images: list = []
        pixels = 0
        for i, path in enumerate(paths):
            try:
                image = load_image(path)
                images.append(image)
                loaded.append(path)
                pixels += image.shape[0] * image.shape[1]
            except ImageLoadError as e:
                if not skip_bad:
                    raise
                skipped.append(path)
                warnings.warn(f"skipping {e}", SkippedImageWarning, stacklevel=2)
            bar.update(1)
            last = i + 1 == len(paths)
            if loaded and (len(images) >= chunk_size or pixels >= CHUNK_PIXELS or last):
                prediction = detector.predict(images)
                names_ = [names[p] for p in loaded]
                writer.add(loaded, images, prediction, names=names_, figures=figures)
                loaded, images, pixels = [], [], 0
                logger.debug("predicted %d of %d images", len(writer.records), len(paths))
        if not writer.records:
            raise DatasetError(f"{', '.join(map(str, inputs))}: no readable images")
        summary = writer.finish(
            extra={
                "model": model_dir,
                "method": detector.method,
                "skipped": [str(p) for p in skipped],
                **(
                    {
                        "inputs": ", ".join(map(str, inputs)),
                        "explainer": getattr(explainer, "name", None),
                    }
                    if explainer is not None or report
                    else {}
                ),
            }
        )
    return PredictResult(Path(output), summary, writer.records, skipped)
