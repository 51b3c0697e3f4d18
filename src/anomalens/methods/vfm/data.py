"""AnomalyVFM v1.1's synthetic anomalies in three stages, built on :mod:`anomalens.data.synthetic`.

The seed describes a synthetic data generator in three stages: texture (noise patches),
structure (geometric shapes) and context (patches cut from other images). Each generator
returns the defective image and the exact mask of the pixels it changed
(:func:`~anomalens.data.synthetic.blend_defect`); defect areas follow
:data:`~anomalens.data.synthetic.AREA_RANGE` (0.3 % to 5 % of the image).

:class:`SyntheticAnomalies` makes the training items of an epoch (each good image gets one
anomaly of a stage drawn uniformly, with probability ``probability``) and the fixed validation
set (each held-out good image and one defective copy, stages in turn). Every random choice comes
from ``seed`` (and epoch and position), so epochs can be replayed when training resumes.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import cv2
import numpy as np

from anomalens.data.synthetic import AREA_RANGE, blend_defect, fractal_noise

#: The three stages, in the seed's order.
STAGES = ("texture", "shape", "patch")
_EPOCH, _VALIDATION = 1, 2


def _area(rng: np.random.Generator, shape: tuple[int, int]) -> float:
    lo, hi = AREA_RANGE
    return float(np.exp(rng.uniform(np.log(lo * 1.5), np.log(hi)))) * shape[0] * shape[1]


def _box(rng: np.random.Generator, shape: tuple[int, int]) -> tuple[int, int, int, int]:
    """``(y, x, h, w)`` of a random box of a defect's area and aspect 0.5-2 inside the image."""
    area = _area(rng, shape)
    aspect = float(np.exp(rng.uniform(np.log(0.5), np.log(2.0))))
    h = int(np.clip(round(math.sqrt(area * aspect)), 3, shape[0] // 2))
    w = int(np.clip(round(area / h), 3, shape[1] // 2))
    y, x = int(rng.integers(0, shape[0] - h + 1)), int(rng.integers(0, shape[1] - w + 1))
    return y, x, h, w


def _ellipse_alpha(shape: tuple[int, int], box: tuple[int, int, int, int]) -> np.ndarray:
    y, x, h, w = box
    canvas = np.zeros(shape, np.uint8)
    cv2.ellipse(
        canvas, (x + w // 2, y + h // 2), (max(1, w // 2), max(1, h // 2)), 0, 0, 360, 1, -1
    )
    return canvas.astype(np.float32)


def texture_noise(image: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Stage 1: an elliptical patch of fractal (Perlin) noise texture around a shifted mean."""
    shape = image.shape[:2]
    box = _box(rng, shape)
    noise = fractal_noise(shape, (int(rng.integers(4, 9)),) * 2, rng, octaves=3)
    base = float(image.mean()) + rng.choice([-1.0, 1.0]) * rng.uniform(30, 80)
    target = base + noise[..., None] * rng.uniform(60, 120) * rng.uniform(0.7, 1.0, size=3)
    alpha = _ellipse_alpha(shape, box) * rng.uniform(0.7, 1.0)
    return blend_defect(image, alpha, np.clip(target, 0, 255))


def geometric_shape(image: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Stage 2: a filled rectangle, ellipse, triangle or thick line of one dark or bright
    colour."""
    shape = image.shape[:2]
    y, x, h, w = _box(rng, shape)
    canvas = np.zeros(shape, np.uint8)
    kind = int(rng.integers(4))
    if kind == 0:
        cv2.rectangle(canvas, (x, y), (x + w - 1, y + h - 1), 1, -1)
    elif kind == 1:
        cv2.ellipse(
            canvas, (x + w // 2, y + h // 2), (w // 2, h // 2), rng.uniform(0, 180), 0, 360, 1, -1
        )
    elif kind == 2:
        pts = rng.uniform([x, y], [x + w, y + h], size=(3, 2)).astype(np.int32)
        cv2.fillPoly(canvas, [pts], 1)
    else:
        thickness = max(2, min(h, w) // 3)
        cv2.line(canvas, (x, y), (x + w - 1, y + h - 1), 1, thickness)
    if not canvas.any():
        canvas[y : y + h, x : x + w] = 1
    dark = rng.random() < float(np.median(image)) / 255.0
    level = rng.uniform(0, 60) if dark else rng.uniform(195, 255)
    target = np.broadcast_to(level * rng.uniform(0.85, 1.0, size=3), (*shape, 3))
    return blend_defect(image, canvas.astype(np.float32) * rng.uniform(0.8, 1.0), target)


def cross_image_patch(
    image: np.ndarray, other: np.ndarray, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Stage 3: a patch cut from another image (``other``, same size; mirrored and rotated 90
    degrees when it is the same image) pasted in an ellipse or box elsewhere."""
    shape = image.shape[:2]
    y, x, h, w = _box(rng, shape)
    source = other if other is not image else np.ascontiguousarray(np.rot90(image[::-1], 1))
    source = cv2.resize(source, (shape[1], shape[0])) if source.shape[:2] != shape else source
    sy, sx = int(rng.integers(0, shape[0] - h + 1)), int(rng.integers(0, shape[1] - w + 1))
    target = image.astype(np.float32).copy()
    patch = source[sy : sy + h, sx : sx + w].astype(np.float32) * rng.uniform(0.75, 1.25)
    target[y : y + h, x : x + w] = patch
    if rng.random() < 0.5:
        alpha = _ellipse_alpha(shape, (y, x, h, w))
    else:
        alpha = np.zeros(shape, np.float32)
        alpha[y : y + h, x : x + w] = 1.0
    return blend_defect(image, alpha, np.clip(target, 0, 255))


def make_anomaly(
    image: np.ndarray, stage: str, pool: Sequence[np.ndarray], rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """One anomaly of ``stage`` on ``image``; stage 3 cuts its patch from a random ``pool``
    image. Returns ``(image, mask)``; the mask is never empty."""
    generators: dict[str, Callable] = {
        "texture": texture_noise,
        "shape": geometric_shape,
        "patch": lambda img, r: cross_image_patch(img, pool[int(r.integers(len(pool)))], r),
    }
    if stage not in generators:
        raise ValueError(f"unknown anomaly stage {stage!r}; stages: {', '.join(STAGES)}")
    for _ in range(10):
        out, mask = generators[stage](image, rng)
        if mask.any() and not np.array_equal(out, image):
            return out, mask
    return out, mask


def check_stages(stages: Sequence[str]) -> tuple[str, ...]:
    """``stages`` as a tuple, each one of :data:`STAGES`, at least one."""
    stages = tuple(stages)
    bad = [s for s in stages if s not in STAGES]
    if bad or not stages:
        raise ValueError(f"stages must be a non-empty subset of {STAGES}, got {stages}")
    return stages


@dataclass
class SyntheticAnomalies:
    """Training and validation items from good images (all of one size ``S x S``)."""

    images: Sequence[np.ndarray]
    stages: tuple[str, ...] = STAGES
    probability: float = 0.5
    seed: int = 0

    def order(self, epoch: int) -> list[int]:
        """The shuffled image order of ``epoch``."""
        rng = np.random.default_rng([self.seed, _EPOCH, epoch])
        return [int(i) for i in rng.permutation(len(self.images))]

    def item(
        self, epoch: int, position: int, order: Sequence[int] | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """``(image, mask)`` at ``position`` of ``epoch`` (the mask is all zero for a good one);
        ``order`` is ``self.order(epoch)`` when the caller has it."""
        index = (self.order(epoch) if order is None else order)[position]
        image = self.images[index]
        rng = np.random.default_rng([self.seed, _EPOCH, epoch, position])
        if rng.random() >= self.probability:
            return image, np.zeros(image.shape[:2], np.uint8)
        stage = self.stages[int(rng.integers(len(self.stages)))]
        return make_anomaly(image, stage, self.images, rng)

    def validation(
        self, images: Sequence[np.ndarray]
    ) -> tuple[list[np.ndarray], list[np.ndarray], list[int]]:
        """``(images, masks, labels)``: every held-out good image, then a defective copy of
        each (stages in turn, patches cut from the training images)."""
        good = list(images)
        bad, masks = [], []
        for k, image in enumerate(good):
            rng = np.random.default_rng([self.seed, _VALIDATION, k])
            out, mask = make_anomaly(image, self.stages[k % len(self.stages)], self.images, rng)
            bad.append(out)
            masks.append(mask)
        zeros = [np.zeros(img.shape[:2], np.uint8) for img in good]
        return good + bad, zeros + masks, [0] * len(good) + [1] * len(bad)


__all__ = [
    "STAGES",
    "SyntheticAnomalies",
    "check_stages",
    "cross_image_patch",
    "geometric_shape",
    "make_anomaly",
    "texture_noise",
]
