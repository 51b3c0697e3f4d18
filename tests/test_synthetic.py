"""Synthetic defects and the demo dataset."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from anomalens.data.datasets import MVTecAD
from anomalens.data.synthetic import (
    AREA_RANGE,
    DEFECT_KINDS,
    add_synthetic_defect,
    fractal_noise,
    make_demo_dataset,
    perlin_noise,
)
from anomalens.errors import DatasetError


def _texture(seed: int = 0, size: int = 128) -> np.ndarray:
    rng = np.random.default_rng(seed)
    base = fractal_noise((size, size), (4, 4), rng)
    gray = np.clip(128 + 60 * base, 0, 255).astype(np.uint8)
    return np.repeat(gray[:, :, None], 3, axis=2)


@pytest.mark.parametrize("kind", DEFECT_KINDS)
def test_defect_mask_marks_exactly_the_changed_region(kind: str) -> None:
    for seed in range(5):
        img = _texture(seed)
        before = img.copy()
        out, mask = add_synthetic_defect(img, np.random.default_rng(seed), kind)
        np.testing.assert_array_equal(img, before)  # input untouched
        assert out.shape == img.shape
        assert out.dtype == np.uint8
        assert mask.shape == img.shape[:2]
        assert mask.dtype == np.uint8
        assert set(np.unique(mask)) == {0, 1}
        assert AREA_RANGE[0] <= mask.mean() <= AREA_RANGE[1]
        diff = np.abs(out.astype(int) - img.astype(int)).max(axis=2)
        assert (diff[mask == 0] == 0).all()  # outside the mask: bit-identical
        inside = diff[mask == 1]
        assert inside.mean() > 15
        assert (inside >= 3).mean() > 0.8


@pytest.mark.parametrize("kind", [*DEFECT_KINDS, None])
def test_defect_is_deterministic(kind: str | None) -> None:
    img = _texture(1)
    a = add_synthetic_defect(img, np.random.default_rng(42), kind)
    b = add_synthetic_defect(img, np.random.default_rng(42), kind)
    c = add_synthetic_defect(img, np.random.default_rng(43), kind)
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
    assert not np.array_equal(a[1], c[1])


def test_random_kind_covers_all_kinds() -> None:
    rng = np.random.default_rng(0)
    img = _texture(2)
    masks = [add_synthetic_defect(img, rng)[1] for _ in range(12)]
    assert all(m.any() for m in masks)
    assert len({m.tobytes() for m in masks}) == 12


def test_grayscale_input_stays_grayscale() -> None:
    gray = _texture(3)[:, :, 0]
    out, mask = add_synthetic_defect(gray, np.random.default_rng(0), "stain")
    assert out.shape == gray.shape
    assert mask.any()
    assert (out[mask == 0] == gray[mask == 0]).all()


def test_invalid_inputs() -> None:
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match="unknown defect kind"):
        add_synthetic_defect(_texture(), rng, "dent")
    with pytest.raises(ValueError, match="uint8"):
        add_synthetic_defect(_texture().astype(np.float32), rng)
    with pytest.raises(ValueError, match="too small"):
        add_synthetic_defect(_texture(size=16), rng)


def test_perlin_noise_properties() -> None:
    n = perlin_noise((50, 70), (3, 4), np.random.default_rng(0))
    assert n.shape == (50, 70)
    assert n.dtype == np.float32
    assert np.abs(n).max() <= 1.5
    assert n.std() > 0.05
    assert np.abs(n[0, 0]) < 1e-6  # zero at grid points
    # smooth: neighbouring pixels differ far less than the overall spread
    assert np.abs(np.diff(n, axis=1)).max() < 0.5 * (n.max() - n.min())
    again = perlin_noise((50, 70), (3, 4), np.random.default_rng(0))
    np.testing.assert_array_equal(n, again)


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*.png"))}


def test_demo_dataset_layout_and_determinism(tmp_path: Path) -> None:
    kw = dict(n_train=3, n_test_good=2, n_test_bad=5, size=64, textures=("brick", "gravel"))
    cats = make_demo_dataset(tmp_path / "a", seed=7, **kw)
    assert cats == ["brick", "gravel"]

    train = MVTecAD(tmp_path / "a", "brick", "train")
    assert len(train) == 3
    assert all(s.image.shape == (64, 64, 3) for s in train)
    test = MVTecAD(tmp_path / "a", "gravel", "test")
    assert len(test) == 7
    assert sum(test.labels) == 5
    assert test.has_masks
    assert set(test.defect_types) == {"good", *DEFECT_KINDS}
    for s in test:
        assert s.mask.shape == (64, 64)
        assert s.mask.any() == bool(s.label)

    make_demo_dataset(tmp_path / "b", seed=7, **kw)
    make_demo_dataset(tmp_path / "c", seed=8, **kw)
    a, b, c = (_files(tmp_path / x) for x in "abc")
    assert len(a) == 2 * (3 + 2 + 5 + 5)
    assert a == b
    assert a != c

    make_demo_dataset(tmp_path / "a", seed=8, **kw)  # regenerating replaces the old output
    assert _files(tmp_path / "a") == c


def test_demo_refuses_foreign_folder(tmp_path: Path) -> None:
    (tmp_path / "brick").mkdir()
    (tmp_path / "brick" / "important.txt").write_text("keep me")
    with pytest.raises(DatasetError, match="refusing"):
        make_demo_dataset(tmp_path, n_train=1, n_test_good=1, n_test_bad=1, size=64)
    assert (tmp_path / "brick" / "important.txt").read_text() == "keep me"


@pytest.mark.parametrize("kind", DEFECT_KINDS)
def test_defect_inside_region(kind: str) -> None:
    img = _texture(4)
    region = np.zeros(img.shape[:2], bool)
    region[70:120, 10:60] = True  # about 15 % of the image, off-centre
    for seed in range(6):
        out, mask = add_synthetic_defect(img, np.random.default_rng(seed), kind, region=region)
        assert mask.any()
        assert (mask.astype(bool) & region).sum() >= 0.5 * mask.sum()
        diff = np.abs(out.astype(int) - img.astype(int)).max(axis=2)
        assert (diff[mask == 0] == 0).all()


def test_tiny_region_cuts_the_defect_to_it() -> None:
    img = _texture(5)
    region = np.zeros(img.shape[:2], bool)
    region[60:66, 60:66] = True  # too small for any whole defect: the best one is cut
    out, mask = add_synthetic_defect(img, np.random.default_rng(0), "stain", region=region)
    assert mask.any()
    assert not (mask.astype(bool) & ~region).any()
    assert (out[mask == 0] == img[mask == 0]).all()


def test_region_errors_and_default() -> None:
    img = _texture(6)
    rng = np.random.default_rng
    with pytest.raises(ValueError, match="no True pixel"):
        add_synthetic_defect(img, rng(0), "stain", region=np.zeros(img.shape[:2], bool))
    with pytest.raises(ValueError, match="shape"):
        add_synthetic_defect(img, rng(0), "stain", region=np.ones((8, 8), bool))
    whole = add_synthetic_defect(img, rng(1), "perlin", region=np.ones(img.shape[:2], bool))
    plain = add_synthetic_defect(img, rng(1), "perlin")
    np.testing.assert_array_equal(whole[1], plain[1])  # an all-True region changes nothing
