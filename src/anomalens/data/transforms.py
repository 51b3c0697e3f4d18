"""Image transforms shared by backbones, methods and training data."""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np

#: Extra views of a good image a memory can hold (PatchCore, AnomalyDINO ``augment``).
AUGMENTATIONS = ("hflip", "vflip", "rot90", "rot180", "rot270")

_VIEWS = {
    "hflip": lambda a: a[:, ::-1],
    "vflip": lambda a: a[::-1],
    "rot90": lambda a: np.rot90(a, 1),
    "rot180": lambda a: np.rot90(a, 2),
    "rot270": lambda a: np.rot90(a, 3),
}


def resize_square(image: np.ndarray, size: int) -> np.ndarray:
    """``image`` resized to ``size x size`` (area averaging when shrinking, else bilinear)."""
    interp = cv2.INTER_AREA if min(image.shape[:2]) > size else cv2.INTER_LINEAR
    return cv2.resize(image, (size, size), interpolation=interp)


def check_augment(augment: Sequence[str] | str) -> tuple[str, ...]:
    """``augment`` as a tuple of names from :data:`AUGMENTATIONS` (ValueError otherwise)."""
    names = (augment,) if isinstance(augment, str) else tuple(augment)
    bad = sorted(set(names) - set(AUGMENTATIONS))
    if bad:
        raise ValueError(f"unknown augmentations {bad}; choose from {AUGMENTATIONS}")
    return names


def augmented_views(image: np.ndarray, augment: Sequence[str]) -> list[np.ndarray]:
    """The image followed by its requested flipped / rotated copies (:data:`AUGMENTATIONS`)."""
    check_augment(augment)
    return [image] + [np.ascontiguousarray(_VIEWS[name](image)) for name in augment]


def spread_indices(n: int, count: int) -> list[int]:
    """``min(n, count)`` indices spread evenly over ``0..n-1``, first and last included when
    ``count >= 2`` (sorted, without repeats)."""
    if n <= 0 or count <= 0:
        return []
    return sorted({round(x) for x in np.linspace(0, n - 1, min(n, count))})
