"""AnomalyDINO-style few-shot detection: kNN of patch features to a k-shot memory.

Damm et al., "AnomalyDINO: Boosting Patch-based Few-shot Anomaly Detection with DINOv2":

1. patch features of the last block (the model's final norm applied, as DINOv2's
   ``get_intermediate_layers(norm=True)``); any registry backbone works (for a CNN such as the
   offline EfficientNet-Lite the default taps are used, resized to the finest grid);
2. ``fit``: the features of every patch of the k good images (optionally with flipped / rotated
   copies) form the memory; an optional greedy coreset bounds its size;
3. ``predict``: cosine distance ``1 - cos`` of each test patch to its nearest memory patch;
   with ``foreground`` on, the distances of background patches are zeroed (OpenCV foreground
   mask of the image, see :func:`anomalens.postprocess.foreground_mask`); the map is the
   distance grid upsampled to ``image_size``, Gaussian-smoothed and resized to the input; the
   image score is the map's maximum (``image_score="max"``, the default) or, as in the paper,
   the mean of the top 1% patch distances (``"top_fraction"``);
4. thresholds from good images only, leave-one-out as in PatchCore (>= 2 shots).

With ``pose`` on (``auto``: an elongated object on a plain background, see
:func:`anomalens.pose.pose_decision`; decided and logged at ``fit``), every image, good or
tested, is first rotated so the part's principal axis is horizontal, heavier end left
(:mod:`anomalens.pose`), and, with ``pose_brightness``, scaled so its background median equals
that of the good images; the maps are computed on the normalised image and taken back to the
original frame. A k-shot memory of a part that lies at any angle then covers every angle.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from tqdm import tqdm

from anomalens.backbones.base import Features
from anomalens.data.transforms import augmented_views, resize_square
from anomalens.errors import check_choice
from anomalens.methods.base import FitReport, Prediction, batches, select_shots
from anomalens.methods.common import (
    MemoryConfig,
    MemoryDetector,
    build_memory,
    calibrate,
    check_fraction,
    pool_patches,
    top_fraction_mean,
    upsample_smooth,
)
from anomalens.neighbors import MemoryBank
from anomalens.pose import PoseState
from anomalens.postprocess import patch_masks, use_foreground
from anomalens.sampler import coreset_indices

#: Settings of ``image_score``.
IMAGE_SCORES = ("top_fraction", "max")


@dataclass
class AnomalyDINOConfig(MemoryConfig):
    """Parameters of :class:`AnomalyDINO` (stored in ``config.json``); the shared fields are
    described in :class:`~anomalens.methods.base.DetectorConfig`.

    backbone: ``dinov2:facebook/dinov2-small`` as in the paper; the offline
    ``efficientnet-lite0`` (the default) works too; image_size: None = the backbone's default
    (the paper uses 448 for DINOv2); layers: backbone taps (None: the last block of a ViT, the
    default taps of a CNN); final_norm: apply the model's final norm to the tokens
    (:meth:`~anomalens.backbones.base.Backbone.output_norm`); neighbourhood: local averaging of
    patch features (1 = off); foreground: ``auto`` (default: on for objects on a plain
    background, decided at ``fit``), ``on`` (zero the distances of background patches) or
    ``off``; foreground_memory: drop the background patches of the good images from the
    memory; augment: extra flipped / rotated views of each good image;
    memory_size: coreset size (None: keep every patch); top_fraction: see image_score; sigma:
    map smoothing in pixels at ``image_size``; search_precision: ``bf16`` shortlist + exact
    re-rank, or ``fp32``; calibration_images: good images scored leave-one-out for the
    thresholds; pose (default ``auto``), pose_brightness: pose normalisation (see
    :class:`~anomalens.methods.common.MemoryConfig`); image_score: ``max`` (default: the
    maximum of the smoothed map at ``image_size``) or ``top_fraction`` (the paper's: the mean of
    the ``top_fraction`` highest patch distances).

    The defaults ``foreground="auto", pose="auto", image_score="max"`` were chosen for few-shot
    use (docs/benchmarks.md, "Few-shot: pose normalisation"; the score by a validation set of
    good training images with synthetic defects, not by the test split); the paper's settings
    are ``foreground="off", pose="off", image_score="top_fraction"``.
    """

    final_norm: bool = True
    foreground: str = "auto"
    foreground_memory: bool = False
    top_fraction: float = 0.01
    pose: str = "auto"
    image_score: str = "max"

    def __post_init__(self) -> None:
        super().__post_init__()
        check_fraction("top_fraction", self.top_fraction)
        check_choice(self.image_score, IMAGE_SCORES, "image_score")


@dataclass
class EncodedPatches:
    """Unit-norm patch features ``[B, h, w, C]`` and, with foreground on, the foreground
    patches ``[B, h, w]`` (bool)."""

    feats: torch.Tensor
    masks: torch.Tensor | None


class AnomalyDINO(MemoryDetector):
    """Few-shot kNN detector; see the module docstring. ``AnomalyDINO(**config_fields)``."""

    method = "anomalydino"
    config_class = AnomalyDINOConfig

    def __init__(self, config: AnomalyDINOConfig | None = None, **kwargs) -> None:
        super().__init__(config, **kwargs)
        self._sources: torch.Tensor | None = None  # memory row -> good image, during fit

    # ------------------------------------------------------------------ plumbing
    @property
    def layers(self) -> tuple[int, ...]:
        """The backbone taps in use (the last block of a ViT by default)."""
        bb = self.backbone
        if self.config.layers is not None:
            return tuple(self.config.layers)
        return (bb.num_layers,) if bb.architecture == "vit" else tuple(bb.default_layers)

    def _encode(self, images: Sequence[np.ndarray], masks: bool) -> EncodedPatches:
        bb = self.backbone
        feats = bb.encode_image(bb.preprocess(images), self.layers, with_global=False)
        if self.config.final_norm and bb.architecture == "vit":
            norm = bb.output_norm()
            with torch.inference_mode():
                tokens = [norm(t).float().clone() for t in feats.tokens]
            feats = Features(tokens=tokens, grids=feats.grids)
        pf = pool_patches(feats, self.config.neighbourhood, normalize=True)
        fg = None
        if masks:
            small = [resize_square(img, bb.image_size) for img in images]
            fg = patch_masks(small, tuple(pf.shape[1:3]))
        return EncodedPatches(pf, fg)

    # ------------------------------------------------------------------ fit
    def fit(self, images: Iterable[np.ndarray], progress: bool = True) -> AnomalyDINO:
        """Build the k-shot memory from good RGB uint8 images and calibrate the thresholds."""
        c = self.config
        t0 = time.perf_counter()
        images = list(images)
        if not images:
            raise ValueError("AnomalyDINO needs at least one good image (it has no zero-shot mode)")
        images = [images[i] for i in select_shots(len(images), c.shots, c.seed)]
        self.use_foreground = use_foreground(c.foreground, images)
        self.pose, images = PoseState.fit(c.pose, images, c.pose_brightness, self.method)
        need_masks = self.use_foreground or c.foreground_memory
        n_views = 1 + len(c.augment)
        views = [v for img in images for v in augmented_views(img, c.augment)]
        feats, fg = [], []
        with tqdm(
            total=len(views), desc="anomalydino fit: features", unit="img", disable=not progress
        ) as bar:
            for batch in batches(views, c.batch_size):
                enc = self._encode(batch, masks=need_masks)
                feats.append(enc.feats)
                if enc.masks is not None:
                    fg.append(enc.masks)
                bar.update(len(batch))
        all_feats = torch.cat(feats)
        n, h, w, dim = all_feats.shape
        t1 = time.perf_counter()
        if c.foreground_memory:
            keep = torch.cat(fg).reshape(-1)
            flat = all_feats.reshape(-1, dim)
            src = torch.arange(n).repeat_interleave(h * w) // n_views
            memory, sources = flat[keep].clone(), src[keep]
            if c.memory_size is not None and memory.shape[0] > c.memory_size:
                idx = coreset_indices(memory, c.memory_size, seed=c.seed, progress=progress)
                memory, sources = memory[idx].clone(), sources[idx]
        else:
            memory, sources = build_memory(all_feats, n_views, c.memory_size, c.seed, progress)
        if memory.shape[0] == 0:
            raise ValueError("the foreground masks removed every patch of the good images")
        self.memory, self.grid = memory, (h, w)
        self._bank, self._sources = MemoryBank(memory, c.search_precision), sources
        t2 = time.perf_counter()
        originals = all_feats[::n_views]
        orig_masks = torch.cat(fg)[::n_views] if fg and self.use_foreground else None

        def score_one(i: int) -> tuple[float, float]:
            enc = EncodedPatches(
                originals[i : i + 1], None if orig_masks is None else orig_masks[i : i + 1]
            )
            scores, maps = self._score(enc, leave_out=i)
            return float(scores[0]), float(maps[0].max())

        self.calibration = calibrate(score_one, len(images), c, progress, self.method)
        self._sources = None
        t3 = time.perf_counter()
        self.fit_report = FitReport.timed(
            len(images), n * h * w, memory.shape[0], t0, features=t1, memory=t2, calibration=t3
        )
        return self

    # ------------------------------------------------------------------ predict
    def _score(self, enc: EncodedPatches, leave_out: int | None = None):
        """Image scores ``[B]`` and smoothed maps ``[B, S, S]`` of encoded images; ``leave_out``
        hides the memory rows of that good image (during ``fit``)."""
        exclude = None
        if leave_out is not None:
            assert self._sources is not None
            exclude = self._sources == leave_out
        b, h, w, dim = enc.feats.shape
        queries = enc.feats.reshape(-1, dim)
        dist = self._memory_bank().cosine_distance(queries, exclude).view(b, h * w)
        if enc.masks is not None:
            dist = dist * enc.masks.reshape(b, h * w)
        maps = upsample_smooth(dist.view(b, h, w), self.backbone.image_size, self.config.sigma)
        if self.config.image_score == "max":
            scores = maps.amax((1, 2))
        else:
            scores = top_fraction_mean(dist, self.config.top_fraction)
        return scores.numpy(), maps.numpy()

    def predict(self, images: Sequence[np.ndarray], progress: bool = False) -> Prediction:
        """Image scores and anomaly maps (at each input's resolution) for RGB uint8 images."""

        def score_batch(batch: list[np.ndarray]):
            return self._score(self._encode(batch, masks=self.use_foreground))

        return self._predict_batches(images, self.pose.wrap(score_batch), progress)
