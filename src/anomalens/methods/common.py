"""Parts the memory-based detectors share (PatchCore, AnomalyDINO, WinCLIP+, AA-CLIP's maps).

* :func:`pool_patches`: multi-layer patch embedding on one grid (PatchCore's locally aware
  features; with ``normalize`` the per-layer unit-norm features of AnomalyDINO / WinCLIP+);
* :func:`build_memory`: the memory of good patches (greedy coreset when it is too large) with
  the source image of each row, for leave-one-out calibration;
* :func:`calibrate`: leave-one-out thresholds over evenly spread good images;
* :func:`upsample_smooth`, :func:`top_fraction_mean`: patch maps to image maps and scores.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from tqdm import tqdm

from anomalens.backbones.base import Features, check_precision
from anomalens.data.transforms import check_augment, spread_indices
from anomalens.methods.base import (
    CONFIG_FILE,
    WEIGHTS_FILE,
    Calibration,
    Detector,
    DetectorConfig,
    check_at_least,
    checkpoint_field,
    checkpoint_grid,
    checkpoint_tensor,
)
from anomalens.neighbors import MemoryBank
from anomalens.pose import PoseState, check_pose
from anomalens.postprocess import check_foreground, gaussian_blur
from anomalens.sampler import coreset_indices

#: The warning when too few good images are given for leave-one-out thresholds.
ONE_IMAGE_WARNING = (
    "one good image cannot calibrate a threshold (leave-one-out needs at least 2); "
    "predictions will have no defective/ok verdict"
)


def finest_grid_index(features: Features) -> int:
    """Index of the layer with the finest grid in ``features``."""
    return max(range(len(features.grids)), key=lambda i: features.grids[i][0])


def pool_patches(
    features: Features,
    neighbourhood: int = 1,
    grid_index: int | None = None,
    normalize: bool = False,
) -> torch.Tensor:
    """Patch embedding ``[B, h, w, D]`` of all layers on the grid of layer ``grid_index``.

    Each layer is locally averaged over ``neighbourhood x neighbourhood`` patches (1 = off,
    padding not counted) and resized (bilinear) to the grid of ``grid_index`` (an index into
    ``features.tokens``; None: the finest grid); the layers are concatenated over channels.
    With ``normalize`` each layer is L2-normalised over its channels first and the result
    divided by ``sqrt(n_layers)``, so the cosine of two embeddings is the mean of the per-layer
    cosines.
    """
    if grid_index is None:
        grid_index = finest_grid_index(features)
    grid = features.grids[grid_index]
    maps = []
    for i in range(len(features.tokens)):
        m = features.as_map(i).float()
        if neighbourhood > 1:
            m = F.avg_pool2d(m, neighbourhood, 1, neighbourhood // 2, count_include_pad=False)
        if tuple(m.shape[-2:]) != tuple(grid):
            m = F.interpolate(m, size=grid, mode="bilinear", align_corners=False)
        maps.append(F.normalize(m, dim=1) if normalize else m)
    out = torch.cat(maps, 1)
    if normalize:
        out = out / math.sqrt(len(maps))
    return out.permute(0, 2, 3, 1).contiguous()


def build_memory(
    feats: torch.Tensor,
    n_views: int,
    memory_size: int | None,
    seed: int,
    progress: bool,
    proj_dim: int | None = 128,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(memory [M, C], sources [M])`` from patch features ``[G * n_views, h, w, C]``.

    Views of one image are adjacent; ``sources`` gives the original image of each row. A greedy
    coreset (random projection to ``proj_dim``, per-image prefilter) keeps ``memory_size`` rows
    when there are more (None = keep all).
    """
    _, h, w, dim = feats.shape
    flat = feats.reshape(-1, dim)
    if memory_size is not None and flat.shape[0] > memory_size:
        idx = coreset_indices(
            flat, memory_size, proj_dim=proj_dim, seed=seed, block=h * w, progress=progress
        )
    else:
        idx = torch.arange(flat.shape[0])
    return flat[idx].clone(), idx // (h * w * n_views)


def calibrate(
    score_one: Callable[[int], tuple[float, float] | None],
    n_images: int,
    config: Any,
    progress: bool,
    method: str,
) -> Calibration:
    """Leave-one-out thresholds: ``score_one(i) -> (score, map_max)`` of good image ``i`` scored
    without its own memory rows (None: image ``i`` cannot be left out), for up to
    ``config.calibration_images`` evenly spread images; the thresholds are the
    ``config.calibration_quantile`` of those. Fewer than 2 images give none (a warning)."""
    quantile = config.calibration_quantile
    desc = f"{method} fit: calibration"
    if n_images < 2:
        warnings.warn(ONE_IMAGE_WARNING, stacklevel=3)
        return Calibration(quantile=quantile)
    scores, maxima = [], []
    chosen = spread_indices(n_images, config.calibration_images)
    for i in tqdm(chosen, desc=desc, unit="img", disable=not progress, leave=False):
        result = score_one(i)
        if result is not None:
            scores.append(result[0])
            maxima.append(result[1])
    return Calibration.from_scores(scores, maxima, quantile)


@dataclass
class MemoryConfig(DetectorConfig):
    """Fields of memory detectors (PatchCore, AnomalyDINO), validated once.

    layers: backbone taps (None: the method's default); neighbourhood: local averaging window
    of patch features (1 = off); memory_size: coreset rows kept (None or more than the patches:
    all); search_precision: ``bf16`` shortlist + exact fp32 re-rank, or ``fp32``; sigma: map
    smoothing in pixels at ``image_size``; foreground: ``auto`` (on for objects on a plain
    background, decided at ``fit``), ``on`` or ``off``; augment: extra views of each good image
    in the memory (``hflip, vflip, rot90, rot180, rot270``); calibration_images: good images
    scored leave-one-out for the thresholds; pose: ``off``, ``on`` (rotate every image so the
    part's principal axis is horizontal, heavy end left, and take the maps back; see
    :mod:`anomalens.pose`) or ``auto`` (on for one elongated object on a plain background,
    decided and logged at ``fit``); pose_brightness: with pose on, also scale each image so its
    background median is the good images' median background level.
    """

    layers: tuple[int, ...] | None = None
    neighbourhood: int = 1
    memory_size: int | None = None
    search_precision: str = "auto"
    sigma: float = 4.0
    foreground: str = "auto"
    augment: tuple[str, ...] = ()
    calibration_images: int = 64
    pose: str = "off"
    pose_brightness: bool = True

    def __post_init__(self) -> None:
        super().__post_init__()
        check_pose(self.pose)
        self.layers = tuple(self.layers) if self.layers is not None else None
        self.augment = check_augment(self.augment)
        check_precision(self.search_precision, "search_precision")
        check_foreground(self.foreground)
        check_at_least(self, 1, "neighbourhood", "memory_size", "calibration_images")


class MemoryDetector(Detector):
    """Base of detectors whose model is one memory of good patch features (PatchCore,
    AnomalyDINO): the memory ``[M, D]``, its patch grid, the foreground decision of ``fit``, the
    search index, and their checkpoint (the memory in ``model.safetensors``)."""

    def __init__(self, config: Any = None, **kwargs: Any) -> None:
        super().__init__(config, **kwargs)
        self.memory: torch.Tensor | None = None
        self.grid: tuple[int, int] | None = None
        self.use_foreground = self.config.foreground == "on"
        #: pose normalisation decided at ``fit`` (:class:`anomalens.pose.PoseState`)
        self.pose = PoseState(on=self.config.pose == "on")
        self._bank: MemoryBank | None = None

    def is_fitted(self) -> bool:
        return self.memory is not None

    def _memory_bank(self) -> MemoryBank:
        """The search index of the memory (built on first use)."""
        if self._bank is None:
            assert self.memory is not None
            self._bank = MemoryBank(self.memory, self.config.search_precision)
        return self._bank

    def save(self, folder: str | Path) -> Path:
        """Write ``config.json`` + ``model.safetensors`` (the memory, float32)."""
        self._require_fitted()
        assert self.memory is not None
        assert self.grid is not None
        return self._write(
            folder,
            {"memory": self.memory},
            grid=list(self.grid),
            use_foreground=self.use_foreground,
            **self.pose.to_meta(),
        )

    @classmethod
    def load(cls, folder: str | Path) -> MemoryDetector:
        """Restore a detector written by :meth:`save` (bit-identical memory)."""
        model, meta, tensors = cls._read(folder)
        cfg_path, weights = Path(folder) / CONFIG_FILE, Path(folder) / WEIGHTS_FILE
        model.memory = checkpoint_tensor(tensors, "memory", weights)
        model.grid = checkpoint_grid(meta, cfg_path)
        model.use_foreground = checkpoint_field(meta, "use_foreground", bool, cfg_path)
        model.pose = PoseState.from_meta(meta, cfg_path)
        return model


def top_fraction_mean(values: torch.Tensor, fraction: float) -> torch.Tensor:
    """Mean of the largest ``max(1, int(N * fraction))`` values of each row of ``[B, N]``
    (AnomalyDINO's "mean of the top 1%")."""
    k = max(1, int(values.shape[1] * fraction))
    return values.topk(k, dim=1).values.mean(1)


def upsample_smooth(patch_maps: torch.Tensor, size: int, sigma: float) -> torch.Tensor:
    """Patch maps ``[B, h, w]`` -> ``[B, size, size]``: bilinear upsampling, Gaussian blur of
    ``sigma`` pixels."""
    up = F.interpolate(patch_maps[:, None].float(), size=(size, size), mode="bilinear")
    return gaussian_blur(up[:, 0], sigma)


def check_fraction(name: str, value: float) -> None:
    """Raise ValueError unless ``0 < value <= 1``."""
    if not 0.0 < value <= 1.0:
        raise ValueError(f"{name} must be in (0, 1], got {value}")


__all__ = [
    "ONE_IMAGE_WARNING",
    "MemoryConfig",
    "MemoryDetector",
    "build_memory",
    "calibrate",
    "check_fraction",
    "finest_grid_index",
    "pool_patches",
    "top_fraction_mean",
    "upsample_smooth",
]
