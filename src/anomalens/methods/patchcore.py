"""PatchCore-style detector: a memory bank of good patch features and nearest-neighbour scores.

Pipeline (Roth et al., "Towards Total Recall in Industrial Anomaly Detection"):

1. backbone feature maps at ``layers``; each map is locally averaged over a
   ``neighbourhood x neighbourhood`` window, resized to the grid of ``grid_layer`` and
   concatenated;
2. ``fit``: features of all patches of the good images (optionally also of rotated/flipped
   copies), reduced to ``memory_size`` rows by greedy k-center coreset selection;
3. ``predict``: distance of every patch to its nearest memory row, upsampled to ``image_size``,
   Gaussian-smoothed; with foreground weighting on, the map is multiplied by a soft mask of
   the object (Otsu foreground, dilated by ``foreground_margin`` and blurred), so dust on the
   background cannot raise the score; image score = maximum of the map, which is resized to
   the input size. ``foreground="auto"`` turns this on when the good images show an object on
   a plain background (and off for textures);
4. thresholds from good images only: each of up to ``calibration_images`` training images is
   scored against the memory without its own rows (leave-one-out), and the thresholds are the
   ``calibration_quantile`` of those scores and map maxima.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import cv2
import numpy as np
import torch
from tqdm import tqdm

from anomalens.data.transforms import augmented_views
from anomalens.methods.base import Calibration, FitReport, Prediction, batches, select_shots
from anomalens.methods.common import (
    MemoryConfig,
    MemoryDetector,
    build_memory,
    calibrate,
    pool_patches,
)
from anomalens.pose import PoseState
from anomalens.postprocess import (
    FOREGROUND_SIZE,
    gaussian_blur,
    resize_map,
    soft_foreground,
    use_foreground,
)

#: Patches whose foreground weight is below this are not searched (their distance is 0).
MIN_WEIGHT = 0.05


@dataclass
class PatchCoreConfig(MemoryConfig):
    """Parameters of :class:`PatchCore` (stored in ``config.json``); the shared fields are
    described in :class:`~anomalens.methods.base.DetectorConfig` and
    :class:`~anomalens.methods.common.MemoryConfig` (``layers`` None: the backbone default;
    ``foreground`` on multiplies the map by a soft object mask).

    grid_layer: the tap whose grid the patches live on (None: the finest); proj_dim: random
    projection used by the coreset; foreground_margin: dilation of the object mask (fraction of
    the side). batch_size 4 is the fastest per image for
    EfficientNet-Lite0 on CPU (larger batches spill the caches; docs/benchmarks.md).
    """

    image_size: int | None = 320
    batch_size: int = 4
    layers: tuple[int, ...] | None = (2, 3)
    grid_layer: int | None = 3
    neighbourhood: int = 3
    memory_size: int | None = 10240
    proj_dim: int = 128
    foreground_margin: float = 0.04

    def __post_init__(self) -> None:
        super().__post_init__()
        if (
            self.grid_layer is not None
            and self.layers is not None
            and (self.grid_layer not in self.layers)
        ):
            raise ValueError(f"grid_layer {self.grid_layer} is not one of layers {self.layers}")


class PatchCore(MemoryDetector):
    """Memory-bank detector; see the module docstring. ``PatchCore(**config_fields)``."""

    method = "patchcore"
    config_class = PatchCoreConfig

    def embed_images(self, images: Sequence[np.ndarray]) -> torch.Tensor:
        """Patch embeddings ``[B, h, w, D]`` of RGB uint8 images."""
        bb = self.backbone
        c = self.config
        layers = list(c.layers or bb.default_layers)
        feats = bb.encode_image(bb.preprocess(images), layers)
        grid_index = layers.index(c.grid_layer) if c.grid_layer is not None else None
        return pool_patches(feats, c.neighbourhood, grid_index)

    def foreground_weights(self, images: Sequence[np.ndarray]) -> list[np.ndarray] | None:
        """Soft object masks at ``FOREGROUND_SIZE`` (None when weighting is off)."""
        if not self.use_foreground:
            return None
        margin = self.config.foreground_margin
        return [soft_foreground(img, FOREGROUND_SIZE, margin) for img in images]

    def _score(
        self,
        feats: torch.Tensor,
        images: Sequence[np.ndarray],
        exclude: torch.Tensor | None = None,
    ) -> tuple[list[float], list[np.ndarray]]:
        """Image scores and maps (at each image's resolution) from patch embeddings.

        With foreground weighting, only patches whose weight exceeds ``MIN_WEIGHT`` are searched
        (the others would be multiplied by almost 0): for an object covering a quarter of the
        image, 4x less search.
        """
        b, h, w, dim = feats.shape
        weights = self.foreground_weights(images)
        flat = feats.reshape(-1, dim)
        bank = self._memory_bank()
        if weights is None:
            dist = bank.search(flat, exclude=exclude)[0]
        else:
            near = np.stack(
                [cv2.resize(wt, (w, h), interpolation=cv2.INTER_AREA) for wt in weights]
            )
            rows = torch.from_numpy(near.reshape(-1) > MIN_WEIGHT)
            dist = torch.zeros(b * h * w)
            if bool(rows.any()):
                dist[rows] = bank.search(flat[rows], exclude=exclude)[0]
        # sigma is given in pixels at image_size; the grid is image_size / h times coarser
        grid = gaussian_blur(dist.view(b, h, w), self.config.sigma * h / self.backbone.image_size)
        scores, maps = [], []
        for i, img in enumerate(images):
            m = grid[i].numpy()
            if weights is not None:  # weighted at the mask's resolution: one resize to the image
                m = resize_map(m, weights[i].shape) * weights[i]
            m = resize_map(m, img.shape[:2])
            scores.append(float(m.max()))
            maps.append(m)
        return scores, maps

    # ------------------------------------------------------------------ fit
    def fit(self, images: Iterable[np.ndarray], progress: bool = True) -> PatchCore:
        """Build the memory from good RGB uint8 images and calibrate the thresholds."""
        c = self.config
        t0 = time.perf_counter()
        images = list(images)
        if not images:
            raise ValueError("fit needs at least one good image")
        keep = select_shots(len(images), c.shots, c.seed)
        images = [images[i] for i in keep]
        self.use_foreground = use_foreground(c.foreground, images)
        self.pose, images = PoseState.fit(c.pose, images, c.pose_brightness, self.method)  # #15
        n_views = 1 + len(c.augment)
        views = (v for img in images for v in augmented_views(img, c.augment))
        chunks = []
        with tqdm(
            total=len(images) * n_views,
            desc="patchcore fit: features",
            unit="img",
            disable=not progress,
        ) as bar:
            for batch in batches(views, c.batch_size):
                chunks.append(self.embed_images(batch))
                bar.update(len(batch))
        feats = torch.cat(chunks)  # [G * n_views, h, w, D], views of one image adjacent
        del chunks
        t1 = time.perf_counter()
        _, h, w, _ = feats.shape
        self.memory, sources = build_memory(
            feats, n_views, c.memory_size, c.seed, progress, proj_dim=c.proj_dim
        )
        self.grid = (h, w)
        self._bank = None
        t2 = time.perf_counter()
        self.calibration = self._calibrate(feats[::n_views], images, sources, progress)
        t3 = time.perf_counter()
        n_patches = feats.shape[0] * h * w
        self.fit_report = FitReport.timed(
            len(images),
            n_patches,
            self.memory.shape[0],
            t0,
            features=t1,
            coreset=t2,
            calibration=t3,
        )
        return self

    def _calibrate(
        self,
        feats: torch.Tensor,
        images: Sequence[np.ndarray],
        sources: torch.Tensor,
        progress: bool,
    ) -> Calibration:
        """Leave-one-out thresholds: each chosen training image against the memory without the
        rows that came from it."""

        def score_one(i: int) -> tuple[float, float] | None:
            exclude = sources == i
            if bool(exclude.all()):
                return None
            score, maps = self._score(feats[i : i + 1], [images[i]], exclude=exclude)
            return score[0], float(maps[0].max())

        return calibrate(score_one, feats.shape[0], self.config, progress, self.method)

    # ------------------------------------------------------------------ predict
    def predict(self, images: Sequence[np.ndarray], progress: bool = False) -> Prediction:
        """Image scores and anomaly maps (at each input's resolution) for RGB uint8 images."""
        score = self.pose.wrap(lambda batch: self._score(self.embed_images(batch), batch))
        return self._predict_batches(images, score, progress)
