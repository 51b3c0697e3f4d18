"""The AA-CLIP detector: trained adapters (a checkpoint), then ``fit`` / ``predict``."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from anomalens.errors import CheckpointError, UntrainedError
from anomalens.methods.aaclip.model import AACLIPConfig, AdaptedModel, image_scores
from anomalens.methods.base import (
    CONFIG_FILE,
    WEIGHTS_FILE,
    Calibration,
    Detector,
    Prediction,
    batches,
    checkpoint_tensor,
    select_shots,
)

UNTRAINED_MESSAGE = (
    "AA-CLIP needs trained adapters: train them with `anomalens train --method aaclip ...` "
    "(or anomalens.training.train_detector) and pass the checkpoint folder "
    "(`anomalens benchmark --method aaclip --checkpoint DIR`)"
)


class AACLIP(Detector):
    """AA-CLIP / AA-SigLIP detector (see the module docstring).

    Lifecycle: build with a config, train the adapters
    (:func:`anomalens.training.train_detector`, or ``AACLIP.load`` a trained checkpoint),
    ``fit`` on good images of the target category (anchors, centroid, thresholds), ``predict``.
    """

    method = "aaclip"
    config_class = AACLIPConfig
    requires_checkpoint = True

    def __init__(self, config: AACLIPConfig | None = None, **kwargs: Any) -> None:
        super().__init__(config, **kwargs)
        self._network: AdaptedModel | None = None
        self.trained = False
        self.training_summary: dict[str, Any] = {}
        self.anchors: Tensor | None = None  # [2, D] of the fitted category

    @property
    def network(self) -> AdaptedModel:
        """The trainable modules around the backbone (built on first use)."""
        if self._network is None:
            self._network = AdaptedModel(self.backbone, self.config)
            self._network.eval()
        return self._network

    def with_class_name(self, class_name: str) -> AACLIP:
        """Set the object word of the prompts (anchors are recomputed at the next ``fit``)."""
        self.config = dataclasses.replace(self.config, class_name=class_name)
        self.anchors = None
        return self

    def is_fitted(self) -> bool:
        return self.anchors is not None

    def _require_trained(self) -> None:
        if not self.trained:
            raise UntrainedError(UNTRAINED_MESSAGE)

    def anchor_pair(self, class_name: str | None = None) -> Tensor:
        """``[2, D]`` anchors for ``class_name`` (text) or the learned / centroid pair."""
        net = self.network
        if net.anchor_source == "text":
            return net.text_anchor_pair(class_name or self.config.class_name, self.config.prompts)
        with torch.no_grad():
            return net.fixed_anchor_pair().detach().clone()

    def score_pixels(self, pixels: Tensor, anchors: Tensor) -> tuple[Tensor, Tensor]:
        """``(image scores [B], maps [B, S, S])`` of preprocessed images."""
        feats = self.network.image_features(pixels)
        maps, det = self.network.anomaly_maps(
            feats, anchors, self.config.sigma, self.backbone.image_size
        )
        return image_scores(self.config.image_score, det, maps), maps

    def _score_images(self, images: Sequence[np.ndarray]) -> tuple[list[float], list[np.ndarray]]:
        bb = self.backbone
        scores, maps = self.score_pixels(bb.preprocess(images), self.anchors)
        return scores.tolist(), [m.numpy() for m in maps]

    def fit(self, images: Iterable[np.ndarray], progress: bool = True) -> AACLIP:
        """Anchors for ``class_name``, the normal centroid (``centroid`` anchors with
        ``refit_centroid``) and thresholds from good images; needs trained adapters."""
        from tqdm import tqdm

        self._require_trained()
        images = list(images)
        if not images:
            raise ValueError("fit needs at least one good image")
        start = time.perf_counter()
        bb, c = self.backbone, self.config
        images = [images[i] for i in select_shots(len(images), c.shots, c.seed)]
        chunks = list(batches(images, c.batch_size))
        net = self.network
        if c.anchors == "centroid" and c.refit_centroid:
            net.compute_centroid(bb.preprocess(b) for b in chunks)
        self.anchors = self.anchor_pair()
        t_anchor = time.perf_counter()
        scores: list[float] = []
        maxima: list[float] = []
        for batch in tqdm(chunks, desc="aaclip calibrate", unit="batch", disable=not progress):
            s, m = self.score_pixels(bb.preprocess(batch), self.anchors)
            scores += s.tolist()
            maxima += m.flatten(1).amax(1).tolist()
        self.calibration = Calibration.from_scores(scores, maxima, c.calibration_quantile)
        end = time.perf_counter()
        self.fit_report.n_images = len(images)
        self.fit_report.seconds = {
            "anchors": t_anchor - start,
            "calibration": end - t_anchor,
            "total": end - start,
        }
        return self

    def predict(self, images: Sequence[np.ndarray], progress: bool = False) -> Prediction:
        """Scores, maps (at each image's size) and the calibrated thresholds."""
        return self._predict_batches(images, self._score_images, progress)

    def save(self, folder: str | Path) -> Path:
        """``config.json`` + ``model.safetensors`` holding only the trained tensors (and the
        fitted anchors); the frozen backbone is named in the config, never copied."""
        tensors = {f"net.{k}": v for k, v in self.network.state_dict().items()}
        if self.anchors is not None:
            tensors["anchors"] = self.anchors
        return self._write(
            folder,
            tensors,
            trained=self.trained,
            training=self.training_summary,
            backbone=self.backbone.describe(),
        )

    @classmethod
    def load(cls, folder: str | Path) -> AACLIP:
        """Restore a detector written by :meth:`save` (bit-for-bit)."""
        model, meta, tensors = cls._read(folder)
        cfg_path, weights = Path(folder) / CONFIG_FILE, Path(folder) / WEIGHTS_FILE
        model.trained = bool(meta.get("trained", False))
        training = meta.get("training", {})
        if not isinstance(training, dict):
            raise CheckpointError(f"{cfg_path}: 'training' must be a JSON object")
        model.training_summary = dict(training)
        state = {k[4:]: v for k, v in tensors.items() if k.startswith("net.")}
        try:
            model.network.load_state_dict(state, strict=True)
        except RuntimeError as exc:
            raise CheckpointError(
                f"{weights}: the trained tensors do not fit {model.config.backbone} "
                f"({str(exc).splitlines()[0]})"
            ) from exc
        model.anchors = checkpoint_tensor(tensors, "anchors", weights, optional=True)
        return model
