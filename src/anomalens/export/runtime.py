"""The ONNX detector: an exported folder (``model.onnx`` + ``config.json``) run by onnxruntime.

No torch: this module imports numpy, OpenCV (through :mod:`anomalens.postprocess` and
:mod:`anomalens.data.transforms`, the same functions the torch detectors use) and onnxruntime.
:class:`OnnxDetector` keeps the detectors' ``predict`` contract: a
:class:`~anomalens.prediction.Prediction` with one score and one map per image, each map at its
image's own size, and the calibrated thresholds.

Done here, outside the graph, with the exact functions ``predict`` uses (see
:mod:`anomalens.export.graphs` for why): placing each image in the square model input and
taking each map back to its image (:class:`~anomalens.data.transforms.Frame`), pose
normalisation, the OpenCV foreground masks, PatchCore's image score (``image_score``) and
WinCLIP's median/MAD normalisation (``robust_normalize``).
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from anomalens.data.transforms import Frame, resize_square
from anomalens.errors import CheckpointError
from anomalens.pose import PoseState
from anomalens.postprocess import (
    Box,
    foreground_mask,
    hotspots,
    image_score,
    robust_normalize,
    soft_foreground,
)
from anomalens.prediction import Prediction

#: ``config.json`` ``format`` of an exported folder, and its version.
EXPORT_FORMAT = "onnx"
EXPORT_VERSION = 1
MODEL_FILE = "model.onnx"
CONFIG_FILE = "config.json"


def is_exported(folder: str | os.PathLike) -> bool:
    """True when ``folder/config.json`` says the folder is an ONNX export."""
    path = Path(folder) / CONFIG_FILE
    try:
        return json.loads(path.read_text(encoding="utf-8")).get("format") == EXPORT_FORMAT
    except (OSError, ValueError, AttributeError):
        return False


def check_images(images: Sequence[np.ndarray]) -> None:
    """ValueError unless every image is RGB uint8 ``H x W x 3`` (as ``Backbone.preprocess``)."""
    for img in images:
        if img.ndim != 3 or img.shape[2] != 3 or img.dtype != np.uint8:
            raise ValueError(
                f"expected an RGB uint8 image H x W x 3, got shape {img.shape} {img.dtype}"
            )


def patch_foreground(image: np.ndarray, size: int, grid: tuple[int, int]) -> np.ndarray:
    """AnomalyDINO's foreground patches (``patch_masks`` of the image resized to ``size``) as
    float32 ``[h, w]`` of 0 / 1."""
    fg = foreground_mask(resize_square(image, size)).astype(np.float32)
    small = cv2.resize(fg, (grid[1], grid[0]), interpolation=cv2.INTER_AREA)
    return (small > 0).astype(np.float32)


def image_frames(config: dict[str, Any], images: Sequence[np.ndarray]) -> list[Frame]:
    """Where each image sits in the model input: PatchCore's ``resize`` and ``border``; the
    whole square (stretched, no border) for the other graphs."""
    extra = config.get("extra", {})
    size = int(config["image_size"])
    mode, border = extra.get("resize", "square"), int(extra.get("border", 0))
    return [Frame.fit(img.shape, size, mode, border) for img in images]


def graph_inputs(config: dict[str, Any], images: Sequence[np.ndarray]) -> dict[str, np.ndarray]:
    """The graph's inputs for RGB uint8 images: ``pixels`` (each image placed in the square
    input, :func:`image_frames`), the content cells when the graph blurs over them, and, when
    the graph weights by the foreground, the OpenCV masks it expects."""
    check_images(images)
    size = int(config["image_size"])
    kind, extra = config.get("foreground"), config.get("extra", {})
    frames = image_frames(config, images)
    feeds = {"pixels": np.stack([f.place(img) for f, img in zip(frames, images, strict=True)])}
    if "content" in config.get("inputs", []):
        grid = tuple(extra["grid"])
        feeds["content"] = np.stack([f.content_grid(grid) for f in frames])
    if kind == "soft":
        fg_size = extra["foreground_size"]
        masks = [soft_foreground(img, fg_size, extra["margin"]) for img in images]
        masks = [f.to_input(m, m.shape) for f, m in zip(frames, masks, strict=True)]
    elif kind == "patch":
        masks = [patch_foreground(img, size, tuple(extra["grid"])) for img in images]
    elif kind == "image":
        masks = [foreground_mask(p).astype(np.float32) for p in feeds["pixels"]]
    elif kind is None:
        return feeds
    else:
        raise CheckpointError(f"unknown foreground input {kind!r} in an exported config")
    feeds["foreground"] = np.stack(masks).astype(np.float32)
    return feeds


class OnnxDetector:
    """A detector exported by :func:`anomalens.export.export_model`, run by onnxruntime.

    ``OnnxDetector.load(folder)``; ``predict(images) -> Prediction`` as every detector;
    ``threads`` sets onnxruntime's intra-op threads (None: its default, all cores).
    """

    def __init__(self, folder: str | os.PathLike, threads: int | None = None) -> None:
        import onnxruntime as ort

        self.folder = Path(folder)
        cfg_path, model_path = self.folder / CONFIG_FILE, self.folder / MODEL_FILE
        for path in (cfg_path, model_path):
            if not path.is_file():
                raise CheckpointError(
                    f"{path}: not found (an exported folder holds {MODEL_FILE} and {CONFIG_FILE})"
                )
        try:
            config = json.loads(cfg_path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise CheckpointError(f"{cfg_path}: not valid JSON ({exc})") from exc
        if config.get("format") != EXPORT_FORMAT:
            raise CheckpointError(
                f"{cfg_path}: not an ONNX export (format {config.get('format')!r})"
            )
        if int(config.get("export_version", -1)) > EXPORT_VERSION:
            raise CheckpointError(f"{cfg_path}: written by a newer anomalens")
        self.config = config
        self.method: str = config["method"]
        self.threshold: float | None = config.get("threshold")
        self.pixel_threshold: float | None = config.get("pixel_threshold")
        self.batch_size = int(config.get("batch_size", 4))
        self.pose = PoseState.from_meta(config.get("pose") or {}, cfg_path)
        options = ort.SessionOptions()
        if threads is not None:
            options.intra_op_num_threads = int(threads)
        try:
            self.session = ort.InferenceSession(
                str(model_path), options, providers=["CPUExecutionProvider"]
            )
        except Exception as exc:  # onnxruntime raises its own error types
            raise CheckpointError(f"{model_path}: onnxruntime cannot load it ({exc})") from exc
        self.output_names = [o.name for o in self.session.get_outputs()]

    @classmethod
    def load(cls, folder: str | os.PathLike, threads: int | None = None) -> OnnxDetector:
        """Open an exported folder (CheckpointError naming the file when it is not one)."""
        return cls(folder, threads=threads)

    def is_fitted(self) -> bool:
        return True

    @property
    def precision(self) -> str:
        """``fp32`` or ``int8``."""
        return str(self.config.get("precision", "fp32"))

    def describe(self) -> dict[str, Any]:
        """Method, backbone, input size, precision, thresholds and versions."""
        c = self.config
        return {
            "method": self.method,
            "backbone": c.get("backbone"),
            "image_size": c.get("image_size"),
            "runtime": "onnxruntime",
            "precision": self.precision,
            "threshold": self.threshold,
            "pixel_threshold": self.pixel_threshold,
            "version": c.get("anomalens_version"),
        }

    def _run(self, images: Sequence[np.ndarray]) -> tuple[list[float], list[np.ndarray]]:
        feeds = graph_inputs(self.config, images)
        outputs = dict(zip(self.output_names, self.session.run(None, feeds), strict=True))
        work = outputs["maps"]
        fg = feeds.get("foreground")
        frames = image_frames(self.config, images)
        scores, maps = [], []
        for i, img in enumerate(images):
            m = np.asarray(work[i], dtype=np.float32)
            if self.config.get("normalize"):
                m = robust_normalize(m, None if fg is None else fg[i] > 0.5)
            m = frames[i].to_image(m, img.shape[:2])
            if self.config.get("score") == "map_max":
                top = float(self.config.get("extra", {}).get("top_fraction", 0.0))
                scores.append(image_score(m, top))
            else:
                scores.append(float(outputs["scores"][i]))
            maps.append(m)
        return scores, maps

    def predict(self, images: Sequence[np.ndarray], progress: bool = False) -> Prediction:
        """Scores and maps (at each image's own size) for RGB uint8 images, with the calibrated
        thresholds; ValueError for NaN/inf results, as the torch detectors."""
        images = list(images)
        scores: list[float] = []
        maps: list[np.ndarray] = []
        run = self.pose.wrap(self._run)  # the part turned to its axis first, when fitted so
        for start in range(0, len(images), self.batch_size):
            s, m = run(images[start : start + self.batch_size])
            scores += s
            maps += m
        bad = [i for i, s in enumerate(scores) if not math.isfinite(s)]
        bad += [i for i, m in enumerate(maps) if not np.isfinite(m).all() and i not in bad]
        if bad:
            raise ValueError(f"ONNX {self.method} produced NaN/inf for images {sorted(bad)[:10]}")
        out = np.asarray(scores, dtype=np.float32)
        return Prediction(out, maps, self.threshold, self.pixel_threshold)

    def hotspots(
        self, anomaly_map: np.ndarray, top_k: int = 5, threshold: float | None = None
    ) -> list[Box]:
        """Boxes around the regions above ``threshold`` (default: the pixel threshold)."""
        thr = self.pixel_threshold if threshold is None else threshold
        if thr is None:
            raise ValueError("no calibrated pixel threshold; pass threshold=")
        return hotspots(anomaly_map, thr, top_k=top_k)
