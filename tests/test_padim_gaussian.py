"""PaDiM and Gaussian AD detectors: detection, held-out thresholds, checkpoints, CLI."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import DEMO_TEXTURE, TextureSet, save_and_reload
from safetensors.torch import load_file

from anomalens.cli import main
from anomalens.errors import CheckpointError
from anomalens.mahalanobis import fold_indices
from anomalens.methods import GaussianAD, PaDiM, create_detector
from anomalens.metrics import image_auroc, pixel_auroc

SMALL = {"image_size": 96}


@pytest.fixture(scope="module", params=["padim", "gaussian"])
def fitted(request, texture_set: TextureSet):
    det = create_detector(request.param, **SMALL)
    det.fit(texture_set.train, progress=False)
    return det, det.predict(texture_set.test)


def test_shapes_and_detection(fitted, texture_set: TextureSet) -> None:
    det, pred = fitted
    assert pred.scores.shape == (len(texture_set.test),)
    assert pred.scores.dtype == np.float32
    assert all(
        m.shape == img.shape[:2] for m, img in zip(pred.maps, texture_set.test, strict=False)
    )
    assert pixel_auroc(texture_set.masks, pred.maps) > 0.9
    assert image_auroc(texture_set.labels, pred.scores) > 0.6
    assert det.fit_report.n_images == len(texture_set.train)


def test_save_load_bit_identical(fitted, texture_set: TextureSet, tmp_path: Path) -> None:
    det, _pred = fitted
    meta, loaded = save_and_reload(det, tmp_path / "m")
    before = load_file(str(tmp_path / "m" / "model.safetensors"))
    loaded.save(tmp_path / "again")
    after = load_file(str(tmp_path / "again" / "model.safetensors"))
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert meta["calibration"]["threshold"] == det.calibration.threshold
    again, first = loaded.predict(texture_set.test[:3]), det.predict(texture_set.test[:3])
    np.testing.assert_array_equal(again.scores, first.scores)
    np.testing.assert_array_equal(again.maps[0], first.maps[0])


@pytest.mark.parametrize("method", ["padim", "gaussian"])
def test_thresholds_are_held_out_good_scores(method: str, texture_set: TextureSet) -> None:
    """Each training image is scored by a detector fitted on the other folds: refit those
    detectors independently and recompute the quantile."""
    train = texture_set.train[:6]
    det = create_detector(method, image_size=64, calibration_folds=3, calibration_quantile=0.9)
    det.fit(train, progress=False)
    scores, maxima = np.zeros(6), np.zeros(6)
    for fold in fold_indices(6, 3):
        rest = [train[i] for i in range(6) if i not in fold]
        other = create_detector(method, image_size=64, calibration_folds=2)
        other.fit(rest, progress=False)
        p = other.predict([train[i] for i in fold])
        scores[fold] = p.scores
        maxima[fold] = [m.max() for m in p.maps]
    assert det.calibration.n_images == 6
    assert det.calibration.threshold == pytest.approx(np.quantile(scores, 0.9), rel=1e-4)
    # calibration reads the maps at image_size, predict resizes them to the 128 px input
    assert det.calibration.pixel_threshold == pytest.approx(np.quantile(maxima, 0.9), rel=3e-3)
    # held-out good images score higher than the same images scored by a model fitted on them
    assert scores.mean() > float(det.predict(train).scores.mean())


def test_same_seed_same_numbers_and_reductions(texture_set: TextureSet) -> None:
    a = PaDiM(image_size=64, seed=3).fit(texture_set.train[:4], progress=False)
    b = PaDiM(image_size=64, seed=3).fit(texture_set.train[:4], progress=False)
    assert torch.equal(a.channels, b.channels)
    assert a.channels.numel() == 100
    np.testing.assert_array_equal(
        a.predict(texture_set.test[:2]).scores, b.predict(texture_set.test[:2]).scores
    )
    pca = PaDiM(image_size=64, reduction="pca", reduce_dim=20).fit(
        texture_set.train[:4], progress=False
    )
    assert pca.pca_components.shape == (144, 20)
    assert pca.gaussian.precision.shape[1:] == (20, 20)
    full = PaDiM(image_size=64, reduce_dim=None).fit(texture_set.train[:4], progress=False)
    assert full.gaussian.mean.shape[-1] == 144
    assert full.channels is None


def test_gaussian_image_score_is_sum_of_level_distances(texture_set: TextureSet) -> None:
    det = GaussianAD(image_size=64).fit(texture_set.train[:5], progress=False)
    _feats, pooled = det.embed_images(texture_set.test[-2:])
    expected = sum(g.distance(x) for g, x in zip(det.model.levels, pooled, strict=True))
    np.testing.assert_allclose(
        det.predict(texture_set.test[-2:]).scores, expected.numpy(), rtol=1e-5
    )
    assert len(det.model.levels) == 4  # EfficientNet-Lite feature levels 2..5


def test_config_and_checkpoint_errors(texture_set: TextureSet, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="reduction must be one of"):
        PaDiM(reduction="svd")
    with pytest.raises(ValueError, match="image_score must be one of"):
        GaussianAD(image_score="mean")
    with pytest.raises(ValueError, match="calibration_folds must be >= 2"):
        PaDiM(calibration_folds=1)
    det = PaDiM(image_size=64).fit(texture_set.train[:3], progress=False)
    det.save(tmp_path / "m")
    tensors = load_file(str(tmp_path / "m" / "model.safetensors"))
    from safetensors.torch import save_file

    del tensors["positional.precision"]
    save_file(tensors, str(tmp_path / "m" / "model.safetensors"))
    with pytest.raises(CheckpointError, match=r"SHA-256 differs"):
        PaDiM.load(tmp_path / "m")
    meta = json.loads((tmp_path / "m" / "config.json").read_text())
    meta.pop("weights_sha256")  # a hand edit without the hash: the tensor check still applies
    (tmp_path / "m" / "config.json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match=r"lacks tensor positional\.precision"):
        PaDiM.load(tmp_path / "m")


def test_cli_fit_padim(demo_root: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "model"
    argv = ["fit", "--method", "padim", "--dataset", "mvtec", "--root", str(demo_root)]
    code = main([*argv, "--category", DEMO_TEXTURE, "--image-size", "64", "--output", str(out)])
    assert code == 0
    meta = json.loads((out / "config.json").read_text())
    assert meta["method"] == "padim"
    assert meta["config"]["image_size"] == 64
    assert meta["calibration"]["n_images"] == 6
    assert "fitted padim on 6 good images" in capsys.readouterr().out
