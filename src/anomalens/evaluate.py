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

import contextlib
import dataclasses
import logging
import os
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

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
from anomalens.report import ReportWriter
from anomalens.results import (  # re-exported: the results of a run
    METRIC_KEYS,
    PARTIAL_SUFFIX,
    RESULT_KEYS,
    BenchmarkResult,
    CategoryResult,
    environment,
    format_table,
    is_benchmark_folder,
    mean_row,
    results_dict,
    write_results,
)

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

logger = logging.getLogger(__name__)


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


@contextlib.contextmanager
def _benchmark_folder(output: str | os.PathLike | None) -> Iterator[Path | None]:
    """The staging folder a benchmark writes into (None without ``output``), swapped in for
    ``output`` when the block ends; on failure ``output`` is unchanged and the finished
    categories are kept in ``output.partial``."""
    if output is None:
        yield None
        return
    partial = Path(f"{os.fspath(output)}{PARTIAL_SUFFIX}")
    try:
        with staged_folder(
            output, replaceable=is_benchmark_folder, keep_on_error=partial, what="benchmark folder"
        ) as folder:
            yield folder
    except BaseException:
        if partial.is_dir():
            logger.warning(
                "%s is unchanged; the categories this run finished are in %s", output, partial
            )
        raise


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
    if output is not None:
        check_output_path(output)
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
    with _benchmark_folder(output) as folder:
        for i, category in enumerate(cats, 1):
            logger.info("[%d/%d] %s", i, len(cats), category)
            cat = evaluate_category(
                dataset,
                root,
                category,
                method,
                given,
                skip_bad=skip_bad,
                output=folder,
                save_maps=save_maps,
                spread_maps=spread_maps,
                progress=progress,
                explain=explain,
            )
            cat.overlap = overlaps.get(category)
            result.categories.append(cat)
            result.seconds = time.perf_counter() - start
            if folder is not None:
                json_path, csv_path = write_results(folder, result)
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
