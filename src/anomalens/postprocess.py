"""Post-processing of anomaly maps: smoothing, resizing, foreground masks, normalisation, boxes."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING

import cv2
import numpy as np

from anomalens.data.transforms import spread_indices
from anomalens.errors import check_choice

if TYPE_CHECKING:  # torch is imported by the functions that need it (the ONNX runtime has none)
    import torch

__all__ = [
    "FOREGROUND_MODES",
    "Box",
    "foreground_decision",
    "foreground_mask",
    "gaussian_blur",
    "has_plain_background",
    "hotspots",
    "image_score",
    "patch_masks",
    "resize_map",
    "robust_normalize",
    "soft_foreground",
    "to_gray",
    "use_foreground",
]

MAD_TO_SIGMA = 1.4826  # MAD of a normal distribution times this is its standard deviation


# --------------------------------------------------------------------------------------------
# smoothing and resizing
# --------------------------------------------------------------------------------------------


def _gaussian_kernel(sigma: float) -> list[float]:
    """Normalised 1-D Gaussian weights with radius ``int(4 * sigma + 0.5)`` (as scipy's default)."""
    import torch

    radius = int(4.0 * sigma + 0.5)
    x = torch.arange(-radius, radius + 1, dtype=torch.float64)
    kernel = torch.exp(-0.5 * (x / sigma) ** 2)
    return (kernel / kernel.sum()).tolist()


def _pad(x: torch.Tensor, radius: int, dim: int) -> torch.Tensor:
    """Reflect-pad ``x [B, 1, H, W]`` along ``dim`` (-1 or -2); replicate if the map is tiny."""
    import torch.nn.functional as F

    size = x.shape[dim]
    mode = "reflect" if radius < size else "replicate"  # reflect needs padding < size
    pad = (radius, radius, 0, 0) if dim == -1 else (0, 0, radius, radius)
    return F.pad(x, pad, mode=mode)


def _convolve(x: torch.Tensor, kernel: list[float], dim: int) -> torch.Tensor:
    """1-D 'valid' convolution along ``dim`` by shifted multiply-adds (faster than a
    single-channel conv2d on CPU)."""
    size = x.shape[dim] - len(kernel) + 1
    out = x.narrow(dim, 0, size) * kernel[0]
    for shift, weight in enumerate(kernel[1:], start=1):
        out.add_(x.narrow(dim, shift, size), alpha=weight)
    return out


def gaussian_blur(maps: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of maps ``[B, H, W]`` (also ``[H, W]``, ``[B, 1, H, W]``).

    Reflect padding (``d c b | a b c d``), kernel radius ``int(4 * sigma + 0.5)``; maps not
    larger than the radius use edge replication. ``sigma <= 0`` returns the input unchanged.
    The output has the input's shape and device (integer maps become float32).
    """
    if sigma <= 0:
        return maps
    shape = maps.shape
    if maps.ndim not in (2, 3, 4) or (maps.ndim == 4 and shape[1] != 1):
        raise ValueError(f"maps must be [B, H, W], [H, W] or [B, 1, H, W], got {tuple(shape)}")
    x = maps.reshape(-1, 1, shape[-2], shape[-1])
    if not x.is_floating_point():
        x = x.float()
    kernel = _gaussian_kernel(sigma)
    radius = len(kernel) // 2
    x = _convolve(_pad(x, radius, -1), kernel, -1)
    x = _convolve(_pad(x, radius, -2), kernel, -2)
    return x.reshape(shape)


def masked_blur(maps: torch.Tensor, mask: torch.Tensor | None, sigma: float) -> torch.Tensor:
    """:func:`gaussian_blur` of ``[B, H, W]`` maps counting only the cells where ``mask`` (same
    shape, 0/1) is 1 (normalised convolution: blur(map * mask) / blur(mask)); the other cells
    take the blurred values of their neighbours. ``mask`` None is a plain blur."""
    if mask is None:
        return gaussian_blur(maps, sigma)
    mask = mask.to(maps.dtype)
    return gaussian_blur(maps * mask, sigma) / gaussian_blur(mask, sigma).clamp_min(1e-6)


def resize_map(anomaly_map: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Bilinear resize (OpenCV, half-pixel centres) of a 2-D map to ``shape = (H, W)``, float32."""
    m = np.asarray(anomaly_map, dtype=np.float32)
    if m.ndim != 2:
        raise ValueError(f"anomaly_map must be 2-D, got shape {m.shape}")
    height, width = int(shape[0]), int(shape[1])
    if height <= 0 or width <= 0:
        raise ValueError(f"target shape must be positive, got {tuple(shape)}")
    if m.shape == (height, width):
        return m.copy()
    return cv2.resize(m, (width, height), interpolation=cv2.INTER_LINEAR)


#: Longer side of the copy of a map that :func:`image_score` ranks (cheap and size-independent).
SCORE_SIZE = 128


def image_score(anomaly_map: np.ndarray, top_fraction: float) -> float:
    """An image's anomaly score from its map: the maximum (``top_fraction`` 0), or the mean of
    the largest ``top_fraction`` of the pixels (at least one) of the map area-averaged to
    :data:`SCORE_SIZE` px on its longer side (the full map when smaller)."""
    if top_fraction <= 0:
        return float(anomaly_map.max())
    m = np.asarray(anomaly_map, dtype=np.float32)
    scale = SCORE_SIZE / max(m.shape)
    if scale < 1:
        size = (max(1, round(m.shape[1] * scale)), max(1, round(m.shape[0] * scale)))
        m = cv2.resize(m, size, interpolation=cv2.INTER_AREA)
    flat = m.reshape(-1)
    k = max(1, int(flat.size * top_fraction))
    return float(np.partition(flat, flat.size - k)[-k:].mean())


# --------------------------------------------------------------------------------------------
# foreground
# --------------------------------------------------------------------------------------------


def to_gray(image: np.ndarray) -> np.ndarray:
    """Grayscale ``H x W`` uint8 of a gray, RGB or RGBA uint8 image (ValueError otherwise)."""
    image = np.asarray(image)
    if image.dtype != np.uint8:
        raise ValueError(f"image must be uint8, got {image.dtype}")
    if image.ndim == 2:
        return image
    if image.ndim == 3 and image.shape[2] in (3, 4):
        return cv2.cvtColor(np.ascontiguousarray(image[..., :3]), cv2.COLOR_RGB2GRAY)
    raise ValueError(f"image must be H x W or H x W x 3, got shape {image.shape}")


def _border_pixels(gray: np.ndarray, width: int) -> np.ndarray:
    return np.concatenate(
        [
            gray[:width].ravel(),
            gray[-width:].ravel(),
            gray[:, :width].ravel(),
            gray[:, -width:].ravel(),
        ]
    )


def _class_means_gap(gray: np.ndarray, threshold: float) -> float | None:
    """``|mean(gray > threshold) - mean(gray <= threshold)|`` of a uint8 image, None when one
    side is empty (from its histogram: the same integer sums and counts as the pixel means)."""
    hist = cv2.calcHist([gray], [0], None, [256], [0, 256]).ravel().astype(np.float64)
    values = np.arange(256, dtype=np.float64)
    cut = int(threshold) + 1  # gray > threshold <=> gray >= cut for integer levels
    low, high = hist[:cut], hist[cut:]
    n_low, n_high = float(low.sum()), float(high.sum())
    if n_low == 0 or n_high == 0:
        return None
    return abs(float(high @ values[cut:]) / n_high - float(low @ values[:cut]) / n_low)


def _ellipse(size: int) -> np.ndarray:
    size = max(1, size) | 1  # odd
    return cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (size, size))


def _keep_large_components(mask: np.ndarray, min_area: int) -> np.ndarray:
    n, labels, stats, _ = cv2.connectedComponentsWithStats(mask.astype(np.uint8), connectivity=8)
    keep = np.zeros(n, dtype=bool)
    keep[1:] = stats[1:, cv2.CC_STAT_AREA] >= min_area
    if keep[1:].all():  # the common case: every component stays
        return labels > 0
    return keep[labels]


def fill_holes(mask: np.ndarray) -> np.ndarray:
    """Boolean mask with its holes (background regions not 4-connected to the border) filled.

    Same result as ``scipy.ndimage.binary_fill_holes``, by one OpenCV flood fill of the outside
    (several times faster on small masks).
    """
    height, width = mask.shape
    outside = np.zeros((height + 2, width + 2), dtype=np.uint8)
    outside[1:-1, 1:-1] = mask
    cv2.floodFill(outside, None, (0, 0), 2, flags=4)
    return outside[1:-1, 1:-1] != 2


def foreground_mask(
    image_rgb: np.ndarray,
    *,
    textures: bool = False,
    min_fraction: float = 0.05,
    max_fraction: float = 0.95,
    min_contrast: float = 10.0,
    margin: float = 0.01,
) -> np.ndarray:
    """Boolean ``H x W`` mask of the object in front of a plain background.

    Steps: gray image, Gaussian blur, Otsu threshold; the side of the threshold where most border
    pixels fall is background. Then morphological close and open, components smaller than 1% of
    the image are dropped, holes are filled and the mask is dilated by ``margin`` times the
    shorter side (so defects on the object's outline stay inside).

    Returns all-True (i.e. "use the whole image") when ``textures`` is set, or when the result is
    implausible: foreground below ``min_fraction`` or above ``max_fraction`` of the image, or the
    two Otsu classes differ by less than ``min_contrast`` gray levels.
    """
    gray = to_gray(image_rgb)
    height, width = gray.shape
    everything = np.ones((height, width), dtype=bool)
    if textures or min(height, width) < 8:
        return everything
    side = min(height, width)
    blurred = cv2.GaussianBlur(gray, (0, 0), sigmaX=max(1.0, side / 200))
    # above: 1 where blurred > threshold
    threshold, above = cv2.threshold(blurred, 0, 1, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
    gap = _class_means_gap(blurred, threshold)
    if gap is None or gap < min_contrast:
        return everything
    border = _border_pixels(above, max(1, side // 50))
    background_is_bright = np.count_nonzero(border) > border.size / 2
    mask = 1 - above if background_is_bright else above

    kernel = _ellipse(side // 50)
    mask_u8 = cv2.morphologyEx(mask, cv2.MORPH_CLOSE, kernel)
    mask_u8 = cv2.morphologyEx(mask_u8, cv2.MORPH_OPEN, kernel)
    mask = _keep_large_components(mask_u8, int(0.01 * height * width))
    mask = fill_holes(mask)
    if margin > 0:
        mask = cv2.dilate(mask.astype(np.uint8), _ellipse(2 * round(margin * side) + 1)) > 0

    fraction = np.count_nonzero(mask) / mask.size
    if not min_fraction <= fraction <= max_fraction:
        return everything
    return mask


#: Side of the (square, downscaled) image foreground decisions and soft masks are made on.
FOREGROUND_SIZE = 128
#: An object may cover at most this fraction of the image border to count as "on a plain
#: background" (textures and frame-filling objects cover more).
MAX_BORDER_TOUCH = 0.2
#: Settings of a detector's ``foreground`` field.
FOREGROUND_MODES = ("auto", "on", "off")


def check_foreground(value: str) -> str:
    """Return ``value`` if it is one of :data:`FOREGROUND_MODES`, else raise ValueError."""
    return check_choice(value, FOREGROUND_MODES, "foreground")


def soft_foreground(image: np.ndarray, size: int, margin: float) -> np.ndarray:
    """Soft object mask ``[size, size]`` in [0, 1]: :func:`foreground_mask` of the image resized
    to ``size``, dilated by ``margin`` of the side and blurred by 40% of that margin (a cheap,
    low-resolution mask: callers resize it to their map)."""
    gray = image if image.ndim == 2 else cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)
    small = cv2.resize(gray, (size, size), interpolation=cv2.INTER_AREA)
    mask = foreground_mask(small, margin=margin).astype(np.float32)
    return cv2.GaussianBlur(mask, (0, 0), max(0.4 * margin * size, 0.5))


def plain_background_reason(
    images: Sequence[np.ndarray], size: int = FOREGROUND_SIZE, n: int = 16
) -> str | None:
    """None when every one of (up to ``n``, evenly spread) images shows an object on a plain
    background, else why not (which image, what it showed).

    An image qualifies when its foreground mask is a plausible split (not the all-image
    fallback of :func:`foreground_mask`) and the object covers at most ``MAX_BORDER_TOUCH`` of
    the image border; textures, surfaces and frame-filling objects do not.
    """
    chosen = spread_indices(len(images), n)
    for i in chosen:
        small = cv2.resize(images[i], (size, size), interpolation=cv2.INTER_AREA)
        mask = foreground_mask(small, margin=0.0)
        border = np.concatenate([mask[0], mask[-1], mask[:, 0], mask[:, -1]])
        if mask.all():
            return f"good image {i + 1} has no object/background split (a texture or surface)"
        if border.mean() > MAX_BORDER_TOUCH:
            return (
                f"the object in good image {i + 1} touches {border.mean():.0%} of the image "
                f"border (at most {MAX_BORDER_TOUCH:.0%} for an object on a plain background)"
            )
    return None


def has_plain_background(
    images: Sequence[np.ndarray], size: int = FOREGROUND_SIZE, n: int = 16
) -> bool:
    """True when every one of (up to ``n``) images shows an object on a plain background
    (:func:`plain_background_reason` gives why not)."""
    return plain_background_reason(images, size, n) is None


def foreground_decision(setting: str, images: Sequence[np.ndarray]) -> tuple[bool, str]:
    """Whether a ``foreground`` setting weights maps by the object mask for these good images,
    and why, in words (``auto``: on for objects on a plain background)."""
    check_foreground(setting)
    if setting != "auto":
        return setting == "on", f"foreground weighting {setting} (set by the user)"
    reason = plain_background_reason(images)
    if reason is None:
        n = len(spread_indices(len(images), 16))
        return True, (
            f"foreground weighting on (auto): the {n} sampled good images show an object on a "
            "plain background"
        )
    return False, f"foreground weighting off (auto): {reason}"


def use_foreground(setting: str, images: Sequence[np.ndarray]) -> bool:
    """The decision a ``foreground`` setting gives for these good images (``auto``: on for
    objects on a plain background, see :func:`has_plain_background`)."""
    return foreground_decision(setting, images)[0]


def patch_masks(images: Sequence[np.ndarray], grid: tuple[int, int]) -> torch.Tensor:
    """``[B, h, w]`` bool: patches overlapping each image's :func:`foreground_mask`."""
    import torch

    masks = []
    for img in images:
        fg = foreground_mask(img).astype(np.float32)
        small = cv2.resize(fg, (grid[1], grid[0]), interpolation=cv2.INTER_AREA)
        masks.append(torch.from_numpy(small > 0))
    return torch.stack(masks)


# --------------------------------------------------------------------------------------------
# normalisation and hotspots
# --------------------------------------------------------------------------------------------


def robust_normalize(
    anomaly_map: np.ndarray, mask: np.ndarray | None = None, eps: float = 1e-6
) -> np.ndarray:
    """``(map - median) / max(1.4826 * MAD, eps)`` with median and MAD over the mask pixels.

    ``mask`` (bool, same shape) selects the pixels the statistics come from (all if None); the
    whole map is normalised. Float output (float32 stays float32, others become float64).
    """
    m = np.asarray(anomaly_map)
    if m.dtype != np.float32:
        m = m.astype(np.float64)
    values = m
    if mask is not None:
        mask = np.asarray(mask, dtype=bool)
        if mask.shape != m.shape:
            raise ValueError(f"mask has shape {mask.shape} but anomaly_map has shape {m.shape}")
        values = m[mask]
    if values.size == 0:
        raise ValueError("no pixels to compute the median from (empty map or empty mask)")
    median = np.median(values.astype(np.float64))
    mad = np.median(np.abs(values.astype(np.float64) - median))
    scale = max(MAD_TO_SIGMA * float(mad), eps)
    return ((m - median) / scale).astype(m.dtype)


@dataclass(frozen=True)
class Box:
    """A hotspot: pixel box ``[x0, x1) x [y0, y1)`` (end exclusive, like slicing
    ``map[y0:y1, x0:x1]``), the highest map value inside it and its area in pixels."""

    x0: int
    y0: int
    x1: int
    y1: int
    score: float
    area: int

    @property
    def width(self) -> int:
        return self.x1 - self.x0

    @property
    def height(self) -> int:
        return self.y1 - self.y0

    def as_dict(self) -> dict[str, float | int]:
        return asdict(self)


def hotspots(
    anomaly_map: np.ndarray,
    threshold: float,
    min_area: int = 16,
    top_k: int | None = 10,
) -> list[Box]:
    """Boxes around the 8-connected regions where ``map >= threshold``, highest score first.

    Regions with fewer than ``min_area`` pixels are dropped; at most ``top_k`` boxes are
    returned (all if None). ``score`` is the map's maximum inside the region.
    """
    m = np.asarray(anomaly_map, dtype=np.float32)
    if m.ndim != 2:
        raise ValueError(f"anomaly_map must be 2-D, got shape {m.shape}")
    if m.size and not (math.isfinite(float(m.min())) and math.isfinite(float(m.max()))):
        raise ValueError(f"anomaly_map contains {int(np.sum(~np.isfinite(m)))} NaN/inf values")
    if math.isnan(threshold):
        raise ValueError("threshold is NaN")
    above = (m >= threshold).view(np.uint8)
    n, labels, stats, _ = cv2.connectedComponentsWithStats(above, connectivity=8)
    del above
    if n <= 1:
        return []
    # peaks of the kept regions only, each within its bounding box (memory and time scale with
    # the regions, not with the map: a noisy 6000 x 6000 map took 18 s and 5x its size before)
    kept = np.flatnonzero(stats[1:, cv2.CC_STAT_AREA] >= min_area) + 1
    boxes = []
    for i in kept:
        x, y = int(stats[i, cv2.CC_STAT_LEFT]), int(stats[i, cv2.CC_STAT_TOP])
        w, h = int(stats[i, cv2.CC_STAT_WIDTH]), int(stats[i, cv2.CC_STAT_HEIGHT])
        inside = labels[y : y + h, x : x + w] == i
        boxes.append(
            Box(
                x0=x,
                y0=y,
                x1=x + w,
                y1=y + h,
                score=float(m[y : y + h, x : x + w][inside].max()),
                area=int(stats[i, cv2.CC_STAT_AREA]),
            )
        )
    boxes.sort(key=lambda b: b.score, reverse=True)
    return boxes if top_k is None else boxes[:top_k]
