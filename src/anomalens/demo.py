"""The offline demo: synthetic defects on scikit-image textures, PatchCore, a report folder.

``anomalens demo`` (or :func:`run_demo`) writes an MVTec-AD-layout dataset built by
:func:`anomalens.data.synthetic.make_demo_dataset` into ``<output>/data``, fits the default
detector per category on the good training images, predicts the test images and writes the
benchmark report into ``<output>/report``; :func:`format_summary` is the metric table and the
guide to the report files that ``anomalens demo`` prints. With ``root`` it runs on the user's
own MVTec-layout data instead and writes no synthetic data. No network is needed. Progress
lines go to the ``logging`` loggers ``anomalens.demo`` and ``anomalens.evaluate`` (INFO).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from anomalens.data.synthetic import DEMO_TEXTURES, make_demo_dataset
from anomalens.evaluate import BenchmarkResult, format_table, run_benchmark

__all__ = ["DEFAULT_OUTPUT", "format_summary", "run_demo"]

logger = logging.getLogger(__name__)

#: Default output folder (git-ignored in this repository).
DEFAULT_OUTPUT = "anomalens_demo"
#: Figures per category when running on the user's data (spread over the test set).
USER_DATA_FIGURES = 16


def run_demo(
    output: str | os.PathLike = DEFAULT_OUTPUT,
    root: str | os.PathLike | None = None,
    categories: Sequence[str] | None = None,
    options: Mapping[str, Any] | None = None,
    *,
    method: str = "patchcore",
    textures: Sequence[str] = DEMO_TEXTURES,
    n_train: int = 20,
    n_test_good: int = 8,
    n_test_bad: int = 12,
    size: int = 256,
    save_maps: int | None = None,
    progress: bool = True,
) -> BenchmarkResult:
    """Run the demo and return its :class:`~anomalens.evaluate.BenchmarkResult`.

    Synthetic mode (``root`` None): ``textures`` become categories with ``n_train`` good
    training images and ``n_test_good`` + ``n_test_bad`` test images of ``size`` pixels; every
    test image gets a figure unless ``save_maps`` says how many. With ``root`` (MVTec AD layout)
    ``categories`` selects categories (all when None) and ``save_maps`` defaults to
    :data:`USER_DATA_FIGURES` figures spread over each test set. The report goes to
    ``output/report``; ``format_summary(result, output)`` describes it.
    """
    out = Path(output)
    report = out / "report"
    if root is None:
        if categories:
            raise ValueError("categories can only be chosen together with root (your own data)")
        data = out / "data"
        logger.info("Writing the synthetic demo dataset (%s) to %s", ", ".join(textures), data)
        cats = make_demo_dataset(
            data,
            n_train=n_train,
            n_test_good=n_test_good,
            n_test_bad=n_test_bad,
            size=size,
            textures=textures,
        )
        figures = n_test_good + n_test_bad if save_maps is None else save_maps
        dataset_root: str | os.PathLike = data
    else:
        cats = list(categories) if categories else None
        figures = USER_DATA_FIGURES if save_maps is None else save_maps
        dataset_root = root
    result = run_benchmark(
        "mvtec",
        dataset_root,
        cats,
        method,
        options,
        output=report,
        save_maps=figures,
        spread_maps=True,
        progress=progress,
    )
    return result


def format_summary(result: BenchmarkResult, output: str | os.PathLike = DEFAULT_OUTPUT) -> str:
    """The metric table of a :func:`run_demo` result and where its report files are
    (``output`` as given to :func:`run_demo`)."""
    report = Path(output) / "report"
    first = result.categories[0].category if result.categories else "<category>"
    lines = [
        format_table(result.rows()),
        "",
        f"Report: {report.resolve()}",
        "  results.json, predictions.csv   metrics and image scores of every category",
        f"  {first}/overlays/*.png   image, heatmap with hotspot boxes, verdict",
        f"  {first}/roc.png, {first}/histogram.png, {first}/summary.json",
    ]
    return "\n".join(lines)
