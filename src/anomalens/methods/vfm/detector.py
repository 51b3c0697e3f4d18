"""The AnomalyVFM v1.1 detector: training (when untrained), Gaussian statistics, fusion,
thresholds, prediction and checkpoints."""

from __future__ import annotations

import logging
import time
import warnings
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from anomalens.data.transforms import resize_square
from anomalens.errors import CheckpointError
from anomalens.mahalanobis import Gaussian, fit_gaussian, fit_positional, select_channels
from anomalens.methods.base import (
    Calibration,
    Detector,
    Prediction,
    batches,
    select_shots,
)
from anomalens.methods.common import ONE_IMAGE_WARNING, upsample_smooth
from anomalens.methods.vfm.data import SyntheticAnomalies
from anomalens.methods.vfm.model import VFMConfig, VFMNetwork
from anomalens.methods.vfm.train import TrainResult, VFMTrainer
from anomalens.metrics import image_auroc, pixel_auroc

logger = logging.getLogger(__name__)

#: fusion weights tried on the validation split (weight of the head; 1 - w: Mahalanobis)
FUSION_GRID = tuple(round(0.1 * k, 1) for k in range(11))
#: order of the normalisation statistics in ``norm``: (mean, std) of each raw output
NORM_KEYS = ("head_score", "maha_score", "head_map", "maha_map")


def split_validation(n: int, fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """``(train, validation)`` indices: ``round(n * fraction)`` images (at least 1 when
    ``n >= 2`` and ``fraction > 0``, at most ``n - 1``) drawn by ``seed``; both sorted."""
    k = min(max(round(n * fraction), 1 if fraction > 0 else 0), n - 1) if n >= 2 else 0
    rng = np.random.default_rng([seed, 7])
    val = sorted(int(i) for i in rng.choice(n, size=k, replace=False)) if k else []
    return [i for i in range(n) if i not in set(val)], val


def _best_weight(metric) -> tuple[float, float]:
    """``(weight, value)`` maximising ``metric(weight)`` over :data:`FUSION_GRID` (ties: the
    weight nearest 0.5)."""
    values = [(metric(w), -abs(w - 0.5), w) for w in FUSION_GRID]
    best = max(values, key=lambda v: (np.nan_to_num(v[0], nan=-1.0), v[1]))
    return best[2], float(best[0])


def _safe(fn, a, b) -> float:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            return float(fn(a, b))
        except ValueError:
            return float("nan")


class VFM(Detector):
    """AnomalyVFM v1.1 (seed design): see :mod:`anomalens.methods.vfm`.

    ``fit(good images)``: when the adapters are untrained, trains them (LoRA + head) on
    synthetic anomalies of the training part of the images; then fits the Gaussian statistics
    of the adapted features, chooses the fusion weights on synthetic defects of the held-out
    part and calibrates the thresholds on the held-out good images.
    """

    method = "vfm"
    config_class = VFMConfig

    def __init__(self, config: VFMConfig | None = None, **kwargs: Any) -> None:
        super().__init__(config, **kwargs)
        self._network: VFMNetwork | None = None
        self.trained = False
        self.training_summary: dict[str, Any] = {}
        self.positional: Gaussian | None = None
        self.global_gaussian: Gaussian | None = None
        self.channels: Tensor | None = None
        self.norm: Tensor | None = None  # [len(NORM_KEYS), 2] mean and std
        self.fusion: dict[str, float] = {}

    @property
    def network(self) -> VFMNetwork:
        """LoRA adapters (injected into the backbone) and the head, built on first use."""
        if self._network is None:
            self._network = VFMNetwork(self.backbone, self.config)
            self._network.eval()
        return self._network

    def is_fitted(self) -> bool:
        return self.norm is not None

    # -- fit --------------------------------------------------------------------------------
    def prepare_images(self, images: Sequence[np.ndarray]) -> list[np.ndarray]:
        """Images resized to the backbone's square input (training and statistics use these)."""
        size = self.backbone.image_size
        return [
            img if img.shape[:2] == (size, size) else resize_square(img, size) for img in images
        ]

    def train(
        self,
        images: Sequence[np.ndarray],
        output: str | Path | None = None,
        resume: bool = True,
        progress: bool = True,
    ) -> TrainResult:
        """Train the LoRA adapters and head on synthetic anomalies of ``images`` (good,
        already split off the validation images); resume state in ``output/last``."""
        trainer = VFMTrainer(
            self.network, self.config, self.prepare_images(images), output, progress
        )
        result = trainer.run(resume=resume)
        self.trained = True
        self.training_summary = {
            "history": result.history,
            "seconds": result.seconds,
            "n_train": len(images),
            "resumed_from": result.resumed_from,
        }
        return result

    def fit(
        self,
        images: Iterable[np.ndarray],
        progress: bool = True,
        *,
        output: str | Path | None = None,
        resume: bool = True,
    ) -> VFM:
        """Train if needed (resume state in ``output/last`` when ``output`` is given), then
        statistics, fusion and thresholds (see the class docstring)."""
        start = time.perf_counter()
        images = list(images)
        if not images:
            raise ValueError("fit needs at least one good image")
        c = self.config
        images = [images[i] for i in select_shots(len(images), c.shots, c.seed)]
        train_idx, val_idx = split_validation(len(images), c.val_fraction, c.seed)
        train = [images[i] for i in train_idx]
        val = [images[i] for i in val_idx]
        seconds: dict[str, float] = {}
        if not self.trained:
            result = self.train(train, output, resume=resume, progress=progress)
            seconds["training"] = result.seconds
        t1 = time.perf_counter()
        self.finish(train, val, progress)
        seconds["statistics"] = time.perf_counter() - t1
        seconds["total"] = time.perf_counter() - start
        self.fit_report.n_images = len(images)
        self.fit_report.seconds = seconds
        return self

    @torch.no_grad()
    def _features(self, images: Sequence[np.ndarray], progress: bool = False) -> Tensor:
        net, bb = self.network, self.backbone
        chunks = [net.features(bb.preprocess(b)) for b in batches(images, self.config.batch_size)]
        return torch.cat(chunks)

    def finish(
        self, train: Sequence[np.ndarray], val: Sequence[np.ndarray], progress: bool
    ) -> None:
        """Gaussian statistics of the adapted features of ``train`` (good images), fusion
        weights chosen on synthetic defects of ``val`` and thresholds from ``val`` (good)."""
        c = self.config
        train = self.prepare_images(train)
        feats = self._features(train, progress)  # [N, h, w, D]
        n, h, w, d = feats.shape
        self.channels = select_channels(d, c.position_dim, c.seed)
        self.positional = fit_positional(self._reduce(feats), ridge=c.ridge)
        self.global_gaussian = fit_gaussian(feats.reshape(n, h * w, d).mean(1))
        raw = self._raw(feats)
        stats = []
        for key in NORM_KEYS:
            values = raw[key].double()
            stats.append([float(values.mean()), max(float(values.std()), 1e-6)])
        self.norm = torch.tensor(stats, dtype=torch.float32)
        self.fusion = {"image_weight": 0.5, "map_weight": 0.5}
        if not val:
            warnings.warn(ONE_IMAGE_WARNING, stacklevel=3)
            self.calibration = Calibration(quantile=c.calibration_quantile)
            return
        data = SyntheticAnomalies(train, c.stages, c.anomaly_probability, c.seed)
        v_images, v_masks, v_labels = data.validation(self.prepare_images(val))
        v_raw = self._raw(self._features(v_images))
        z = self._normalised(v_raw)

        def image_metric(wt: float) -> float:
            return _safe(
                image_auroc, v_labels, (wt * z["head_score"] + (1 - wt) * z["maha_score"]).numpy()
            )

        def map_metric(wt: float) -> float:
            maps = (wt * z["head_map"] + (1 - wt) * z["maha_map"]).numpy()
            return _safe(pixel_auroc, v_masks, list(maps))

        iw, iv = _best_weight(image_metric)
        mw, mv = _best_weight(map_metric)
        self.fusion = {
            "image_weight": iw,
            "map_weight": mw,
            "val_image_auroc": iv,
            "val_pixel_auroc": mv,
            "n_val": len(val),
        }
        logger.info(
            "vfm fusion on %d held-out images: head weight %.1f for scores (val image AUROC "
            "%.3f), %.1f for maps (val pixel AUROC %.3f)",
            len(val),
            iw,
            iv,
            mw,
            mv,
        )
        good = [i for i, y in enumerate(v_labels) if y == 0]
        scores, maps = self._fuse(z)
        self.calibration = Calibration.from_scores(
            scores[good].tolist(), maps[good].flatten(1).amax(1).tolist(), c.calibration_quantile
        )

    # -- scoring ----------------------------------------------------------------------------
    def _reduce(self, feats: Tensor) -> Tensor:
        flat = feats.reshape(feats.shape[0], -1, feats.shape[-1])
        return flat if self.channels is None else flat[..., self.channels]

    @torch.no_grad()
    def _raw(self, feats: Tensor) -> dict[str, Tensor]:
        """Head and Mahalanobis scores ``[B]`` and maps ``[B, S, S]`` of adapted features."""
        assert self.positional is not None
        assert self.global_gaussian is not None
        b, h, w, d = feats.shape
        size, sigma = self.backbone.image_size, self.config.sigma
        prob = torch.sigmoid(self.network.logits(feats) / self.config.temperature)
        head_map = upsample_smooth(prob, size, sigma)
        maha_map = upsample_smooth(
            self.positional.distance(self._reduce(feats)).view(b, h, w), size, sigma
        )
        return {
            "head_score": head_map.flatten(1).amax(1),
            "maha_score": self.global_gaussian.distance(feats.reshape(b, h * w, d).mean(1)),
            "head_map": head_map,
            "maha_map": maha_map,
        }

    def _normalised(self, raw: dict[str, Tensor]) -> dict[str, Tensor]:
        assert self.norm is not None
        return {k: (raw[k] - self.norm[i, 0]) / self.norm[i, 1] for i, k in enumerate(NORM_KEYS)}

    def _fuse(self, z: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
        iw, mw = self.fusion["image_weight"], self.fusion["map_weight"]
        scores = iw * z["head_score"] + (1 - iw) * z["maha_score"]
        maps = mw * z["head_map"] + (1 - mw) * z["maha_map"]
        return scores, maps

    def score_features(self, feats: Tensor) -> tuple[Tensor, Tensor]:
        """Fused ``(scores [B], maps [B, S, S])`` of adapted features."""
        return self._fuse(self._normalised(self._raw(feats)))

    def predict(self, images: Sequence[np.ndarray], progress: bool = False) -> Prediction:
        """Fused scores and maps (at each image's size) with the calibrated thresholds."""

        def score_batch(batch):
            scores, maps = self.score_features(self._features(batch))
            return scores.tolist(), [m.numpy() for m in maps]

        return self._predict_batches(images, score_batch, progress)

    # -- checkpoints ------------------------------------------------------------------------
    def tensors(self) -> dict[str, Tensor]:
        """LoRA factors, head and (when fitted) Gaussian statistics and normalisation."""
        out = {f"net.{k}": v for k, v in self.network.state_dict().items()}
        if self.is_fitted():
            assert self.positional is not None
            assert self.global_gaussian is not None
            out |= self.positional.tensors("positional") | self.global_gaussian.tensors("global")
            out["norm"] = self.norm
            if self.channels is not None:
                out["channels"] = self.channels
        return out

    def save(self, folder: str | Path) -> Path:
        """``config.json`` + ``model.safetensors`` (LoRA weights, head, Gaussian statistics),
        swapped in atomically by :func:`~anomalens.methods.base.write_checkpoint` (the folder
        is the old model or the new one, ``last/`` kept); the frozen backbone is named, never
        copied."""
        return self._write(
            folder,
            self.tensors(),
            trained=self.trained,
            training=self.training_summary,
            fusion=self.fusion,
            backbone=self.backbone.describe(),
        )

    @classmethod
    def load(cls, folder: str | Path) -> VFM:
        """Restore a detector written by :meth:`save` (bit-identical tensors)."""
        model, meta, tensors = cls._read(folder)
        model.trained = bool(meta.get("trained", False))
        model.training_summary = dict(meta.get("training", {}))
        model.fusion = dict(meta.get("fusion", {}))
        state = {k[4:]: v for k, v in tensors.items() if k.startswith("net.")}
        try:
            model.network.load_state_dict(state)
        except RuntimeError as exc:
            raise CheckpointError(
                f"{folder}: the trained tensors do not fit {model.config.backbone} ({exc})"
            ) from exc
        if "norm" in tensors:
            try:
                model.positional = Gaussian.from_tensors(tensors, "positional")
                model.global_gaussian = Gaussian.from_tensors(tensors, "global")
            except KeyError as exc:
                raise CheckpointError(f"{folder}: model.safetensors lacks {exc.args[0]}") from None
            model.channels = tensors.get("channels")
            model.norm = tensors["norm"]
        return model


__all__ = ["FUSION_GRID", "VFM", "split_validation"]
