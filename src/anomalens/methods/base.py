"""What every detector shares: the Prediction it returns, checkpoint files, thresholds.

A detector follows scikit-learn: the constructor stores a config dataclass, ``fit`` returns
``self``, ``predict(images)`` returns a :class:`Prediction`. ``save(dir)`` writes
``config.json`` (method name, config, calibration, format version) and ``model.safetensors``
(tensors only; nothing is ever unpickled); ``load(dir)`` restores it bit-for-bit.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from tqdm import tqdm

from anomalens.backbones.base import check_precision
from anomalens.backbones.registry import DEFAULT_BACKBONE
from anomalens.errors import CheckpointError, NotFittedError
from anomalens.prediction import Prediction  # re-exported: the predict contract

FORMAT_VERSION = 1
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"


@dataclass
class DetectorConfig:
    """Fields every detector config has, validated in one place (subclasses add their own
    fields, override defaults, and call ``super().__post_init__()`` first).

    backbone: registry spec (see :mod:`anomalens.backbones.registry`); image_size: square input
    side (None: the backbone's default); precision: backbone precision (``auto``: bf16 autocast
    where the CPU computes bf16 natively, else fp32; or ``fp32`` / ``bf16``); shots: use only
    this many good images, drawn by ``seed`` (None: all);
    seed: every random choice of the method; batch_size: images per forward pass;
    calibration_quantile: the thresholds are this quantile of good images' scores.
    """

    #: smallest valid ``shots`` (0 for methods with a zero-shot mode)
    min_shots: ClassVar[int] = 1

    backbone: str = DEFAULT_BACKBONE
    image_size: int | None = None
    precision: str = "auto"
    shots: int | None = None
    seed: int = 0
    batch_size: int = 8
    calibration_quantile: float = 0.99

    def __post_init__(self) -> None:
        check_precision(self.precision)
        if self.image_size is not None and self.image_size < 8:
            raise ValueError(f"image_size must be >= 8 or None, got {self.image_size}")
        if self.shots is not None and self.shots < self.min_shots:
            raise ValueError(
                f"shots must be >= {self.min_shots} for {type(self).__name__} (or None for all "
                f"images), got {self.shots}"
            )
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        if not 0.0 < self.calibration_quantile <= 1.0:
            raise ValueError("calibration_quantile must be in (0, 1]")


def check_at_least(config: Any, minimum: int, *names: str) -> None:
    """Raise ValueError unless every named integer field of ``config`` is ``>= minimum``
    (None allowed)."""
    for name in names:
        value = getattr(config, name)
        if value is not None and value < minimum:
            raise ValueError(f"{name} must be >= {minimum}, got {value}")


@dataclass
class Calibration:
    """Thresholds learned from good images only (leave-out scores of the training images).

    threshold: ``quantile`` of the held-out good image scores.
    pixel_threshold: ``quantile`` of the held-out good images' map maxima.
    n_images: how many good images the thresholds come from.
    """

    threshold: float | None = None
    pixel_threshold: float | None = None
    quantile: float = 0.99
    n_images: int = 0
    good_scores: list[float] = field(default_factory=list)

    @classmethod
    def from_scores(
        cls, scores: Sequence[float], map_maxima: Sequence[float], quantile: float
    ) -> Calibration:
        """Thresholds as the ``quantile`` (linear interpolation) of good scores and map maxima."""
        s = np.asarray(scores, dtype=np.float64)
        m = np.asarray(map_maxima, dtype=np.float64)
        if s.size == 0:
            return cls(quantile=quantile)
        return cls(
            threshold=float(np.quantile(s, quantile)),
            pixel_threshold=float(np.quantile(m, quantile)),
            quantile=quantile,
            n_images=int(s.size),
            good_scores=[float(v) for v in s],
        )


@dataclass
class FitReport:
    """What ``fit`` did: image and patch counts and where the time went (seconds)."""

    n_images: int = 0
    n_patches: int = 0
    memory_size: int = 0
    seconds: dict[str, float] = field(default_factory=dict)

    @classmethod
    def timed(
        cls, n_images: int, n_patches: int, memory_size: int, start: float, **ends: float
    ) -> FitReport:
        """A report whose ``seconds`` are the phases between ``start`` and the ``perf_counter``
        readings ``ends`` (in order, e.g. ``features=t1, memory=t2``), plus ``total``."""
        seconds, last = {}, start
        for name, end in ends.items():
            seconds[name] = end - last
            last = end
        seconds["total"] = last - start
        return cls(int(n_images), int(n_patches), int(memory_size), seconds)


def check_finite_scores(scores: np.ndarray, maps: Sequence[np.ndarray], what: str) -> None:
    """Raise ValueError when a score or map is NaN/inf (e.g. a broken backbone)."""
    bad = [i for i, s in enumerate(np.asarray(scores).reshape(-1)) if not math.isfinite(float(s))]
    bad += [i for i, m in enumerate(maps) if not np.isfinite(m).all() and i not in bad]
    if bad:
        raise ValueError(
            f"{what} produced NaN/inf anomaly scores for images {sorted(bad)[:10]}; "
            "check the backbone precision (try fp32) and the input images"
        )


def config_to_dict(config: Any) -> dict[str, Any]:
    """A config dataclass as a JSON-ready dict (tuples become lists)."""
    return json.loads(json.dumps(dataclasses.asdict(config)))


def config_from_dict(cls: type, data: dict[str, Any]) -> Any:
    """Rebuild a config dataclass; unknown keys are an error, lists become tuples."""
    names = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(names))
    if unknown:
        raise CheckpointError(f"unknown {cls.__name__} fields in checkpoint: {unknown}")
    kwargs = {k: tuple(v) if isinstance(v, list) else v for k, v in data.items()}
    return cls(**kwargs)


def write_checkpoint(
    folder: str | Path, method: str, config: Any, extra: dict[str, Any], tensors: dict
) -> Path:
    """Write ``config.json`` and ``model.safetensors`` into ``folder`` (created if needed)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    meta = {
        "method": method,
        "format_version": FORMAT_VERSION,
        "config": config_to_dict(config),
        **extra,
    }
    tensors = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    save_file(tensors, str(folder / WEIGHTS_FILE), metadata={"method": method})
    (folder / CONFIG_FILE).write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
    return folder


def read_checkpoint(folder: str | Path, method: str) -> tuple[dict[str, Any], dict]:
    """``(meta, tensors)`` of a checkpoint folder written by ``write_checkpoint``."""
    folder = Path(folder)
    cfg_path, weights_path = folder / CONFIG_FILE, folder / WEIGHTS_FILE
    for path in (cfg_path, weights_path):
        if not path.is_file():
            raise CheckpointError(
                f"{path}: not found (a checkpoint folder holds {CONFIG_FILE} and {WEIGHTS_FILE})"
            )
    try:
        meta = json.loads(cfg_path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"{cfg_path}: not valid JSON ({exc})") from exc
    if meta.get("method") != method:
        raise CheckpointError(
            f"{folder}: checkpoint of method {meta.get('method')!r}, expected {method!r}"
        )
    if int(meta.get("format_version", -1)) > FORMAT_VERSION:
        raise CheckpointError(
            f"{folder}: written by a newer anomalens (format {meta.get('format_version')})"
        )
    try:
        tensors = load_file(str(weights_path))
    except Exception as exc:  # safetensors raises its own error types
        raise CheckpointError(f"{weights_path}: cannot read safetensors file ({exc})") from exc
    return meta, tensors


def batches(items: Iterable, size: int) -> Iterator[list]:
    """Consecutive lists of ``size`` items (the last may be shorter)."""
    batch: list = []
    for item in items:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def select_shots(n_images: int, shots: int | None, seed: int) -> list[int]:
    """Indices of the good images used for ``shots`` (sorted; all when None or too few)."""
    if shots is None or shots >= n_images:
        return list(range(n_images))
    rng = np.random.default_rng(seed)
    return sorted(int(i) for i in rng.choice(n_images, size=shots, replace=False))


class Detector:
    """Base class: subclasses set ``method``, implement ``fit``/``predict``/``_state``."""

    method: ClassVar[str] = "detector"
    config_class: ClassVar[type]
    #: True when the method needs trained weights from a checkpoint before ``fit`` (AA-CLIP)
    requires_checkpoint: ClassVar[bool] = False

    calibration: Calibration
    _backbone: Any = None

    def __init__(self, config: Any = None, **kwargs: Any) -> None:
        """Store the config (a ``config_class`` instance, or its fields as keywords)."""
        if config is not None and kwargs:
            raise TypeError(
                f"pass either a {self.config_class.__name__} or keyword arguments, not both"
            )
        self.config = config if config is not None else self.config_class(**kwargs)
        self.calibration = Calibration(quantile=self.config.calibration_quantile)
        self.fit_report = FitReport()
        self._backbone = None

    def _write(self, folder: str | Path, tensors: dict, **extra: Any) -> Path:
        """``write_checkpoint`` with the calibration and fit report added to ``extra``."""
        extra |= {"calibration": vars(self.calibration), "fit_report": vars(self.fit_report)}
        return write_checkpoint(folder, self.method, self.config, extra, tensors)

    @classmethod
    def _read(cls, folder: str | Path) -> tuple[Any, dict[str, Any], dict]:
        """A new detector with the saved config, calibration and fit report, plus the
        checkpoint's ``(meta, tensors)`` for the subclass to restore the rest."""
        meta, tensors = read_checkpoint(folder, cls.method)
        model = cls(config_from_dict(cls.config_class, meta["config"]))
        model.calibration = Calibration(**meta.get("calibration", {}))
        model.fit_report = FitReport(**meta.get("fit_report", {}))
        return model, meta, tensors

    @property
    def backbone(self) -> Any:
        """The backbone, built on first use from the config's ``backbone``, ``image_size`` and
        ``precision`` (methods pass their layers to ``encode_image``)."""
        if self._backbone is None:
            from anomalens.backbones.registry import load_backbone

            c = self.config
            self._backbone = load_backbone(
                c.backbone, image_size=c.image_size, precision=c.precision
            )
        return self._backbone

    def fit(self, images: Iterable[np.ndarray], progress: bool = True) -> Detector:
        """Learn from good RGB uint8 images (``H x W x 3``); returns ``self``."""
        raise NotImplementedError

    def predict(self, images: Sequence[np.ndarray], progress: bool = False) -> Prediction:
        """Scores and maps for RGB uint8 images."""
        raise NotImplementedError

    def save(self, folder: str | Path) -> Path:
        """Write ``config.json`` + ``model.safetensors`` into ``folder``."""
        raise NotImplementedError

    @classmethod
    def load(cls, folder: str | Path) -> Detector:
        """Restore a detector written by ``save``."""
        raise NotImplementedError

    def is_fitted(self) -> bool:
        raise NotImplementedError

    def _require_fitted(self) -> None:
        if not self.is_fitted():
            raise NotFittedError(f"this {type(self).__name__} is not fitted yet; call fit first")

    def hotspots(self, anomaly_map: np.ndarray, top_k: int = 5, threshold: float | None = None):
        """Boxes around the regions above ``threshold`` (default: the calibrated pixel
        threshold) of one predicted map; see :func:`anomalens.postprocess.hotspots`."""
        thr = self.calibration.pixel_threshold if threshold is None else threshold
        if thr is None:
            raise ValueError("no calibrated pixel threshold; pass threshold=")
        from anomalens.postprocess import hotspots

        return hotspots(anomaly_map, thr, top_k=top_k)

    def _predict_batches(
        self,
        images: Sequence[np.ndarray],
        score_batch: Callable[[list[np.ndarray]], tuple[Sequence[float], Sequence[np.ndarray]]],
        progress: bool,
    ) -> Prediction:
        """Shared ``predict`` loop: ``score_batch(batch) -> (scores, maps)`` per batch of
        ``config.batch_size`` images; maps are resized to each image, NaN/inf is an error and
        the calibrated thresholds are attached."""
        from anomalens.postprocess import resize_map

        self._require_fitted()
        scores: list[float] = []
        maps: list[np.ndarray] = []
        chunks = list(batches(images, self.config.batch_size))
        for batch in tqdm(
            chunks, desc=f"{self.method} predict", unit="batch", disable=not progress
        ):
            batch_scores, batch_maps = score_batch(batch)
            for img, score, m in zip(batch, batch_scores, batch_maps, strict=True):
                scores.append(float(score))
                maps.append(m if m.shape == img.shape[:2] else resize_map(m, img.shape[:2]))
        out = np.asarray(scores, dtype=np.float32)
        check_finite_scores(out, maps, f"{type(self).__name__} ({self.config.backbone})")
        cal = self.calibration
        return Prediction(out, maps, cal.threshold, cal.pixel_threshold)

    @property
    def threshold(self) -> float | None:
        """The calibrated image-score threshold (None before calibration)."""
        return self.calibration.threshold


def checkpoint_method(folder: str | Path) -> str | None:
    """The ``method`` named in a saved model folder's ``config.json``."""
    cfg_path = Path(folder) / CONFIG_FILE
    if not cfg_path.is_file():
        raise CheckpointError(f"{cfg_path}: not found; is {folder} a saved model folder?")
    try:
        return json.loads(cfg_path.read_text(encoding="utf-8")).get("method")
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"{cfg_path}: not valid JSON ({exc})") from exc


def load_detector(folder: str | Path) -> Detector:
    """Load any saved detector, dispatching on the ``method`` in its ``config.json``; an ONNX
    export (``anomalens export``) loads as an :class:`~anomalens.export.OnnxDetector`."""
    from anomalens.export.runtime import OnnxDetector, is_exported
    from anomalens.methods import METHODS

    if is_exported(folder):
        return OnnxDetector.load(folder)  # type: ignore[return-value]  (same predict contract)

    method = checkpoint_method(folder)
    if method not in METHODS:
        raise CheckpointError(f"{folder}: unknown method {method!r}; known: {sorted(METHODS)}")
    return METHODS[method].load(folder)


def as_tensor_dict(**arrays: Any) -> dict[str, torch.Tensor]:
    """Tensors for ``write_checkpoint`` from tensors or numpy arrays."""
    return {
        k: v if isinstance(v, torch.Tensor) else torch.from_numpy(np.asarray(v))
        for k, v in arrays.items()
    }
