"""``run_diagnose``: encoder tests and question tests in one call (``anomalens diagnose``)."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from anomalens.diagnose.answerers import Answerer, DetectorAnswerer, VLMAnswerer, scripted
from anomalens.diagnose.encoder import (
    AACLIPSource,
    BackboneSource,
    EncoderConfig,
    collect,
    default_layer_sets,
    encoder_tests,
    parse_layer_sets,
    scatter_points,
    text_tests,
)
from anomalens.diagnose.questions import (
    Question,
    generate_questions,
    load_mmad,
    questions_from_mmad,
)
from anomalens.diagnose.scoring import MMAD_REFERENCE, MMAD_SOURCE, Record, mmad_table, seed_tests
from anomalens.errors import DatasetError, ModelNotAvailableError

__all__ = ["answer_all", "run_diagnose", "sample_split"]

logger = logging.getLogger(__name__)


def sample_split(samples: list[Any], limit: int | None, seed: int) -> list[Any]:
    """At most ``limit`` samples, drawn with ``seed`` keeping the good / defective proportions
    (order kept)."""
    if limit is None or len(samples) <= limit:
        return samples
    rng = np.random.default_rng(seed)
    labels = np.array([s.label for s in samples])
    keep: list[int] = []
    for value in (0, 1):
        idx = np.flatnonzero(labels == value)
        n = max(1, round(limit * len(idx) / len(samples))) if len(idx) else 0
        keep += list(rng.choice(idx, min(n, len(idx)), replace=False))
    return [samples[i] for i in sorted(keep)]


def answer_all(
    answerer: Answerer, questions: Sequence[Question], progress: bool = False
) -> dict[str, Any]:
    """Ask every question; MMAD table, seed tests, records and seconds of one answerer."""
    start = time.perf_counter()
    records = [
        Record.of(q, answerer.answer(q))
        for q in tqdm(questions, desc=f"ask {answerer.name}", unit="q", disable=not progress)
    ]
    seconds = time.perf_counter() - start
    return {
        "answerer": answerer.name,
        "mmad": mmad_table(records),
        **seed_tests(records),
        "seconds": seconds,
        "seconds_per_question": seconds / max(1, len(questions)),
        "records": [r.to_dict() for r in records],
    }


def _encoder_sources(backbones, checkpoint, layers, image_size, precision):
    from anomalens.backbones.registry import load_backbone

    sources = []
    for spec in backbones:
        bb = load_backbone(spec, image_size=image_size, precision=precision)
        sets = parse_layer_sets(layers, bb) if layers else default_layer_sets(bb)
        sources.append(BackboneSource(bb, sets, spec))
    if checkpoint is not None:
        from anomalens.methods.base import load_detector

        det = load_detector(checkpoint)
        if det.method != "aaclip":
            raise ValueError(
                f"{checkpoint}: --checkpoint expects an AA-CLIP checkpoint, got {det.method}"
            )
        before = det.backbone
        sets = parse_layer_sets(layers, before) if layers else default_layer_sets(before)
        sources.append(BackboneSource(before, sets, f"{before.name} (before AA-CLIP)"))
        sources.append(AACLIPSource(det, f"{before.name} (after AA-CLIP, {Path(checkpoint).name})"))
    return sources


def run_diagnose(
    output: str | os.PathLike,
    *,
    backbones: Sequence[str] = (),
    checkpoint: str | os.PathLike | None = None,
    vlms: Sequence[str] = (),
    answerers: Sequence[str] = (),
    detector: str | None = None,
    detector_options: dict[str, Any] | None = None,
    dataset: str | None = None,
    root: str | os.PathLike | None = None,
    category: str | None = None,
    mmad: str | os.PathLike | None = None,
    mmad_root: str | os.PathLike | None = None,
    layers: str | None = None,
    image_size: int | None = None,
    precision: str = "auto",
    max_images: int | None = None,
    state_words: Sequence[str] = (),
    prompts: Sequence[str] = ("winclip",),
    seed: int = 0,
    normal_patches: str = "foreground",
    skip_bad: bool = False,
    figures: bool = True,
    progress: bool = True,
    encoder_config: EncoderConfig | None = None,
    generators: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Run the diagnostics and write ``OUT/diagnostic_results.json``, ``OUT/diagnostics.md``
    and figures; return the results dict.

    Encoder tests (``backbones``, ``checkpoint``) need a dataset with masks; question tests
    (``vlms``, scripted ``answerers``, ``detector``) run on questions generated from the
    dataset, or on ``mmad`` (an ``mmad.json`` with images under ``mmad_root``). ``max_images``
    subsamples the test split with ``seed`` (good / defective proportions kept);
    ``normal_patches``: ``foreground`` or ``all`` (see :class:`EncoderConfig`).
    ``generators`` maps VLM specs to ready :class:`TextGenerator` objects (tests; otherwise
    they are loaded through :mod:`anomalens.explain`).
    """
    from anomalens.diagnose.write import write_outputs
    from anomalens.evaluate import environment

    start = time.perf_counter()
    cfg = encoder_config or EncoderConfig(seed=seed, normal_patches=normal_patches)
    asks = bool(vlms or answerers or detector)
    if not (backbones or checkpoint or asks):
        raise ValueError(
            "nothing to diagnose: give --backbone, --checkpoint, --vlm, --answerer or --detector"
        )
    if (backbones or checkpoint or detector) and dataset is None:
        raise ValueError("encoder tests and --detector need --dataset/--root (images with masks)")
    if mmad is not None and mmad_root is None:
        mmad_root = Path(mmad).parent
    if asks and dataset is None and mmad is None:
        raise ValueError("question tests need --dataset/--root or --mmad")
    gens = dict(generators or {})
    for spec in vlms:  # fail fast, before any data is read
        if spec not in gens:
            from anomalens.diagnose.adapters import load_generator

            gens[spec] = load_generator(spec)
    results: dict[str, Any] = {
        "data": {},
        "encoders": {},
        "encoder_figures": {},
        "questions": {},
        "reference": {"source": MMAD_SOURCE, "models": MMAD_REFERENCE},
        "random_weights": [],
    }
    test_samples: list[Any] = []
    train_ds = None
    if dataset is not None:
        from anomalens.data.datasets import resolve_one_category

        category = resolve_one_category(dataset, Path(root), category)
        from anomalens.data.datasets import build_dataset

        test_ds = build_dataset(dataset, root, category, "test", skip_bad=skip_bad)
        train_ds = build_dataset(dataset, root, category, "train", skip_bad=skip_bad)
        all_test = test_ds.load_all(progress=progress)
        test_samples = sample_split(all_test, max_images, seed)
        if not any(s.label for s in test_samples):
            raise DatasetError(f"{root}: no defective test images in {category!r}")
        results["data"] = {
            "dataset": dataset,
            "root": str(root),
            "category": category,
            "n_test_available": len(all_test),
            "n_test": len(test_samples),
            "n_defective": sum(s.label for s in test_samples),
            "subsampled": len(test_samples) < len(all_test),
            "seed": seed,
            "n_train": len(train_ds),
        }

    # --- encoder tests ------------------------------------------------------------------
    sources = _encoder_sources(backbones, checkpoint, layers, image_size, precision)
    if sources:
        mem_idx = np.sort(
            np.random.default_rng(seed).choice(
                len(train_ds), min(cfg.memory_images, len(train_ds)), replace=False
            )
        )
        memory = [train_ds[int(i)].image for i in mem_idx]
        results["data"]["memory_images"] = len(memory)
        results["data"]["normal_patches"] = cfg.normal_patches
        for source in sources:
            t0 = time.perf_counter()
            data = collect(source, test_samples, memory, cfg, progress)
            entry = {
                "kind": source.kind,
                "sets": encoder_tests(data, cfg),
                "text": text_tests(source, data, category, prompts, state_words),
                "seconds": None,
            }
            entry["seconds"] = time.perf_counter() - t0
            results["encoders"][source.name] = entry
            if _random_weights(source):
                results["random_weights"].append(source.name)
            if figures:
                first = next(iter(data.patches))
                results["encoder_figures"][source.name] = {
                    "set": first,
                    "points": scatter_points(data, first, cfg),
                }

    # --- question tests -----------------------------------------------------------------
    if asks:
        if mmad is not None:
            data_dict = load_mmad(mmad)
            q_root = Path(mmad_root)
            results["data"]["mmad"] = str(mmad)
        else:
            data_dict = generate_questions(
                dataset, root, category, seed=seed, max_images=max_images, skip_bad=skip_bad
            )
            q_root = Path(root)
        questions = questions_from_mmad(data_dict, q_root)
        results["data"]["n_questions"] = len(questions)
        runners: list[Answerer] = [scripted(a) for a in answerers]
        if detector is not None:
            runners.append(
                _detector_answerer(
                    detector,
                    detector_options or {},
                    dataset,
                    root,
                    category,
                    train_ds,
                    test_samples,
                    progress,
                )
            )
        for spec in vlms:
            runners.append(VLMAnswerer(gens[spec], spec))
        for runner in runners:
            results["questions"][runner.name] = answer_all(runner, questions, progress)
    results["seconds"] = time.perf_counter() - start
    results["environment"] = environment()
    write_outputs(Path(output), results, figures=figures)
    return results


def _random_weights(source: Any) -> bool:
    """True for transformers models built from a config (no pretrained weights): the tiny
    test models of :mod:`anomalens.testing` (a heuristic on the folder's config name_or_path)."""
    bb = getattr(source, "backbone", None) or getattr(
        getattr(source, "detector", None), "backbone", None
    )
    model = getattr(bb, "model", None)
    cfg = getattr(model, "config", None)
    if cfg is None:
        return False
    vision = getattr(cfg, "vision_config", cfg)
    return int(getattr(vision, "hidden_size", 1024)) <= 64


def _detector_answerer(method, options, dataset, root, category, train_ds, test_samples, progress):
    from anomalens.evaluate import build_detector

    det = build_detector(method, category, **options)
    det.fit([s.image for s in train_ds.load_all(progress=progress)], progress=progress)
    namer = None
    bad = [s for s in test_samples if s.label == 1]
    try:
        from anomalens.diagnose.adapters import GroundedTypeNamer

        namer = GroundedTypeNamer(
            [s.image for s in bad],
            [s.mask for s in bad],
            [s.defect_type for s in bad],
            [s.path for s in bad],
        )
    except ModelNotAvailableError as exc:  # the explain package is optional
        logger.warning("%s; the detector answers type questions with A", exc)
    return DetectorAnswerer(det, namer, name=f"detector:{method}")
