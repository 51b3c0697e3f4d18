"""Post-processing against hand-computed values and scipy."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch
from scipy import ndimage

from anomalens.postprocess import (
    Box,
    fill_holes,
    foreground_mask,
    gaussian_blur,
    hotspots,
    resize_map,
    robust_normalize,
)

# --- gaussian_blur ---------------------------------------------------------------------------


def test_blur_of_impulse_sums_to_one_and_matches_scipy() -> None:
    impulse = torch.zeros(2, 41, 47)
    impulse[0, 20, 23] = 1.0
    impulse[1, 10, 30] = 1.0
    out = gaussian_blur(impulse, sigma=2.0)
    assert out.shape == impulse.shape
    assert out.dtype == torch.float32
    assert out[0].sum().item() == pytest.approx(1.0, abs=1e-5)
    expected = ndimage.gaussian_filter(impulse[0].double().numpy(), sigma=2.0, truncate=4.0)
    np.testing.assert_allclose(out[0].numpy(), expected, atol=1e-7)
    # interior of a random map (away from the borders, where padding conventions differ)
    rand = torch.rand(1, 60, 60, dtype=torch.float64)
    out = gaussian_blur(rand, sigma=1.5)[0].numpy()
    expected = ndimage.gaussian_filter(rand[0].numpy(), sigma=1.5, truncate=4.0)
    np.testing.assert_allclose(out[8:-8, 8:-8], expected[8:-8, 8:-8], atol=1e-12)


def test_blur_reflect_padding_keeps_constant_maps_and_shapes() -> None:
    const = torch.full((3, 1, 9, 12), 2.5)
    np.testing.assert_allclose(gaussian_blur(const, 1.0).numpy(), 2.5, rtol=1e-6)
    single = torch.rand(9, 12)
    assert gaussian_blur(single, 1.0).shape == (9, 12)
    tiny = torch.rand(2, 3, 3)  # radius 8 > size: edge replication instead of reflect
    assert torch.isfinite(gaussian_blur(tiny, 2.0)).all()


def test_blur_sigma_zero_is_identity() -> None:
    x = torch.rand(2, 5, 5)
    assert gaussian_blur(x, 0.0) is x
    assert gaussian_blur(x, -1.0) is x


# --- resize_map ------------------------------------------------------------------------------


def test_resize_map_bilinear_float32() -> None:
    m = np.array([[0.0, 1.0], [2.0, 3.0]])
    out = resize_map(m, (4, 4))
    assert out.shape == (4, 4)
    assert out.dtype == np.float32
    # half-pixel centres: the top-left output pixel is the input corner, the next one is 1/4 in
    assert out[0, 0] == pytest.approx(0.0)
    assert out[0, 1] == pytest.approx(0.25)
    assert out[3, 3] == pytest.approx(3.0)
    assert resize_map(np.ones((7, 5)), (3, 11)).shape == (3, 11)


# --- robust_normalize ------------------------------------------------------------------------


def test_robust_normalize_by_hand() -> None:
    m = np.array([[1.0, 2.0, 3.0], [4.0, 100.0, 6.0]])
    # median of {1, 2, 3, 4, 6, 100} = 3.5; |x - 3.5| = {2.5, 1.5, 0.5, 0.5, 2.5, 96.5},
    # its median = (1.5 + 2.5) / 2 = 2.0, so the scale is 1.4826 * 2.0 = 2.9652
    out = robust_normalize(m)
    np.testing.assert_allclose(out, (m - 3.5) / 2.9652)


def test_robust_normalize_with_mask_and_constant_map() -> None:
    m = np.array([[0.0, 10.0], [1.0, 2.0]], dtype=np.float32)
    mask = np.array([[True, False], [True, True]])
    # over {0, 1, 2}: median 1, MAD median{1, 0, 1} = 1 -> scale 1.4826
    out = robust_normalize(m, mask)
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, (m - 1.0) / 1.4826, rtol=1e-6)
    flat = robust_normalize(np.full((3, 3), 5.0), eps=1e-3)
    np.testing.assert_array_equal(flat, 0.0)
    with pytest.raises(ValueError, match="shape"):
        robust_normalize(m, np.ones((3, 3), dtype=bool))


# --- hotspots --------------------------------------------------------------------------------


def test_hotspots_recover_two_rectangles() -> None:
    m = np.zeros((50, 60), dtype=np.float32)
    m[5:15, 10:30] = 0.6  # rows 5..14, columns 10..29
    m[7, 12] = 0.8
    m[30:45, 40:43] = 0.9
    m[48, 0] = 1.0  # a single pixel, below min_area
    boxes = hotspots(m, threshold=0.5, min_area=4)
    assert boxes == [
        Box(x0=40, y0=30, x1=43, y1=45, score=pytest.approx(0.9), area=45),
        Box(x0=10, y0=5, x1=30, y1=15, score=pytest.approx(0.8), area=200),
    ]
    assert boxes[1].width == 20
    assert boxes[1].height == 10
    assert len(hotspots(m, 0.5, min_area=1)) == 3
    assert len(hotspots(m, 0.5, min_area=1, top_k=1)) == 1
    assert hotspots(m, 2.0) == []


def test_hotspots_eight_connected_and_nan() -> None:
    m = np.zeros((10, 10))
    m[2, 2] = m[3, 3] = m[4, 4] = 1.0
    [box] = hotspots(m, 0.5, min_area=1)
    assert (box.x0, box.y0, box.x1, box.y1, box.area) == (2, 2, 5, 5, 3)
    m[0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        hotspots(m, 0.5)


# --- foreground_mask -------------------------------------------------------------------------


def disc_image(bright_on_dark: bool = True, size: int = 200, radius: int = 60) -> np.ndarray:
    rng = np.random.default_rng(0)
    fg, bg = (200, 30) if bright_on_dark else (40, 220)
    img = np.full((size, size), bg, dtype=np.uint8)
    cv2.circle(img, (size // 2 + 10, size // 2 - 5), radius, fg, thickness=-1)
    noisy = img.astype(np.int16) + rng.integers(-10, 11, size=img.shape)
    return np.repeat(np.clip(noisy, 0, 255).astype(np.uint8)[..., None], 3, axis=2)


def disc_truth(size: int = 200, radius: int = 60) -> np.ndarray:
    truth = np.zeros((size, size), dtype=np.uint8)
    cv2.circle(truth, (size // 2 + 10, size // 2 - 5), radius, 1, thickness=-1)
    return truth > 0


def iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / (a | b).sum())


@pytest.mark.parametrize("bright_on_dark", [True, False])
def test_foreground_of_disc(bright_on_dark: bool) -> None:
    img = disc_image(bright_on_dark)
    mask = foreground_mask(img, margin=0.0)
    assert mask.dtype == bool
    assert mask.shape == (200, 200)
    assert iou(mask, disc_truth()) > 0.95
    wider = foreground_mask(img)  # default margin dilates by ~2 px
    assert wider.sum() > mask.sum()
    assert wider[mask].all()


def test_foreground_fills_holes() -> None:
    img = disc_image()
    cv2.circle(img, (110, 95), 15, (30, 30, 30), thickness=-1)  # a dark hole inside the disc
    assert iou(foreground_mask(img, margin=0.0), disc_truth()) > 0.95


@pytest.mark.parametrize("density", [0.3, 0.5, 0.7])
def test_fill_holes_matches_scipy(density: float) -> None:
    rng = np.random.default_rng(int(density * 10))
    for _ in range(20):
        mask = rng.random((int(rng.integers(1, 40)), int(rng.integers(1, 40)))) < density
        np.testing.assert_array_equal(fill_holes(mask), ndimage.binary_fill_holes(mask))


def test_foreground_implausible_or_textures_is_all_true() -> None:
    rng = np.random.default_rng(1)
    noise = rng.integers(0, 256, size=(64, 64, 3), dtype=np.uint8)
    assert foreground_mask(np.full((64, 64, 3), 128, np.uint8)).all()  # flat image
    assert foreground_mask(disc_image(radius=5)).all()  # < 5 % of the image
    assert foreground_mask(disc_image(), textures=True).all()
    assert foreground_mask(noise).shape == (64, 64)
    with pytest.raises(ValueError, match="uint8"):
        foreground_mask(np.zeros((10, 10, 3), dtype=np.float32))


def test_hotspots_match_an_ndimage_reference() -> None:
    """Boxes and peaks equal scipy's 8-connected labelling (regions >= min_area)."""
    rng = np.random.default_rng(3)
    m = ndimage.uniform_filter(rng.random((120, 90)).astype(np.float32), 5)
    thr, min_area = float(np.quantile(m, 0.9)), 4
    labels, n = ndimage.label(m >= thr, structure=np.ones((3, 3)))
    want = []
    for i, sl in enumerate(ndimage.find_objects(labels), 1):
        region = labels[sl] == i
        if region.sum() >= min_area:
            ys, xs = sl
            want.append((xs.start, ys.start, xs.stop, ys.stop, float(m[sl][region].max())))
    want.sort(key=lambda b: b[4], reverse=True)
    got = [(b.x0, b.y0, b.x1, b.y1, b.score) for b in hotspots(m, thr, min_area, top_k=None)]
    assert n > 3
    assert got == want


def test_masked_blur_ignores_the_cells_outside_the_mask() -> None:
    from anomalens.postprocess import gaussian_blur, masked_blur

    rng = np.random.default_rng(0)
    maps = torch.from_numpy(rng.random((2, 12, 16)).astype(np.float32))
    mask = torch.zeros(2, 12, 16)
    mask[:, 3:9, 2:14] = 1
    inside = maps.clone()
    inside[:, 3:9, 2:14] = 0.7  # constant inside: the blur over the mask keeps it exactly
    out = masked_blur(inside, mask, 1.5)
    np.testing.assert_allclose(out[:, 3:9, 2:14].numpy(), 0.7, rtol=1e-5)
    # whatever lies outside the mask does not change the inside
    other = inside.clone()
    other[:, :3] = 100.0
    torch.testing.assert_close(masked_blur(other, mask, 1.5)[:, 3:9], out[:, 3:9])
    # an all-ones mask is the plain blur; None too
    torch.testing.assert_close(
        masked_blur(maps, torch.ones_like(maps), 1.5), gaussian_blur(maps, 1.5)
    )
    torch.testing.assert_close(masked_blur(maps, None, 1.5), gaussian_blur(maps, 1.5))


def test_class_means_gap_equals_the_pixel_means():
    """The foreground's Otsu-contrast check, from a histogram, equals the gap between the mean
    gray levels of the two classes of pixels, exactly."""
    from anomalens.postprocess import _class_means_gap

    rng = np.random.default_rng(0)
    for _ in range(50):
        gray = rng.integers(0, 256, tuple(rng.integers(8, 90, 2)), dtype=np.uint8)
        threshold = float(rng.integers(1, 254))
        above = gray > threshold
        if above.any() and not above.all():
            gap = abs(float(gray[above].mean()) - float(gray[~above].mean()))
            assert _class_means_gap(gray, threshold) == gap
