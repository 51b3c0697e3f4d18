"""Regions at their half maximum, parts versus surfaces, and the position weight of defect
types, on synthetic images and maps of known geometry."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from anomalens.explain import build_explainer
from anomalens.explain.defect_types import HAND_WEIGHTS, DefectTypes
from anomalens.explain.geometry import (
    find_part,
    is_part_on_background,
    map_baseline,
    peak_regions,
)
from anomalens.explain.grounded import analyse, describe_region
from anomalens.methods.base import Prediction
from anomalens.postprocess import foreground_mask


def gaussian(shape, cx, cy, sigma, height):
    yy, xx = np.mgrid[: shape[0], : shape[1]].astype(np.float32)
    return height * np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * sigma**2))


def striped_surface(h=150, w=240, seed=0):
    """Bright and dark vertical bands with noise: Otsu splits it, but it is a surface."""
    rng = np.random.default_rng(seed)
    img = np.where((np.arange(w) // 40) % 2 == 0, 170, 70)[None, :].repeat(h, 0)
    img = np.clip(img + rng.normal(0, 25, (h, w)), 0, 255).astype(np.uint8)
    return np.repeat(img[..., None], 3, axis=2)


def disc_on_background(size=160, value=180, bg=20):
    yy, xx = np.mgrid[:size, :size]
    img = np.full((size, size, 3), bg, np.uint8)
    img[(yy - size // 2) ** 2 + (xx - size // 2) ** 2 < (size // 3) ** 2] = value
    return img


def test_region_is_the_full_width_at_half_maximum_above_the_baseline():
    shape, sigma = (128, 160), 6.0
    m = 10.0 + gaussian(shape, 50, 60, sigma, 8.0)  # baseline 10, peak 18
    part, _ = find_part(striped_surface(*shape))
    assert part.is_surface
    assert map_baseline(m, part) == pytest.approx(10.0, abs=1e-3)
    (r,) = peak_regions(m, 12.0, 10.0, shape, top_k=3, min_area=4)
    radius = sigma * math.sqrt(2 * math.log(2))  # half maximum of a Gaussian
    assert np.count_nonzero(r.mask) == pytest.approx(math.pi * radius**2, rel=0.1)
    assert r.peak == pytest.approx(18.0, abs=1e-4)
    half = math.ceil(radius)
    assert (r.box.x0, r.box.y0, r.box.x1, r.box.y1) == (
        50 - half + 1,
        60 - half + 1,
        50 + half,
        60 + half,
    )
    assert r.centroid == pytest.approx((50.0, 60.0), abs=0.05)
    # the threshold (12) cuts a larger component (radius 1.18 sigma): the region is still the
    # half-maximum one, and the shoulder is not a second region
    assert len(peak_regions(m, 12.0, 10.0, shape, top_k=3, min_area=4)) == 1


def test_peaks_strongest_first_below_threshold_only_when_forced():
    shape = (100, 200)
    m = gaussian(shape, 40, 50, 5, 3.0) + gaussian(shape, 150, 50, 5, 5.0)
    regions = peak_regions(m, 2.0, 0.0, shape, top_k=3)
    assert [round(r.peak, 3) for r in regions] == [5.0, 3.0]
    assert [round(r.centroid[0]) for r in regions] == [150, 40]
    assert peak_regions(m, 6.0, 0.0, shape, top_k=3) == []
    forced = peak_regions(m, 6.0, 0.0, shape, top_k=3, force=True)
    assert [round(r.peak, 3) for r in forced] == [5.0]  # only the strongest, none below it


def test_boxes_are_in_the_maps_own_pixels():
    full = np.zeros((512, 1024), np.float32)
    full[100:140, 600:700] = 4.0
    img = np.full((512, 1024, 3), 128, np.uint8)
    a = analyse(img, full, 1.0, top_k=1)
    (r,) = a.regions
    assert a.gray.shape == (128, 256)  # working copy: longest side 256
    assert (r.box.x0, r.box.y0, r.box.x1, r.box.y1) == (600, 100, 700, 140)
    assert r.box.area == 40 * 100


def test_striped_surface_is_a_surface_and_a_disc_is_a_part():
    surface = striped_surface()
    gray = surface[..., 0]
    mask = foreground_mask(gray)
    assert 0.2 < mask.mean() < 0.9  # Otsu does split the bands ...
    assert not is_part_on_background(gray, mask)  # ... but they run over the border
    part, _ = find_part(surface)
    assert part.is_surface
    assert part.bbox == (0, 0, 240, 150)
    assert part.u == (1.0, 0.0)  # along the longer side
    disc = disc_on_background()
    dmask = foreground_mask(disc[..., 0])
    assert is_part_on_background(disc[..., 0], dmask)
    part, _ = find_part(disc)
    assert not part.is_surface
    assert part.centre == pytest.approx((79.5, 79.5), abs=1.0)
    # a faint object on a noisy background does not stand out by 5 background deviations
    rng = np.random.default_rng(1)
    faint = np.clip(disc_on_background(value=60, bg=40) + rng.normal(0, 10, (160, 160, 3)), 0, 255)
    faint = faint.astype(np.uint8)
    assert not is_part_on_background(faint[..., 0], foreground_mask(faint[..., 0]))


def test_edge_distance_is_measured_on_first_use():
    img = np.full((120, 240, 3), 20, np.uint8)
    img[50:70, 20:220] = 200  # a bar 20 px high
    part, _ = find_part(img)
    assert part._edge is None
    d = part.edge_distance_at(120, 60)
    assert 9.0 <= d <= 14.0  # half the bar's height plus the mask's small dilation
    assert part._edge is not None
    assert part.edge_distance_at(120, 51) < 5.0


def test_surface_position_numbers_and_words():
    img = striped_surface(150, 240)
    m = gaussian((150, 240), 20, 15, 4, 3.0)
    e = build_explainer("grounded").explain(
        [img], Prediction(np.array([3.0], np.float32), [m], 1.0, 1.0)
    )[0]
    assert e.findings[0].location == "upper left of the surface"
    a = analyse(img, m, 1.0, top_k=1)
    _, numbers = describe_region(a.regions[0], a.part, a.gray, 1.0)
    # centroid (20, 15) of a 240 x 150 surface: 2 * 20 / 240 - 1 and 2 * 15 / 150 - 1
    assert numbers["axial"] == pytest.approx(
        max(abs(2 * 20.5 / 240 - 1), abs(2 * 15.5 / 150 - 1)), abs=0.02
    )
    assert numbers["lateral"] == pytest.approx(
        min(abs(2 * 20.5 / 240 - 1), abs(2 * 15.5 / 150 - 1)), abs=0.02
    )


def _rule(deep, hand, labels):
    return DefectTypes(("a", "b"), deep, hand, labels, np.arange(len(labels)))


def test_position_weight_is_chosen_on_the_examples():
    rng = np.random.default_rng(0)
    n = 40
    labels = np.arange(n) % 2
    noise = rng.normal(size=(n, 8))
    noise /= np.linalg.norm(noise, axis=1, keepdims=True)
    # types told apart by position only: the deep part is the same noise for both
    position = np.stack([np.where(labels == 1, 0.8, -0.8) + rng.normal(0, 0.1, n)] * 2, 1)
    rule = _rule(noise, position, labels)
    assert rule.hand_weight > 0
    assert rule.hand_weight in HAND_WEIGHTS
    assert [t for t, _ in rule.classify(noise[:2], np.array([[0.8, 0.8], [-0.8, -0.8]]))] == [
        "b",
        "a",
    ]
    # told apart by the deep part, position is noise: position gets no weight
    deep = np.where(labels[:, None] == 1, 1.0, -1.0) * np.ones((n, 8)) + rng.normal(0, 0.3, (n, 8))
    deep /= np.linalg.norm(deep, axis=1, keepdims=True)
    rule = _rule(deep, rng.normal(size=(n, 2)), labels)
    assert rule.hand_weight == 0.0
    # a fixed weight is kept; subsets choose their own
    assert _rule(deep, position, labels).subset(labels == labels).hand_weight in HAND_WEIGHTS
    fixed = DefectTypes(("a", "b"), deep, position, labels, np.arange(n), hand_weight=0.5)
    assert fixed.hand_weight == 0.5


DATA = Path(__file__).resolve().parents[2] / "shared/data"
TRAIN_GOOD = {
    "part": DATA / "mvtec_ad/screw/train/good",
    "surface": DATA / "magnetic_tile/magnetic_tile/train/good",
}


@pytest.mark.slow
@pytest.mark.skipif(not DATA.is_dir(), reason="../shared/data not found")
@pytest.mark.parametrize("kind", ["part", "surface"])
def test_real_screws_are_parts_and_magnetic_tiles_are_surfaces(kind):
    from anomalens.data.datasets import list_images
    from anomalens.data.io import load_image

    paths = list_images(TRAIN_GOOD[kind])
    picked = [paths[i] for i in np.linspace(0, len(paths) - 1, 12).astype(int)]
    parts = [find_part(load_image(p))[0] for p in picked]
    assert [p.is_surface for p in parts] == [kind == "surface"] * len(picked)
    if kind == "part":
        assert all(p.elongated and p.ends_differ for p in parts)  # a screw: head and tip
