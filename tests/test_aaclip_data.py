"""AA-CLIP training data: splits, k-shot choice, modes, synthetic defects, augmentation."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from anomalens.data.sample import Sample
from anomalens.data.synthetic import add_synthetic_defect, fractal_noise
from anomalens.methods.aaclip.data import (
    TrainingData,
    TrainItem,
    _resize_mask,
    select_kshot,
    split_validation,
)
from anomalens.postprocess import foreground_mask


def _texture(seed: int, size: int = 64) -> np.ndarray:
    rng = np.random.default_rng(seed)
    gray = np.clip(128 + 60 * fractal_noise((size, size), (4, 4), rng), 0, 255).astype(np.uint8)
    return np.repeat(gray[:, :, None], 3, axis=2)


def _sample(i: int, category: str = "a", label: int = 0, size: int = 64) -> Sample:
    image = _texture(i, size)
    mask = np.zeros((size, size), np.uint8)
    if label:
        image, mask = add_synthetic_defect(image, np.random.default_rng(i), "stain")
    kind = "stain" if label else "good"
    return Sample(image, mask, label, category, kind, f"{category}/{kind}/{i:03d}.png")


def _pool(groups: dict[tuple[str, int], int]) -> list[Sample]:
    out, i = [], 0
    for (category, label), n in groups.items():
        for _ in range(n):
            out.append(_sample(i, category, label))
            i += 1
    return out


def _paths(samples: list[Sample]) -> list[str]:
    return [s.path for s in samples]


def _disc(seed: int, size: int = 64) -> np.ndarray:
    """A textured bright disc on a black background (an object on a plain background)."""
    rng = np.random.default_rng(seed)
    centre = (size // 2 + int(rng.integers(-4, 5)), size // 2 + int(rng.integers(-4, 5)))
    inside = np.zeros((size, size), np.uint8)
    cv2.circle(inside, centre, size // 4, 1, -1)
    image = (_texture(seed + 100, size).astype(np.float32) * 0.5 + 110) * inside[..., None]
    return image.astype(np.uint8)


# ----------------------------------------------------------------------------- selection


def test_split_validation_is_stratified_disjoint_and_deterministic() -> None:
    pool = _pool({("a", 0): 10, ("a", 1): 5, ("b", 0): 2, ("b", 1): 1})
    train, val = split_validation(pool, 0.2, seed=0)
    assert sorted(_paths(train) + _paths(val)) == sorted(_paths(pool))
    assert not set(_paths(train)) & set(_paths(val))
    counts = {(c, lab): sum(s.category == c and s.label == lab for s in val) for c, lab in
              [("a", 0), ("a", 1), ("b", 0), ("b", 1)]}  # fmt: skip
    # round(10 * 0.2) = 2, round(5 * 0.2) = 1, round(2 * 0.2) = 0 -> 1, a group of one stays
    assert counts == {("a", 0): 2, ("a", 1): 1, ("b", 0): 1, ("b", 1): 0}
    assert _paths(val) == [s.path for s in pool if s.path in set(_paths(val))]  # input order
    again = split_validation(pool, 0.2, seed=0)
    assert _paths(again[1]) == _paths(val)
    assert any(_paths(split_validation(pool, 0.2, seed=s)[1]) != _paths(val) for s in (1, 2, 3))


def test_split_validation_edge_cases() -> None:
    pool = _pool({("a", 0): 2, ("a", 1): 4})
    train, val = split_validation(pool, 0.0, seed=0)
    assert val == []
    assert _paths(train) == _paths(pool)
    train, val = split_validation(pool, 0.9, seed=0)  # every group keeps one training sample
    assert sum(s.label == 0 for s in train) == 1
    assert sum(s.label == 1 for s in train) == 1
    with pytest.raises(ValueError, match="fraction"):
        split_validation(pool, 1.0, seed=0)


def test_select_kshot_counts_and_determinism() -> None:
    pool = _pool({("a", 0): 6, ("a", 1): 6, ("b", 0): 4, ("b", 1): 3})
    picked = select_kshot(pool, 5, seed=0)
    for category in ("a", "b"):
        mine = [s for s in picked if s.category == category]
        assert sum(s.label == 0 for s in mine) == 2
        assert sum(s.label == 1 for s in mine) == 3
    assert _paths(select_kshot(pool, 5, seed=0)) == _paths(picked)
    assert any(_paths(select_kshot(pool, 5, seed=s)) != _paths(picked) for s in (1, 2, 3))
    # a category's choice does not depend on the other categories
    only_a = select_kshot([s for s in pool if s.category == "a"], 5, seed=0)
    assert _paths(only_a) == [s.path for s in picked if s.category == "a"]


def test_select_kshot_errors() -> None:
    pool = _pool({("a", 0): 6, ("a", 1): 6, ("screw", 0): 4, ("screw", 1): 1})
    with pytest.raises(ValueError, match=r"'screw'.*2 defective.*found 1"):
        select_kshot(pool, 4, seed=0)
    with pytest.raises(ValueError, match=r"'screw'.*3 good.*found 2"):
        select_kshot(_pool({("screw", 0): 2, ("screw", 1): 9}), 6, seed=0)
    with pytest.raises(ValueError, match="shots >= 2"):
        select_kshot(pool, 1, seed=0)


# ----------------------------------------------------------------------------- modes


def test_masks_mode_errors() -> None:
    pool = _pool({("a", 0): 3, ("a", 1): 2})
    pool[3].mask[:] = 0
    with pytest.raises(ValueError, match=r"a/stain/003\.png.*all-zero mask"):
        TrainingData(pool, 64)
    with pytest.raises(ValueError, match='mode "synthetic"'):
        TrainingData(_pool({("a", 0): 3}), 64)
    with pytest.raises(ValueError, match="shots"):
        TrainingData(_pool({("a", 0): 3, ("a", 1): 2}), 64, "kshot")
    with pytest.raises(ValueError, match="unknown mode"):
        TrainingData(pool, 64, "few")


def test_masks_mode_items_shapes_and_batches() -> None:
    pool = [*_pool({("a", 0): 6, ("a", 1): 4, ("b", 0): 3, ("b", 1): 2})]
    wide = _sample(99, "b", 1, size=96)
    wide = Sample(wide.image[:48], wide.mask[:48], 1, "b", "stain", "b/stain/wide.png")
    pool.append(wide)
    data = TrainingData(pool, 40, val_fraction=0.2, seed=1)
    assert data.categories == ["a", "b"]
    assert len(data) == len(data.train_samples) == len(pool) - len(data.val_samples)
    assert len(data.val_samples) == 4  # a: 1 + 1, b: 1 + 1
    assert data.num_batches(4) == -(-len(data) // 4)
    batches = list(data.epoch(0, 4, stage=2))
    assert [len(b) for b in batches] == [4] * (len(data) // 4) + [len(data) % 4] * (
        len(data) % 4 > 0
    )
    items = [it for b in batches for it in b] + data.validation()
    for it in items:
        assert isinstance(it, TrainItem)
        assert it.image.shape == (40, 40, 3)
        assert it.image.dtype == np.uint8
        assert it.mask.shape == (40, 40)
        assert it.mask.dtype == np.uint8
        assert set(np.unique(it.mask)) <= {0, 1}
        assert it.label == int(it.mask.any())
        assert it.category in ("a", "b")
    assert sum(it.label for it in data.validation()) == 2
    assert sum(it.label for it in items) >= 6  # most defects survive the augmentation


def test_kshot_mode_with_tiny_k_has_empty_validation() -> None:
    pool = _pool({("a", 0): 5, ("a", 1): 5})
    data = TrainingData(pool, 64, "kshot", shots=2, val_fraction=0.5)
    assert len(data) == 2
    assert data.val_samples == []
    assert data.validation() == []
    assert sorted(s.label for s in data.train_samples) == [0, 1]


def test_tiny_defect_survives_downscaling() -> None:
    mask = np.zeros((640, 640), np.uint8)
    mask[301, 333] = 1
    small = _resize_mask(mask, 64)
    assert small.dtype == np.uint8
    assert small.sum() == 1
    assert small[30, 33] == 1


# ----------------------------------------------------------------------------- synthetic


def _textures(n: int) -> list[Sample]:
    return [_sample(i, "t", 0) for i in range(n)]


def test_synthetic_mode_defect_rate_and_exact_masks() -> None:
    pool = [*_textures(40), _sample(50, "t", 1), _sample(51, "t", 1)]
    with pytest.warns(UserWarning, match="dropped 2 defective"):
        data = TrainingData(pool, 64, "synthetic", val_fraction=0.0, defect_probability=0.5)
    assert len(data) == 40
    assert all(s.label == 0 for s in data.train_samples)
    labels = []
    for index in range(len(data)):
        item = data._training_item(3, index)
        clean = data._train[index].image
        outside = item.mask == 0
        np.testing.assert_array_equal(item.image[outside], clean[outside])
        if item.label:
            inside = item.mask == 1
            assert np.abs(item.image[inside].astype(int) - clean[inside]).mean() >= 8
        else:
            assert not item.mask.any()
        labels.append(item.label)
    assert 0.3 <= np.mean(labels) <= 0.7
    always = TrainingData(_textures(10), 64, "synthetic", val_fraction=0, defect_probability=1)
    assert all(always._training_item(0, i).label for i in range(10))
    never = TrainingData(_textures(10), 64, "synthetic", val_fraction=0, defect_probability=0)
    assert not any(it.label for b in never.epoch(0, 3, 2) for it in b)


def test_synthetic_defects_lie_on_the_object() -> None:
    pool = [Sample(_disc(i), np.zeros((64, 64), np.uint8), 0, "disc", "good", f"{i}") for i in
            range(16)]  # fmt: skip
    kwargs = {"val_fraction": 0.0, "defect_probability": 1.0, "seed": 3}
    data = TrainingData(pool, 64, "synthetic", **kwargs)
    off = TrainingData(pool, 64, "synthetic", foreground="off", **kwargs)
    fractions = {"auto": [], "off": []}
    for name, d in (("auto", data), ("off", off)):
        for epoch in range(2):
            for index in range(len(d)):
                item = d._training_item(epoch, index)
                if item.label:
                    region = foreground_mask(d._train[index].image)
                    fractions[name].append((region & (item.mask == 1)).sum() / item.mask.sum())
    assert len(fractions["auto"]) >= 28
    assert min(fractions["auto"]) >= 0.5
    assert min(fractions["off"]) < 0.5  # without the constraint some defects miss the disc
    # textures: no placement constraint
    assert all(r is None for r in TrainingData(_textures(6), 64, "synthetic")._regions)


def test_epochs_reproduce() -> None:
    def batches(data: TrainingData, epoch: int, stage: int = 2) -> list[list[TrainItem]]:
        return list(data.epoch(epoch, 4, stage))

    def same(a: list[list[TrainItem]], b: list[list[TrainItem]]) -> bool:
        pairs = [(x, y) for ba, bb in zip(a, b, strict=True) for x, y in zip(ba, bb, strict=True)]
        return all(
            np.array_equal(x.image, y.image) and np.array_equal(x.mask, y.mask) for x, y in pairs
        )

    data = TrainingData(_textures(10), 64, "synthetic", val_fraction=0.2)
    twin = TrainingData(_textures(10), 64, "synthetic", val_fraction=0.2)
    first = batches(data, 5)
    assert same(first, batches(data, 5))
    assert same(first, batches(twin, 5))
    assert not same(first, batches(data, 6))
    assert not same(first, batches(data, 5, stage=1))
    assert not same(
        first, batches(TrainingData(_textures(10), 64, "synthetic", val_fraction=0.2, seed=1), 5)
    )


def test_synthetic_validation_is_fixed() -> None:
    data = TrainingData(_textures(20), 64, "synthetic", val_fraction=0.25)
    assert len(data.val_samples) == 5
    assert len(data) == 15
    assert not {s.path for s in data.val_samples} & {s.path for s in data.train_samples}
    a, b = data.validation(), data.validation()
    assert sum(it.label for it in a) == 3  # half, rounded up
    for x, y in zip(a, b, strict=True):
        np.testing.assert_array_equal(x.image, y.image)
        np.testing.assert_array_equal(x.mask, y.mask)
        assert x.label == int(x.mask.any())
    a[0].image[:] = 0  # callers get copies
    assert data.validation()[0].image.any()


# ----------------------------------------------------------------------------- augmentation


def _red_square(i: int) -> Sample:
    image = _texture(i, 96)
    mask = np.zeros((96, 96), np.uint8)
    y, x = 20 + 3 * i, 40 - 2 * i
    mask[y : y + 30, x : x + 30] = 1
    image[mask == 1] = (255, 0, 0)
    return Sample(image, mask, 1, "r", "red", f"red{i}")


def test_augmentation_keeps_mask_on_the_defect() -> None:
    pool = [_red_square(i) for i in range(6)] + _pool({("r", 0): 2})
    data = TrainingData(pool, 96, val_fraction=0.0)
    moved = 0
    for stage in (1, 2):
        for epoch in range(3):
            for item in (it for b in data.epoch(epoch, 3, stage) for it in b):
                rgb = item.image.astype(int)
                red = (rgb[..., 0] - rgb[..., 1:].max(axis=-1)) > 80
                mask = item.mask.astype(bool)
                union = (red | mask).sum()
                if union:
                    assert (red & mask).sum() / union > 0.85
                moved += not any(np.array_equal(item.mask, s.mask) for s in pool)
    assert moved > 30  # the geometry really changed the masks


def test_defect_cropped_out_of_view_becomes_good() -> None:
    image = _texture(0)
    mask = np.zeros((64, 64), np.uint8)
    mask[:2, :2] = 1
    image[:2, :2] = 255
    pool = [Sample(image, mask, 1, "c", "dot", "dot"), _sample(1, "c", 0)]
    data = TrainingData(pool, 64, val_fraction=0.0)
    labels = [it.label for e in range(20) for b in data.epoch(e, 2, 1) for it in b]
    assert 0 < sum(labels) < 20  # the corner defect is lost in some views, kept in others
    assert all(it.label == int(it.mask.any()) for b in data.epoch(0, 2, 1) for it in b)


def test_colour_jitter_only_in_stage_two() -> None:
    flat = np.full((64, 64, 3), (150, 100, 60), np.uint8)
    pool = [Sample(flat, np.zeros((64, 64), np.uint8), 0, "f", "good", f"{i}") for i in range(20)]
    pool.append(_sample(0, "f", 1))
    data = TrainingData(pool, 64, val_fraction=0.0)
    centre = slice(24, 40)

    def changed(stage: int) -> float:
        items = [it for b in data.epoch(0, 8, stage) for it in b if not it.label]
        return np.mean([np.abs(it.image[centre, centre].astype(int) - flat[0, 0]).max() > 2
                        for it in items])  # fmt: skip

    assert changed(1) == 0.0
    assert 0.4 <= changed(2) <= 0.95  # p = 0.7


def test_invisible_synthetic_defects_are_rejected() -> None:
    # cutpaste on a flat image only changes the colour by the patch's random gain (0.8-1.2),
    # which is often below 8 gray levels: such defects must be redrawn
    flat = np.full((64, 64, 3), 120, np.uint8)
    pool = [Sample(flat, np.zeros((64, 64), np.uint8), 0, "f", "good", f"{i}") for i in range(30)]
    data = TrainingData(
        pool, 64, "synthetic", val_fraction=0, defect_kinds=("cutpaste",), defect_probability=1
    )
    items = [data._training_item(0, i) for i in range(len(data))]
    changes = [np.abs(it.image[it.mask == 1].astype(int) - 120).mean() for it in items if it.label]
    assert len(changes) >= 25
    assert min(changes) >= 8
