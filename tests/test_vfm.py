"""AnomalyVFM v1.1 (seed design): LoRA gradients, frozen backbone, learning, checkpoints, resume."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import DEMO_TEXTURE, TextureSet
from safetensors.torch import load_file

from anomalens import testing as tm
from anomalens.cli import main
from anomalens.errors import CheckpointError, ResumeError
from anomalens.methods import VFM, load_detector
from anomalens.methods.vfm import STAGES, VFMTrainer, confidence_loss, split_validation
from anomalens.methods.vfm.data import SyntheticAnomalies, make_anomaly
from anomalens.methods.vfm.lora import frozen_parameters
from anomalens.metrics import pixel_auroc

LITE = {"backbone": "efficientnet-lite0", "image_size": 64, "train_batch_size": 2}


def _backbone_state(det: VFM) -> dict[str, torch.Tensor]:
    """Every non-LoRA tensor of the backbone (parameters and buffers), copied."""
    return {k: v.detach().clone() for k, v in det.backbone.state_dict().items() if "lora_" not in k}


def test_only_lora_and_head_get_gradients(texture_set: TextureSet) -> None:
    det = VFM(**LITE, epochs=1)
    net = det.network
    trainer = VFMTrainer(net, det.config, det.prepare_images(texture_set.train[:4]), progress=False)
    for p in net.trainable_parameters():
        p.requires_grad_(True)
    # both positions with an anomaly so the loss has anomalous patches
    trainer.data.probability = 1.0
    trainer.step_loss(0, [0, 1]).backward()
    lora = net.lora_tensors()
    assert lora
    assert all(p.grad is not None for p in lora.values())
    assert any(float(p.grad.abs().sum()) > 0 for k, p in lora.items() if "lora_B" in k)
    assert all(p.grad is not None and float(p.grad.abs().sum()) > 0 for p in net.head.parameters())
    frozen = [p for k, p in det.backbone.named_parameters() if "lora_" not in k]
    assert frozen
    assert all(p.grad is None and not p.requires_grad for p in frozen)
    n_trained = sum(p.numel() for p in net.trainable_parameters())
    assert set(net.state_dict()) == {f"lora.{k}" for k in lora} | {
        f"head.{k}" for k in net.head.state_dict()
    }
    assert n_trained < sum(p.numel() for p in frozen)


def test_frozen_backbone_bit_identical_after_training(texture_set: TextureSet) -> None:
    det = VFM(**LITE, epochs=2, lr=1e-2)
    before = _backbone_state(det)  # builds the backbone (no LoRA yet)
    _ = det.network
    lora_before = {k: v.detach().clone() for k, v in det.network.lora_tensors().items()}
    det.train(texture_set.train[:4], progress=False)
    after = _backbone_state(det)
    renamed = {k.replace(".base_layer", ""): v for k, v in after.items()}
    assert renamed.keys() == before.keys()
    assert all(torch.equal(before[k], renamed[k]) for k in before)
    norms = [m for m in det.backbone.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert norms
    assert not any(m.training for m in norms)
    changed = [
        k for k, v in det.network.lora_tensors().items() if not torch.equal(v, lora_before[k])
    ]
    assert changed  # the adapters did learn


def test_head_learns_synthetic_defects_on_demo_texture(texture_set: TextureSet) -> None:
    """Pixel AUROC of the head's map on the texture set's real synthetic defects (stain,
    cut-paste; the training anomalies are the three VFM stages): about 0.5 untrained, >= 0.9
    after 5 epochs on 8 good views."""
    det = VFM(backbone="efficientnet-lite0", image_size=128, epochs=5, train_batch_size=4, lr=1e-3)

    def head_auroc() -> float:
        with torch.no_grad():
            prob = torch.sigmoid(det.network.logits(det._features(texture_set.test)))
            maps = F.interpolate(prob[:, None], size=(128, 128), mode="bilinear")[:, 0]
        return pixel_auroc(texture_set.masks, list(maps.numpy()))

    untrained = head_auroc()
    assert 0.35 < untrained < 0.65
    det.train(texture_set.train[:8], progress=False)
    assert head_auroc() >= 0.9
    losses = [h["loss"] for h in det.training_summary["history"]]
    assert len(losses) == 5
    assert losses[-1] < losses[0]


@pytest.fixture(scope="module")
def fitted(texture_set: TextureSet) -> VFM:
    return VFM(**LITE, epochs=1).fit(texture_set.train, progress=False)


def test_fit_predict_fusion_and_thresholds(fitted: VFM, texture_set: TextureSet) -> None:
    pred = fitted.predict(texture_set.test)
    assert pred.scores.shape == (len(texture_set.test),)
    assert all(m.shape == (128, 128) for m in pred.maps)
    f = fitted.fusion
    assert f["n_val"] == 2
    assert 0.0 <= f["image_weight"] <= 1.0
    assert 0.0 <= f["map_weight"] <= 1.0
    # thresholds: the calibration quantile of the held-out good images' fused scores
    _, val = split_validation(len(texture_set.train), fitted.config.val_fraction, 0)
    held = fitted.predict([texture_set.train[i] for i in val]).scores
    assert fitted.calibration.n_images == 2
    assert fitted.calibration.threshold == pytest.approx(np.quantile(held, 0.99), abs=1e-3)
    assert fitted.fit_report.seconds["training"] > 0
    # the fused score is the weighted sum of the standardised head and Mahalanobis scores
    feats = fitted._features(texture_set.test[:2])
    z = fitted._normalised(fitted._raw(feats))
    w = f["image_weight"]
    expected = w * z["head_score"] + (1 - w) * z["maha_score"]
    np.testing.assert_allclose(fitted.score_features(feats)[0].numpy(), expected.numpy())


def test_save_load_round_trip(fitted: VFM, texture_set: TextureSet, tmp_path: Path) -> None:
    fitted.save(tmp_path / "m")
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == [
        "config.json",
        "model.safetensors",
    ]
    meta = json.loads((tmp_path / "m" / "config.json").read_text())
    assert meta["method"] == "vfm"
    assert meta["trained"]
    assert meta["fusion"] == fitted.fusion
    tensors = load_file(str(tmp_path / "m" / "model.safetensors"))
    assert {"positional.mean", "global.precision", "norm"} <= set(tensors)
    assert any(k.startswith("net.lora.") for k in tensors)
    assert not any("base_layer" in k for k in tensors)  # the frozen backbone is not copied
    loaded = load_detector(tmp_path / "m")
    assert isinstance(loaded, VFM)
    reloaded = loaded.tensors()
    assert reloaded.keys() == tensors.keys()
    assert all(torch.equal(reloaded[k], tensors[k]) for k in tensors)
    a, b = fitted.predict(texture_set.test[:3]), loaded.predict(texture_set.test[:3])
    np.testing.assert_array_equal(a.scores, b.scores)
    np.testing.assert_array_equal(a.maps[2], b.maps[2])
    assert b.threshold == a.threshold
    # weights of another backbone are refused
    meta["config"]["lora_rank"] = 4
    (tmp_path / "m" / "config.json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="do not fit efficientnet-lite0"):
        VFM.load(tmp_path / "m")


def test_resume_continues_an_interrupted_run(texture_set: TextureSet, tmp_path: Path) -> None:
    images = texture_set.train[:4]
    settings = dict(LITE, epochs=2, checkpoint_every=1, lr=1e-2)
    full = VFM(**settings)
    full.train(images, progress=False)

    interrupted = VFM(**settings)
    calls = {"n": 0}
    original = VFMTrainer.step_loss

    def failing(self, epoch, positions):
        calls["n"] += 1
        if calls["n"] == 3:  # epoch 2, first batch: state saved after epoch 1
            raise KeyboardInterrupt
        return original(self, epoch, positions)

    VFMTrainer.step_loss = failing
    try:
        with pytest.raises(KeyboardInterrupt):
            interrupted.train(images, output=tmp_path / "ck", progress=False)
    finally:
        VFMTrainer.step_loss = original
    state = json.loads((tmp_path / "ck" / "last" / "state.json").read_text())
    assert state["position"] == {"epoch": 1, "batch": 0}

    resumed = VFM(**settings)
    result = resumed.train(images, output=tmp_path / "ck", progress=False)
    assert result.resumed_from == {"epoch": 1, "batch": 0}
    assert [h["epoch"] for h in result.history] == [1, 2]
    a, b = full.network.state_dict(), resumed.network.state_dict()
    assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)

    other = VFM(**dict(settings, lora_rank=4))
    with pytest.raises(ResumeError, match="resume state of a different run"):
        other.train(images, output=tmp_path / "ck", progress=False)


def test_dinov2_lora_on_attention(tmp_path: Path) -> None:
    folder = tm.make_dinov2(tmp_path / "dino", vision=tm.vit(32, 64, 2, 4, image=64, patch=8))
    det = VFM(backbone=f"dinov2:{folder}", image_size=64, epochs=1, train_batch_size=2)
    net = det.network
    names = list(net.lora_tensors())
    for proj in ("q_proj", "v_proj", "o_proj"):
        assert any(f"attention.{proj}.lora_A" in n for n in names)
    assert not any("k_proj" in n or "fc1" in n for n in names)
    assert net.dim == 32
    assert net.grid == (8, 8)
    assert net.head.mlp[0].in_features == 32
    assert net.head.mlp[2].in_features == 512
    modules = net.adapted_modules
    before = {k: v.detach().clone() for k, v in frozen_parameters(modules).items()}
    det.train(tm.images(4, shape=(64, 64)), progress=False)
    after = frozen_parameters(modules)
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_confidence_loss_matches_a_plain_computation() -> None:
    logits = torch.tensor([[[2.0, -1.0], [0.5, -3.0]]])
    target = torch.tensor([[[1.0, 0.0], [0.25, 0.0]]])
    t = 0.5
    p = 1 / (1 + np.exp(-logits.numpy() / t))
    y = target.numpy()
    bce = -(y * np.log(p) + (1 - y) * np.log(1 - p))
    p_t = y * p + (1 - y) * (1 - p)
    per = (1 - p_t) ** 2 * bce
    pos = y > 0
    expected = 0.5 * per[pos].mean() + 0.5 * per[~pos].mean()
    assert float(confidence_loss(logits, target, t)) == pytest.approx(expected, rel=1e-5)
    # no anomalous patch: the mean over all (normal) patches
    only_normal = float(confidence_loss(logits, torch.zeros_like(target), t))
    assert only_normal == pytest.approx(_neg_only(logits, t), rel=1e-5)


def _neg_only(logits: torch.Tensor, t: float) -> float:
    p = 1 / (1 + np.exp(-logits.numpy() / t))
    return float((p**2 * -np.log(1 - p)).mean())


@pytest.mark.parametrize("stage", STAGES)
def test_anomaly_stages_mark_exactly_the_changed_pixels(
    stage: str, texture_set: TextureSet
) -> None:
    img = texture_set.train[0]
    for seed in range(3):
        out, mask = make_anomaly(img, stage, texture_set.train[1:3], np.random.default_rng(seed))
        changed = (out != img).any(axis=2)
        assert mask.dtype == np.uint8
        assert mask.any()
        assert not (changed & (mask == 0)).any()  # nothing changed outside the mask
        assert 0.002 < mask.mean() < 0.08
        again, _ = make_anomaly(img, stage, texture_set.train[1:3], np.random.default_rng(seed))
        np.testing.assert_array_equal(out, again)
    data = SyntheticAnomalies(texture_set.train[:3], (stage,), 1.0, seed=1)
    _images, masks, labels = data.validation(texture_set.train[3:5])
    assert labels == [0, 0, 1, 1]
    assert not masks[0].any()
    assert masks[2].any()


def test_config_errors() -> None:
    with pytest.raises(ValueError, match="stages must be a non-empty subset"):
        VFM(stages=("blur",))
    with pytest.raises(ValueError, match="lora_rank must be >= 1"):
        VFM(lora_rank=0)
    with pytest.raises(ValueError, match="anomaly_probability must be in"):
        VFM(anomaly_probability=0.0)


def test_cli_train_and_benchmark_vfm(demo_root: Path, tmp_path: Path, capsys) -> None:
    ck = tmp_path / "ck"
    base = ["--dataset", "mvtec", "--root", str(demo_root), "--category", DEMO_TEXTURE]
    code = main(
        [
            "train",
            "--method",
            "vfm",
            *base,
            "--backbone",
            "efficientnet-lite0",
            "--image-size",
            "64",
            "--epochs",
            "1",
            "--lora-rank",
            "4",
            "--output",
            str(ck),
            "--no-progress",
        ]
    )
    assert code == 0
    out = capsys.readouterr().out
    assert "trained vfm in" in out
    assert f"saved checkpoint to {ck}" in out
    meta = json.loads((ck / "config.json").read_text())
    assert meta["config"]["lora_rank"] == 4
    assert meta["config"]["epochs"] == 1
    assert json.loads((ck / "last" / "state.json").read_text())["position"]["epoch"] == 1
    bench = tmp_path / "bench"
    code = main(
        [
            "benchmark",
            "--method",
            "vfm",
            "--checkpoint",
            str(ck),
            *base,
            "--output",
            str(bench),
            "--no-progress",
        ]
    )
    assert code == 0
    res = json.loads((bench / "results.json").read_text())
    assert res["method"] == "vfm"
    assert res["categories"][DEMO_TEXTURE]["n_test"] == 8
    two = ["train", "--method", "vfm", "--dataset", "mvtec", "--root", str(demo_root)]
    code = main([*two, "--category", "a", "b", "--output", str(tmp_path / "x")])
    assert code == 2
    assert "vfm trains one category at a time" in capsys.readouterr().err
