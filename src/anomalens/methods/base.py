"""What every detector shares: the Prediction it returns, checkpoint files, thresholds.

A detector follows scikit-learn: the constructor stores a config dataclass, ``fit`` returns
``self``, ``predict(images)`` returns a :class:`Prediction`. ``save(dir)`` writes
``config.json`` (method name, config, calibration, format version) and ``model.safetensors``
(tensors only; nothing is ever unpickled); ``load(dir)`` restores it bit-for-bit.
"""

from __future__ import annotations

import dataclasses
import hashlib
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

from anomalens.atomic import atomic_write_json, atomic_write_with, check_output_path, staged_folder
from anomalens.backbones.base import check_precision
from anomalens.backbones.registry import DEFAULT_BACKBONE
from anomalens.errors import CheckpointError, NotFittedError, WriteError
from anomalens.prediction import Prediction  # re-exported: the predict contract

FORMAT_VERSION = 1
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
#: Entries a checkpoint folder may hold besides its two files (``train``'s resume state).
CHECKPOINT_EXTRAS = ("last",)
#: Bounds of ``image_size`` (square input side): a larger input needs tens of GiB.
MIN_IMAGE_SIZE, MAX_IMAGE_SIZE = 32, 2048


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
        size = self.image_size
        if size is not None and (
            isinstance(size, bool)
            or not isinstance(size, int)
            or not MIN_IMAGE_SIZE <= size <= MAX_IMAGE_SIZE
        ):
            raise ValueError(
                f"image_size must be an integer from {MIN_IMAGE_SIZE} to {MAX_IMAGE_SIZE} "
                f"(or None), got {size!r}"
            )
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
    """What ``fit`` did: image and patch counts, where the time went (seconds), and how many
    files of the training folder were skipped or ignored."""

    n_images: int = 0
    n_patches: int = 0
    memory_size: int = 0
    seconds: dict[str, float] = field(default_factory=dict)
    #: unreadable images skipped (``--skip-bad``) and folder entries ignored as not images
    #: (FIFOs, dangling links, ``.webp`` ...), filled in by the caller that read the data
    n_skipped: int = 0
    n_ignored: int = 0
    #: decisions ``fit`` took from the data, in words (foreground rule, input geometry)
    notes: list[str] = field(default_factory=list)

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


def config_from_dict(cls: type, data: dict[str, Any], where: str | Path | None = None) -> Any:
    """Rebuild a config dataclass; unknown keys and invalid values are a CheckpointError
    naming ``where`` (the config file), lists become tuples."""
    prefix = f"{where}: " if where is not None else ""
    if not isinstance(data, dict):
        raise CheckpointError(f"{prefix}'config' must be a JSON object, got {_json_type(data)}")
    names = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(names))
    if unknown:
        raise CheckpointError(f"{prefix}unknown {cls.__name__} fields in checkpoint: {unknown}")
    kwargs = {k: tuple(v) if isinstance(v, list) else v for k, v in data.items()}
    try:
        return cls(**kwargs)
    except (TypeError, ValueError, KeyError) as exc:
        raise CheckpointError(f"{prefix}invalid config: {exc}") from exc


def _json_type(value: Any) -> str:
    names = {dict: "an object", list: "a list", str: "a string", bool: "a boolean"}
    if value is None:
        return "null"
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return "a number"
    return names.get(type(value), type(value).__name__)


def weights_digest(path: str | Path) -> str:
    """SHA-256 (hex) of a weights file, recorded in ``config.json`` and checked on load."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def is_checkpoint_folder(folder: str | Path) -> bool:
    """True when ``folder`` holds an anomalens ``config.json`` (a JSON object with
    ``method``) or only entries a checkpoint folder may hold (:data:`CHECKPOINT_EXTRAS`)."""
    folder = Path(folder)
    try:
        meta = json.loads((folder / CONFIG_FILE).read_text(encoding="utf-8"))
        return isinstance(meta, dict) and "method" in meta
    except (OSError, ValueError):
        pass
    try:
        return all(p.name in CHECKPOINT_EXTRAS or p.name == WEIGHTS_FILE for p in folder.iterdir())
    except OSError:
        return False


def check_model_folder(folder: str | Path) -> Path:
    """``folder`` as a Path if a model may be written there: not ``""``, ``.``, the home
    folder ..., and either absent, empty or a model folder (:func:`is_checkpoint_folder`);
    otherwise WriteError."""
    path = check_output_path(folder, "model folder")
    if path.is_dir() and any(path.iterdir()) and not is_checkpoint_folder(path):
        raise WriteError(
            f"{path}: not empty and not an anomalens model folder; refusing to replace it "
            "(choose another output folder or remove it)"
        )
    return path


def write_checkpoint(
    folder: str | Path, method: str, config: Any, extra: dict[str, Any], tensors: dict
) -> Path:
    """Write ``config.json`` and ``model.safetensors`` into ``folder``, atomically.

    Both files are written into a staging folder beside ``folder``, read back and validated,
    then swapped in (:func:`anomalens.atomic.staged_folder`): ``folder`` is always the old
    model or the new one, never a mix, even after a kill or a full disk. Other entries of an
    existing model folder (``last/`` of a training run) are kept. An existing non-empty folder
    that is not a model folder, and paths such as ``""``, ``.`` or the home folder, are refused
    (:class:`~anomalens.errors.WriteError`).
    """
    folder = check_model_folder(folder)
    meta = {
        "method": method,
        "format_version": FORMAT_VERSION,
        "config": config_to_dict(config),
        **extra,
    }
    tensors = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    with staged_folder(
        folder,
        verify=lambda staged: read_checkpoint(staged, method),
        replaceable=is_checkpoint_folder,
        carry_over=True,
        what="model folder",
    ) as staging:
        weights = staging / WEIGHTS_FILE
        atomic_write_with(
            weights, lambda tmp: save_file(tensors, str(tmp), metadata={"method": method})
        )
        meta["weights_sha256"] = weights_digest(weights)
        atomic_write_json(staging / CONFIG_FILE, meta, allow_nan=True)  # NaN val metrics
    return folder


def read_checkpoint(folder: str | Path, method: str) -> tuple[dict[str, Any], dict]:
    """``(meta, tensors)`` of a checkpoint folder written by ``write_checkpoint``.

    Validates what every checkpoint has: ``config.json`` is a JSON object of ``method`` with a
    known ``format_version``, ``calibration`` and ``fit_report`` objects with finite
    thresholds; ``model.safetensors`` matches the recorded SHA-256 and holds only finite
    tensors. Every problem is a CheckpointError naming the file.
    """
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
    if not isinstance(meta, dict):
        raise CheckpointError(f"{cfg_path}: expected a JSON object, got {_json_type(meta)}")
    if meta.get("method") != method:
        raise CheckpointError(
            f"{folder}: checkpoint of method {meta.get('method')!r}, expected {method!r}"
        )
    version = meta.get("format_version", -1)
    if isinstance(version, bool) or not isinstance(version, int):
        raise CheckpointError(f"{cfg_path}: 'format_version' must be an integer, got {version!r}")
    if version > FORMAT_VERSION:
        raise CheckpointError(f"{folder}: written by a newer anomalens (format {version})")
    for key in ("config", "calibration", "fit_report"):
        if key in meta and not isinstance(meta[key], dict):
            raise CheckpointError(
                f"{cfg_path}: {key!r} must be a JSON object, got {_json_type(meta[key])}"
            )
    if "config" not in meta:
        raise CheckpointError(f"{cfg_path}: missing 'config'")
    _check_calibration(meta.get("calibration", {}), cfg_path)
    digest = meta.get("weights_sha256")
    if digest is not None and weights_digest(weights_path) != digest:
        raise CheckpointError(
            f"{weights_path}: does not match {CONFIG_FILE} (SHA-256 differs): the folder mixes "
            "two models or the file was changed; save the model again"
        )
    try:
        tensors = load_file(str(weights_path))
    except Exception as exc:  # safetensors raises its own error types
        raise CheckpointError(f"{weights_path}: cannot read safetensors file ({exc})") from exc
    for name, t in tensors.items():
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            raise CheckpointError(f"{weights_path}: tensor {name!r} holds NaN/inf values")
    return meta, tensors


def _check_calibration(data: dict[str, Any], where: Path) -> None:
    """Thresholds are finite numbers or null; quantile in (0, 1]; counts non-negative."""
    for key in ("threshold", "pixel_threshold"):
        v = data.get(key)
        if v is not None and (
            isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v)
        ):
            raise CheckpointError(
                f"{where}: calibration {key} must be a finite number or null, got {v!r}"
            )
    q = data.get("quantile", 0.99)
    if isinstance(q, bool) or not isinstance(q, (int, float)) or not 0 < q <= 1:
        raise CheckpointError(f"{where}: calibration quantile must be in (0, 1], got {q!r}")
    n = data.get("n_images", 0)
    if isinstance(n, bool) or not isinstance(n, int) or n < 0:
        raise CheckpointError(f"{where}: calibration n_images must be an integer >= 0, got {n!r}")
    good = data.get("good_scores", [])
    if not isinstance(good, list) or not all(
        isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in good
    ):
        raise CheckpointError(f"{where}: calibration good_scores must be a list of numbers")


def checkpoint_field(
    meta: dict[str, Any], name: str, kind: type | tuple[type, ...], where: str | Path
) -> Any:
    """``meta[name]`` checked to be a ``kind`` (a CheckpointError naming ``where`` if missing
    or of another type; ``bool`` is not an ``int``)."""
    if name not in meta:
        raise CheckpointError(f"{where}: missing {name!r}")
    value = meta[name]
    kinds = kind if isinstance(kind, tuple) else (kind,)
    if (isinstance(value, bool) and bool not in kinds) or not isinstance(value, kinds):
        raise CheckpointError(f"{where}: {name!r} has the wrong type ({_json_type(value)})")
    return value


def checkpoint_grid(meta: dict[str, Any], where: str | Path, optional: bool = False) -> Any:
    """``meta["grid"]`` as ``(h, w)`` positive integers (None allowed with ``optional``)."""
    if optional and meta.get("grid") is None:
        return None
    grid = checkpoint_field(meta, "grid", list, where)
    if len(grid) != 2 or not all(isinstance(v, int) and not isinstance(v, bool) for v in grid):
        raise CheckpointError(f"{where}: 'grid' must be two integers, got {grid!r}")
    if min(grid) < 1:
        raise CheckpointError(f"{where}: 'grid' must be positive, got {grid!r}")
    return tuple(grid)


def checkpoint_tensor(
    tensors: dict[str, torch.Tensor],
    name: str,
    where: str | Path,
    ndim: int | None = 2,
    dtype: torch.dtype | None = torch.float32,
    optional: bool = False,
) -> torch.Tensor | None:
    """``tensors[name]`` checked for presence, dimensions, dtype and at least one row."""
    if name not in tensors:
        if optional:
            return None
        raise CheckpointError(f"{where}: tensor {name!r} missing (found {sorted(tensors)})")
    t = tensors[name]
    if ndim is not None and t.ndim != ndim:
        raise CheckpointError(
            f"{where}: tensor {name!r} must have {ndim} dimensions, got shape {tuple(t.shape)}"
        )
    if dtype is not None and t.dtype != dtype:
        raise CheckpointError(f"{where}: tensor {name!r} must be {dtype}, got {t.dtype}")
    if t.numel() == 0:
        raise CheckpointError(f"{where}: tensor {name!r} is empty (shape {tuple(t.shape)})")
    return t


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
        #: what the model was trained on (dataset, root, categories, split, file digests), saved
        #: in ``config.json`` as ``training_data``; see :mod:`anomalens.overlap`
        self.training_data: dict[str, Any] | None = None
        #: the folder the model was loaded from (None for a new model)
        self.source: Path | None = None
        self._backbone = None

    def _write(self, folder: str | Path, tensors: dict, **extra: Any) -> Path:
        """``write_checkpoint`` with the calibration and fit report added to ``extra``."""
        extra |= {"calibration": vars(self.calibration), "fit_report": vars(self.fit_report)}
        if self.training_data is not None:
            extra["training_data"] = self.training_data
        return write_checkpoint(folder, self.method, self.config, extra, tensors)

    @classmethod
    def _read(cls, folder: str | Path) -> tuple[Any, dict[str, Any], dict]:
        """A new detector with the saved config, calibration and fit report, plus the
        checkpoint's ``(meta, tensors)`` for the subclass to restore the rest."""
        meta, tensors = read_checkpoint(folder, cls.method)
        cfg_path = Path(folder) / CONFIG_FILE
        model = cls(config_from_dict(cls.config_class, meta["config"], cfg_path))
        for key, kind in (("calibration", Calibration), ("fit_report", FitReport)):
            try:
                setattr(model, key, kind(**meta.get(key, {})))
            except TypeError as exc:
                raise CheckpointError(f"{cfg_path}: invalid {key!r} ({exc})") from exc
        data = meta.get("training_data")
        model.training_data = data if isinstance(data, dict) else None
        model.source = Path(folder)
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
            try:
                batch_scores, batch_maps = score_batch(batch)
            except (ValueError, RuntimeError) as exc:
                text = str(exc)
                if self.source is None or not any(w in text for w in ("shape", "size", "[")):
                    raise
                raise CheckpointError(
                    f"{self.source}: the saved model does not fit its backbone "
                    f"{self.config.backbone} ({str(exc).splitlines()[0]}); was it edited?"
                ) from exc
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
        meta = json.loads(cfg_path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"{cfg_path}: not valid JSON ({exc})") from exc
    if not isinstance(meta, dict):
        raise CheckpointError(f"{cfg_path}: expected a JSON object, got {_json_type(meta)}")
    return meta.get("method")


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
