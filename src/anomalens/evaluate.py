"""Benchmarks: fit a detector per category, predict the test split, compute metrics, write files.

The Python API behind ``anomalens benchmark`` (and ``anomalens demo``)::

    from anomalens.evaluate import run_benchmark, format_table
    result = run_benchmark("mvtec", "/data/mvtec_ad", ["screw"], options={"shots": 8},
                           output="runs/screw")
    print(format_table(result.rows()))

Timing: ``fit_seconds`` is the wall time of ``detector.fit`` on images already in memory
(feature extraction, coreset, calibration; the backbone weights are loaded before the clock
starts) and ``ms_per_image`` is the wall time of ``detector.predict`` on the in-memory test
images divided by their number. Reading files from disk is never timed.

Output folder of :func:`run_benchmark`: ``results.json`` (see :func:`results_dict`),
``predictions.csv`` (``category, path, label, score``) and per category the report folder of
:mod:`anomalens.report` (``roc.png``, ``histogram.png``, ``scores.csv``, ``summary.json`` and
``overlays/`` figures of the first ``save_maps`` test images). The run writes into a staging
folder beside ``OUT`` (both files rewritten after every category) that replaces ``OUT`` only
when every category is done; a failed or interrupted run leaves ``OUT`` as it was and its
finished categories in ``OUT.partial`` (see :mod:`anomalens.atomic`).

Progress goes to the ``logging`` logger ``anomalens.evaluate`` (INFO: one line when a category
starts and one when it ends; DEBUG: categories, resolved config, file writes); the ``anomalens``
command shows INFO by default, ``-q`` hides it and ``-v`` adds DEBUG.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
import math
import os
import platform
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from anomalens.atomic import check_output_path, staged_folder
from anomalens.backbones.registry import parse_spec
from anomalens.data.datasets import build_dataset, resolve_categories
from anomalens.data.sample import Sample
from anomalens.data.transforms import spread_indices
from anomalens.errors import CheckpointError, DatasetError, OverlapError, UntrainedError
from anomalens.methods import METHODS, create_detector
from anomalens.methods.base import (
    Detector,
    checkpoint_method,
    config_to_dict,
    load_detector,
)
from anomalens.metrics import compute_all
from anomalens.report import ReportWriter, write_csv, write_json
from anomalens.runtime import cpu_isa

__all__ = [
    "METRIC_KEYS",
    "RESULT_KEYS",
    "BenchmarkResult",
    "CategoryResult",
    "build_detector",
    "check_options",
    "environment",
    "evaluate_category",
    "evaluate_detector",
    "format_table",
    "load_samples",
    "load_split",
    "mean_row",
    "resolve_categories",
    "results_dict",
    "run_benchmark",
    "write_results",
]

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

logger = logging.getLogger(__name__)


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


def _check_overlap(
    checkpoint: Any, dataset: str, root: Any, cats: Sequence[str], allow: bool
) -> dict[str, str]:
    """``{category: reason}`` of train/test overlap of a checkpoint; OverlapError unless
    ``allow`` (then one warning per category)."""
    if checkpoint is None:
        return {}
    from anomalens.overlap import checkpoint_overlap

    found = checkpoint_overlap(checkpoint, dataset, root, cats)
    if found and not allow:
        reasons = "; ".join(found.values())
        raise OverlapError(
            f"{checkpoint}: refusing to evaluate the checkpoint on images it was trained on "
            f"({reasons}); evaluate on another dataset, or pass --allow-overlap "
            "(allow_overlap=True) to mark the results as overlapping"
        )
    for category, reason in found.items():
        logger.warning("%s: %s; results are marked overlap", category, reason)
    return found


def is_benchmark_folder(folder: str | os.PathLike) -> bool:
    """True when ``folder`` holds a ``results.json`` (an earlier benchmark run)."""
    return (Path(folder) / RESULTS_JSON).is_file()


# --------------------------------------------------------------------------------------------
# building blocks
# --------------------------------------------------------------------------------------------


def check_options(method: str, options: Mapping[str, Any]) -> None:
    """Fail fast (before loading data or weights) on an unknown method, option or backbone."""
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; choose from {', '.join(sorted(METHODS))}")
    options = dict(options)
    checkpoint = options.pop("checkpoint", None)
    if checkpoint is not None:
        _check_checkpoint(method, checkpoint, options)
        return
    if METHODS[method].requires_checkpoint:
        from anomalens.methods.aaclip import UNTRAINED_MESSAGE

        raise UntrainedError(UNTRAINED_MESSAGE)
    create_detector(method, **options)  # unknown options and invalid values raise here
    if options.get("backbone") is not None:
        parse_spec(options["backbone"])  # raises ModelNotAvailableError for unknown specs


def _check_checkpoint(method: str, checkpoint: Any, options: Mapping[str, Any]) -> None:
    """A checkpoint folder of ``method`` with no option overriding what it fixes."""
    saved = checkpoint_method(checkpoint)
    if saved != method:
        raise CheckpointError(f"{checkpoint}: a {saved!r} checkpoint, not {method!r}")
    given = {k: v for k, v in options.items() if v is not None}
    if given:
        raise ValueError(
            f"options {sorted(given)} cannot be combined with a checkpoint: the model's "
            f"settings come from {checkpoint}"
        )


def build_detector(method: str, category: str | None = None, **options: Any) -> Detector:
    """A new detector; ``None`` options keep the method's defaults.

    When the method's config has a ``class_name`` field (zero-shot prompts), it is set to the
    category with underscores replaced by spaces unless given. ``checkpoint=DIR`` starts from a
    saved model of ``method`` (e.g. trained AA-CLIP adapters) instead of a new one; other options
    are then refused, since the checkpoint fixes them. The backbone is built right away
    when the detector exposes one, so an unknown or unavailable backbone fails before any data
    is loaded (and backbone loading is not part of ``fit_seconds``).
    """
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; choose from {', '.join(sorted(METHODS))}")
    given = {k: v for k, v in options.items() if v is not None}
    checkpoint = given.pop("checkpoint", None)
    fields = {f.name for f in dataclasses.fields(METHODS[method].config_class)}
    if "class_name" in fields and "class_name" not in given and category:
        given["class_name"] = category.replace("_", " ")
    if checkpoint is not None:
        _check_checkpoint(method, checkpoint, {k: v for k, v in given.items() if k != "class_name"})
        detector = load_detector(checkpoint)
        if "class_name" in given:
            detector.config = dataclasses.replace(detector.config, class_name=given["class_name"])
    else:
        detector = create_detector(method, **given)
    _ = detector.backbone  # build it now (raises ModelNotAvailableError)
    return detector


@dataclass
class LoadedSplit:
    """One split in memory: samples, whether every defective image has a mask, the unreadable
    images skipped (``skip_bad``) and the entries ignored as not images (FIFOs, ``.webp`` ...),
    both as ``(path, reason)``."""

    samples: list[Sample]
    has_masks: bool
    skipped: list[tuple[str, str]]
    ignored: list[tuple[str, str]]


def load_split(
    dataset: str,
    root: str | os.PathLike,
    category: str,
    split: str,
    skip_bad: bool = False,
    progress: bool = True,
) -> LoadedSplit:
    """Load one split with a progress bar (see :class:`LoadedSplit`)."""
    ds = build_dataset(dataset, root, category, split, skip_bad=skip_bad)
    samples = ds.load_all(progress=progress)
    if not samples:
        raise DatasetError(f"{root}: no readable {split} images for category {category!r}")
    return LoadedSplit(samples, ds.has_masks, list(ds.skipped), list(ds.ignored))


def load_samples(
    dataset: str,
    root: str | os.PathLike,
    category: str,
    split: str,
    skip_bad: bool = False,
    progress: bool = True,
) -> tuple[list[Sample], bool, list[tuple[str, str]]]:
    """``(samples, has_masks, skipped)`` of one split, loaded with a progress bar."""
    loaded = load_split(dataset, root, category, split, skip_bad, progress)
    return loaded.samples, loaded.has_masks, loaded.skipped


def evaluate_detector(
    detector: Detector,
    train: Sequence[Sample],
    test: Sequence[Sample],
    category: str,
    has_masks: bool = True,
    report_dir: str | os.PathLike | None = None,
    figures: int | Sequence[int] = 0,
    progress: bool = True,
    explain: str | None = None,
) -> CategoryResult:
    """Fit on ``train`` images, predict ``test``, compute metrics (and write a report folder).

    Pixel metrics are computed when ``has_masks`` and at least one test mask is non-empty.
    ``figures``: the number of first test images, or the indices of the test images, that get
    a prediction figure in ``report_dir/overlays``.
    """
    images = [s.image for s in train]
    start = time.perf_counter()
    detector.fit(images, progress=progress)
    fit_seconds = time.perf_counter() - start
    del images

    test_images = [s.image for s in test]
    start = time.perf_counter()
    prediction = detector.predict(test_images, progress=progress)
    predict_seconds = time.perf_counter() - start

    labels = [int(s.label) for s in test]
    masks = [s.mask for s in test]
    pixel = has_masks and any(m.any() for m in masks)
    metrics = compute_all(
        labels, prediction.scores, masks if pixel else None, prediction.maps if pixel else None
    )
    paths = [s.path for s in test]
    if report_dir is not None:
        chosen = set(range(min(figures, len(test)))) if isinstance(figures, int) else set(figures)
        explainer = None
        if explain is not None:  # explanations and report.html (not timed)
            from anomalens.explain import build_explainer

            explainer = build_explainer(explain, detector=detector)
        writer = ReportWriter(report_dir, category, explainer, html=explainer is not None)
        writer.add(
            paths,
            test_images,
            prediction,
            labels=labels,
            masks=masks if has_masks else None,
            figures=[i in chosen for i in range(len(test))],
        )
        writer.finish(metrics=metrics, extra={"category": category})
    return CategoryResult(
        category=category,
        **{k: float(metrics[k]) for k in METRIC_KEYS},
        fit_seconds=fit_seconds,
        ms_per_image=1000.0 * predict_seconds / len(test),
        n_train=_images_used(detector, len(train)),
        n_test=len(test),
        paths=paths,
        labels=labels,
        scores=[float(s) for s in prediction.scores],
        threshold=prediction.threshold,
        pixel_threshold=prediction.pixel_threshold,
        config=config_to_dict(detector.config),
    )


def _images_used(detector: Detector, n_available: int) -> int:
    """How many training images the detector uses: ``min(shots, n)`` when it has ``shots``."""
    shots = detector.config.shots
    return n_available if shots is None else min(int(shots), n_available)


def evaluate_category(
    dataset: str,
    root: str | os.PathLike,
    category: str,
    method: str = "patchcore",
    options: Mapping[str, Any] | None = None,
    *,
    skip_bad: bool = False,
    output: str | os.PathLike | None = None,
    save_maps: int = 0,
    spread_maps: bool = False,
    progress: bool = True,
    explain: str | None = None,
) -> CategoryResult:
    """Load one category, fit a new detector on its train split and evaluate its test split.

    ``options`` are detector options (``backbone, image_size, shots, seed, memory_size,
    precision`` ...; None values keep the defaults). With ``output``, the category's report
    goes to ``output/<category>/`` with figures for ``save_maps`` test images (the first ones,
    or spread over the test set with ``spread_maps``).
    """
    detector = build_detector(method, category, **dict(options or {}))
    train, _, skipped_train = load_samples(dataset, root, category, "train", skip_bad, progress)
    test, has_masks, skipped_test = load_samples(
        dataset, root, category, "test", skip_bad, progress
    )
    logger.debug(
        "%s: %d train and %d test images (%d unreadable skipped), masks: %s",
        category,
        len(train),
        len(test),
        len(skipped_train) + len(skipped_test),
        "yes" if has_masks else "no",
    )
    figures = spread_indices(len(test), save_maps) if spread_maps else save_maps
    result = evaluate_detector(
        detector,
        train,
        test,
        category,
        has_masks=has_masks,
        report_dir=None if output is None else Path(output) / category,
        figures=figures,
        progress=progress,
        explain=explain,
    )
    result.skipped = skipped_train + skipped_test
    return result


def run_benchmark(
    dataset: str,
    root: str | os.PathLike,
    categories: Sequence[str] | None = None,
    method: str = "patchcore",
    options: Mapping[str, Any] | None = None,
    *,
    output: str | os.PathLike | None = None,
    skip_bad: bool = False,
    save_maps: int = 0,
    spread_maps: bool = False,
    progress: bool = True,
    allow_overlap: bool = False,
    explain: str | None = None,
) -> BenchmarkResult:
    """Evaluate every category (all found under ``root`` when ``categories`` is None).

    With ``output``, the run writes into a staging folder beside it (``results.json`` and
    ``predictions.csv`` rewritten after each category) that replaces ``output`` when every
    category is done; a failed or interrupted run leaves ``output`` as it was and its finished
    categories in ``output.partial``. An existing non-empty ``output`` that is not a benchmark
    folder is refused. With a ``checkpoint`` option, categories whose test images the
    checkpoint was trained on (:func:`anomalens.overlap.checkpoint_overlap`) raise
    OverlapError before anything runs, unless ``allow_overlap``: they are then evaluated with a
    warning and marked ``overlap``. Logs INFO lines: what runs on which data (once the options
    and categories are checked), and per category one line when it starts and one with its
    image AUROC and timings when it ends.
    """
    args = (dataset, root, categories, method, options)
    kwargs: dict[str, Any] = dict(
        skip_bad=skip_bad,
        save_maps=save_maps,
        spread_maps=spread_maps,
        progress=progress,
        allow_overlap=allow_overlap,
        explain=explain,
    )
    if output is None:
        return _run_benchmark(*args, output=None, **kwargs)
    check_output_path(output)
    partial = Path(f"{os.fspath(output)}{PARTIAL_SUFFIX}")
    try:
        with staged_folder(
            output, replaceable=is_benchmark_folder, keep_on_error=partial, what="benchmark folder"
        ) as folder:
            return _run_benchmark(*args, output=folder, **kwargs)
    except BaseException:
        if partial.is_dir():
            logger.warning(
                "%s is unchanged; the categories this run finished are in %s", output, partial
            )
        raise


def _run_benchmark(
    dataset: str,
    root: str | os.PathLike,
    categories: Sequence[str] | None = None,
    method: str = "patchcore",
    options: Mapping[str, Any] | None = None,
    *,
    output: str | os.PathLike | None = None,
    skip_bad: bool = False,
    save_maps: int = 0,
    spread_maps: bool = False,
    progress: bool = True,
    allow_overlap: bool = False,
    explain: str | None = None,
) -> BenchmarkResult:
    """:func:`run_benchmark` writing straight into ``output`` (a staging folder).

    With ``output``, ``results.json`` and ``predictions.csv`` are rewritten after each
    category. Logs INFO lines: what runs on which data (once the options and categories are
    checked), and per category one line when it starts and one with its image AUROC and timings
    when it ends.
    """
    given = {k: v for k, v in dict(options or {}).items() if v is not None}
    check_options(method, given)
    cats = resolve_categories(dataset, root, categories)
    overlaps = _check_overlap(given.get("checkpoint"), dataset, root, cats, allow_overlap)
    shown = ", ".join(f"{k}={v}" for k, v in given.items()) or "defaults"
    logger.info("benchmark: %s (%s) on %s at %s", method, shown, dataset, root)
    logger.debug("categories: %s", ", ".join(cats))
    result = BenchmarkResult(
        method=method,
        dataset=dataset,
        root=str(root),
        options=given,
        environment=environment(),
    )
    start = time.perf_counter()
    for i, category in enumerate(cats, 1):
        logger.info("[%d/%d] %s", i, len(cats), category)
        cat = evaluate_category(
            dataset,
            root,
            category,
            method,
            given,
            skip_bad=skip_bad,
            output=output,
            save_maps=save_maps,
            spread_maps=spread_maps,
            progress=progress,
            explain=explain,
        )
        cat.overlap = overlaps.get(category)
        result.categories.append(cat)
        result.seconds = time.perf_counter() - start
        if output is not None:
            json_path, csv_path = write_results(output, result)
            logger.debug("updated %s and %s", json_path, csv_path)
        logger.info(
            "[%d/%d] %s: image AUROC %.3f, fit %.1f s, %.1f ms/image%s",
            i,
            len(cats),
            category,
            cat.image_auroc,
            cat.fit_seconds,
            cat.ms_per_image,
            f", skipped {len(cat.skipped)} unreadable" if cat.skipped else "",
        )
    return result
