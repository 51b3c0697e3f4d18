"""Gaussian AD: multivariate Gaussians of pretrained features with Ledoit-Wolf shrinkage
(Rippel et al., "Modeling the Distribution of Normal Data in Pre-Trained Deep Features for
Anomaly Detection", ICPR 2020), plus a patch-level Gaussian for anomaly maps.

* image level (the paper): per feature level (``levels``; EfficientNet stages or ViT blocks) the
  spatial mean of the level's features; one Gaussian per level with Ledoit-Wolf shrinkage,
  which keeps the covariance invertible with fewer images than dimensions; the image score is
  the sum over levels of the Mahalanobis distances (``image_score="pooled"``);
* pixel level (our addition for maps): ONE Gaussian, shared by all positions, of the patch
  features at ``layers`` (stride 8), also Ledoit-Wolf, fitted on up to ``max_patches`` random
  good patches; the map is each patch's Mahalanobis distance, upsampled and smoothed;
  ``image_score="max"`` uses the map maximum instead of the pooled score;
* thresholds from good images only, held out by ``calibration_folds``-fold as in PaDiM.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from anomalens.backbones.base import Features
from anomalens.mahalanobis import Gaussian, fit_gaussian
from anomalens.methods.base import check_at_least
from anomalens.methods.common import pool_patches
from anomalens.methods.padim import GaussianFeatureConfig, GaussianFeatures, checkpoint_gaussian

IMAGE_SCORES = ("pooled", "max")


@dataclass
class GaussianADConfig(GaussianFeatureConfig):
    """Parameters of :class:`GaussianAD` (see the module docstring): ``levels`` pooled for the
    image score (None: the backbone's ``feature_levels``), ``image_score`` ``pooled`` or
    ``max``, ``max_patches`` good patches for the patch Gaussian."""

    levels: tuple[int, ...] | None = None
    image_score: str = "pooled"
    max_patches: int = 100_000

    def __post_init__(self) -> None:
        super().__post_init__()
        self.levels = tuple(int(v) for v in self.levels) if self.levels is not None else None
        if self.image_score not in IMAGE_SCORES:
            raise ValueError(f"image_score must be one of {IMAGE_SCORES}, got {self.image_score!r}")
        check_at_least(self, 1, "max_patches")


@dataclass
class GaussianModel:
    """The fitted Gaussians: one per pooled level and one of the patches."""

    levels: list[Gaussian]
    patches: Gaussian


class GaussianAD(GaussianFeatures):
    """Gaussian AD detector; see the module docstring. ``GaussianAD(**config_fields)``."""

    method = "gaussian"
    config_class = GaussianADConfig

    def __init__(self, config: GaussianADConfig | None = None, **kwargs) -> None:
        super().__init__(config, **kwargs)
        self.model: GaussianModel | None = None

    def _levels(self) -> tuple[int, ...]:
        bb, c = self.backbone, self.config
        return bb.resolve_layers(c.levels if c.levels is not None else bb.feature_levels)

    def embed_images(self, images):
        """``(patch features [B, h, w, D], pooled features of each level [B, C_l])``."""
        bb = self.backbone
        layers, grid_index = self._layers()
        levels = self._levels()
        taps = tuple(dict.fromkeys((*layers, *levels)))
        feats = bb.encode_image(bb.preprocess(images), taps, with_global=False)
        idx = [taps.index(t) for t in layers]
        sub = Features([feats.tokens[i] for i in idx], [feats.grids[i] for i in idx])
        pooled = [feats.tokens[taps.index(t)].mean(1) for t in levels]
        return pool_patches(sub, 1, grid_index), pooled

    def _fit_model(self, feats: torch.Tensor, pooled: list[torch.Tensor]) -> GaussianModel:
        flat = feats.reshape(-1, feats.shape[-1])
        if flat.shape[0] > self.config.max_patches:
            rng = np.random.default_rng(self.config.seed)
            rows = np.sort(rng.choice(flat.shape[0], self.config.max_patches, replace=False))
            flat = flat[torch.from_numpy(rows)]
        return GaussianModel([fit_gaussian(g) for g in pooled], fit_gaussian(flat))

    def _score(self, model: GaussianModel, feats: torch.Tensor, pooled: list[torch.Tensor]):
        b, h, w, _ = feats.shape
        maps = self._smooth(model.patches.distance(feats).view(b, h, w))
        if self.config.image_score == "max":
            return maps.flatten(1).amax(1), maps
        scores = torch.stack([g.distance(x) for g, x in zip(model.levels, pooled, strict=True)])
        return scores.sum(0), maps

    def _set_model(self, model: GaussianModel) -> None:
        self.model = model
        self._fitted = True

    def _model(self) -> GaussianModel:
        assert self.model is not None
        return self.model

    def save(self, folder: str | Path) -> Path:
        """``config.json`` + ``model.safetensors`` (means and precisions of every Gaussian)."""
        self._require_fitted()
        m = self._model()
        tensors = m.patches.tensors("patches")
        for i, g in enumerate(m.levels):
            tensors |= g.tensors(f"level{i}")
        return self._write(folder, tensors, grid=list(self.grid), n_levels=len(m.levels))

    @classmethod
    def load(cls, folder: str | Path) -> GaussianAD:
        """Restore a detector written by :meth:`save` (bit-identical tensors)."""
        model, meta, tensors = cls._read(folder)
        model.grid = tuple(meta["grid"])
        levels = [
            checkpoint_gaussian(tensors, f"level{i}", folder) for i in range(int(meta["n_levels"]))
        ]
        model._set_model(GaussianModel(levels, checkpoint_gaussian(tensors, "patches", folder)))
        return model


__all__ = ["IMAGE_SCORES", "GaussianAD", "GaussianADConfig", "GaussianModel"]
