"""PatchCore-style detector: a memory bank of good patch features and nearest-neighbour scores.

Pipeline (Roth et al., "Towards Total Recall in Industrial Anomaly Detection"):

0. each image is placed in the square input of ``image_size`` (``resize``: letterboxed with its
   aspect ratio kept, or stretched) inside a reflected ``border``; with ``pose`` on (``auto``:
   one elongated object on a plain background) it is first turned to the part's axis;
1. backbone feature maps at ``layers``; each map is locally averaged over a
   ``neighbourhood x neighbourhood`` window, resized to the grid of ``grid_layer`` and
   concatenated;
2. ``fit``: features of all patches of the good images (optionally also of rotated/flipped
   copies), reduced by greedy k-center coreset selection to ``memory_size`` rows or
   ``memory_fraction`` of the patches, whichever is more;
3. ``predict``: distance of every patch to its nearest memory row, upsampled to ``image_size``,
   Gaussian-smoothed; with foreground weighting on, the map is multiplied by a soft mask of
   the object (Otsu foreground, dilated by ``foreground_margin`` and blurred), so dust on the
   background cannot raise the score (``foreground="auto"`` turns this on when the good
   images show an object on a plain background, off for textures and surfaces); the map is
   cut back to the image's content and resized to its size; image score = mean of the
   ``top_fraction`` largest map pixels;
4. thresholds from good images only: each of up to ``calibration_images`` training images is
   scored against the memory without its own rows (leave-one-out), and the thresholds are the
   ``calibration_quantile`` of those scores and map maxima.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import cv2
import numpy as np
import torch
from tqdm import tqdm

from anomalens.data.transforms import Frame, augmented_shapes, augmented_views, check_resize
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
    foreground_decision,
    image_score,
    masked_blur,
    resize_map,
    soft_foreground,
)
from anomalens.prediction import PatchFeatures

logger = logging.getLogger(__name__)

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
    the side); resize: ``letterbox`` keeps each image's aspect ratio inside the square input
    (the rest reflected and left out of memory and scores) or ``square`` stretches it;
    border: a reflected frame around the image, as a fraction of the input side, so the
    convolutions' zero padding never touches the image (1/16: 20 px at 320); top_fraction:
    image score = mean of this fraction of the map's largest pixels (0: the maximum);
    memory_fraction: the coreset keeps this fraction of the training patches when that is more
    than ``memory_size`` (large training sets).
    Defaults chosen by the mean over screw, magnetic tile and the demo textures
    (``benchmarks/sweep_defaults.py``, docs/benchmarks.md). batch_size 4 is the fastest per
    image for EfficientNet-Lite0 on CPU (larger batches spill the caches).
    """

    image_size: int | None = 320
    batch_size: int = 4
    layers: tuple[int, ...] | None = (2, 3)
    grid_layer: int | None = 3
    neighbourhood: int = 3
    memory_size: int | None = 10240
    memory_fraction: float = 0.02
    proj_dim: int = 128
    foreground_margin: float = 0.04
    resize: str = "letterbox"
    border: float = 0.0625
    top_fraction: float = 0.003
    pose: str = "auto"

    def __post_init__(self) -> None:
        super().__post_init__()
        check_resize(self.resize)
        if not 0.0 <= self.memory_fraction <= 1.0:
            raise ValueError(f"memory_fraction must be in [0, 1], got {self.memory_fraction}")
        if not 0.0 <= self.top_fraction < 1.0:
            raise ValueError(f"top_fraction must be in [0, 1), got {self.top_fraction}")
        if not 0.0 <= self.border < 0.25:
            raise ValueError(f"border must be in [0, 0.25), got {self.border}")
        if (
            self.grid_layer is not None
            and self.layers is not None
            and (self.grid_layer not in self.layers)
        ):
            raise ValueError(f"grid_layer {self.grid_layer} is not one of layers {self.layers}")


def _fill_padding(feats: torch.Tensor, frames: Sequence[Frame]) -> None:
    """Replace, in place, the patches of padded cells by copies of the same image's content
    patches, so the memory (and its coreset, which works per image) never holds padding."""
    _, h, w, _ = feats.shape
    for i, frame in enumerate(frames):
        if frame.is_full:
            continue
        inside = torch.from_numpy(frame.content_grid((h, w)) > 0)
        content = feats[i][inside]
        outside = (~inside).nonzero(as_tuple=True)
        feats[i][outside] = content[torch.arange(outside[0].numel()) % content.shape[0]]


class PatchCore(MemoryDetector):
    """Memory-bank detector; see the module docstring. ``PatchCore(**config_fields)``.

    ``keep_features``: predictions carry the patch features each map came from
    (``Prediction.features``, for defect types; :func:`~anomalens.explain.defect_types.
    fit_defect_types` turns it on); off by default, as they take about as much memory as maps.
    """

    method = "patchcore"
    config_class = PatchCoreConfig
    keep_features: bool = False

    def frames(self, images: Sequence[np.ndarray]) -> list[Frame]:
        """Where each image sits in the square backbone input (``resize``, ``border``)."""
        return [self.frame(img.shape) for img in images]

    def frame(self, shape: Sequence[int]) -> Frame:
        """Where an image of ``shape`` sits in the square backbone input."""
        size = self.backbone.image_size
        return Frame.fit(shape, size, self.config.resize, round(self.config.border * size))

    def embed_images(self, images: Sequence[np.ndarray]) -> torch.Tensor:
        """Patch embeddings ``[B, h, w, D]`` of RGB uint8 images (placed by :meth:`frames`)."""
        bb = self.backbone
        c = self.config
        layers = list(c.layers or bb.default_layers)
        placed = [f.place(img) for f, img in zip(self.frames(images), images, strict=True)]
        feats = bb.encode_image(bb.preprocess(placed), layers)
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
        frames = self.frames(images)
        weights = self.foreground_weights(images)
        if weights is not None:  # into the input frame (padding 0)
            weights = [f.to_input(wt, wt.shape) for f, wt in zip(frames, weights, strict=True)]
        flat = feats.reshape(-1, dim)
        bank = self._memory_bank()
        full = all(f.is_full for f in frames)
        content = None if full else np.stack([f.content_grid((h, w)) for f in frames])
        if weights is None and content is None:
            dist = bank.search(flat, exclude=exclude)[0]
        else:
            keep = np.ones((b, h, w), dtype=bool) if content is None else content > 0
            if weights is not None:
                near = np.stack(
                    [cv2.resize(wt, (w, h), interpolation=cv2.INTER_AREA) for wt in weights]
                )
                keep &= near > MIN_WEIGHT
            rows = torch.from_numpy(keep.reshape(-1))
            dist = torch.zeros(b * h * w)
            if bool(rows.any()):
                dist[rows] = bank.search(flat[rows], exclude=exclude)[0]
        # sigma is given in pixels at image_size; the grid is image_size / h times coarser
        sigma = self.config.sigma * h / self.backbone.image_size
        mask = None if content is None else torch.from_numpy(content)
        grid = masked_blur(dist.view(b, h, w), mask, sigma)
        scores, maps = [], []
        for i, img in enumerate(images):
            m = grid[i].numpy()
            if weights is not None:  # weighted at the mask's resolution: one resize to the image
                m = resize_map(m, weights[i].shape) * weights[i]
            m = frames[i].to_image(m, img.shape[:2])
            scores.append(image_score(m, self.config.top_fraction))
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
        self.use_foreground, fg_note = foreground_decision(c.foreground, images)
        input_note = self.input_note(images)
        self.pose, images = PoseState.fit(c.pose, images, c.pose_brightness, self.method)
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
        _, h, w, _ = feats.shape
        shapes = [s for img in images for s in augmented_shapes(img.shape, c.augment)]
        _fill_padding(feats, [self.frame(shape) for shape in shapes])
        t1 = time.perf_counter()
        self.memory, sources = build_memory(
            feats,
            n_views,
            self.memory_rows(feats.shape[0] * h * w),
            c.seed,
            progress,
            proj_dim=c.proj_dim,
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
        self.fit_report.notes = [fg_note, input_note]
        for note in self.fit_report.notes:
            logger.info("%s", note)
        return self

    def memory_rows(self, n_patches: int) -> int | None:
        """Coreset rows for ``n_patches`` training patches: ``memory_size``, or
        ``memory_fraction`` of the patches when that is more (None: keep every patch)."""
        c = self.config
        if c.memory_size is None:
            return None
        return max(c.memory_size, round(c.memory_fraction * n_patches))

    def input_note(self, images: Sequence[np.ndarray]) -> str:
        """What the model does with an image's size and aspect ratio, and the range it was
        fitted on (in words, for the fit report)."""
        c, size = self.config, self.backbone.image_size
        heights = [img.shape[0] for img in images]
        widths = [img.shape[1] for img in images]
        aspects = [max(h, w) / min(h, w) for h, w in zip(heights, widths, strict=True)]
        border = round(c.border * size)
        how = (
            f"stretched to a {size} px square (an image of another aspect ratio is distorted)"
            if c.resize == "square"
            else f"scaled to fit a {size} px square with its aspect ratio kept, the rest "
            "filled by reflection and left out of the scores"
        )
        if border:
            how += f", inside a {border} px reflected border"
        return (
            f"inputs: each image is {how}; maps come back at each image's own size. Fitted on "
            f"{min(heights)}-{max(heights)} x {min(widths)}-{max(widths)} px images "
            f"(aspect ratio {min(aspects):.2f}-{max(aspects):.2f})"
        )

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
        """Image scores and anomaly maps (at each input's resolution) for RGB uint8 images;
        with ``keep_features``, ``features`` holds the patch features each map came from
        (:class:`PatchFeatures`)."""
        kept: list[PatchFeatures] = []

        def score(batch: list[np.ndarray]) -> tuple[list[float], list[np.ndarray]]:
            normed = [self.pose.normalise(img) for img in batch]  # (image seen, pose or None)
            posed = [img for img, _ in normed]
            feats = self.embed_images(posed)
            scores, maps = self._score(feats, posed)
            if self.keep_features:
                key = self.feature_key
                kept.extend(
                    PatchFeatures.placed(f.numpy(), key, self.frame(seen.shape), seen.shape, pose)
                    for f, (seen, pose) in zip(feats, normed, strict=True)
                )
            return scores, [self.pose.restore(m, p) for m, (_, p) in zip(maps, normed, strict=True)]

        prediction = self._predict_batches(images, score, progress)
        prediction.features = kept if self.keep_features else None
        return prediction

    @property
    def feature_key(self) -> str:
        """What the patch features of :meth:`predict` depend on (see :class:`PatchFeatures`)."""
        c = self.config
        layers = list(c.layers or self.backbone.default_layers)
        return (
            f"{self.method} {c.backbone} {self.backbone.image_size}px layers={layers} "
            f"grid={c.grid_layer} neighbourhood={c.neighbourhood} {c.resize} border={c.border} "
            f"pose={'on' if self.pose.on else 'off'}"
        )
