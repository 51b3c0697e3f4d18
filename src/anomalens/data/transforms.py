"""Image transforms shared by backbones, methods and training data."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np

from anomalens.errors import check_choice

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
    """``image`` resized to ``size x size`` (:func:`resize_to`)."""
    return resize_to(image, size, size)


#: How an image becomes the square model input (``resize`` of PatchCore): ``square`` stretches
#: it to the square; ``letterbox`` keeps its aspect ratio and fills the rest by reflection.
RESIZE_MODES = ("square", "letterbox")


def check_resize(mode: str) -> str:
    """Return ``mode`` if it is one of :data:`RESIZE_MODES`, else raise ValueError."""
    return check_choice(mode, RESIZE_MODES, "resize")


@dataclass(frozen=True)
class Frame:
    """Where an image sits in the square model input of side ``size``: its content box
    (``top, left, height, width`` in input pixels); the rest is reflected padding that no
    score or memory row may come from."""

    size: int
    top: int
    left: int
    height: int
    width: int

    @classmethod
    def fit(cls, shape: Sequence[int], size: int, mode: str, border: int = 0) -> Frame:
        """The frame of an image of ``shape`` (H, W, ...): ``square`` stretches it to the
        square inside a ``border`` of reflected pixels; ``letterbox`` scales its longer side to
        that square and centres it."""
        check_resize(mode)
        inner = size - 2 * border
        h, w = int(shape[0]), int(shape[1])
        if mode == "square":
            ch = cw = inner
        else:
            scale = inner / max(h, w)
            ch, cw = max(1, round(h * scale)), max(1, round(w * scale))
        return cls(size, (size - ch) // 2, (size - cw) // 2, ch, cw)

    @property
    def is_full(self) -> bool:
        """The content fills the whole input (no padding)."""
        return self.height == self.size and self.width == self.size

    def place(self, image: np.ndarray) -> np.ndarray:
        """``image`` resized into the content box, the padding filled by reflection."""
        box = resize_to(image, self.height, self.width)
        if self.is_full:
            return box
        pads = [
            (self.top, self.size - self.top - self.height),
            (self.left, self.size - self.left - self.width),
        ] + [(0, 0)] * (image.ndim - 2)
        return np.pad(box, pads, mode="symmetric")

    def to_input(self, image_map: np.ndarray, grid: tuple[int, int]) -> np.ndarray:
        """A map in the image's frame (any size) on the input ``grid``: resized into the
        content box, 0 on the padding, then area-averaged to the grid."""
        if self.is_full:
            return cv2.resize(image_map, grid[::-1], interpolation=cv2.INTER_AREA)
        canvas = np.zeros((self.size, self.size), dtype=np.float32)
        canvas[self.top : self.top + self.height, self.left : self.left + self.width] = resize_to(
            image_map.astype(np.float32), self.height, self.width
        )
        return cv2.resize(canvas, grid[::-1], interpolation=cv2.INTER_AREA)

    def content_grid(self, grid: tuple[int, int]) -> np.ndarray:
        """``grid`` float32 map: 1 for the cells whose centre lies in the content box, else 0
        (at least the cell at the content's centre, for a sliver thinner than a cell)."""
        gh, gw = grid
        ys = (np.arange(gh) + 0.5) * self.size / gh
        xs = (np.arange(gw) + 0.5) * self.size / gw
        rows = (ys >= self.top) & (ys < self.top + self.height)
        cols = (xs >= self.left) & (xs < self.left + self.width)
        if not rows.any():
            rows[min(int((self.top + self.height / 2) * gh / self.size), gh - 1)] = True
        if not cols.any():
            cols[min(int((self.left + self.width / 2) * gw / self.size), gw - 1)] = True
        return (rows[:, None] & cols[None, :]).astype(np.float32)

    def input_to_image(self, shape: Sequence[int]) -> np.ndarray:
        """``2 x 3`` affine map from input pixel ``(x, y)`` to the pixel of the image of
        ``shape`` (H, W, ...) placed in this frame (pixel centres aligned, as ``cv2.resize``)."""
        sx, sy = int(shape[1]) / self.width, int(shape[0]) / self.height
        return np.array(
            [[sx, 0.0, (0.5 - self.left) * sx - 0.5], [0.0, sy, (0.5 - self.top) * sy - 0.5]]
        )

    def to_image(self, grid_map: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
        """A map on the input grid back to the image's own ``shape`` (H, W): the content box
        cut out and resized (bilinear)."""
        from anomalens.postprocess import resize_map

        if self.is_full:
            return resize_map(grid_map, shape)
        full = resize_map(grid_map, (self.size, self.size))
        box = full[self.top : self.top + self.height, self.left : self.left + self.width]
        return resize_map(box, shape)


def compose_affine(outer: np.ndarray, inner: np.ndarray) -> np.ndarray:
    """The ``2 x 3`` affine map ``outer(inner(p))``."""
    out = outer[:, :2] @ inner
    out[:, 2] += outer[:, 2]
    return out


def resize_to(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """``image`` resized to ``height x width`` (area averaging when shrinking, else bilinear)."""
    if image.shape[:2] == (height, width):
        return image
    shrink = image.shape[0] > height and image.shape[1] > width
    interp = cv2.INTER_AREA if shrink else cv2.INTER_LINEAR
    return cv2.resize(image, (width, height), interpolation=interp)


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


def augmented_shapes(shape: Sequence[int], augment: Sequence[str]) -> list[tuple[int, ...]]:
    """The shapes of :func:`augmented_views` of an image of ``shape``, without making them
    (quarter turns swap height and width)."""
    check_augment(augment)
    turned = (shape[1], shape[0], *shape[2:])
    return [tuple(shape)] + [turned if n in ("rot90", "rot270") else tuple(shape) for n in augment]


def spread_indices(n: int, count: int) -> list[int]:
    """``min(n, count)`` indices spread evenly over ``0..n-1``, first and last included when
    ``count >= 2`` (sorted, without repeats)."""
    if n <= 0 or count <= 0:
        return []
    return sorted({round(x) for x in np.linspace(0, n - 1, min(n, count))})
