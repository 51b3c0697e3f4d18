"""Report folders: per-image prediction figures, score tables, a summary and, with labels, plots.

A report folder holds

* ``overlays/<name>.png``: image, heatmap overlay with hotspot boxes, raw map; verdict in the title
  (see :func:`anomalens.visualize.save_prediction_figure`);
* ``scores.csv``: ``path, score, threshold, is_defective`` (and ``label`` when labels are known);
* ``scores.json``: the same per image plus the hotspot boxes (when the detector has a pixel
  threshold) and the figure file;
* ``summary.json``: counts, thresholds, metrics (when labels are known) and the file names;
* ``roc.png`` and ``histogram.png`` when labels are known.

:class:`ReportWriter` takes images in chunks (so large folders never sit in memory at once);
:func:`write_report` is the one-call version. File writes are logged at DEBUG level to the
``logging`` logger ``anomalens.report``.
"""

from __future__ import annotations

import csv
import io
import logging
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from anomalens.atomic import atomic_write_json, atomic_write_text
from anomalens.methods.base import Prediction
from anomalens.metrics import compute_all
from anomalens.postprocess import hotspots
from anomalens.visualize import save_prediction_figure, save_roc_curve, save_score_histogram

__all__ = [
    "ReportWriter",
    "color_range",
    "figure_names",
    "jsonable",
    "write_csv",
    "write_json",
    "write_report",
]

logger = logging.getLogger(__name__)

OVERLAY_DIR = "overlays"
SCORES_CSV = "scores.csv"
SCORES_JSON = "scores.json"
SUMMARY_JSON = "summary.json"
ROC_PNG = "roc.png"
HISTOGRAM_PNG = "histogram.png"


# --------------------------------------------------------------------------------------------
# small helpers
# --------------------------------------------------------------------------------------------


def jsonable(value: Any) -> Any:
    """``value`` with numpy scalars/arrays turned into Python values and NaN/inf into None."""
    if isinstance(value, Mapping):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return jsonable(value.tolist())
    if isinstance(value, (np.bool_, bool)):
        return bool(value)
    if isinstance(value, (np.integer, int)):
        return int(value)
    if isinstance(value, (np.floating, float)):
        v = float(value)
        return v if math.isfinite(v) else None
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    return value


def write_json(path: str | os.PathLike, data: Any) -> Path:
    """Write ``data`` as indented JSON (NaN/inf become null) atomically
    (:func:`anomalens.atomic.atomic_write_json`); parent folders are created."""
    return atomic_write_json(path, jsonable(data))


def write_csv(path: str | os.PathLike, rows: Sequence[Sequence[Any]]) -> Path:
    """Write rows as CSV atomically. Paths that are not valid UTF-8 keep their original bytes
    (``surrogateescape``), so the column names the very file."""
    buffer = io.StringIO(newline="")
    csv.writer(buffer).writerows(rows)
    return atomic_write_text(path, buffer.getvalue(), errors="surrogateescape")


def figure_names(paths: Sequence[str | os.PathLike]) -> list[str]:
    """Unique file stems for per-image figures.

    A stem alone when the stems are unique (``a/x.png, a/y.png -> x, y``); otherwise the path
    relative to the common folder with ``/`` replaced by ``_`` (``test/good/000.png,
    test/scratch/000.png -> good_000, scratch_000``). Remaining clashes get ``-2``, ``-3`` ...
    """
    ps = [Path(p) for p in paths]
    stems = [p.stem for p in ps]
    if len(set(stems)) < len(stems):
        try:
            common = Path(os.path.commonpath([str(p.parent.resolve()) for p in ps]))
            stems = ["_".join(p.resolve().relative_to(common).with_suffix("").parts) for p in ps]
        except ValueError:  # different drives: keep the stems and number the clashes
            pass
    names: list[str] = []
    seen: dict[str, int] = {}
    for stem in stems:
        count = seen.get(stem, 0) + 1
        seen[stem] = count
        names.append(stem if count == 1 else f"{stem}-{count}")
    return names


def color_range(pixel_threshold: float | None) -> tuple[float | None, float | None]:
    """Fixed heatmap limits so figures compare across images: ``0.5x`` to ``1.25x`` the pixel
    threshold (the threshold is yellow-green, red is clearly above it). Without a positive
    threshold each map uses its own min/max (``(None, None)``)."""
    if pixel_threshold is None or not math.isfinite(pixel_threshold) or pixel_threshold <= 0:
        return None, None
    return 0.5 * pixel_threshold, 1.25 * pixel_threshold


#: scores.csv columns added when the images were explained (after the existing columns)
EXPLANATION_COLUMNS = ("verdict", "summary", "defect_type", "agreement")


def _fmt_text(value: Any) -> str:
    return "" if value is None else str(value)


def _fmt_optional(value: float | bool | None) -> str:
    if value is None:
        return ""
    if isinstance(value, (bool, np.bool_)):
        return str(bool(value)).lower()
    return repr(float(value))


# --------------------------------------------------------------------------------------------
# writer
# --------------------------------------------------------------------------------------------


class ReportWriter:
    """Collects predictions chunk by chunk and writes a report folder.

    ``add`` writes the figures of its chunk right away and keeps only the per-image records,
    scores and labels; ``finish`` writes ``scores.csv``, ``scores.json``, ``summary.json`` and,
    with labels, ``roc.png`` and ``histogram.png``.
    """

    def __init__(
        self,
        folder: str | os.PathLike,
        title: str | None = None,
        explainer: Any = None,
        html: bool = False,
    ) -> None:
        self.folder = Path(folder)
        self.title = title
        #: explanations (``anomalens.explain``) run per chunk; ``html`` writes report.html
        self.explainer, self.html = explainer, html
        self.records: list[dict[str, Any]] = []
        self.threshold: float | None = None
        self.pixel_threshold: float | None = None
        self._labels: list[int] = []
        self.folder.mkdir(parents=True, exist_ok=True)

    def add(
        self,
        paths: Sequence[str | os.PathLike],
        images: Sequence[np.ndarray],
        prediction: Prediction,
        labels: Sequence[int] | None = None,
        masks: Sequence[np.ndarray] | None = None,
        names: Sequence[str] | None = None,
        figures: bool | Sequence[bool] = True,
        explanations: Sequence[Any] | None = None,
    ) -> ReportWriter:
        """Add a chunk of images with their prediction.

        ``explanations`` (one :class:`~anomalens.explain.Explanation` per image) default to
        the writer's explainer's, when it has one; their fields join the records.

        ``names`` are figure file stems (default: :func:`figure_names` of ``paths``; pass
        names computed over all paths when adding several chunks). ``figures`` says for which
        images to draw a figure (one bool for all, or one per image). ``masks`` (ground truth)
        are outlined in the figures.
        """
        n = len(paths)
        if len(images) != n or len(prediction.scores) != n or len(prediction.maps) != n:
            raise ValueError(
                f"report: {n} paths but {len(images)} images, {len(prediction.scores)} scores "
                f"and {len(prediction.maps)} maps"
            )
        for what, seq in (("labels", labels), ("masks", masks), ("names", names)):
            if seq is not None and len(seq) != n:
                raise ValueError(f"report: {n} paths but {len(seq)} {what}")
        if (labels is None) != (not self._labels) and self.records:
            raise ValueError("report: give labels for every chunk or for none")
        draw = [figures] * n if isinstance(figures, bool) else [bool(f) for f in figures]
        if len(draw) != n:
            raise ValueError(f"report: {n} paths but {len(draw)} figure flags")
        names = list(names) if names is not None else figure_names(paths)
        if explanations is None and self.explainer is not None:
            explanations = self.explainer.explain(images, prediction, names)
        self.threshold = prediction.threshold
        self.pixel_threshold = prediction.pixel_threshold
        vmin, vmax = color_range(prediction.pixel_threshold)
        verdicts = prediction.is_defective
        for i in range(n):
            score = float(prediction.scores[i])
            boxes = (
                hotspots(prediction.maps[i], prediction.pixel_threshold)
                if prediction.pixel_threshold is not None
                else []
            )
            record: dict[str, Any] = {
                "path": str(paths[i]),
                "score": score,
                "threshold": prediction.threshold,
                "is_defective": None if verdicts is None else bool(verdicts[i]),
            }
            if labels is not None:
                record["label"] = int(labels[i])
                self._labels.append(int(labels[i]))
            if prediction.pixel_threshold is not None:
                record["boxes"] = [b.as_dict() for b in boxes]
            record["figure"] = None
            if draw[i]:
                rel = f"{OVERLAY_DIR}/{names[i]}.png"
                title = f"{self.title}: {names[i]}" if self.title else names[i]
                if labels is not None:
                    title += " (defective)" if labels[i] else " (good)"
                save_prediction_figure(
                    self.folder / rel,
                    images[i],
                    prediction.maps[i],
                    boxes,
                    score,
                    prediction.threshold,
                    mask=None if masks is None or not np.any(masks[i]) else masks[i],
                    title=title,
                    vmin=vmin,
                    vmax=vmax,
                )
                record["figure"] = rel
            if explanations is not None or self.html:
                self._explain_record(
                    record,
                    names[i],
                    images[i],
                    prediction.maps[i],
                    boxes,
                    None if explanations is None else explanations[i],
                )
            self.records.append(record)
        return self

    def _explain_record(self, record, name, image, anomaly_map, boxes, explanation) -> None:
        """Explanation fields (``verdict, summary, defect_type, agreement, explanation``) and,
        for report.html, the card pictures (``name``, ``assets``)."""
        if explanation is not None:
            top = explanation.top
            record.update(
                verdict=explanation.verdict,
                summary=explanation.summary,
                defect_type=None if top is None else top.defect_type,
                agreement=explanation.agreement,
                explanation=explanation.to_dict(),
            )
        if self.html:
            from anomalens.report_html import write_card_assets

            shown = (
                [f.box for f in explanation.findings]
                if explanation is not None
                else [[b.x0, b.y0, b.x1, b.y1] for b in boxes[:3]]
            )
            record["name"] = name
            record["assets"] = write_card_assets(
                self.folder, name, image, shown, anomaly_map, *color_range(self.pixel_threshold)
            )

    @property
    def scores(self) -> np.ndarray:
        return np.array([r["score"] for r in self.records], dtype=np.float64)

    def finish(
        self, metrics: Mapping[str, float] | None = None, extra: Mapping[str, Any] | None = None
    ) -> dict[str, Any]:
        """Write the tables, plots and ``summary.json``; return the summary.

        With labels, ``metrics`` defaults to the image-level metrics of
        :func:`anomalens.metrics.compute_all` (pass the full dict to include pixel metrics).
        """
        labels = np.array(self._labels, dtype=np.int64) if self._labels else None
        scores = self.scores
        self._write_csv(labels is not None)
        write_json(
            self.folder / SCORES_JSON,
            {
                "threshold": self.threshold,
                "pixel_threshold": self.pixel_threshold,
                "images": self.records,
            },
        )
        files = {
            "scores_csv": SCORES_CSV,
            "scores_json": SCORES_JSON,
            "overlays": OVERLAY_DIR if any(r["figure"] for r in self.records) else None,
        }
        if labels is not None and len(labels):
            if metrics is None:
                metrics = compute_all(labels, scores)
            title = self.title or "image scores"
            save_roc_curve(self.folder / ROC_PNG, labels, scores, title=f"{title}: ROC")
            save_score_histogram(
                self.folder / HISTOGRAM_PNG, labels, scores, self.threshold, title=title
            )
            files.update(roc=ROC_PNG, histogram=HISTOGRAM_PNG)
        if self.html:
            files["report_html"] = "report.html"
        verdicts = [r["is_defective"] for r in self.records]
        summary: dict[str, Any] = {
            "title": self.title,
            "n_images": len(self.records),
            "n_defective": None if None in verdicts else int(sum(verdicts)),
            "threshold": self.threshold,
            "pixel_threshold": self.pixel_threshold,
        }
        if labels is not None:
            summary["n_labelled_defective"] = int(labels.sum())
            summary["metrics"] = dict(metrics or {})
        summary["files"] = files
        if extra:
            summary.update(extra)
        write_json(self.folder / SUMMARY_JSON, summary)
        if self.html:
            from anomalens.report_html import write_html_report

            write_html_report(self.folder, self.records, jsonable(summary), self.title)
        logger.debug(
            "wrote the report of %d images to %s (%s)",
            len(self.records),
            self.folder,
            ", ".join(v for v in files.values() if v),
        )
        return jsonable(summary)

    def _write_csv(self, with_labels: bool) -> None:
        columns = ["path", "score", "threshold", "is_defective"]
        if with_labels:
            columns.append("label")
        explained = [c for c in EXPLANATION_COLUMNS if any(c in r for r in self.records)]
        rows: list[list[Any]] = [columns + explained]
        for r in self.records:
            row = [
                r["path"],
                repr(r["score"]),
                _fmt_optional(r["threshold"]),
                _fmt_optional(r["is_defective"]),
            ]
            row += [r["label"]] if with_labels else []
            rows.append(row + [_fmt_text(r.get(c)) for c in explained])
        write_csv(self.folder / SCORES_CSV, rows)


def write_report(
    folder: str | os.PathLike,
    paths: Sequence[str | os.PathLike],
    images: Sequence[np.ndarray],
    prediction: Prediction,
    labels: Sequence[int] | None = None,
    masks: Sequence[np.ndarray] | None = None,
    title: str | None = None,
    figures: bool | Sequence[bool] = True,
    metrics: Mapping[str, float] | None = None,
    extra: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Write a complete report folder for one batch of predictions; return the summary.

    See the module docstring for the files. ``figures`` selects the images that get a figure;
    with ``labels`` and no ``metrics``, the metrics are computed with
    :func:`~anomalens.metrics.compute_all` (pixel metrics too when ``masks`` are given).
    """
    if labels is not None and metrics is None:
        pixel = masks is not None and any(np.any(m) for m in masks)
        metrics = compute_all(
            labels,
            prediction.scores,
            list(masks) if pixel else None,
            list(prediction.maps) if pixel else None,
        )
    writer = ReportWriter(folder, title)
    writer.add(paths, images, prediction, labels=labels, masks=masks, figures=figures)
    return writer.finish(metrics=metrics, extra=extra)
