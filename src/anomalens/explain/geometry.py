"""Geometry the grounded explainer speaks from: the part (foreground, main axis, ends), regions
(hotspot pixels), their location words relative to the part, shape and appearance.

All functions work on a downscaled copy (longest side :data:`WORK_SIDE`) so describing an image
costs about a millisecond; coordinates given back are in the original image's pixels.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np

from anomalens.postprocess import MAX_BORDER_TOUCH, Box, foreground_mask

__all__ = [
    "PART_SIDE",
    "WORK_SIDE",
    "Part",
    "Region",
    "find_part",
    "location_contains",
    "map_baseline",
    "peak_regions",
    "region_from_mask",
    "scaled_map",
]

#: Longest side of the working copy of image and map.
WORK_SIDE = 256
#: Longest side of the copy the part (foreground, axis, surface or not) is found on.
PART_SIDE = 128
#: A part is elongated when its length is at least this many times its width.
ELONGATED_PART = 2.0
#: A region is elongated when its main axis is this many times its minor axis.
ELONGATED_REGION = 2.5
#: Regions whose area over their convex hull is below this are irregular.
IRREGULAR_SOLIDITY = 0.6
#: Gray-level difference (0-255) from the ring around a region that counts as darker/brighter.
CONTRAST_LEVELS = 8.0
#: A region reaches where the map is this fraction of the way from the part's typical level
#: to the region's peak (0.5: its full width at half maximum).
GROW_FRACTION = 0.5
#: Width of the border band (fraction of the shorter side) an object on a background leaves
#: mostly free (see :func:`is_part_on_background`).
BORDER_BAND = 0.03
#: An object stands out from a plain background by at least this many background standard
#: deviations (measured on the good training images: MVTec screw >= 6.4 on all 320; magnetic
#: tile, a surface that Otsu splits into bright and dark patches, <= 4.4 on 99% of 761 and,
#: with the border band, none of them a part).
PART_SEPARATION = 5.0
#: Within this fraction of the part's width from its outline, a region is "along the edge".
EDGE_BAND = 0.2

_CELL_WORDS = (
    ("upper left", "top", "upper right"),
    ("left", "centre", "right"),
    ("lower left", "bottom", "lower right"),
)


def _direction_word(dx: float, dy: float) -> str:
    """Image direction of a vector (y down): right, lower right, bottom, ..."""
    angle = math.degrees(math.atan2(-dy, dx)) % 360
    words = ("right", "upper right", "top", "upper left", "left", "lower left", "bottom")
    words += ("lower right",)
    return words[int(((angle + 22.5) % 360) // 45)]


@dataclass
class Part:
    """The inspected part in a working copy scaled by ``scale`` (work = original * scale).

    mask: foreground (all True for textures / frame-filling objects: ``is_surface``);
    centre (x, y), axis u (unit, towards the wider end for elongated parts), v (perpendicular);
    half_length / half_width: extents along u and v; bbox (x0, y0, x1, y1) of the mask.
    The part is found on a smaller copy (``PART_SIDE``); ``small_mask`` is its mask there.
    """

    mask: np.ndarray
    scale: float
    is_surface: bool
    centre: tuple[float, float]
    u: tuple[float, float]
    v: tuple[float, float]
    half_length: float
    half_width: float
    bbox: tuple[int, int, int, int]
    ends_differ: bool
    small_mask: np.ndarray | None = None
    _edge: np.ndarray | None = None

    @property
    def area(self) -> int:
        return int(np.count_nonzero(self.mask))

    @property
    def elongated(self) -> bool:
        return not self.is_surface and self.half_length >= ELONGATED_PART * self.half_width

    def axial(self, x: float, y: float) -> tuple[float, float]:
        """``(t, s)``: position along the axis (-1 narrow end .. +1 wide end) and across it
        (-1 .. 1), in the working copy's pixels."""
        dx, dy = x - self.centre[0], y - self.centre[1]
        t = (dx * self.u[0] + dy * self.u[1]) / max(self.half_length, 1e-6)
        s = (dx * self.v[0] + dy * self.v[1]) / max(self.half_width, 1e-6)
        return t, s

    def cell(self, x: float, y: float) -> tuple[int, int]:
        """``(row, col)`` of the 3 x 3 grid over the part's bounding box (the image for
        surfaces), working-copy pixels."""
        x0, y0, x1, y1 = self.bbox
        col = int(np.clip((x - x0) / max(x1 - x0, 1) * 3, 0, 2))
        row = int(np.clip((y - y0) / max(y1 - y0, 1) * 3, 0, 2))
        return row, col

    def edge_distance_at(self, x: float, y: float) -> float:
        """Distance (working-copy pixels) from ``(x, y)`` to the part's outline (inf for
        surfaces); the distance transform is computed on first use."""
        if self.is_surface or self.small_mask is None:
            return float("inf")
        if self._edge is None:
            self._edge = cv2.distanceTransform(self.small_mask.astype(np.uint8), cv2.DIST_L2, 3)
        sh, sw = self._edge.shape
        fy, fx = sh / self.mask.shape[0], sw / self.mask.shape[1]
        yi = int(np.clip((y + 0.5) * fy - 0.5, 0, sh - 1) + 0.5)
        xi = int(np.clip((x + 0.5) * fx - 0.5, 0, sw - 1) + 0.5)
        return float(self._edge[min(yi, sh - 1), min(xi, sw - 1)]) / fx


def _work_scale(shape: tuple[int, ...]) -> float:
    return min(1.0, WORK_SIDE / max(shape[0], shape[1]))


def _gray(image: np.ndarray, scale: float) -> np.ndarray:
    gray = image if image.ndim == 2 else cv2.cvtColor(image[..., :3], cv2.COLOR_RGB2GRAY)
    if scale < 1.0:
        size = (max(1, round(gray.shape[1] * scale)), max(1, round(gray.shape[0] * scale)))
        gray = cv2.resize(gray, size, interpolation=cv2.INTER_AREA)
    return gray


def is_part_on_background(gray: np.ndarray, mask: np.ndarray) -> bool:
    """Whether ``mask`` (:func:`~anomalens.postprocess.foreground_mask` of ``gray``) is an object
    on a plain background rather than bright and dark patches of a surface: the object lies
    inside the frame (it covers at most ``MAX_BORDER_TOUCH`` of a band along the border,
    :data:`BORDER_BAND` of the shorter side wide) and stands out from the background by at
    least :data:`PART_SEPARATION` standard deviations of the background's gray levels."""
    if mask.all() or not mask.any():
        return False
    b = max(1, round(BORDER_BAND * min(mask.shape)))
    band = np.concatenate([mask[:b].ravel(), mask[-b:].ravel()])
    band = np.concatenate([band, mask[b:-b, :b].ravel(), mask[b:-b, -b:].ravel()])
    if band.mean() > MAX_BORDER_TOUCH:
        return False
    m8 = mask.astype(np.uint8)
    fg_mean = cv2.mean(gray, m8)[0]
    bg_mean, bg_std = (float(v.ravel()[0]) for v in cv2.meanStdDev(gray, mask=1 - m8))
    return abs(fg_mean - bg_mean) >= PART_SEPARATION * max(bg_std, 1.0)


def _surface(shape: tuple[int, int], scale: float) -> Part:
    """The whole working copy as the "part" (textures, frame-filling objects)."""
    h, w = shape
    u, v = ((1.0, 0.0), (0.0, 1.0)) if w >= h else ((0.0, 1.0), (1.0, 0.0))
    return Part(
        mask=np.ones(shape, dtype=bool),
        scale=scale,
        is_surface=True,
        centre=((w - 1) / 2, (h - 1) / 2),
        u=u,
        v=v,
        half_length=max(w, h) / 2,
        half_width=max(min(w, h) / 2, 1.0),
        bbox=(0, 0, w, h),
        ends_differ=False,
    )


def _percentile99(values: np.ndarray) -> float:
    """99th percentile (linear interpolation, as ``np.percentile``) by partial sorting."""
    pos = 0.99 * (len(values) - 1)
    lo = int(pos)
    hi = min(lo + 1, len(values) - 1)
    part = np.partition(values, (lo, hi))
    return float(part[lo] + (pos - lo) * (part[hi] - part[lo]))


def _principal_axis(cov: np.ndarray) -> np.ndarray:
    """Unit eigenvector of the larger eigenvalue of a symmetric ``2 x 2`` matrix (closed form;
    its sign is arbitrary)."""
    a, b, c = float(cov[0, 0]), float(cov[0, 1]), float(cov[1, 1])
    if b == 0.0:
        return np.array([1.0, 0.0]) if a >= c else np.array([0.0, 1.0])
    top = (a + c) / 2 + math.hypot((a - c) / 2, b)
    vec = np.array([top - c, b]) if a >= c else np.array([b, top - a])
    return vec / math.hypot(vec[0], vec[1])


def find_part(image: np.ndarray) -> tuple[Part, np.ndarray]:
    """The part in an RGB uint8 image and the working-copy gray image (the part itself is
    found on a copy of at most ``PART_SIDE`` pixels)."""
    scale = _work_scale(image.shape)
    gray = _gray(np.asarray(image), scale)
    h, w = gray.shape
    f = min(1.0, PART_SIDE / max(h, w))
    small = gray
    if f < 1.0:
        size = (max(1, round(w * f)), max(1, round(h * f)))
        small = cv2.resize(gray, size, interpolation=cv2.INTER_AREA)
    small_mask = foreground_mask(small)
    if not is_part_on_background(small, small_mask):
        return _surface((h, w), scale), gray
    fy, fx = h / small.shape[0], w / small.shape[1]  # small -> working copy
    ys, xs = np.nonzero(small_mask)
    # centre and scatter of the pixel centres in working-copy pixels, from the mask's moments
    mo = cv2.moments(small_mask.view(np.uint8), binaryImage=True)
    n = mo["m00"]
    centre = np.array([(mo["m10"] / n + 0.5) * fx - 0.5, (mo["m01"] / n + 0.5) * fy - 0.5])
    cov = (
        np.array(
            [
                [mo["mu20"] * fx * fx, mo["mu11"] * fx * fy],
                [mo["mu11"] * fx * fy, mo["mu02"] * fy * fy],
            ]
        )
        if n > 2
        else np.eye(2)
    )
    u = _principal_axis(cov)
    v = np.array([-u[1], u[0]])
    dx = xs * fx + (0.5 * fx - 0.5 - centre[0])
    dy = ys * fy + (0.5 * fy - 0.5 - centre[1])
    proj_u, proj_v = dx * u[0] + dy * u[1], dx * v[0] + dy * v[1]
    half_length, half_width = _percentile99(np.abs(proj_u)), _percentile99(np.abs(proj_v))
    # orient u towards the wider end: compare the widths of the outer quarters
    ends_differ = False
    if half_length > 0:
        t = proj_u / half_length
        w_pos = np.ptp(proj_v[t > 0.5]) if np.any(t > 0.5) else 0.0
        w_neg = np.ptp(proj_v[t < -0.5]) if np.any(t < -0.5) else 0.0
        ends_differ = max(w_pos, w_neg) > 1.15 * max(min(w_pos, w_neg), 1e-6)
        if w_neg > w_pos:
            u = -u
            v = -v
    bx, by, bw, bh = cv2.boundingRect(small_mask.view(np.uint8))
    x0, y0 = math.floor(bx * fx), math.floor(by * fy)
    x1, y1 = min(w, math.ceil((bx + bw) * fx)), min(h, math.ceil((by + bh) * fy))
    mask = small_mask
    if small.shape != gray.shape:
        mask = cv2.resize(small_mask.astype(np.uint8), (w, h), interpolation=cv2.INTER_NEAREST)
    part = Part(
        mask=mask > 0,
        scale=scale,
        is_surface=False,
        centre=(float(centre[0]), float(centre[1])),
        u=(float(u[0]), float(u[1])),
        v=(float(v[0]), float(v[1])),
        half_length=max(half_length, 1.0),
        half_width=max(half_width, 1.0),
        bbox=(x0, y0, x1, y1),
        ends_differ=ends_differ,
        small_mask=small_mask,
    )
    return part, gray


@dataclass
class Region:
    """One hotspot in the working copy: its box (original pixels), pixel mask (working copy),
    peak map value."""

    box: Box
    mask: np.ndarray
    peak: float
    _rect: tuple[int, int, int, int] | None = None

    @property
    def rect(self) -> tuple[int, int, int, int]:
        """``(x, y, w, h)``: bounding rectangle of the mask in the working copy."""
        if self._rect is None:
            self._rect = tuple(cv2.boundingRect(self.mask.astype(np.uint8)))
        return self._rect

    def crop(self) -> tuple[np.ndarray, int, int]:
        """The mask inside :attr:`rect` (uint8) and the rectangle's corner ``x, y``."""
        x, y, w, h = self.rect
        return self.mask[y : y + h, x : x + w].astype(np.uint8), x, y

    @property
    def centroid(self) -> tuple[float, float]:
        m8, x, y = self.crop()
        mo = cv2.moments(m8, binaryImage=True)
        return float(mo["m10"] / mo["m00"]) + x, float(mo["m01"] / mo["m00"]) + y


def scaled_map(anomaly_map: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    m = np.asarray(anomaly_map, dtype=np.float32)
    if m.shape != shape:
        m = cv2.resize(m, (shape[1], shape[0]), interpolation=cv2.INTER_AREA)
    return m


def _box(
    mask: np.ndarray, rect: tuple[int, int, int, int], full_shape: tuple[int, int], peak: float
) -> Box:
    """Box (original pixels) and area of a working-copy mask with bounding ``rect``."""
    sy, sx = full_shape[0] / mask.shape[0], full_shape[1] / mask.shape[1]
    x, y, w, h = rect
    return Box(
        x0=math.floor(x * sx),
        y0=math.floor(y * sy),
        x1=min(full_shape[1], math.ceil((x + w) * sx)),
        y1=min(full_shape[0], math.ceil((y + h) * sy)),
        score=float(peak),
        area=round(int(np.count_nonzero(mask[y : y + h, x : x + w])) * sx * sy),
    )


def map_baseline(work_map: np.ndarray, part: Part) -> float:
    """The map's typical level on the part: its median over the part's mask (every second
    pixel; the whole image for surfaces)."""
    values = work_map[::2, ::2][part.mask[::2, ::2]]
    return float(np.median(values)) if values.size else float(np.median(work_map))


def _flood(
    m: np.ndarray, x: int, y: int, level: float
) -> tuple[np.ndarray, tuple[int, int, int, int]]:
    """Pixels 8-connected to ``(x, y)`` where ``m >= level`` (``m[y, x]`` is the maximum) and
    their bounding rectangle ``(x, y, w, h)``."""
    h, w = m.shape
    flood = np.zeros((h + 2, w + 2), np.uint8)
    flags = 8 | cv2.FLOODFILL_FIXED_RANGE | cv2.FLOODFILL_MASK_ONLY | (1 << 8)
    _, _, _, rect = cv2.floodFill(
        m, flood, (x, y), 0, max(float(m[y, x]) - level, 0.0), 1e30, flags
    )
    return flood[1:-1, 1:-1] > 0, tuple(int(v) for v in rect)


def peak_regions(
    work_map: np.ndarray,
    threshold: float,
    baseline: float,
    full_shape: tuple[int, int],
    top_k: int = 3,
    min_area: int = 4,
    force: bool = False,
    fraction: float | None = None,
) -> list[Region]:
    """The ``top_k`` strongest hotspots, peak by peak: the highest remaining map value at or
    above ``threshold`` (with ``force``, the highest one when none is) and its region, the
    pixels connected to it where the map is at least ``fraction`` (:data:`GROW_FRACTION`) of
    the way from ``baseline`` (:func:`map_baseline`) to the peak: its full width at half
    maximum. The region and the rest of the peak's ``map >= threshold`` component are then
    set aside; regions under ``min_area`` pixels are skipped. Boxes in ``full_shape`` pixels.
    """
    fraction = GROW_FRACTION if fraction is None else fraction
    m = np.ascontiguousarray(work_map, dtype=np.float32)
    rest = m.copy()
    out: list[Region] = []
    for _ in range(8 * top_k):
        y, x = np.unravel_index(int(np.argmax(rest)), m.shape)
        peak = float(rest[y, x])
        if not np.isfinite(peak) or (peak < threshold and not (force and not out)):
            break
        level = baseline + fraction * (peak - baseline)
        mask, rect = _flood(m, int(x), int(y), level)
        taken = mask | _flood(m, int(x), int(y), threshold)[0] if level > threshold else mask
        rest[taken] = -np.inf
        if np.count_nonzero(mask) >= min_area:
            out.append(Region(_box(mask, rect, full_shape, peak), mask, peak, rect))
            if len(out) == top_k:
                break
    return out


def region_from_mask(mask: np.ndarray, work_shape: tuple[int, int], peak: float = 0.0) -> Region:
    """A :class:`Region` from a full-resolution boolean mask (e.g. a ground-truth mask)."""
    full = np.asarray(mask) > 0
    small = cv2.resize(full.astype(np.uint8), (work_shape[1], work_shape[0]), cv2.INTER_NEAREST)
    if not small.any():  # tiny region: keep its centre pixel
        ys, xs = np.nonzero(full)
        small[
            int(ys.mean() * work_shape[0] / full.shape[0]),
            int(xs.mean() * work_shape[1] / full.shape[1]),
        ] = 1
    ys, xs = np.nonzero(full)
    box = Box(int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1, peak, len(xs))
    return Region(box, small > 0, peak)


# --------------------------------------------------------------------------------------------
# words
# --------------------------------------------------------------------------------------------


def location(part: Part, x: float, y: float) -> tuple[str, dict]:
    """Location words for working-copy point ``(x, y)`` and the machine-readable ``where``."""
    if part.is_surface:
        row, col = part.cell(x, y)
        word = _CELL_WORDS[row][col]
        words = "in the centre of the surface" if word == "centre" else f"{word} of the surface"
        return words, {"frame": "image", "cell": [row, col]}
    near_edge = part.edge_distance_at(x, y) <= EDGE_BAND * 2 * part.half_width
    if part.elongated:
        t, s = part.axial(x, y)
        third = 0 if t < -1 / 3 else (2 if t > 1 / 3 else 1)
        if third == 1:
            words = "in the middle of the part"
        else:
            sign = 1 if third == 2 else -1
            direction = _direction_word(sign * part.u[0], sign * part.u[1])
            if part.ends_differ:
                end = "wider" if third == 2 else "narrower"
                words = f"near the {end} end ({direction} in the image)"
            else:
                words = f"near the {direction} end of the part"
        if near_edge or abs(s) > 0.5:
            words += ", along the edge"
        return words, {"frame": "axis", "third": third}
    row, col = part.cell(x, y)
    word = _CELL_WORDS[row][col]
    words = "in the centre of the part" if word == "centre" else f"{word} of the part"
    if near_edge and word != "centre":
        words += ", along the edge"
    elif near_edge:
        words = "in the centre of the part, on its outline"
    return words, {"frame": "part", "cell": [row, col]}


def location_contains(part: Part, where: dict, x: float, y: float) -> bool:
    """Whether the stated location ``where`` contains the working-copy point ``(x, y)``."""
    if where.get("frame") == "axis":
        t, _ = part.axial(x, y)
        third = 0 if t < -1 / 3 else (2 if t > 1 / 3 else 1)
        return third == where["third"]
    return list(part.cell(x, y)) == list(where["cell"])


def shape_of(region: Region, part: Part) -> tuple[str, str | None, dict]:
    """``(shape word, orientation words or None, numbers)`` of a region."""
    m8, _, _ = region.crop()
    mo = cv2.moments(m8, binaryImage=True)
    area = int(mo["m00"])
    if area >= 3:
        # sample covariance from the central moments, plus the extent of one pixel
        cov = np.array([[mo["mu20"], mo["mu11"]], [mo["mu11"], mo["mu02"]]]) / (area - 1)
        evals, evecs = np.linalg.eigh(cov + np.eye(2) / 12.0)
        elong = float(math.sqrt(evals[1] / max(evals[0], 1e-9)))
        major = evecs[:, 1]
        contours, _ = cv2.findContours(m8, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
        hull = cv2.convexHull(np.concatenate(contours))  # the hull of the outline's points
        solidity = area / max(cv2.contourArea(hull) + 0.5 * cv2.arcLength(hull, True) + 1, 1)
    else:
        elong, major, solidity = 1.0, np.array([1.0, 0.0]), 1.0
    numbers = {"elongation": elong, "solidity": float(min(solidity, 1.0))}
    if elong >= ELONGATED_REGION:
        shape = "elongated"
        if part.elongated:
            cos = abs(major[0] * part.u[0] + major[1] * part.u[1])
            orientation = (
                "along the part's axis"
                if cos > 0.8
                else ("across the part" if cos < 0.4 else "oblique to the part's axis")
            )
        else:
            angle = math.degrees(math.atan2(-major[1], major[0])) % 180
            orientation = (
                "horizontal"
                if angle < 22.5 or angle >= 157.5
                else ("vertical" if 67.5 <= angle < 112.5 else "diagonal")
            )
        numbers["angle"] = float(math.degrees(math.atan2(-major[1], major[0])) % 180)
        return shape, orientation, numbers
    if solidity < IRREGULAR_SOLIDITY:
        return "irregular", None, numbers
    return "compact", None, numbers


def appearance_of(region: Region, part: Part, gray: np.ndarray) -> tuple[str, dict]:
    """Words comparing the region's pixels with a ring of surrounding normal surface."""
    r = max(3, int(math.sqrt(np.count_nonzero(region.mask)) / 2))
    # work on the region's box grown by the ring's width (the same pixels, less to dilate)
    x, y, w, h = region.rect
    ys = slice(max(0, y - r - 1), y + h + r + 1)
    xs = slice(max(0, x - r - 1), x + w + r + 1)
    mask, gray = region.mask[ys, xs], gray[ys, xs]
    disc = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * r + 1,) * 2)
    ring = cv2.dilate(mask.astype(np.uint8), disc) > 0
    ring &= ~mask
    if not part.is_surface:
        ring &= part.mask[ys, xs]
    inside = gray[mask].astype(np.float32)
    around = gray[ring].astype(np.float32) if ring.any() else inside
    diff = float(inside.mean() - around.mean())
    texture = float((inside.std() + 1.0) / (around.std() + 1.0))
    numbers = {"contrast": diff, "texture": texture}
    if diff <= -CONTRAST_LEVELS:
        return "darker than the surrounding surface", numbers
    if diff >= CONTRAST_LEVELS:
        return "brighter than the surrounding surface", numbers
    if texture >= 1.4:
        return "rougher texture than the surrounding surface", numbers
    if texture <= 0.7:
        return "smoother than the surrounding surface", numbers
    return "similar to the surrounding surface (a subtle change)", numbers
