"""The offline demo: synthetic defects on scikit-image textures, PatchCore, a report folder.

``anomalens demo`` (or :func:`run_demo`) writes an MVTec-AD-layout dataset built by
:func:`anomalens.data.synthetic.make_demo_dataset` into ``<output>/data``, fits the default
detector per category on the good training images, predicts the test images, prints the metric
table and writes the benchmark report into ``<output>/report``. With ``root`` it runs on the
user's own MVTec-layout data instead and writes no synthetic data. No network is needed.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from anomalens.data.synthetic import DEMO_TEXTURES, make_demo_dataset
from anomalens.evaluate import BenchmarkResult, Echo, format_table, run_benchmark

__all__ = ["DEFAULT_OUTPUT", "run_demo"]

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
    echo: Echo = print,
) -> BenchmarkResult:
    """Run the demo and return its :class:`~anomalens.evaluate.BenchmarkResult`.

    Synthetic mode (``root`` None): ``textures`` become categories with ``n_train`` good
    training images and ``n_test_good`` + ``n_test_bad`` test images of ``size`` pixels; every
    test image gets a figure unless ``save_maps`` says how many. With ``root`` (MVTec AD layout)
    ``categories`` selects categories (all when None) and ``save_maps`` defaults to
    :data:`USER_DATA_FIGURES` figures spread over each test set.
    """
    out = Path(output)
    report = out / "report"
    if root is None:
        if categories:
            raise ValueError("categories can only be chosen together with root (your own data)")
        data = out / "data"
        echo(f"Writing the synthetic demo dataset ({', '.join(textures)}) to {data}")
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
        echo=echo,
    )
    echo("")
    echo(format_table(result.rows()))
    echo("")
    first = result.categories[0].category if result.categories else "<category>"
    echo(f"Report: {report.resolve()}")
    echo("  results.json, predictions.csv   metrics and image scores of every category")
    echo(f"  {first}/overlays/*.png   image, heatmap with hotspot boxes, verdict")
    echo(f"  {first}/roc.png, {first}/histogram.png, {first}/summary.json")
    return result
