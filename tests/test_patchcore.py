"""PatchCore: fit, predict, calibration, save/load on real photos with synthetic defects."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import save_and_reload

from anomalens.data.synthetic import _good_view, _load_texture
from anomalens.errors import CheckpointError, NotFittedError
from anomalens.methods import PatchCore, create_detector, load_detector
from anomalens.methods.base import select_shots
from anomalens.methods.patchcore import _fill_padding
from anomalens.metrics import image_auroc, pixel_auroc

SMALL = dict(image_size=128, memory_size=1500, batch_size=8, calibration_images=8)


@pytest.fixture(scope="module")
def fitted(texture_set):
    train = texture_set[0]
    return PatchCore(**SMALL).fit(train, progress=False)


def test_predict_shapes_and_detection(fitted, texture_set):
    _, test, labels, masks = texture_set
    pred = fitted.predict(test)
    assert pred.scores.shape == (14,)
    assert pred.scores.dtype == np.float32
    assert len(pred.maps) == 14
    assert all(m.shape == (128, 128) for m in pred.maps)
    assert image_auroc(labels, pred.scores) >= 0.8  # 14 images: chance is 0.5
    assert pixel_auroc(masks, pred.maps) >= 0.95
    # the image score is the mean of the top 0.3 % of the smoothed map (49 of 128 x 128 pixels)
    top = [np.sort(m.ravel())[-49:].mean() for m in pred.maps]
    np.testing.assert_allclose(pred.scores, top, rtol=1e-5)


def test_maps_follow_each_input_resolution(fitted, texture_set):
    img = texture_set[1][0]
    big = np.ascontiguousarray(np.repeat(np.repeat(img, 2, 0), 3, 1))  # 256 x 384
    pred = fitted.predict([img, big])
    assert pred.maps[0].shape == (128, 128)
    assert pred.maps[1].shape == (256, 384)


def test_memory_is_coreset_of_requested_size(fitted):
    rep = fitted.fit_report
    assert rep.n_images == 10
    assert rep.n_patches == 10 * 16 * 16
    assert fitted.memory.shape == (1500, 24 + 40)  # stages 2 and 3 on the stride-8 grid
    assert not fitted.use_foreground  # a texture: no plain background
    assert set(rep.seconds) == {"features", "coreset", "calibration", "total"}


def test_calibrated_threshold_is_quantile_of_leave_one_out_scores(fitted, texture_set):
    cal = fitted.calibration
    assert cal.n_images == 8
    assert cal.threshold == pytest.approx(np.quantile(cal.good_scores, cal.quantile))
    # leave-one-out scores of training images resemble scores of unseen good images
    pred = fitted.predict(texture_set[1][:6])
    assert np.median(pred.scores) < 1.5 * np.median(cal.good_scores)
    assert pred.threshold == cal.threshold
    np.testing.assert_array_equal(pred.is_defective, pred.scores >= cal.threshold)


def test_save_load_round_trip_is_bit_identical(fitted, texture_set, tmp_path):
    meta, loaded = save_and_reload(fitted, tmp_path / "m")
    assert meta["config"]["image_size"] == 128
    assert torch.equal(loaded.memory, fitted.memory)
    a, b = fitted.predict(texture_set[1]), loaded.predict(texture_set[1])
    np.testing.assert_array_equal(a.scores, b.scores)
    for x, y in zip(a.maps, b.maps, strict=True):
        np.testing.assert_array_equal(x, y)
    assert loaded.calibration == fitted.calibration


def test_same_seed_same_model(texture_set):
    train = texture_set[0][:4]
    a = PatchCore(**(SMALL | {"memory_size": 300})).fit(train, progress=False)
    b = PatchCore(**(SMALL | {"memory_size": 300})).fit(train, progress=False)
    assert torch.equal(a.memory, b.memory)


def _memory_of(model: PatchCore, images: list[np.ndarray]) -> torch.Tensor:
    """The memory a model holds when it keeps every patch of ``images`` (in order; the cells of
    the reflected border hold copies of the image's own content patches)."""
    feats = model.embed_images(images)
    _fill_padding(feats, model.frames(images))
    return feats.reshape(-1, feats.shape[-1])


def test_shots_select_a_seeded_subset(texture_set):
    train = texture_set[0]
    model = create_detector("patchcore", shots=2, **SMALL).fit(train, progress=False)
    assert model.fit_report.n_images == 2
    assert model.memory.shape[0] == 2 * 16 * 16  # fewer patches than memory_size: all kept
    assert model.calibration.n_images == 2
    # the subset: numpy's seeded choice, computed here independently
    chosen = {
        seed: sorted(np.random.default_rng(seed).choice(10, size=2, replace=False).tolist())
        for seed in (0, 1)
    }
    assert chosen[0] != chosen[1]  # the two seeds below must pick different images
    for seed in (0, 1):
        assert select_shots(10, 2, seed) == chosen[seed] == select_shots(10, 2, seed)
    assert select_shots(10, None, 0) == select_shots(10, 10, 0) == list(range(10))
    # the memory holds exactly the patches of the chosen images (seed 0 is the default)
    expected = _memory_of(model, [train[i] for i in chosen[0]])
    torch.testing.assert_close(model.memory, expected, rtol=0, atol=1e-5)
    other = PatchCore(**SMALL, shots=2, seed=1).fit(train, progress=False)
    torch.testing.assert_close(
        other.memory, _memory_of(other, [train[i] for i in chosen[1]]), rtol=0, atol=1e-5
    )
    assert not torch.equal(other.memory, model.memory)


def test_one_shot_has_no_threshold(texture_set):
    with pytest.warns(UserWarning, match="cannot calibrate"):
        model = PatchCore(**SMALL, shots=1).fit(texture_set[0], progress=False)
    pred = model.predict(texture_set[1][:2])
    assert pred.threshold is None
    assert pred.is_defective is None


def test_augmented_views_enlarge_the_memory(texture_set):
    model = PatchCore(**SMALL, shots=2, augment=("hflip", "rot90")).fit(
        texture_set[0], progress=False
    )
    assert model.fit_report.n_patches == 2 * 3 * 16 * 16
    # memory_size 1500 < 1536 patches: the coreset keeps most of them; with room for all, the
    # memory is the patches of each chosen image, its mirror and its rot90 copy, in that order
    roomy = PatchCore(**(SMALL | {"memory_size": 2000}), shots=2, augment=("hflip", "rot90"))
    roomy.fit(texture_set[0], progress=False)
    first, second = (texture_set[0][i] for i in select_shots(10, 2, 0))
    views = [first, np.fliplr(first), np.rot90(first), second, np.fliplr(second)]
    views.append(np.rot90(second))
    expected = torch.cat([_memory_of(roomy, [v.copy()]) for v in views])
    torch.testing.assert_close(roomy.memory, expected, rtol=0, atol=1e-4)
    # so a training image turned by 90 degrees is in the memory (nearest distance ~0), while
    # the un-augmented model has never seen the vertical bricks
    plain = PatchCore(**(SMALL | {"memory_size": 2000}), shots=2).fit(texture_set[0], False)
    turned = _memory_of(roomy, [np.rot90(first).copy()])
    exact = "donot_use_mm_for_euclid_dist"  # the matmul form is off by ~0.05 here
    seen = torch.cdist(turned, roomy.memory, compute_mode=exact).min(1).values
    unseen = torch.cdist(turned, plain.memory, compute_mode=exact).min(1).values
    scale = torch.cdist(turned, turned, compute_mode=exact).mean()  # typical patch distance
    assert seen.max() < 1e-3 * scale
    assert unseen.median() > 0.1 * scale
    assert (
        roomy.predict([np.rot90(first).copy()]).scores[0]
        < 1e-2 * plain.predict([np.rot90(first).copy()]).scores[0]
    )


def test_errors(texture_set, tmp_path):
    with pytest.raises(NotFittedError, match="not fitted"):
        PatchCore(**SMALL).predict(texture_set[1][:1])
    with pytest.raises(ValueError, match="at least one good image"):
        PatchCore(**SMALL).fit([])
    with pytest.raises(ValueError, match="unknown augmentations"):
        PatchCore(augment=("twirl",))
    with pytest.raises(ValueError, match="has no option"):
        create_detector("patchcore", colour="red")
    with pytest.raises(ValueError, match="unknown method"):
        create_detector("nope")
    with pytest.raises(CheckpointError, match="not found"):
        load_detector(tmp_path / "missing")


def test_nan_features_give_a_clear_error(fitted, texture_set, tmp_path, monkeypatch):
    model = PatchCore.load(fitted.save(tmp_path / "m"))
    real = model.embed_images
    monkeypatch.setattr(model, "embed_images", lambda imgs: real(imgs) * float("nan"))
    with pytest.raises(ValueError, match="NaN"):
        model.predict(texture_set[1][:2])


def _object_on_plain_background(rng: np.random.Generator, tex: np.ndarray) -> np.ndarray:
    """A brick-textured disc at a random place on a plain light-gray background."""
    img = np.full((128, 128, 3), 200, np.uint8)
    patch = _good_view(tex, 128, rng)
    yy, xx = np.mgrid[:128, :128]
    cy, cx = rng.integers(45, 83, size=2)
    inside = (yy - cy) ** 2 + (xx - cx) ** 2 < 30**2
    img[inside] = patch[inside] // 2
    return img


def test_foreground_weighting_ignores_background_dust():
    rng = np.random.default_rng(1)
    tex = _load_texture("brick")
    train = [_object_on_plain_background(rng, tex) for _ in range(8)]
    model = PatchCore(**SMALL).fit(train, progress=False)
    assert model.use_foreground  # decided from the good images
    clean = _object_on_plain_background(rng, tex)
    dusty = clean.copy()
    dusty[5:11, 5:11] = 40  # a dark speck in the corner, far from the object
    pred = model.predict([clean, dusty])
    assert pred.maps[1][:16, :16].max() < 1e-3 * pred.scores[1]  # weighted out
    assert pred.scores[1] == pytest.approx(pred.scores[0], rel=0.05)
    plain = PatchCore(**(SMALL | {"foreground": "off"})).fit(train, progress=False)
    assert not plain.use_foreground
    unweighted = plain.predict([clean, dusty])
    assert unweighted.scores[1] > 1.1 * unweighted.scores[0]  # the speck dominates without it


MVTEC_SCREW = Path(__file__).resolve().parents[2] / "shared/data/mvtec_ad/screw"


@pytest.mark.slow
@pytest.mark.skipif(not MVTEC_SCREW.is_dir(), reason="MVTec AD screw (../shared) not present")
def test_real_screw_subset_localises_defects():
    """Defaults on real data: 80 good screws, 40 test images (10 good, 30 defective)."""
    from anomalens.data.datasets import MVTecAD

    train = MVTecAD(MVTEC_SCREW.parent, "screw", "train")[::4].load_all(progress=False)
    test = MVTecAD(MVTEC_SCREW.parent, "screw", "test")[::4].load_all(progress=False)
    model = PatchCore().fit([s.image for s in train], progress=False)
    assert model.use_foreground  # screws lie on a plain background
    pred = model.predict([s.image for s in test])
    assert all(m.shape == (512, 512) for m in pred.maps)
    labels = [s.label for s in test]
    assert 0 < sum(labels) < len(labels)
    assert pixel_auroc([s.mask for s in test], pred.maps) >= 0.97
    assert image_auroc(labels, pred.scores) >= 0.85
    # the calibrated threshold passes most good test screws
    good = pred.scores[np.asarray(labels) == 0]
    assert np.mean(good < pred.threshold) >= 0.8


def test_hotspot_boxes_cover_the_defect(fitted, texture_set):
    _, test, labels, masks = texture_set
    pred = fitted.predict(test)
    worst = int(np.argmax(pred.scores))
    assert labels[worst] == 1
    boxes = fitted.hotspots(pred.maps[worst], threshold=0.5 * pred.scores[worst])
    assert boxes
    assert boxes[0].score == pytest.approx(pred.maps[worst].max())
    top = boxes[0]
    assert masks[worst][top.y0 : top.y1, top.x0 : top.x1].any()


# --- image geometry: letterbox, reflected border, image score, fit notes --------------------


def _wide_views(rng: np.random.Generator, n: int, shape=(64, 160)) -> list[np.ndarray]:
    tex = _load_texture("brick")
    out = []
    for _ in range(n):
        y = rng.integers(0, tex.shape[0] - shape[0])
        x = rng.integers(0, tex.shape[1] - shape[1])
        out.append(np.ascontiguousarray(tex[y : y + shape[0], x : x + shape[1]]))
    return out


def test_letterbox_keeps_padding_out_of_memory_and_maps():
    rng = np.random.default_rng(3)
    train = _wide_views(rng, 8)
    opts = SMALL | {"resize": "letterbox", "border": 0.0625, "memory_size": None}
    model = PatchCore(**opts).fit(train, progress=False)
    # every memory row is a content patch: rows of an image's padded cells were replaced
    # by copies of its content rows, so no row is unique to the padding
    frame = model.frames(train[:1])[0]
    content = frame.content_grid(model.grid) > 0
    assert 0.3 < content.mean() < 0.6  # a 64 x 160 image fills less than half the square
    rows = model.memory.view(len(train), *model.grid, -1)
    inside = rows[:, torch.from_numpy(content)]
    outside = rows[:, torch.from_numpy(~content)]
    for i in range(len(train)):
        same = (outside[i][:, None, :] == inside[i][None, :, :]).all(-1)
        assert bool(same.any(1).all())
    # a defect at the far right end of a wide image is found there; maps have its shape
    good = _wide_views(rng, 2)
    bad = good[1].copy()
    bad[20:36, 140:156] = 0
    pred = model.predict([good[0], bad])
    assert [m.shape for m in pred.maps] == [(64, 160), (64, 160)]
    y, x = np.unravel_index(pred.maps[1].argmax(), pred.maps[1].shape)
    assert 16 <= y <= 40
    assert 132 <= x <= 159
    assert pred.scores[1] > 1.5 * pred.scores[0]


def test_reflected_border_lowers_scores_along_the_image_edge(texture_set):
    train, test = texture_set[0], texture_set[1][:6]  # good test views only

    def edge_to_centre(border: float) -> float:
        model = PatchCore(**(SMALL | {"border": border})).fit(train, progress=False)
        maps = np.stack(model.predict(test).maps)
        band = np.ones(maps.shape[1:], bool)
        band[12:-12, 12:-12] = False
        return float(maps[:, band].mean() / maps[:, ~band].mean())

    plain, reflected = edge_to_centre(0.0), edge_to_centre(0.0625)
    assert plain > 1.2  # without the border, the edge band scores 25 % above the centre
    assert reflected < plain - 0.05


def test_top_fraction_score_is_the_mean_of_the_largest_pixels(fitted, texture_set):
    from anomalens.postprocess import image_score

    rng = np.random.default_rng(0)
    m = rng.random((30, 40)).astype(np.float32)
    assert image_score(m, 0.0) == pytest.approx(float(m.max()))
    top = np.sort(m.ravel())[-12:]  # 1 % of 1200 pixels
    assert image_score(m, 0.01) == pytest.approx(float(top.mean()), rel=1e-6)
    # larger maps are ranked on their 128 px area average: 256 x 512 -> 64 x 128
    big = rng.random((256, 512)).astype(np.float32)
    small = big.reshape(64, 4, 128, 4).mean((1, 3))
    expected = np.sort(small.ravel())[-81:].mean()  # 1 % of 8192 pixels
    assert image_score(big, 0.01) == pytest.approx(float(expected), rel=1e-5)
    model = PatchCore(**(SMALL | {"top_fraction": 0.05})).fit(texture_set[0], progress=False)
    pred = model.predict(texture_set[1][:3])
    for s, mp in zip(pred.scores, pred.maps, strict=True):  # 128 px maps: ranked as they are
        assert s == pytest.approx(float(np.sort(mp.ravel())[-int(mp.size * 0.05) :].mean()))


def test_fit_notes_say_what_was_decided_and_why(fitted):
    fg, inputs = fitted.fit_report.notes
    # brick: Otsu splits bright and dark bricks, and the "object" touches 39 % of the border
    assert fg == (
        "foreground weighting off (auto): the object in good image 1 touches 39% of the image "
        "border (at most 20% for an object on a plain background)"
    )
    assert "128 px square" in inputs
    assert "128-128 x 128-128 px" in inputs


def test_memory_grows_with_large_training_sets():
    model = PatchCore(memory_size=10240, memory_fraction=0.02)
    assert model.memory_rows(320 * 1600) == 10240  # screw: 2 % is exactly the floor
    assert model.memory_rows(761 * 1600) == 24352  # magnetic tile: 2 % of its patches
    assert model.memory_rows(20 * 1600) == 10240  # a small set keeps the floor (or all)
    assert PatchCore(memory_size=None).memory_rows(10**6) is None
    with pytest.raises(ValueError, match=r"memory_fraction must be in \[0, 1\], got 1.5"):
        PatchCore(memory_fraction=1.5)
