"""Patch features kept by a prediction (anomalens.prediction.PatchFeatures): masks pooled onto
the grid the detector saw (letterbox, border, pose), and defect types named from them without a
second backbone pass."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from test_explain_types import sample
from test_pose import part

from anomalens.data.transforms import Frame
from anomalens.explain import build_explainer
from anomalens.explain import defect_types as dt
from anomalens.methods import PatchCore
from anomalens.pose import estimate_pose, normalise_pose
from anomalens.prediction import PatchFeatures, Prediction

GRID = 16


def features_of(frame: Frame, shape: tuple[int, int], affine: np.ndarray) -> PatchFeatures:
    grid = np.random.default_rng(0).normal(size=(GRID, GRID, 8)).astype(np.float32)
    return PatchFeatures(grid, "test", frame, affine, shape)


def assert_same_weights(weights: np.ndarray, expected: np.ndarray) -> None:
    """Sampled weights against area-averaged ones: the same total (to 10%: a sample point per
    input pixel, the region's edges fall between them) and centre (to a tenth of a cell), and
    no cell off by more than the sampling step allows."""
    assert weights.sum() == pytest.approx(expected.sum(), rel=0.1)
    yy, xx = np.mgrid[:GRID, :GRID]
    for axis in (yy, xx):
        centre = (weights * axis).sum() / weights.sum()
        assert centre == pytest.approx((expected * axis).sum() / expected.sum(), abs=0.1)
    assert np.abs(weights - expected).max() <= 0.3


@pytest.mark.parametrize("shape", [(60, 100), (100, 60), (80, 80)])
def test_weights_follow_the_letterbox_and_border(shape):
    """A mask pooled by sampling equals the mask placed in the input the way the detector
    places images (Frame.to_input: resized into the content box, 0 on the padding) and
    area-averaged to the grid."""
    frame = Frame.fit(shape, 64, "letterbox", border=4)
    feats = features_of(frame, shape, frame.input_to_image(shape))
    mask = np.zeros(shape, bool)
    mask[shape[0] // 5 : shape[0] // 2, shape[1] // 3 : shape[1] - 4] = True
    expected = frame.to_input(mask.astype(np.float32), (GRID, GRID))
    assert_same_weights(feats.weights(mask), expected)
    half = mask[::2, ::2]  # a mask of the image at another resolution pools the same region
    assert_same_weights(feats.weights(half), expected)
    whole = feats.weights(np.ones(shape, bool))  # padding never counts
    on_image = frame.to_input(np.ones(shape, np.float32), (GRID, GRID))
    assert_same_weights(whole, on_image)
    assert np.all(whole[on_image == 0] == 0)


@pytest.mark.parametrize("angle", [0.0, 35.0, 160.0])
def test_weights_follow_the_pose(angle):
    """With pose normalisation the mask goes through the same warp as the image
    (normalise_pose), then into the frame: the sampled weights agree."""
    img = part(angle)
    pose = estimate_pose(img)
    side = (pose.side, pose.side)
    frame = Frame.fit(side, 64, "letterbox", border=4)
    feats = features_of(frame, img.shape[:2], pose.to_original(frame.input_to_image(side)))
    mask = np.zeros(img.shape[:2], bool)
    mask[40:70, 50:80] = True
    posed = normalise_pose(mask.astype(np.float32), dataclasses.replace(pose, fill=(0.0,)))
    assert_same_weights(feats.weights(mask), frame.to_input(posed, (GRID, GRID)))


def test_a_mask_smaller_than_a_sample_gives_its_cell():
    frame = Frame.fit((64, 64), 64, "square")
    feats = features_of(frame, (64, 64), frame.input_to_image((64, 64)))
    dot = np.zeros((512, 512), bool)
    dot[301, 129] = True  # at 512 px: x 129 -> cell 4, y 301 -> cell 9 of 16
    w = feats.weights(dot)
    assert w.sum() == 1.0
    assert w[9, 4] == 1.0
    pooled = feats.pool([dot])[0]
    np.testing.assert_allclose(pooled, feats.grid[9, 4] / np.linalg.norm(feats.grid[9, 4]))


@pytest.fixture(scope="module")
def surfaces():
    rng = np.random.default_rng(3)
    good = [rng.integers(110, 140, (96, 96, 1), dtype=np.uint8).repeat(3, axis=2) for _ in range(6)]
    det = PatchCore(image_size=64, memory_size=300, precision="fp32", search_precision="fp32")
    det.fit(good, progress=False)
    kinds = ["spot", "scratch"] * 4
    pairs = [sample(k, rng) for k in kinds]
    types = dt.fit_defect_types([p[0] for p in pairs], [p[1] for p in pairs], kinds, det)
    return det, types


def test_predict_keeps_the_features_its_maps_came_from(surfaces):
    """Off by default (they cost memory); defect types fitted with the detector turn it on."""
    det, _ = surfaces
    assert det.keep_features
    assert PatchCore.keep_features is False
    images = [sample("spot", np.random.default_rng(i))[0] for i in range(3)]
    det.keep_features = False
    plain = det.predict(images)
    assert plain.features is None
    det.keep_features = True
    pred = det.predict(images)
    np.testing.assert_array_equal(pred.scores, plain.scores)
    assert len(pred.features) == 3
    grid = det.embed_images(images).numpy()
    for i, f in enumerate(pred.features):
        assert f.key == det.feature_key
        np.testing.assert_array_equal(f.grid, grid[i])
        assert f.shape == images[i].shape[:2]


def test_types_reuse_the_detector_features(surfaces, monkeypatch):
    """Types fitted with PatchCore compare its own features: explaining a prediction that kept
    them runs no backbone and no second predict, and names the same types as explaining one
    without them (which predicts again for the features)."""
    det, types = surfaces
    assert types.feature_key == det.feature_key != dt.BACKBONE_KEY
    rng = np.random.default_rng(11)
    cases = [sample(k, rng) for k in ["spot", "scratch", "scratch", "spot"]]
    images = [c[0] for c in cases]
    pred = det.predict(images)
    pred.threshold = pred.pixel_threshold = float(np.min(pred.scores)) * 0.99
    stripped = Prediction(pred.scores, pred.maps, pred.threshold, pred.pixel_threshold)
    explainer = build_explainer("grounded", defect_types=types)
    slow = explainer.explain(images, stripped)

    def forbidden(*args, **kwargs):
        raise AssertionError("a second feature pass")

    monkeypatch.setattr(dt, "backbone_features", forbidden)
    monkeypatch.setattr(det, "predict", forbidden)
    fast = explainer.explain(images, pred)
    named = [(f.defect_type, f.type_confidence) for e in fast for f in e.findings]
    assert named == [(f.defect_type, f.type_confidence) for e in slow for f in e.findings]
    tops = [e.findings[0].defect_type for e in fast]
    assert tops == ["spot", "scratch", "scratch", "spot"]


def test_types_of_detector_features_need_that_detector(surfaces):
    _, types = surfaces
    orphan = types.subset(np.ones(len(types.labels), bool))
    orphan.detector = None
    img, mask = sample("spot", np.random.default_rng(4))
    pred = Prediction(np.array([2.0], np.float32), [mask.astype(np.float32) * 2], 1.0, 1.0)
    with pytest.raises(ValueError, match="give the detector they were fitted with"):
        build_explainer("grounded", defect_types=orphan).explain([img], pred)


def test_types_follow_a_reloaded_detector_with_the_same_features(surfaces, tmp_path):
    """The service's reload: a model making the same features takes over (its features are
    kept and used); one making other features leaves the rule on the detector it was fitted
    with."""
    det, types = surfaces
    rule = types.subset(np.ones(len(types.labels), bool))
    det.save(tmp_path / "same")
    same = PatchCore.load(tmp_path / "same")
    assert same.feature_key == det.feature_key
    assert not same.keep_features
    rule.use_detector(same)
    assert same.keep_features
    assert rule.detector is same
    other = PatchCore(image_size=96, memory_size=300, precision="fp32", search_precision="fp32")
    other.fit([sample("spot", np.random.default_rng(9))[0]], progress=False)
    rule.use_detector(other)
    assert rule.detector is same
    assert not other.keep_features
