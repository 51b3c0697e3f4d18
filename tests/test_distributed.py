"""Multi-process training (anomalens.distributed, ``anomalens train --nproc``): sharding and
loss scaling, and AA-CLIP on 2 processes against 1 process (loss curve, checkpoint, resume)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from anomalens.data.synthetic import make_demo_dataset
from anomalens.distributed import Context, context, launch
from anomalens.errors import DatasetError
from anomalens.methods.aaclip.train import LAST_DIR, Trainer
from anomalens.training import train_detector

#: Losses of 2 processes equal 1 process's to this relative tolerance (float sums in another
#: order: per-rank means weighted and all-reduced; measured differences are ~1e-7).
LOSS_RTOL = 1e-5
#: Trained tensors after 2 epochs agree to this absolute tolerance (measured: ~1e-5 at most).
WEIGHT_ATOL = 1e-4


def test_shards_cover_the_batch_and_scales_give_the_global_mean() -> None:
    batch = list(range(7))
    shares = [Context(r, 3).shard(batch) for r in range(3)]
    assert shares == [[0, 1], [2, 3], [4, 5, 6]]
    assert Context().shard(batch) == batch
    # DDP averages over ranks: sum_r scale_r * mean_r / world == the mean over the batch
    means = [sum(s) / len(s) for s in shares]
    scales = [Context(r, 3).loss_scale(len(s), len(batch)) for r, s in enumerate(shares)]
    assert sum(m * c for m, c in zip(means, scales, strict=True)) / 3 == pytest.approx(3.0)
    assert Context().loss_scale(5, 5) == 1.0
    assert context() == Context(0, 1)
    assert context().is_main
    assert not context().distributed


def test_launch_refuses_nested_runs_and_reports_errors(monkeypatch, tmp_path) -> None:
    with pytest.raises(ValueError, match="nproc must be >= 1"):
        launch(0, "anomalens.training:_train_rank", {})
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(ValueError, match="already running under torchrun"):
        launch(2, "anomalens.training:_train_rank", {})


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    """12 good brick images: 8 train (batches of 3: 3, 3, 2) and 4 validation."""
    folder = tmp_path_factory.mktemp("ddp_data")
    make_demo_dataset(
        folder, n_train=12, n_test_good=1, n_test_bad=1, size=128, textures=("brick",)
    )
    return folder


def _train(root: Path, out: Path, nproc: int, **schedule):
    return train_detector(
        "aaclip",
        "mvtec",
        root,
        out,
        mode="synthetic",
        model_options={"backbone": "efficientnet-lite0", "image_size": 64, "anchors": "learned"},
        schedule={"image_epochs": 2, "image_batch_size": 3, "image_lr": 1e-2, **schedule},
        val_fraction=1 / 3,
        progress=False,
        nproc=nproc,
    )


def _history(out: Path) -> list[dict]:
    return json.loads((out / LAST_DIR / "state.json").read_text())["history"]


def _tensors(out: Path) -> dict[str, torch.Tensor]:
    with safe_open(str(out / "model.safetensors"), "pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118


@pytest.mark.slow
def test_two_processes_match_one_process_and_resume(root, tmp_path, monkeypatch) -> None:
    one, two = tmp_path / "one", tmp_path / "two"
    _train(root, one, 1)
    det, result = _train(root, two, 2)
    h1, h2 = _history(one), _history(two)
    assert [h["epoch"] for h in h2] == [h["epoch"] for h in h1] == [1, 2]
    for a, b in zip(h1, h2, strict=True):
        for key in ("loss", "seg", "cls", "dis"):
            assert b[key] == pytest.approx(a[key], rel=LOSS_RTOL), key
        assert b["val_pixel_auroc"] == pytest.approx(a["val_pixel_auroc"], abs=1e-3)
    assert result.history == h2
    # identical checkpoint format: same files, config and tensor names, shapes and dtypes
    assert sorted(p.name for p in two.iterdir()) == sorted(p.name for p in one.iterdir())
    c1, c2 = (json.loads((d / "config.json").read_text()) for d in (one, two))
    assert c1.keys() == c2.keys()
    assert c1["config"] == c2["config"]
    assert c1["training"]["train"] == c2["training"]["train"]
    t1, t2 = _tensors(one), _tensors(two)
    assert {k: (v.shape, v.dtype) for k, v in t1.items()} == {
        k: (v.shape, v.dtype) for k, v in t2.items()
    }
    for k in t1:
        assert torch.allclose(t1[k], t2[k], atol=WEIGHT_ATOL), k
    assert det.trained

    # resume: 1 process interrupted in epoch 2, continued on 2 processes
    real_loss = Trainer.loss
    calls = {"n": 0}

    def flaky(self, items, stage, rng):
        calls["n"] += 1
        if calls["n"] == 5:  # second batch of epoch 2
            raise KeyboardInterrupt
        return real_loss(self, items, stage, rng)

    monkeypatch.setattr(Trainer, "loss", flaky)
    resumed = tmp_path / "resumed"
    with pytest.raises(KeyboardInterrupt):
        _train(root, resumed, 1, checkpoint_every=1)
    state = json.loads((resumed / LAST_DIR / "state.json").read_text())
    assert state["position"] == {"stage": 2, "epoch": 1, "batch": 1}
    monkeypatch.setattr(Trainer, "loss", real_loss)
    _train(root, resumed, 2, checkpoint_every=1)
    h3 = _history(resumed)
    # (a resumed epoch's loss averages only the batches after the resume point, as on 1 process)
    assert h3[0]["loss"] == pytest.approx(h1[0]["loss"], rel=LOSS_RTOL)
    assert [h["val_pixel_auroc"] for h in h3] == pytest.approx(
        [h["val_pixel_auroc"] for h in h1], abs=1e-3
    )
    for k, v in _tensors(resumed).items():
        assert torch.allclose(v, t1[k], atol=WEIGHT_ATOL), k


def test_a_batch_too_small_to_share_is_refused(root, monkeypatch) -> None:
    from anomalens import distributed
    from anomalens.data.datasets import build_dataset
    from anomalens.methods.aaclip import AACLIP, TrainConfig
    from anomalens.methods.aaclip.data import TrainingData

    samples = list(build_dataset("mvtec", root, "brick", "train"))
    data = TrainingData(samples, 64, "synthetic", val_fraction=1 / 3)
    det = AACLIP(backbone="efficientnet-lite0", image_size=64, anchors="learned")
    monkeypatch.setattr(distributed, "context", lambda: Context(0, 3))
    trainer = Trainer(det, data, TrainConfig(image_epochs=1, image_batch_size=3), root)
    with pytest.raises(ValueError, match="cannot be shared") as info:
        trainer.check_shards()
    assert str(info.value) == (
        "stage 2: a batch of 2 images cannot be shared by 3 processes (8 training images, "
        "batch size 3); change the batch size or --nproc"
    )
    monkeypatch.setattr(distributed, "context", lambda: Context(0, 2))
    Trainer(det, data, TrainConfig(image_epochs=1, image_batch_size=3), root).check_shards()


def test_an_error_in_a_launched_process_is_raised_with_its_type(tmp_path) -> None:
    kwargs = {"name": "mvtec", "root": str(tmp_path / "none"), "category": "x", "split": "train"}
    with pytest.raises(DatasetError) as info:
        launch(2, "anomalens.data.datasets:build_dataset", kwargs, threads=1)
    assert str(info.value).startswith(f"{tmp_path / 'none'}: folder not found")
