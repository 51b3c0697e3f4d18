"""Training data for AA-CLIP's two-stage adapter training.

:class:`TrainingData` turns :class:`~anomalens.data.sample.Sample` objects into batches of
:class:`TrainItem` (image, mask, label at the training size) in one of three modes:

* ``"masks"``: the samples as given, good and defective with their ground-truth masks;
* ``"kshot"``: first :func:`select_kshot` (``shots // 2`` good + the rest defective per
  category, as the reference defines k-shot), then as ``"masks"``;
* ``"synthetic"``: good images only; each epoch every image independently gets one synthetic
  defect with probability ``defect_probability`` (placed on the object for objects on a plain
  background, see :func:`~anomalens.postprocess.has_plain_background`).

The validation split (:func:`split_validation`) is made first, from the pool the mode uses.
Augmentation follows the reference: stage 1 rotates (+-5 degrees), crops (90-100 % side) and
flips; stage 2 adds colour jitter (brightness, contrast, saturation 0.8-1.2, p = 0.7). Every
random choice comes from ``seed`` (and epoch, stage, image index), so epochs reproduce.
"""

from __future__ import annotations

import math
import warnings
import zlib
from collections import defaultdict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import cv2
import numpy as np

from anomalens.data.sample import Sample
from anomalens.data.synthetic import DEFECT_KINDS, add_synthetic_defect
from anomalens.postprocess import (
    check_foreground,
    foreground_mask,
    has_plain_background,
)

__all__ = ["MODES", "TrainItem", "TrainingData", "select_kshot", "split_validation"]

#: Training data modes (``anomalens train --mode``).
MODES = ("masks", "kshot", "synthetic")
#: Stage-1 geometry: rotation range in degrees and crop side range (fraction of the image).
ROTATION = 5.0
CROP = (0.9, 1.0)
#: Stage-2 colour jitter: factor range half-width and probability (ColorJitter(0.2, 0.2, 0.2)).
JITTER = 0.2
JITTER_PROBABILITY = 0.7
#: A synthetic defect must change its pixels by at least this many gray levels on average.
MIN_CHANGE = 8.0
DEFECT_TRIES = 5

# Tags that keep the random streams of different jobs apart.
_SHUFFLE, _DEFECT, _AUGMENT, _VALIDATION = 1, 2, 3, 4


@dataclass
class TrainItem:
    """One training image at the training size ``S``: ``image`` uint8 ``S x S x 3``, ``mask``
    uint8 ``S x S`` in {0, 1}, ``label`` 1 iff the mask is non-empty, and its category."""

    image: np.ndarray
    mask: np.ndarray
    label: int
    category: str


# --------------------------------------------------------------------------------- selection


def split_validation(
    samples: Sequence[Sample], fraction: float, seed: int
) -> tuple[list[Sample], list[Sample]]:
    """Split into ``(train, validation)``, stratified by ``(category, label)``.

    From each group of ``n >= 2`` samples ``round(n * fraction)`` go to validation (at least 1
    when ``fraction > 0``, at most ``n - 1`` so every group keeps a training sample); groups of
    one stay in training. Both lists keep the input order. Deterministic for a seed.
    """
    if not 0.0 <= fraction < 1.0:
        raise ValueError(f"validation fraction must be in [0, 1), got {fraction}")
    groups: dict[tuple[str, int], list[int]] = defaultdict(list)
    for i, s in enumerate(samples):
        groups[(s.category, int(s.label))].append(i)
    rng = np.random.default_rng(seed)
    val: set[int] = set()
    for key in sorted(groups):
        members = groups[key]
        n = len(members)
        if n < 2 or fraction == 0:
            continue
        k = min(max(round(n * fraction), 1), n - 1)
        val.update(members[int(j)] for j in rng.choice(n, size=k, replace=False))
    train = [s for i, s in enumerate(samples) if i not in val]
    return train, [s for i, s in enumerate(samples) if i in val]


def select_kshot(samples: Sequence[Sample], shots: int, seed: int) -> list[Sample]:
    """Per category ``shots // 2`` good and ``shots - shots // 2`` defective samples, at random.

    The choice for a category depends only on ``seed`` and the category's samples (not on the
    other categories). The result keeps the input order.
    """
    if shots < 2:
        raise ValueError(f"k-shot training needs shots >= 2 (good and defective), got {shots}")
    by_category: dict[str, dict[int, list[int]]] = defaultdict(lambda: {0: [], 1: []})
    for i, s in enumerate(samples):
        by_category[s.category][1 if s.label else 0].append(i)
    wanted = {0: shots // 2, 1: shots - shots // 2}
    chosen: set[int] = set()
    for category, pools in by_category.items():
        rng = np.random.default_rng([seed, zlib.crc32(category.encode())])
        for label, name in ((0, "good"), (1, "defective")):
            pool = pools[label]
            if len(pool) < wanted[label]:
                raise ValueError(
                    f"category {category!r}: {shots}-shot needs {wanted[label]} {name} "
                    f"samples, found {len(pool)}"
                )
            chosen.update(pool[int(j)] for j in rng.choice(len(pool), wanted[label], False))
    return [s for i, s in enumerate(samples) if i in chosen]


# --------------------------------------------------------------------------------- image ops


def _rgb(image: np.ndarray) -> np.ndarray:
    image = np.asarray(image)
    if image.dtype != np.uint8 or image.ndim not in (2, 3):
        raise ValueError(f"expected a uint8 HxWx3 image, got {image.dtype} {image.shape}")
    return np.repeat(image[:, :, None], 3, axis=2) if image.ndim == 2 else image[:, :, :3]


def _resize_image(image: np.ndarray, size: int) -> np.ndarray:
    h, w = image.shape[:2]
    if (h, w) == (size, size):
        return np.ascontiguousarray(image)
    interp = cv2.INTER_AREA if size < min(h, w) else cv2.INTER_LINEAR
    return cv2.resize(image, (size, size), interpolation=interp)


def _resize_mask(mask: np.ndarray, size: int) -> np.ndarray:
    """Nearest-neighbour resize to ``size``; a defect too small to survive that is kept as the
    pixels its area touches."""
    binary = (np.asarray(mask) > 0).astype(np.uint8)
    small = cv2.resize(binary, (size, size), interpolation=cv2.INTER_NEAREST)
    if binary.any() and not small.any():
        area = cv2.resize(binary.astype(np.float32), (size, size), interpolation=cv2.INTER_AREA)
        small = (area > 0).astype(np.uint8)
    return small


def _gray(image: np.ndarray) -> np.ndarray:
    return image[..., 0] * 0.299 + image[..., 1] * 0.587 + image[..., 2] * 0.114


def _geometry(
    image: np.ndarray, mask: np.ndarray, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Rotation about the centre, square crop resized back and horizontal flip, as one warp
    (image bilinear, mask nearest, zero fill)."""
    size = image.shape[0]
    angle = rng.uniform(-ROTATION, ROTATION)
    side = rng.uniform(*CROP) * size
    x0, y0 = rng.uniform(0, size - side, size=2)
    centre = ((size - 1) / 2, (size - 1) / 2)
    rotate = np.vstack([cv2.getRotationMatrix2D(centre, angle, 1.0), [0, 0, 1]])
    scale = size / side  # pixel centres: dst + 0.5 = (src + 0.5 - offset) * scale
    crop = np.array([[scale, 0, (0.5 - x0) * scale - 0.5], [0, scale, (0.5 - y0) * scale - 0.5]])
    matrix = crop @ rotate
    image = cv2.warpAffine(image, matrix, (size, size), flags=cv2.INTER_LINEAR)
    mask = cv2.warpAffine(mask, matrix, (size, size), flags=cv2.INTER_NEAREST)
    if rng.random() < 0.5:
        image, mask = image[:, ::-1], mask[:, ::-1]
    return np.ascontiguousarray(image), np.ascontiguousarray(mask)


def _color_jitter(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Brightness, contrast and saturation factors in ``1 +- JITTER``, in random order
    (torchvision ``ColorJitter`` semantics, computed in float and rounded once)."""
    out = image.astype(np.float32)
    factors = rng.uniform(1 - JITTER, 1 + JITTER, size=3)
    for op in rng.permutation(3):
        f = float(factors[op])
        if op == 0:  # brightness: blend with black
            out = out * f
        elif op == 1:  # contrast: blend with the mean gray level
            mean = float(_gray(out).mean())
            out = (out - mean) * f + mean
        else:  # saturation: blend with the gray image
            gray = _gray(out)[..., None]
            out = (out - gray) * f + gray
        out = np.clip(out, 0, 255)
    return np.rint(out).astype(np.uint8)


def _augment(item: TrainItem, rng: np.random.Generator, stage: int) -> TrainItem:
    image, mask = _geometry(item.image, item.mask, rng)
    if stage == 2 and rng.random() < JITTER_PROBABILITY:
        image = _color_jitter(image, rng)
    return TrainItem(image, mask, int(mask.any()), item.category)


def _synthetic_defect(
    image: np.ndarray,
    region: np.ndarray | None,
    kinds: Sequence[str],
    rng: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray] | None:
    """One visible synthetic defect (``(image, mask)``), or None when ``DEFECT_TRIES`` attempts
    all change the image by less than ``MIN_CHANGE`` gray levels on average."""
    for _ in range(DEFECT_TRIES):
        kind = kinds[int(rng.integers(len(kinds)))]
        out, mask = add_synthetic_defect(image, rng, kind, region=region)
        inside = mask.astype(bool)
        change = np.abs(out[inside].astype(np.float32) - image[inside])
        if inside.any() and change.mean() >= MIN_CHANGE:
            return out, mask
    return None


# --------------------------------------------------------------------------------- dataset


class TrainingData:
    """Images, masks and labels for AA-CLIP training; see the module docstring.

    Args:
        samples: the pool (with masks for modes ``masks`` / ``kshot``).
        size: training side ``S``; every image is resized to ``S x S`` once, here.
        mode: one of :data:`MODES`.
        shots: k for mode ``kshot`` (required there, >= 2).
        val_fraction: fraction of each (category, label) group held out for validation, in
            [0, 1); 0 gives no validation. With ``kshot`` and a small k the groups have one
            sample each and the validation is empty.
        seed: drives the split, the k-shot choice, synthetic defects, shuffling, augmentation.
        defect_kinds, defect_probability: synthetic mode only (kinds of
            :func:`~anomalens.data.synthetic.add_synthetic_defect`).
        foreground: synthetic mode: ``auto`` puts defects on the object (>= 50 % of the mask
            in its :func:`~anomalens.postprocess.foreground_mask`) for categories whose good
            images show an object on a plain background; ``on`` / ``off`` force it.
    """

    def __init__(
        self,
        samples: Sequence[Sample],
        size: int,
        mode: str = "masks",
        *,
        shots: int | None = None,
        val_fraction: float = 0.1,
        seed: int = 0,
        defect_kinds: Sequence[str] = ("cutpaste", "perlin"),
        defect_probability: float = 0.5,
        foreground: str = "auto",
    ) -> None:
        self._check_args(mode, size, shots, seed, defect_kinds, defect_probability, foreground)
        self.size, self.mode, self.seed = size, mode, seed
        self.defect_kinds = tuple(defect_kinds)
        self.defect_probability = float(defect_probability)
        self.foreground = foreground
        pool = self._pool(samples, shots)
        self.train_samples, self.val_samples = split_validation(pool, val_fraction, seed)
        self.categories = sorted({s.category for s in self.train_samples})
        self._train = [self._prepare(s) for s in self.train_samples]
        val = [self._prepare(s) for s in self.val_samples]
        self._regions: list[np.ndarray | None] = [None] * len(self._train)
        if mode == "synthetic":
            val_regions = self._foregrounds(val)
            val = self._fixed_defects(val, val_regions)
        self._val = val

    # ------------------------------------------------------------------ construction helpers

    @staticmethod
    def _check_args(
        mode: str,
        size: int,
        shots: int | None,
        seed: int,
        defect_kinds: Sequence[str],
        defect_probability: float,
        foreground: str,
    ) -> None:
        if mode not in MODES:
            raise ValueError(f"unknown mode {mode!r}; valid modes: {', '.join(MODES)}")
        if mode == "kshot" and shots is None:
            raise ValueError('mode "kshot" needs shots (e.g. shots=4)')
        if size < 32:
            raise ValueError(f"training size must be >= 32, got {size}")
        if seed < 0:
            raise ValueError(f"seed must be >= 0, got {seed}")
        if mode == "synthetic":
            bad = [k for k in defect_kinds if k not in DEFECT_KINDS]
            if bad or not defect_kinds:
                raise ValueError(
                    f"defect_kinds must be a non-empty subset of {DEFECT_KINDS}, got "
                    f"{tuple(defect_kinds)}"
                )
        if not 0.0 <= defect_probability <= 1.0:
            raise ValueError(f"defect_probability must be in [0, 1], got {defect_probability}")
        check_foreground(foreground)

    def _pool(self, samples: Sequence[Sample], shots: int | None) -> list[Sample]:
        """The samples this mode trains and validates on, checked."""
        samples = list(samples)
        if self.mode == "synthetic":
            good = [s for s in samples if not s.label]
            if len(good) < len(samples):
                warnings.warn(
                    f'mode "synthetic" uses good images only: dropped {len(samples) - len(good)}'
                    " defective samples",
                    stacklevel=3,
                )
            if not good:
                raise ValueError('mode "synthetic" needs at least one good sample')
            return good
        if self.mode == "kshot":
            samples = select_kshot(samples, int(shots), self.seed)  # type: ignore[arg-type]
        if not any(s.label for s in samples):
            raise ValueError(
                f'mode "{self.mode}" needs defective samples with masks; there are none '
                '(use mode "synthetic" to train from good images only)'
            )
        for s in samples:
            has_defect = bool(np.any(s.mask))
            if s.label and not has_defect:
                raise ValueError(f"{s.path}: defective sample with an all-zero mask")
            if not s.label and has_defect:
                raise ValueError(f"{s.path}: good sample (label 0) with a non-empty mask")
        return samples

    def _prepare(self, s: Sample) -> TrainItem:
        image = _resize_image(_rgb(s.image), self.size)
        if self.mode == "synthetic":
            mask = np.zeros((self.size, self.size), np.uint8)
        else:
            mask = _resize_mask(s.mask, self.size)
        return TrainItem(image, mask, int(mask.any()), s.category)

    def _foregrounds(self, val: list[TrainItem]) -> list[np.ndarray | None]:
        """Set the training regions for defect placement; return the validation ones."""
        on: dict[str, bool] = {}
        for category in {item.category for item in self._train + val}:
            if self.foreground == "auto":
                images = [i.image for i in self._train + val if i.category == category]
                on[category] = has_plain_background(images)
            else:
                on[category] = self.foreground == "on"

        def region(item: TrainItem) -> np.ndarray | None:
            return foreground_mask(item.image) if on[item.category] else None

        self._regions = [region(item) for item in self._train]
        return [region(item) for item in val]

    def _fixed_defects(
        self, val: list[TrainItem], regions: list[np.ndarray | None]
    ) -> list[TrainItem]:
        """Synthetic defects on half (rounded up) of each category's validation images."""
        rng = np.random.default_rng([_VALIDATION, self.seed])
        out = list(val)
        for category in sorted({item.category for item in val}):
            members = [i for i, item in enumerate(val) if item.category == category]
            picked = rng.choice(members, (len(members) + 1) // 2, replace=False)
            for i in sorted(int(j) for j in picked):
                defect = _synthetic_defect(val[i].image, regions[i], self.defect_kinds, rng)
                if defect is not None:
                    out[i] = TrainItem(defect[0], defect[1], 1, category)
        return out

    # ------------------------------------------------------------------ public API

    def __len__(self) -> int:
        return len(self._train)

    def num_batches(self, batch_size: int) -> int:
        """Batches per epoch (the last one may be partial)."""
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        return math.ceil(len(self) / batch_size)

    def epoch(self, epoch: int, batch_size: int, stage: int) -> Iterator[list[TrainItem]]:
        """Shuffled, augmented batches of one epoch (stage 1 or 2); the same arguments always
        give the same batches. Items that lost their defect to a crop have label 0."""
        if stage not in (1, 2):
            raise ValueError(f"stage must be 1 or 2, got {stage}")
        if epoch < 0:
            raise ValueError(f"epoch must be >= 0, got {epoch}")
        self.num_batches(batch_size)  # validates batch_size
        order = np.random.default_rng([_SHUFFLE, self.seed, epoch]).permutation(len(self))
        for start in range(0, len(order), batch_size):
            batch = []
            for index in order[start : start + batch_size]:
                item = self._training_item(epoch, int(index))
                rng = np.random.default_rng([_AUGMENT, self.seed, epoch, stage, int(index)])
                batch.append(_augment(item, rng, stage))
            yield batch

    def validation(self) -> list[TrainItem]:
        """The validation items, not augmented; the same on every call (copies)."""
        return [TrainItem(v.image.copy(), v.mask.copy(), v.label, v.category) for v in self._val]

    # ------------------------------------------------------------------ per item

    def _training_item(self, epoch: int, index: int) -> TrainItem:
        """Training image ``index`` of ``epoch`` before augmentation (with its synthetic defect,
        if it drew one)."""
        base = self._train[index]
        if self.mode != "synthetic":
            return base
        rng = np.random.default_rng([_DEFECT, self.seed, epoch, index])
        if rng.random() >= self.defect_probability:
            return base
        defect = _synthetic_defect(base.image, self._regions[index], self.defect_kinds, rng)
        if defect is None:
            return base
        return TrainItem(defect[0], defect[1], 1, base.category)
