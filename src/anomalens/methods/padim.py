"""PaDiM: one Gaussian per grid position of the patch features (Defard et al., "PaDiM: a Patch
Distribution Modeling Framework for Anomaly Detection and Localization", ICPR 2021).

1. backbone feature maps at ``layers`` resized to the grid of ``grid_layer`` (stride 8 for
   EfficientNet-Lite stage 3) and concatenated;
2. channel reduction to ``reduce_dim``: a random subset of channels (``reduction="random"``,
   the paper's choice) or the first principal axes of the good patches (``"pca"``);
3. ``fit``: per position the mean and the covariance of the good images' features plus
   ``ridge * I`` (the paper's 0.01), inverted once;
4. ``predict``: the Mahalanobis distance of every patch to its position's Gaussian, upsampled to
   ``image_size`` and Gaussian-smoothed (``sigma`` pixels); image score = map maximum;
5. thresholds from good images only: each training image is scored by Gaussians fitted without
   it (``calibration_folds``-fold), and the thresholds are the ``calibration_quantile`` of those.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from anomalens.errors import CheckpointError
from anomalens.mahalanobis import (
    Gaussian,
    fit_positional,
    held_out_scores,
    pca_projection,
    select_channels,
)
from anomalens.methods.base import (
    Calibration,
    Detector,
    DetectorConfig,
    FitReport,
    Prediction,
    batches,
    check_at_least,
    select_shots,
)
from anomalens.methods.common import ONE_IMAGE_WARNING, pool_patches, upsample_smooth

REDUCTIONS = ("random", "pca")


@dataclass
class GaussianFeatureConfig(DetectorConfig):
    """Fields shared by the Gaussian detectors (PaDiM, Gaussian AD): patch features at
    ``layers`` on the grid of ``grid_layer`` (None: the finest of ``layers``; ``layers`` None:
    (2, 3, 4) on CNNs, the backbone's ``feature_levels`` on ViTs), map smoothing ``sigma`` in
    pixels at ``image_size``, and ``calibration_folds`` for held-out thresholds."""

    image_size: int | None = 256
    batch_size: int = 4
    layers: tuple[int, ...] | None = None
    grid_layer: int | None = 3
    sigma: float = 4.0
    calibration_folds: int = 5

    def __post_init__(self) -> None:
        super().__post_init__()
        self.layers = tuple(int(v) for v in self.layers) if self.layers is not None else None
        check_at_least(self, 2, "calibration_folds")
        if self.sigma < 0:
            raise ValueError(f"sigma must be >= 0, got {self.sigma}")


@dataclass
class PaDiMConfig(GaussianFeatureConfig):
    """Parameters of :class:`PaDiM` (see the module docstring): ``reduce_dim`` channels kept
    (None: all), ``reduction`` ``random`` or ``pca``, ``ridge`` added to every covariance."""

    reduce_dim: int | None = 100
    reduction: str = "random"
    ridge: float = 0.01

    def __post_init__(self) -> None:
        super().__post_init__()
        check_at_least(self, 1, "reduce_dim")
        if self.reduction not in REDUCTIONS:
            raise ValueError(f"reduction must be one of {REDUCTIONS}, got {self.reduction!r}")
        if self.ridge <= 0:
            raise ValueError(f"ridge must be > 0, got {self.ridge}")


class GaussianFeatures(Detector):
    """What PaDiM and Gaussian AD share: patch features, ``fit`` bookkeeping and held-out
    calibration. Subclasses implement ``_fit_model(feats, pooled)``, ``_score(model, feats,
    pooled)``, ``_set_model`` / ``_model`` and the checkpoint tensors."""

    def __init__(self, config=None, **kwargs) -> None:
        super().__init__(config, **kwargs)
        self.grid: tuple[int, int] | None = None
        self._fitted = False

    def is_fitted(self) -> bool:
        return self.grid is not None and self._fitted

    def _layers(self) -> tuple[tuple[int, ...], int | None]:
        """The taps and the index of the grid tap among them."""
        bb, c = self.backbone, self.config
        if c.layers is not None:
            layers = bb.resolve_layers(c.layers)
        elif bb.architecture == "cnn":
            layers = bb.resolve_layers((2, 3, 4))
        else:
            layers = tuple(bb.feature_levels)
        grid = c.grid_layer if c.grid_layer in layers else None
        return layers, (layers.index(grid) if grid is not None else None)

    def embed_images(self, images: Sequence[np.ndarray]) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """``(patch features [B, h, w, D], per-layer pooled features [B, C_l])``."""
        bb = self.backbone
        layers, grid_index = self._layers()
        feats = bb.encode_image(bb.preprocess(images), layers, with_global=False)
        pooled = [t.mean(1) for t in feats.tokens]
        return pool_patches(feats, 1, grid_index), pooled

    def _extract(self, images: list[np.ndarray], progress: bool):
        patches, pooled = [], []
        for batch in tqdm(
            list(batches(images, self.config.batch_size)),
            desc=f"{self.method} fit: features",
            unit="batch",
            disable=not progress,
        ):
            p, g = self.embed_images(batch)
            patches.append(p)
            pooled.append(g)
        levels = [torch.cat([g[i] for g in pooled]) for i in range(len(pooled[0]))]
        return torch.cat(patches), levels

    def fit(self, images: Iterable[np.ndarray], progress: bool = True) -> GaussianFeatures:
        """Fit the Gaussians on good RGB uint8 images and calibrate the thresholds."""
        c = self.config
        t0 = time.perf_counter()
        images = list(images)
        if not images:
            raise ValueError("fit needs at least one good image")
        images = [images[i] for i in select_shots(len(images), c.shots, c.seed)]
        feats, pooled = self._extract(images, progress)
        t1 = time.perf_counter()
        _, h, w, _ = feats.shape
        self.grid = (h, w)
        self._prepare(feats)
        model = self._fit_model(feats, pooled)
        t2 = time.perf_counter()
        self.calibration = self._calibrate(feats, pooled, images)
        self._set_model(model)
        t3 = time.perf_counter()
        self.fit_report = FitReport.timed(
            len(images), feats.shape[0] * h * w, 0, t0, features=t1, gaussians=t2, calibration=t3
        )
        return self

    def _calibrate(self, feats, pooled, images) -> Calibration:
        c = self.config
        if len(images) < 2:
            warnings.warn(ONE_IMAGE_WARNING, stacklevel=3)
            return Calibration(quantile=c.calibration_quantile)

        def fit(rest: list[int]):
            return self._fit_model(feats[rest], [g[rest] for g in pooled])

        def score(model, fold: list[int]):
            s, maps = self._score(model, feats[fold], [g[fold] for g in pooled])
            return list(zip(s.tolist(), maps.flatten(1).amax(1).tolist(), strict=True))

        pairs = held_out_scores(len(images), c.calibration_folds, fit, score)
        return Calibration.from_scores(
            [p[0] for p in pairs], [p[1] for p in pairs], c.calibration_quantile
        )

    def predict(self, images: Sequence[np.ndarray], progress: bool = False) -> Prediction:
        """Image scores and anomaly maps (at each input's resolution) for RGB uint8 images."""

        def score_batch(batch):
            feats, pooled = self.embed_images(batch)
            scores, maps = self._score(self._model(), feats, pooled)
            return scores.tolist(), [m.numpy() for m in maps]

        return self._predict_batches(images, score_batch, progress)

    def _smooth(self, patch_maps: torch.Tensor) -> torch.Tensor:
        return upsample_smooth(patch_maps, self.backbone.image_size, self.config.sigma)

    # subclass hooks
    def _prepare(self, feats: torch.Tensor) -> None:
        """Decide what depends on all training features (channel reduction)."""

    def _fit_model(self, feats: torch.Tensor, pooled: list[torch.Tensor]):
        raise NotImplementedError

    def _score(self, model, feats: torch.Tensor, pooled: list[torch.Tensor]):
        """``(scores [B], maps [B, S, S])``."""
        raise NotImplementedError

    def _set_model(self, model) -> None:
        raise NotImplementedError

    def _model(self):
        raise NotImplementedError


class PaDiM(GaussianFeatures):
    """PaDiM detector; see the module docstring. ``PaDiM(**config_fields)``."""

    method = "padim"
    config_class = PaDiMConfig

    def __init__(self, config: PaDiMConfig | None = None, **kwargs) -> None:
        super().__init__(config, **kwargs)
        self.gaussian: Gaussian | None = None
        self.channels: torch.Tensor | None = None  # random selection
        self.pca_mean: torch.Tensor | None = None
        self.pca_components: torch.Tensor | None = None

    def _prepare(self, feats: torch.Tensor) -> None:
        c = self.config
        dim = feats.shape[-1]
        self.channels = self.pca_mean = self.pca_components = None
        if c.reduce_dim is None or c.reduce_dim >= dim:
            return
        if c.reduction == "random":
            self.channels = select_channels(dim, c.reduce_dim, c.seed)
        else:
            self.pca_mean, self.pca_components = pca_projection(
                feats.reshape(-1, dim), c.reduce_dim
            )

    def reduce(self, feats: torch.Tensor) -> torch.Tensor:
        """Patch features ``[B, h, w, D]`` -> ``[B, h * w, d]`` after channel reduction."""
        flat = feats.reshape(feats.shape[0], -1, feats.shape[-1])
        if self.channels is not None:
            return flat[..., self.channels]
        if self.pca_components is not None:
            return (flat - self.pca_mean) @ self.pca_components
        return flat

    def _fit_model(self, feats: torch.Tensor, pooled: list[torch.Tensor]) -> Gaussian:
        return fit_positional(self.reduce(feats), ridge=self.config.ridge)

    def _score(self, model: Gaussian, feats: torch.Tensor, pooled: list[torch.Tensor]):
        b, h, w, _ = feats.shape
        maps = self._smooth(model.distance(self.reduce(feats)).view(b, h, w))
        return maps.flatten(1).amax(1), maps

    def _set_model(self, model: Gaussian) -> None:
        self.gaussian = model
        self._fitted = True

    def _model(self) -> Gaussian:
        assert self.gaussian is not None
        return self.gaussian

    def save(self, folder: str | Path) -> Path:
        """``config.json`` + ``model.safetensors`` (per-position means and precisions, the
        channel selection or PCA projection)."""
        self._require_fitted()
        tensors = self._model().tensors("positional")
        if self.channels is not None:
            tensors["channels"] = self.channels
        if self.pca_components is not None:
            tensors |= {"pca.mean": self.pca_mean, "pca.components": self.pca_components}
        return self._write(folder, tensors, grid=list(self.grid))

    @classmethod
    def load(cls, folder: str | Path) -> PaDiM:
        """Restore a detector written by :meth:`save` (bit-identical tensors)."""
        model, meta, tensors = cls._read(folder)
        model.grid = tuple(meta["grid"])
        model.channels = tensors.get("channels")
        model.pca_mean = tensors.get("pca.mean")
        model.pca_components = tensors.get("pca.components")
        model._set_model(checkpoint_gaussian(tensors, "positional", folder))
        return model


def checkpoint_gaussian(tensors: dict, prefix: str, folder: str | Path) -> Gaussian:
    """The Gaussian ``prefix`` of a checkpoint's tensors; CheckpointError when it is missing."""
    try:
        return Gaussian.from_tensors(tensors, prefix)
    except KeyError as exc:
        raise CheckpointError(f"{folder}: model.safetensors lacks tensor {exc.args[0]}") from None


__all__ = [
    "REDUCTIONS",
    "GaussianFeatureConfig",
    "GaussianFeatures",
    "PaDiM",
    "PaDiMConfig",
    "checkpoint_gaussian",
]
