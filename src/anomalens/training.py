"""Training API: train a trainable method (AA-CLIP / AA-SigLIP) on a dataset folder.

``anomalens train`` is a shell over :func:`train_detector`. This module reads the dataset (the
methods never open files) and hands samples to the method's trainer.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import cv2
from tqdm import tqdm

from anomalens import distributed
from anomalens.data.datasets import build_dataset, resolve_categories
from anomalens.data.sample import Sample
from anomalens.methods.aaclip import (
    AACLIP,
    TRAINING_MODES,
    AACLIPConfig,
    TrainConfig,
    TrainResult,
    train_aaclip,
)
from anomalens.methods.aaclip.train import LAST_DIR, STATE_FILE
from anomalens.methods.base import check_model_folder
from anomalens.overlap import training_record

logger = logging.getLogger(__name__)

#: Methods that train weights before ``fit``.
TRAINABLE_METHODS = ("aaclip", "vfm")
#: Dataset split the training images come from, per data mode (masks need defective images,
#: which MVTec-style datasets hold in their test split: the cross-dataset protocol).
MODE_SPLITS = {"masks": "test", "kshot": "test", "synthetic": "train"}


def load_training_samples(
    dataset: str,
    root: str | os.PathLike,
    categories: Sequence[str] | None,
    mode: str,
    size: int,
    *,
    skip_bad: bool = False,
    progress: bool = True,
) -> list[Sample]:
    """Samples of every category for ``mode``, each image shrunk so its short side is ``size``
    as it is read (so a large dataset fits in memory)."""
    if mode not in MODE_SPLITS:
        raise ValueError(f"mode must be one of {', '.join(TRAINING_MODES)}, got {mode!r}")
    split = MODE_SPLITS[mode]
    out: list[Sample] = []
    for category in resolve_categories(dataset, root, categories):
        ds = build_dataset(dataset, root, category, split, skip_bad=skip_bad)
        for s in tqdm(ds, desc=f"load {category}", unit="img", disable=not progress):
            h, w = s.image.shape[:2]
            if min(h, w) > size:
                scale = size / min(h, w)
                shape = (max(size, round(w * scale)), max(size, round(h * scale)))
                s.image = cv2.resize(s.image, shape, interpolation=cv2.INTER_AREA)
                s.mask = cv2.resize(s.mask, shape, interpolation=cv2.INTER_NEAREST)
            out.append(s)
    return out


def train_detector(
    method: str,
    dataset: str,
    root: str | os.PathLike,
    output: str | os.PathLike,
    *,
    categories: Sequence[str] | None = None,
    mode: str = "synthetic",
    model_options: Mapping[str, Any] | None = None,
    schedule: Mapping[str, Any] | None = None,
    shots: int | None = None,
    val_fraction: float = 0.1,
    defect_kinds: Sequence[str] = ("cutpaste", "perlin"),
    resume: bool = True,
    skip_bad: bool = False,
    progress: bool = True,
    nproc: int = 1,
) -> tuple[AACLIP, TrainResult]:
    """Train ``method`` on ``dataset`` at ``root`` and write the chosen checkpoint to ``output``.

    ``model_options`` are fields of the method's config (e.g. ``backbone``, ``anchors``),
    ``schedule`` fields of :class:`~anomalens.methods.aaclip.TrainConfig`; None values keep the
    defaults. The backbone is loaded before any data is read, so a bad spec fails fast.
    The default ``mode`` (``synthetic``) trains on the train split; ``masks`` and ``kshot``
    train on the TEST split (a warning says so). The checkpoint records what it was trained on
    (:func:`anomalens.overlap.training_record`), so ``benchmark`` refuses to evaluate it on
    the same images.
    Returns the trained detector (not fitted to a category yet) and the training result.

    ``nproc > 1`` trains on that many processes of this machine (:mod:`anomalens.distributed`:
    the same result as one process with the same global batch); under ``torchrun`` the group
    comes from the environment and ``nproc`` stays 1.
    """
    if nproc > 1:
        return _launch(nproc, {k: v for k, v in locals().items() if k != "nproc"})
    if distributed.init_from_env() and not distributed.is_main():
        progress = False  # rank 0 reports progress
        logging.getLogger("anomalens").setLevel(logging.WARNING)
    if method not in TRAINABLE_METHODS:
        raise ValueError(
            f"method {method!r} has nothing to train; trainable: {', '.join(TRAINABLE_METHODS)}"
        )
    check_model_folder(output)  # before any data is read or an epoch is spent
    options = {k: v for k, v in (model_options or {}).items() if v is not None}
    config = TrainConfig(**{k: v for k, v in (schedule or {}).items() if v is not None})
    detector = AACLIP(AACLIPConfig(**options))
    size = detector.backbone.image_size
    samples = load_training_samples(
        dataset, root, categories, mode, size, skip_bad=skip_bad, progress=progress
    )
    split = MODE_SPLITS[mode]
    cats = list(dict.fromkeys(s.category for s in samples))
    if split == "test":
        logger.warning(
            "%s mode trains on the TEST split of %s (%s); evaluate this checkpoint on another "
            "dataset (benchmark refuses these images unless --allow-overlap)",
            mode,
            ", ".join(cats),
            root,
        )
    detector.training_data = training_record(dataset, root, cats, split, [s.path for s in samples])
    logger.info(
        "train: aaclip (%s, anchors=%s) on %d images of %s (%s mode)",
        detector.config.backbone,
        detector.config.anchors,
        len(samples),
        dataset,
        mode,
    )
    result = train_aaclip(
        detector,
        samples,
        Path(output),
        config,
        mode=mode,
        shots=shots,
        val_fraction=val_fraction,
        defect_kinds=defect_kinds,
        resume=resume,
        progress=progress,
    )
    return detector, result


def train_vfm(
    dataset: str,
    root: str | os.PathLike,
    output: str | os.PathLike,
    *,
    category: str | None = None,
    model_options: Mapping[str, Any] | None = None,
    resume: bool = True,
    skip_bad: bool = False,
    progress: bool = True,
):
    """Train AnomalyVFM v1.1 (:class:`~anomalens.methods.vfm.VFM`) on the good train images of
    one category and write the fitted checkpoint (LoRA weights, head, Gaussian statistics,
    fusion, thresholds) to ``output``; ``output/last`` holds the resume state.

    ``model_options`` are :class:`~anomalens.methods.vfm.VFMConfig` fields (None: default).
    Returns the fitted detector.
    """
    from anomalens.errors import DatasetError
    from anomalens.methods.vfm import VFM, VFMConfig

    options = {k: v for k, v in (model_options or {}).items() if v is not None}
    detector = VFM(VFMConfig(**options))
    size = detector.backbone.image_size
    cats = resolve_categories(dataset, root, [category] if category else None)
    if len(cats) != 1:
        raise DatasetError(
            f"{root}: vfm trains one category at a time (its Gaussian statistics are per "
            f"category); choose one of {', '.join(cats)} with --category"
        )
    samples = load_training_samples(
        dataset, root, cats, "synthetic", size, skip_bad=skip_bad, progress=progress
    )
    logger.info(
        "train: vfm (%s, LoRA rank %d) on %d good images of %s/%s",
        detector.config.backbone,
        detector.config.lora_rank,
        len(samples),
        dataset,
        cats[0],
    )
    detector.fit([s.image for s in samples], progress=progress, output=output, resume=resume)
    detector.save(output)
    return detector


def _train_rank(**kwargs: Any) -> None:
    """Body of one process of a multi-process run (see :func:`anomalens.distributed.launch`)."""
    train_detector(**kwargs)


def _launch(nproc: int, kwargs: dict[str, Any]) -> tuple[AACLIP, TrainResult]:
    """Train on ``nproc`` spawned processes; return the chosen checkpoint as rank 0 wrote it."""
    if kwargs["method"] not in TRAINABLE_METHODS:  # fail before spawning
        raise ValueError(
            f"method {kwargs['method']!r} has nothing to train; trainable: "
            f"{', '.join(TRAINABLE_METHODS)}"
        )
    kwargs = {**kwargs, "root": str(kwargs["root"]), "output": str(kwargs["output"])}
    distributed.launch(nproc, "anomalens.training:_train_rank", kwargs)
    detector = AACLIP.load(kwargs["output"])
    summary = detector.training_summary or {}
    state = Path(kwargs["output"]) / LAST_DIR / STATE_FILE  # the history of every epoch
    history = json.loads(state.read_text(encoding="utf-8"))["history"] if state.is_file() else []
    result = TrainResult(
        history=history or list(summary.get("history", [])),
        best=summary.get("chosen"),
        seconds=float(summary.get("seconds", 0.0)),
    )
    return detector, result
