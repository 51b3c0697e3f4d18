"""AA-CLIP / AA-SigLIP: model wiring, training, checkpoints, resume, CLI, and real learning.

Tiny random CLIP / SigLIP models (anomalens.testing) and EfficientNet-Lite0 (real weights).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import read_csv_rows

from anomalens import testing as tm
from anomalens.cli import main
from anomalens.data.datasets import build_dataset
from anomalens.data.synthetic import make_demo_dataset
from anomalens.errors import CheckpointError, ResumeError, UntrainedError
from anomalens.evaluate import build_detector
from anomalens.methods import load_detector
from anomalens.methods.aaclip import AACLIP, AACLIPConfig
from anomalens.methods.aaclip.train import LAST_DIR, TrainConfig, train_aaclip
from anomalens.metrics import image_auroc, pixel_auroc

ALL_KINDS = ("scratch", "stain", "cutpaste", "perlin")


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory) -> Path:
    return tm.make_clip(tmp_path_factory.mktemp("aa_clip"))


@pytest.fixture(scope="module")
def siglip_dir(tmp_path_factory) -> Path:
    return tm.make_siglip(tmp_path_factory.mktemp("aa_siglip"))


@pytest.fixture(scope="module")
def brick(tmp_path_factory) -> tuple[list, list]:
    """(train, test) samples of a demo brick texture at 128 px (24 good train images; 6 good and
    12 defective test images with all four defect kinds)."""
    root = tmp_path_factory.mktemp("aa_brick")
    make_demo_dataset(root, n_train=24, n_test_good=6, n_test_bad=12, size=128, textures=("brick",))
    train = list(build_dataset("mvtec", root, "brick", "train"))
    test = list(build_dataset("mvtec", root, "brick", "test"))
    return train, test


def _small_samples(brick, n: int = 8) -> list:
    return brick[0][:n]


def _pixel_auroc(det: AACLIP, train: list, test: list) -> float:
    det.fit([s.image for s in train], progress=False)
    pred = det.predict([s.image for s in test])
    return pixel_auroc([s.mask for s in test], pred.maps)


def _backbone_state(det: AACLIP) -> dict[str, torch.Tensor]:
    module = getattr(det.backbone, "model", None) or det.backbone.net
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


# ----------------------------------------------------------------------------- wiring


@pytest.mark.parametrize("kind", ["clip", "siglip"])
def test_levels_adapters_and_shapes(kind, clip_dir, siglip_dir):
    folder = clip_dir if kind == "clip" else siglip_dir
    det = AACLIP(backbone=f"{kind}:{folder}", image_size=32, precision="fp32")
    net = det.network
    assert net.levels == (1, 2, 3, 4)  # quarters of the 4 tiny blocks
    assert net.adapt_layers == (1,)  # a quarter of the depth
    assert len(net.text_adapters) == 2  # K_T = 3 capped by the 2 text layers
    feats = net.image_features(det.backbone.preprocess(tm.images(3, shape=(32, 32))))
    assert [tuple(t.shape) for t in feats.levels] == [(3, 16, net.embed_dim)] * 4
    assert torch.allclose(feats.levels[2].norm(dim=-1), torch.ones(3, 16), atol=1e-5)
    assert feats.det.shape == (3, net.embed_dim)
    assert net.text_anchor_pair("screw", ("aaclip",)).shape == (2, net.embed_dim)
    # only the trained tensors are module state, never the backbone
    assert not any(k.startswith(("backbone", "model")) for k in net.state_dict())


def test_adapters_change_the_tokens_and_alpha0_is_the_frozen_model(clip_dir):
    pixels = None
    outs = {}
    for alpha in (0.0, 0.1):
        det = AACLIP(
            backbone=f"clip:{clip_dir}", image_size=32, precision="fp32", adapter_weight=alpha
        )
        pixels = det.backbone.preprocess(tm.images(2, seed=3, shape=(32, 32)))
        with det.network._image_hooks():
            outs[alpha] = det.backbone.encode_image(pixels, [2], with_global=False).tokens[0]
        plain = det.backbone.encode_image(pixels, [2], with_global=False).tokens[0]
    assert torch.equal(outs[0.0], plain)
    assert not torch.allclose(outs[0.1], plain, atol=1e-4)


def test_text_anchors_need_a_text_tower():
    with pytest.raises(ValueError, match="text tower"):
        _ = AACLIP(backbone="efficientnet-lite0", image_size=64).network


def test_config_errors():
    with pytest.raises(ValueError, match="anchors"):
        AACLIPConfig(anchors="words")
    with pytest.raises(ValueError, match="image_score"):
        AACLIPConfig(image_score="mean")
    with pytest.raises(ValueError, match="image_epochs"):
        TrainConfig(image_epochs=0)


def test_untrained_detector_refuses_to_fit(clip_dir):
    det = AACLIP(backbone=f"clip:{clip_dir}", image_size=32, precision="fp32")
    with pytest.raises(UntrainedError, match="anomalens train"):
        det.fit(tm.images(2, shape=(32, 32)))


# ----------------------------------------------------------------------------- training


def _train(det, samples, out, config, val_fraction: float = 0.0, **kwargs):
    """``train_aaclip`` in synthetic mode without progress bars."""
    kwargs.setdefault("mode", "synthetic")
    return train_aaclip(
        det, samples, out, config, val_fraction=val_fraction, progress=False, **kwargs
    )


def _check_only_trained_tensors_change(det, samples, tmp_path, config, mode="synthetic"):
    frozen = _backbone_state(det)
    before = {k: v.clone() for k, v in det.network.state_dict().items()}
    _train(det, samples, tmp_path, config, mode=mode)
    after = _backbone_state(det)
    for k, v in frozen.items():
        assert torch.equal(v, after[k]), f"frozen weight {k} changed"
    for p in (det.backbone.model if hasattr(det.backbone, "model") else det.backbone).parameters():
        assert p.grad is None
        assert not p.requires_grad
    changed = {k for k, v in det.network.state_dict().items() if not torch.equal(v, before[k])}
    return changed


@pytest.mark.parametrize("kind", ["clip", "siglip"])
def test_training_changes_only_adapters_and_keeps_backbone_bit_identical(
    kind, clip_dir, siglip_dir, brick, tmp_path
):
    folder = clip_dir if kind == "clip" else siglip_dir
    det = AACLIP(backbone=f"{kind}:{folder}", image_size=32, precision="fp32")
    config = TrainConfig(
        text_epochs=1, image_epochs=1, text_batch_size=4, image_batch_size=4, text_lr=1e-3
    )
    changed = _check_only_trained_tensors_change(det, _small_samples(brick), tmp_path, config)
    prefixes = {k.split(".")[0] for k in changed}
    assert prefixes == {"text_adapters", "text_proj", "image_adapters", "seg_proj", "det_proj"}


def test_stage_gradients_reach_only_that_stage(clip_dir, brick, tmp_path):
    from anomalens.methods.aaclip.data import TrainingData
    from anomalens.methods.aaclip.train import Trainer

    det = AACLIP(backbone=f"clip:{clip_dir}", image_size=32, precision="fp32")
    data = TrainingData(_small_samples(brick), 32, "synthetic", val_fraction=0.0)
    trainer = Trainer(det, data, TrainConfig(), tmp_path, progress=False)
    items = next(data.epoch(0, 4, 1))
    net = det.network
    for stage, params in ((1, net.text_parameters()), (2, net.image_parameters())):
        net.requires_grad_(False)
        net.zero_grad(set_to_none=True)
        for p in params:
            p.requires_grad_(True)
        loss, _ = trainer.loss(items, stage, np.random.default_rng(0))
        loss.backward()
        with_grad = {id(p) for p in net.parameters() if p.grad is not None}
        assert with_grad == {id(p) for p in params}
        assert all(float(p.grad.abs().sum()) > 0 for p in params)
        assert all(p.grad is None for p in det.backbone.model.parameters())


def test_learned_anchors_on_lite0_train_without_a_text_tower(brick, tmp_path):
    det = AACLIP(backbone="efficientnet-lite0", image_size=64, anchors="learned")
    config = TrainConfig(image_epochs=1, image_batch_size=4)
    changed = _check_only_trained_tensors_change(det, _small_samples(brick), tmp_path, config)
    assert {k.split(".")[0] for k in changed} == {
        "image_adapters",
        "seg_proj",
        "det_proj",
        "anchor_vectors",
    }


def test_centroid_is_the_mean_good_feature(brick, tmp_path):
    det = AACLIP(backbone="efficientnet-lite0", image_size=64, anchors="centroid")
    det.trained = True
    images = [s.image for s in brick[0][:5]]
    det.fit(images, progress=False)
    feats = det.network.image_features(det.backbone.preprocess(images))
    everything = torch.cat([t.reshape(-1, t.shape[-1]) for t in feats.levels])
    assert torch.allclose(det.network.normal_centroid, everything.mean(0), atol=1e-5)
    assert torch.allclose(det.anchors[0], torch.nn.functional.normalize(everything.mean(0), dim=0))


# ----------------------------------------------------------------------------- checkpoints


@pytest.mark.parametrize("kind", ["clip", "siglip"])
def test_save_load_round_trip_is_bit_identical(kind, clip_dir, siglip_dir, brick, tmp_path):
    folder = clip_dir if kind == "clip" else siglip_dir
    det = AACLIP(backbone=f"{kind}:{folder}", image_size=32, precision="fp32", class_name="brick")
    config = TrainConfig(text_epochs=1, image_epochs=1, text_batch_size=4, image_batch_size=4)
    _train(det, _small_samples(brick), tmp_path / "ckpt", config)
    images = [s.image for s in brick[1][:4]]
    det.fit([s.image for s in brick[0][:4]], progress=False)
    first = det.predict(images)
    det.save(tmp_path / "fitted")
    again = load_detector(tmp_path / "fitted")
    assert isinstance(again, AACLIP)
    assert again.trained
    for k, v in det.network.state_dict().items():
        assert torch.equal(v, again.network.state_dict()[k])
    assert torch.equal(det.anchors, again.anchors)
    second = again.predict(images)
    assert np.array_equal(first.scores, second.scores)
    assert all(np.array_equal(a, b) for a, b in zip(first.maps, second.maps, strict=True))
    assert second.threshold == first.threshold
    # adapters only: the checkpoint is tiny next to the backbone
    size = (tmp_path / "fitted" / "model.safetensors").stat().st_size
    assert size < (folder / "model.safetensors").stat().st_size


def test_checkpoint_for_another_backbone_is_refused(clip_dir, siglip_dir, brick, tmp_path):
    det = AACLIP(backbone=f"clip:{clip_dir}", image_size=32, precision="fp32")
    det.trained = True
    det.save(tmp_path / "c")
    cfg = json.loads((tmp_path / "c" / "config.json").read_text())
    cfg["config"]["backbone"] = "efficientnet-lite0"
    cfg["config"]["anchors"] = "learned"
    (tmp_path / "c" / "config.json").write_text(json.dumps(cfg))

    with pytest.raises(CheckpointError, match="do not fit"):
        AACLIP.load(tmp_path / "c")


def test_resume_after_interruption_gives_the_same_weights(brick, tmp_path, monkeypatch):
    from anomalens.methods.aaclip.train import Trainer

    samples = _small_samples(brick, 12)
    config = TrainConfig(image_epochs=2, image_batch_size=4, checkpoint_every=1)

    def run(out: Path) -> AACLIP:
        det = AACLIP(backbone="efficientnet-lite0", image_size=64, anchors="centroid")
        _train(det, samples, out, config, val_fraction=0.25)
        return det

    straight = run(tmp_path / "a")
    real_loss = Trainer.loss
    calls = {"n": 0}

    def flaky(self, items, stage, rng):
        calls["n"] += 1
        if calls["n"] == 5:  # second batch of the second epoch (3 batches per epoch)
            raise KeyboardInterrupt
        return real_loss(self, items, stage, rng)

    monkeypatch.setattr(Trainer, "loss", flaky)
    with pytest.raises(KeyboardInterrupt):
        run(tmp_path / "b")
    state = json.loads((tmp_path / "b" / LAST_DIR / "state.json").read_text())
    assert state["position"] == {"stage": 2, "epoch": 1, "batch": 1}
    monkeypatch.setattr(Trainer, "loss", real_loss)
    resumed = run(tmp_path / "b")
    for k, v in straight.network.state_dict().items():
        assert torch.equal(v, resumed.network.state_dict()[k]), k
    hist_a = json.loads((tmp_path / "a" / "config.json").read_text())["training"]["history"]
    hist_b = json.loads((tmp_path / "b" / "config.json").read_text())["training"]["history"]
    assert [h["val_pixel_auroc"] for h in hist_a] == [h["val_pixel_auroc"] for h in hist_b]


def test_resume_state_of_another_run_is_refused(brick, tmp_path):
    samples = _small_samples(brick, 8)
    det = AACLIP(backbone="efficientnet-lite0", image_size=64, anchors="learned")
    _train(det, samples, tmp_path, TrainConfig(image_epochs=1, image_batch_size=4))
    other = AACLIP(backbone="efficientnet-lite0", image_size=64, anchors="learned")
    with pytest.raises(ResumeError, match="--no-resume"):
        _train(other, samples, tmp_path, TrainConfig(image_epochs=2, image_batch_size=4))
    _train(other, samples, tmp_path, TrainConfig(image_epochs=2, image_batch_size=4), resume=False)
    history = json.loads((tmp_path / "config.json").read_text())["training"]["history"]
    assert [h["epoch"] for h in history] == [1, 2]


def test_checkpoint_is_chosen_on_validation(brick, tmp_path):
    det = AACLIP(backbone="efficientnet-lite0", image_size=64, anchors="learned")
    result = _train(
        det,
        _small_samples(brick, 12),
        tmp_path,
        TrainConfig(image_epochs=3, image_batch_size=4, image_lr=1e-2),
        val_fraction=0.25,
    )
    metrics = [h["selection_metric"] for h in result.history]
    assert result.best["selection_metric"] == max(metrics)
    best_epoch = max(i for i, m in enumerate(metrics) if m == max(metrics)) + 1
    saved = json.loads((tmp_path / "config.json").read_text())["training"]["chosen"]
    assert saved["epoch"] == result.best["epoch"] == best_epoch


# ----------------------------------------------------------------------------- learning


def test_learned_anchors_on_lite0_learn_synthetic_defects(brick, tmp_path):
    train, test = brick
    det = AACLIP(backbone="efficientnet-lite0", image_size=128, anchors="learned")
    det.trained = True  # measure the untrained (random) modules first
    before = _pixel_auroc(det, train, test)
    det = AACLIP(backbone="efficientnet-lite0", image_size=128, anchors="learned")
    config = TrainConfig(image_epochs=15, image_batch_size=8, image_lr=2e-3)
    _train(det, train, tmp_path, config, val_fraction=0.2, defect_kinds=ALL_KINDS)
    after = _pixel_auroc(det, train, test)
    assert before < 0.8
    assert after >= 0.9, (before, after)


def test_text_anchors_on_a_tiny_random_clip_learn_synthetic_defects(brick, tmp_path):
    train, test = brick
    vision = dict(tm.TINY_VISION, hidden_size=64, intermediate_size=128, image_size=128)
    folder = tm.make_clip(tmp_path / "clip128", vision=vision)
    options = dict(backbone=f"clip:{folder}", image_size=128, precision="fp32", class_name="brick")
    det = AACLIP(**options)
    det.trained = True
    before = _pixel_auroc(det, train, test)
    det = AACLIP(**options)
    config = TrainConfig(
        text_epochs=2, image_epochs=15, text_batch_size=8, text_lr=1e-3, image_lr=1e-2
    )
    _train(det, train, tmp_path / "ckpt", config, val_fraction=0.2, defect_kinds=ALL_KINDS)
    after = _pixel_auroc(det, train, test)
    assert before < 0.7
    assert after >= 0.9, (before, after)


# ----------------------------------------------------------------------------- CLI


def train_cli(
    root: Path, output: Path, anchors: str, mode: str, *flags: str, epochs: int | None = 1
) -> int:
    """``anomalens train`` of EfficientNet-Lite0 AA-CLIP on the demo data (``--image-epochs``
    ``epochs`` unless None)."""
    argv = ["train", "--method", "aaclip", "--backbone", "efficientnet-lite0", "--anchors", anchors]
    argv += ["--dataset", "mvtec", "--root", str(root), "--mode", mode, *flags]
    if epochs is not None:
        argv += ["--image-epochs", str(epochs)]
    return main([*argv, "--output", str(output), "--no-progress"])


def test_cli_train_then_benchmark_with_checkpoint(demo_root, tmp_path, capsys):
    ckpt = tmp_path / "ckpt"
    code = train_cli(
        demo_root, ckpt, "learned", "synthetic", "--image-size", "64", "--batch-size", "4"
    )
    out = capsys.readouterr().out
    assert code == 0, out
    assert "trained in" in out
    assert (ckpt / "model.safetensors").is_file()
    assert (ckpt / LAST_DIR / "state.json").is_file()
    bench = tmp_path / "bench"
    flags = ["--method", "aaclip", "--checkpoint", str(ckpt), "--output", str(bench)]
    code = main(["benchmark", "--dataset", "mvtec", "--root", str(demo_root), *flags])
    assert code == 0
    results = json.loads((bench / "results.json").read_text())
    row = results["categories"]["brick"]
    assert row["n_test"] == 8
    # the reported metrics equal a recomputation: image AUROC from predictions.csv, pixel
    # AUROC from the maps of the checkpoint refitted on the same split (fit is deterministic)
    rows = read_csv_rows(bench / "predictions.csv")
    labels = [int(r["label"]) for r in rows]
    assert row["image_auroc"] == pytest.approx(
        image_auroc(labels, [float(r["score"]) for r in rows]), abs=1e-6
    )
    train = build_dataset("mvtec", demo_root, "brick", "train").load_all(progress=False)
    test = build_dataset("mvtec", demo_root, "brick", "test").load_all(progress=False)
    det = build_detector("aaclip", category="brick", checkpoint=ckpt)
    pred = det.fit([s.image for s in train], progress=False).predict([s.image for s in test])
    assert [int(s.label) for s in test] == labels
    assert row["pixel_auroc"] == pytest.approx(
        pixel_auroc([s.mask for s in test], pred.maps), abs=1e-6
    )
    assert results["config"]["anchors"] == "learned"


def test_cli_checkpoint_errors(demo_root, tmp_path, capsys):
    args = ["benchmark", "--dataset", "mvtec", "--root", str(demo_root), "--method", "aaclip"]
    code = main([*args, "--checkpoint", str(tmp_path / "none"), "--output", str(tmp_path / "o")])
    assert code == 2
    assert "not found" in capsys.readouterr().err
    code = main([*args, "--backbone", "efficientnet-lite0", "--output", str(tmp_path / "o")])
    assert code == 2  # no checkpoint: untrained adapters, refused before any data is read
    assert "anomalens train" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()
    ckpt = tmp_path / "ck"
    det = AACLIP(backbone="efficientnet-lite0", image_size=64, anchors="learned")
    det.trained = True
    det.save(ckpt)
    code = main([*args, "--checkpoint", str(ckpt), "--image-size", "96", "--output", "o"])
    assert code == 2
    assert "cannot be combined with a checkpoint" in capsys.readouterr().err
    shutil.rmtree(ckpt)


def test_cli_train_kshot_mode_uses_masks(demo_root, tmp_path, capsys):
    flags = ["--shots", "4", "--image-size", "64", "--batch-size", "2"]
    code = train_cli(demo_root, tmp_path / "k", "centroid", "kshot", *flags)
    out = capsys.readouterr().out
    assert code == 0, out
    summary = json.loads((tmp_path / "k" / "config.json").read_text())["training"]
    assert summary["data"]["mode"] == "kshot"
    assert summary["data"]["n_train"] + summary["data"]["n_val"] == 4
    code = train_cli(demo_root, tmp_path / "e", "learned", "kshot", epochs=None)
    assert code == 2
    assert "shots" in capsys.readouterr().err
