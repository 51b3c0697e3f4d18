"""Synthetic defects and a small demo dataset built from scikit-image's texture photos.

:func:`add_synthetic_defect` changes a region of an image and returns the exact mask of that
region: pixels outside the mask are left bit-identical. Everything is driven by the given
``numpy.random.Generator``, so results are reproducible.
"""

from __future__ import annotations

import math
import os
import shutil
from collections.abc import Callable, Sequence
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from anomalens.errors import DatasetError

DEFECT_KINDS = ("scratch", "stain", "cutpaste", "perlin")
#: Defects cover this fraction of the image (min, max).
AREA_RANGE = (0.003, 0.05)
DEMO_TEXTURES = ("brick", "grass", "gravel")
_DEMO_MARKER = ".anomalens_demo"
_MIN_SIDE = 32
_MAX_TRIES = 50

Defect = tuple[np.ndarray, np.ndarray]  # (alpha HxW float32, target HxWx3 float32)


# ----------------------------------------------------------------------------- Perlin noise


def _fade(t: np.ndarray) -> np.ndarray:
    return t * t * t * (t * (t * 6 - 15) + 10)


def perlin_noise(
    shape: tuple[int, int], res: tuple[int, int], rng: np.random.Generator
) -> np.ndarray:
    """2-D gradient (Perlin) noise of ``shape`` with ``res`` periods per axis, about in [-1, 1]."""
    cells = (math.ceil(shape[0] / res[0]), math.ceil(shape[1] / res[1]))
    angles = rng.uniform(0, 2 * np.pi, (res[0] + 1, res[1] + 1))
    grads = np.stack([np.cos(angles), np.sin(angles)], axis=-1)
    ys, xs = np.arange(res[0] * cells[0]), np.arange(res[1] * cells[1])
    yi, fy = ys // cells[0], (ys % cells[0]) / cells[0]
    xi, fx = xs // cells[1], (xs % cells[1]) / cells[1]

    def corner(oy: int, ox: int) -> np.ndarray:
        g = grads[(yi + oy)[:, None], (xi + ox)[None, :]]
        return g[..., 0] * (fy[:, None] - oy) + g[..., 1] * (fx[None, :] - ox)

    u, v = _fade(fy)[:, None], _fade(fx)[None, :]
    n0 = corner(0, 0) * (1 - u) + corner(1, 0) * u
    n1 = corner(0, 1) * (1 - u) + corner(1, 1) * u
    noise = np.sqrt(2) * (n0 * (1 - v) + n1 * v)
    return noise[: shape[0], : shape[1]].astype(np.float32)


def fractal_noise(
    shape: tuple[int, int],
    res: tuple[int, int],
    rng: np.random.Generator,
    octaves: int = 3,
    persistence: float = 0.5,
) -> np.ndarray:
    """Sum of Perlin octaves (each with doubled frequency and ``persistence`` times amplitude)."""
    noise = np.zeros(shape, dtype=np.float32)
    amplitude = 1.0
    for k in range(octaves):
        noise += amplitude * perlin_noise(shape, (res[0] * 2**k, res[1] * 2**k), rng)
        amplitude *= persistence
    return noise


# ----------------------------------------------------------------------------- defect kinds


def _target_area(rng: np.random.Generator, shape: tuple[int, int]) -> float:
    """A defect area in pixels, log-uniform inside the allowed range (with some margin)."""
    lo, hi = AREA_RANGE
    return float(np.exp(rng.uniform(np.log(lo * 1.3), np.log(hi * 0.7)))) * shape[0] * shape[1]


def _darken_or_brighten(img: np.ndarray, rng: np.random.Generator, keep: float) -> np.ndarray:
    """Push pixels towards black or white (the side with more headroom is more likely)."""
    dark = rng.random() < float(np.median(img)) / 255.0
    return img * keep if dark else 255.0 - (255.0 - img) * keep


def _scratch(img: np.ndarray, rng: np.random.Generator) -> Defect:
    """A thin dark or bright poly-line with slightly wandering direction."""
    h, w = img.shape[:2]
    side = min(h, w)
    thickness = max(1, round(rng.uniform(2.0, 4.5) * side / 256))
    n_seg = int(rng.integers(2, 6))
    step = rng.uniform(0.4, 0.8) * side / n_seg
    points = [rng.uniform([0.15 * w, 0.15 * h], [0.85 * w, 0.85 * h])]
    angle = rng.uniform(0, 2 * np.pi)
    for _ in range(n_seg):
        angle += rng.normal(0, 0.35)
        nxt = points[-1] + step * np.array([np.cos(angle), np.sin(angle)])
        points.append(np.clip(nxt, 0, [w - 1, h - 1]))
    canvas = np.zeros((h, w), dtype=np.uint8)
    pts = np.round(np.array(points) * 16).astype(np.int32)
    cv2.polylines(canvas, [pts], False, 255, thickness, cv2.LINE_AA, shift=4)
    alpha = canvas.astype(np.float32) / 255.0
    alpha[alpha < 0.3] = 0.0
    return alpha, _darken_or_brighten(img, rng, keep=rng.uniform(0.15, 0.4))


def _stain(img: np.ndarray, rng: np.random.Generator) -> Defect:
    """An irregular blob with smooth edges and a colour shift."""
    h, w = img.shape[:2]
    radius = math.sqrt(_target_area(rng, (h, w)) / np.pi)
    centre = rng.uniform([radius, radius], [w - radius, h - radius])
    theta = np.linspace(0, 2 * np.pi, 72, endpoint=False)
    r = np.ones_like(theta)
    for k in range(2, 6):
        r += rng.uniform(0, 0.3 / k * 2) * np.cos(k * theta + rng.uniform(0, 2 * np.pi))
    r = radius * np.clip(r, 0.4, None) / r.mean()
    poly = centre + np.stack([r * np.cos(theta), r * np.sin(theta)], axis=1)
    canvas = np.zeros((h, w), dtype=np.uint8)
    cv2.fillPoly(canvas, [np.round(poly * 16).astype(np.int32)], 255, cv2.LINE_AA, shift=4)
    sigma = max(1.0, 0.2 * radius)
    soft = cv2.GaussianBlur(canvas.astype(np.float32) / 255.0, (0, 0), sigma)
    alpha = np.clip(soft * rng.uniform(0.75, 1.0) * 1.4, 0, 1)
    alpha[alpha < 0.35] = 0.0
    if rng.random() < 0.7:  # darker, tinted (rust, oil, dirt)
        target = img * rng.uniform(0.35, 0.7, size=3)
    else:  # lighter, tinted (residue, bleach)
        target = img + (255.0 - img) * rng.uniform(0.35, 0.7, size=3)
    return alpha.astype(np.float32), target


def _cutpaste(img: np.ndarray, rng: np.random.Generator) -> Defect:
    """A patch cut from one place of the image, jittered, maybe rotated, pasted elsewhere."""
    h, w = img.shape[:2]
    area = _target_area(rng, (h, w))
    aspect = float(np.exp(rng.uniform(np.log(0.4), np.log(2.5))))
    ph = int(np.clip(round(math.sqrt(area * aspect)), 4, h // 2))
    pw = int(np.clip(round(area / ph), 4, w // 2))
    sy, sx = int(rng.integers(0, h - ph + 1)), int(rng.integers(0, w - pw + 1))
    patch = img[sy : sy + ph, sx : sx + pw] * rng.uniform(0.8, 1.2, size=3)
    angle = rng.uniform(-60, 60) if rng.random() < 0.5 else 0.0
    # Destination centre away from the source so the pasted patch differs from what it covers.
    half = max(ph, pw) / 2 + 1
    for _ in range(20):
        cy, cx = rng.uniform(half, h - half), rng.uniform(half, w - half)
        if abs(cy - (sy + ph / 2)) > ph or abs(cx - (sx + pw / 2)) > pw:
            break
    m = cv2.getRotationMatrix2D((pw / 2, ph / 2), angle, 1.0)
    m[:, 2] += (cx - pw / 2, cy - ph / 2)
    warped = cv2.warpAffine(patch.astype(np.float32), m, (w, h), flags=cv2.INTER_LINEAR)
    cover = cv2.warpAffine(np.ones((ph, pw), np.float32), m, (w, h), flags=cv2.INTER_LINEAR)
    region = cover >= 0.5
    target = img.copy()
    target[region] = warped[region] / cover[region][:, None]
    return region.astype(np.float32), target


def _perlin(img: np.ndarray, rng: np.random.Generator) -> Defect:
    """A Perlin-noise shaped region blended with a foreign texture or an intensity shift."""
    h, w = img.shape[:2]
    res = int(rng.integers(2, 6))
    noise = fractal_noise((h, w), (res, res), rng, octaves=3)
    cy, cx = rng.uniform(0.2, 0.8) * h, rng.uniform(0.2, 0.8) * w
    sigma = rng.uniform(0.12, 0.22) * min(h, w)
    yy, xx = np.mgrid[0:h, 0:w]
    window = np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * sigma**2))
    score = (noise + 1.0) * window
    threshold = np.quantile(score, 1.0 - _target_area(rng, (h, w)) / (h * w))
    region = score > threshold
    if rng.random() < 0.5:  # foreign texture: another part of the image, flipped, re-lit
        shift = (int(rng.integers(h)), int(rng.integers(w)))
        foreign = np.roll(img[::-1, ::-1], shift, axis=(0, 1))
        target = foreign * rng.choice([rng.uniform(0.4, 0.7), rng.uniform(1.4, 1.9)])
    else:  # intensity shift
        target = img + rng.choice([-1.0, 1.0]) * rng.uniform(50, 100)
    alpha = np.where(region, rng.uniform(0.6, 0.95), 0.0).astype(np.float32)
    return alpha, np.clip(target, 0, 255)


_GENERATORS: dict[str, Callable[[np.ndarray, np.random.Generator], Defect]] = {
    "scratch": _scratch,
    "stain": _stain,
    "cutpaste": _cutpaste,
    "perlin": _perlin,
}


def _blend(img: np.ndarray, alpha: np.ndarray, target: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Blend ``target`` into ``img`` where ``alpha > 0``; other pixels stay bit-identical."""
    mask = alpha > 0
    out = img.copy()
    a = alpha[mask][:, None]
    mixed = img[mask].astype(np.float32) * (1 - a) + np.clip(target[mask], 0, 255) * a
    out[mask] = np.clip(np.rint(mixed), 0, 255).astype(np.uint8)
    return out, mask.astype(np.uint8)


def blend_defect(
    image: np.ndarray, alpha: np.ndarray, target: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """``(image with target blended in by alpha, uint8 {0, 1} mask of alpha > 0)`` for a uint8
    RGB ``image``, float ``alpha`` in [0, 1] and float ``target`` (``H x W x 3``, clipped to
    0..255); pixels where ``alpha == 0`` stay bit-identical. For new defect generators."""
    return _blend(image, alpha.astype(np.float32), target.astype(np.float32))


def _check_region(region: np.ndarray | None, shape: tuple[int, int]) -> np.ndarray | None:
    """``region`` as a bool ``H x W`` array (None stays None); errors for a wrong shape or no
    True pixel."""
    if region is None:
        return None
    region = np.asarray(region)
    if region.shape != shape:
        raise ValueError(f"region has shape {region.shape}, expected {shape}")
    region = region.astype(bool)
    if not region.any():
        raise ValueError("region has no True pixel: there is nowhere to put a defect")
    return region


def add_synthetic_defect(
    image: np.ndarray,
    rng: np.random.Generator,
    kind: str | None = None,
    region: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Add one synthetic defect; return ``(defective image, uint8 {0,1} mask)``.

    ``kind`` is one of ``scratch, stain, cutpaste, perlin`` (random if None). ``image`` is
    ``uint8 H x W x 3`` (or ``H x W``, returned in the same layout); it is not modified. The
    mask covers 0.3 %-5 % of the image and marks exactly the pixels that were changed.

    ``region`` (bool ``H x W``, e.g. the object's foreground) asks for a defect with at least
    half of its mask inside the region: candidates are drawn until one qualifies. If none of
    them does, the candidate with most pixels inside is cut to the region (its mask is then
    entirely inside, possibly smaller than 0.3 %). ValueError when the region is empty or no
    candidate touches it.
    """
    image = np.asarray(image)
    if (
        image.dtype != np.uint8
        or image.ndim not in (2, 3)
        or (image.ndim == 3 and image.shape[2] != 3)
    ):
        raise ValueError(f"expected a uint8 HxWx3 or HxW image, got {image.dtype} {image.shape}")
    if min(image.shape[:2]) < _MIN_SIDE:
        raise ValueError(f"image too small for synthetic defects: {image.shape[:2]}")
    if kind is None:
        kind = DEFECT_KINDS[int(rng.integers(len(DEFECT_KINDS)))]
    if kind not in _GENERATORS:
        raise ValueError(f"unknown defect kind {kind!r}; valid kinds: {', '.join(DEFECT_KINDS)}")
    region = _check_region(region, image.shape[:2])
    rgb = np.repeat(image[:, :, None], 3, axis=2) if image.ndim == 2 else image
    base = rgb.astype(np.float32)
    lo, hi = AREA_RANGE
    best: Defect | None = None
    best_inside = 0
    for _ in range(_MAX_TRIES):
        alpha, target = _GENERATORS[kind](base, rng)
        defect = alpha > 0
        area_ok = lo <= float(defect.mean()) <= hi
        if region is None:
            if area_ok:
                break
            continue
        inside = int(np.count_nonzero(defect & region))
        if area_ok and 2 * inside >= np.count_nonzero(defect):
            break
        if inside > best_inside:
            best, best_inside = (alpha, target), inside
    else:
        if region is not None:
            if best is None:
                raise ValueError(f"could not place a {kind} defect inside the region")
            alpha, target = best
            alpha = np.where(region, alpha, 0.0).astype(np.float32)
    out, mask = _blend(rgb, alpha, target)
    if image.ndim == 2:
        out = np.rint(out.astype(np.float32).mean(axis=2)).astype(np.uint8)
    return out, mask


# ----------------------------------------------------------------------------- demo dataset


def _load_texture(name: str) -> np.ndarray:
    """An image shipped with scikit-image (``skimage.data.<name>``) as uint8 RGB."""
    import skimage.data
    from skimage.util import img_as_ubyte

    loader = getattr(skimage.data, name, None)
    if not callable(loader):
        raise ValueError(f"skimage.data has no image named {name!r}")
    img = img_as_ubyte(loader())
    if img.ndim == 2:
        img = np.repeat(img[:, :, None], 3, axis=2)
    return np.ascontiguousarray(img[:, :, :3])


def _good_view(texture: np.ndarray, size: int, rng: np.random.Generator) -> np.ndarray:
    """A random square crop of the texture, resized to ``size``, flipped and re-lit a little."""
    h, w = texture.shape[:2]
    side = min(h, w)
    crop = int(rng.integers(min(size, side), min(int(size * 1.25), side) + 1))
    y, x = int(rng.integers(0, h - crop + 1)), int(rng.integers(0, w - crop + 1))
    view = texture[y : y + crop, x : x + crop]
    if crop != size:
        interp = cv2.INTER_AREA if crop > size else cv2.INTER_LINEAR
        view = cv2.resize(view, (size, size), interpolation=interp)
    if rng.random() < 0.5:
        view = view[:, ::-1]
    if rng.random() < 0.5:
        view = view[::-1]
    view = view.astype(np.float32) * rng.uniform(0.92, 1.08)
    return np.clip(np.rint(view), 0, 255).astype(np.uint8)


def _save_png(array: np.ndarray, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.ascontiguousarray(array)).save(path, format="PNG")


def _prepare_category_dir(folder: Path) -> None:
    """Replace a previous demo output; refuse to touch a non-empty folder we did not make."""
    if folder.exists():
        if not (folder / _DEMO_MARKER).is_file() and any(folder.iterdir()):
            raise DatasetError(
                f"{folder}: folder exists and was not made by make_demo_dataset; "
                "refusing to overwrite it (choose another out_dir)"
            )
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    (folder / _DEMO_MARKER).write_text("made by anomalens.data.synthetic.make_demo_dataset\n")


def make_demo_dataset(
    out_dir: str | os.PathLike,
    n_train: int = 20,
    n_test_good: int = 8,
    n_test_bad: int = 12,
    size: int = 256,
    seed: int = 0,
    textures: Sequence[str] = DEMO_TEXTURES,
) -> list[str]:
    """Write an MVTec-AD-layout demo dataset from scikit-image textures; return the categories.

    Each texture name (a ``skimage.data`` image, default brick, grass, gravel) becomes a
    category with ``train/good``, ``test/good``, ``test/<defect kind>`` and
    ``ground_truth/<defect kind>/<stem>_mask.png`` (0/255). Defect kinds cycle through
    :data:`DEFECT_KINDS`. The same arguments always give identical files. A category folder
    left by a previous call is replaced; any other existing non-empty folder raises DatasetError.
    """
    out = Path(out_dir)
    for index, name in enumerate(textures):
        texture = _load_texture(name)
        rng = np.random.default_rng([seed, index])
        folder = out / name
        _prepare_category_dir(folder)
        for j in range(n_train):
            _save_png(_good_view(texture, size, rng), folder / "train" / "good" / f"{j:03d}.png")
        for j in range(n_test_good):
            _save_png(_good_view(texture, size, rng), folder / "test" / "good" / f"{j:03d}.png")
        for j in range(n_test_bad):
            kind = DEFECT_KINDS[j % len(DEFECT_KINDS)]
            stem = f"{j // len(DEFECT_KINDS):03d}"
            image, mask = add_synthetic_defect(_good_view(texture, size, rng), rng, kind)
            _save_png(image, folder / "test" / kind / f"{stem}.png")
            _save_png(mask * 255, folder / "ground_truth" / kind / f"{stem}_mask.png")
    return list(textures)
