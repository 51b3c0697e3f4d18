"""Benchmark results: per-category and run records, the printed table, ``results.json`` and
``predictions.csv`` (written atomically), and the machine the numbers came from."""

from __future__ import annotations

import datetime as dt
import math
import os
import platform
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from anomalens.report import write_csv, write_json
from anomalens.runtime import cpu_isa

#: Metrics of :func:`anomalens.metrics.compute_all`, in table order.
METRIC_KEYS = ("image_auroc", "pixel_auroc", "pixel_ap", "aupro", "f1_max")
#: Keys of every category in ``results.json``.
RESULT_KEYS = (*METRIC_KEYS, "fit_seconds", "ms_per_image", "n_train", "n_test")
#: Keys averaged in the MEAN row (NaN ignored).
MEAN_KEYS = (*METRIC_KEYS, "fit_seconds", "ms_per_image")
PREDICTIONS_COLUMNS = ("category", "path", "label", "score")
RESULTS_JSON = "results.json"
PREDICTIONS_CSV = "predictions.csv"
#: A failed or interrupted benchmark leaves ``OUT`` unchanged and its finished categories in
#: ``OUT.partial``.
PARTIAL_SUFFIX = ".partial"

# (header, key, format) of the printed table
_TABLE_COLUMNS = (
    ("I-AUROC", "image_auroc", "{:.3f}"),
    ("P-AUROC", "pixel_auroc", "{:.3f}"),
    ("P-AP", "pixel_ap", "{:.3f}"),
    ("AUPRO", "aupro", "{:.3f}"),
    ("F1-max", "f1_max", "{:.3f}"),
    ("fit s", "fit_seconds", "{:.1f}"),
    ("ms/image", "ms_per_image", "{:.1f}"),
)


# --------------------------------------------------------------------------------------------
# results
# --------------------------------------------------------------------------------------------


@dataclass
class CategoryResult:
    """Metrics, timings and per-image scores of one category.

    Metrics are NaN when undefined (pixel metrics without ground-truth masks, or a test split
    with a single class).
    """

    category: str
    image_auroc: float
    pixel_auroc: float
    pixel_ap: float
    aupro: float
    f1_max: float
    fit_seconds: float
    ms_per_image: float
    n_train: int
    n_test: int
    paths: list[str] = field(default_factory=list, repr=False)
    labels: list[int] = field(default_factory=list, repr=False)
    scores: list[float] = field(default_factory=list, repr=False)
    threshold: float | None = None
    pixel_threshold: float | None = None
    skipped: list[tuple[str, str]] = field(default_factory=list, repr=False)
    config: dict[str, Any] = field(default_factory=dict, repr=False)
    #: why the test images overlap the checkpoint's training images (None: no overlap known)
    overlap: str | None = None

    def as_dict(self) -> dict[str, float | int]:
        """The ``results.json`` entry: exactly :data:`RESULT_KEYS`."""
        return {k: getattr(self, k) for k in RESULT_KEYS}

    def details(self) -> dict[str, Any]:
        """Thresholds, skipped files and the resolved detector config."""
        return {
            "threshold": self.threshold,
            "pixel_threshold": self.pixel_threshold,
            "skipped": [{"path": p, "reason": r} for p, r in self.skipped],
            "config": self.config,
            "overlap": self.overlap is not None,
            **({"overlap_reason": self.overlap} if self.overlap else {}),
        }


@dataclass
class BenchmarkResult:
    """All categories of one benchmark run and how it was run."""

    method: str
    dataset: str
    root: str
    options: dict[str, Any]
    categories: list[CategoryResult] = field(default_factory=list)
    environment: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0

    def rows(self) -> dict[str, dict[str, float | int]]:
        """``{category: results.json entry}`` in run order."""
        return {c.category: c.as_dict() for c in self.categories}

    def overlap_categories(self) -> list[str]:
        """Categories evaluated on images the checkpoint was trained on (``--allow-overlap``)."""
        return [c.category for c in self.categories if c.overlap is not None]


def mean_row(rows: Mapping[str, Mapping[str, Any]]) -> dict[str, float]:
    """Mean over categories of :data:`MEAN_KEYS`, ignoring NaN/None (NaN if all are missing)."""
    out: dict[str, float] = {}
    for key in MEAN_KEYS:
        values = [_as_float(r.get(key)) for r in rows.values()]
        finite = [v for v in values if math.isfinite(v)]
        out[key] = float(np.mean(finite)) if finite else float("nan")
    return out


def _as_float(value: Any) -> float:
    return float("nan") if value is None else float(value)


#: Marks a category of the printed table evaluated on its checkpoint's training images.
OVERLAP_MARK = " (OVERLAP)"


def format_table(
    rows: Mapping[str, Mapping[str, Any]], mean: bool = True, overlap: Sequence[str] = ()
) -> str:
    """A plain-text table: one line per category (``rows`` as in ``results.json``) and a MEAN
    line; missing / NaN values are shown as ``-``. Categories in ``overlap`` are marked
    :data:`OVERLAP_MARK` and a last line says what that means."""
    if overlap:
        rows = {f"{c}{OVERLAP_MARK}" if c in overlap else c: r for c, r in rows.items()}
    width = max([len("category"), len("MEAN"), *(len(c) for c in rows)])
    header = f"{'category':<{width}}" + "".join(f"  {h:>8}" for h, _, _ in _TABLE_COLUMNS)

    def line(name: str, row: Mapping[str, Any]) -> str:
        cells = []
        for _, key, fmt in _TABLE_COLUMNS:
            v = _as_float(row.get(key))
            cells.append(f"  {fmt.format(v) if math.isfinite(v) else '-':>8}")
        return f"{name:<{width}}" + "".join(cells)

    lines = [header, "-" * len(header)]
    lines += [line(name, row) for name, row in rows.items()]
    if mean and rows:
        lines += ["-" * len(header), line("MEAN", mean_row(rows))]
    if overlap:
        lines.append(
            f"{OVERLAP_MARK.strip()}: evaluated on images the checkpoint was trained on "
            "(--allow-overlap); these numbers do not measure generalisation"
        )
    return "\n".join(lines)


def environment() -> dict[str, Any]:
    """Where the numbers come from: Python, torch, CPU model and instruction set, cores,
    threads, date."""
    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": np.__version__,
        "platform": platform.platform(),
        "cpu": _cpu_model(),
        "cpu_isa": cpu_isa(),
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "date": dt.datetime.now(dt.timezone.utc).astimezone().isoformat(timespec="seconds"),
    }


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def results_dict(result: BenchmarkResult) -> dict[str, Any]:
    """The content of ``results.json``.

    ``{"method", "dataset", "root", "options" (as given), "config" (resolved, first category),
    "environment", "seconds", "categories": {cat: {RESULT_KEYS}}, "mean": {MEAN_KEYS,
    "n_categories"}, "overlap" (true when a category was evaluated on the checkpoint's
    training images), "details": {cat: {threshold, pixel_threshold, skipped, config, overlap,
    overlap_reason}}}``.
    """
    rows = result.rows()
    return {
        "method": result.method,
        "dataset": result.dataset,
        "root": result.root,
        "options": result.options,
        "config": result.categories[0].config if result.categories else {},
        "environment": result.environment,
        "seconds": result.seconds,
        "categories": rows,
        "mean": {**mean_row(rows), "n_categories": len(rows)},
        "overlap": bool(result.overlap_categories()),
        "details": {c.category: c.details() for c in result.categories},
    }


def write_results(output: str | os.PathLike, result: BenchmarkResult) -> tuple[Path, Path]:
    """Write ``results.json`` and ``predictions.csv`` into ``output``; return both paths."""
    out = Path(output)
    json_path = write_json(out / RESULTS_JSON, results_dict(result))
    rows: list[list[Any]] = [list(PREDICTIONS_COLUMNS)]
    for c in result.categories:
        for path, label, score in zip(c.paths, c.labels, c.scores, strict=True):
            rows.append([c.category, path, int(label), repr(float(score))])
    csv_path = write_csv(out / PREDICTIONS_CSV, rows)
    return json_path, csv_path


def is_benchmark_folder(folder: str | os.PathLike) -> bool:
    """True when ``folder`` holds a ``results.json`` (an earlier benchmark run)."""
    return (Path(folder) / RESULTS_JSON).is_file()
