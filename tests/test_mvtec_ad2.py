"""MVTec AD 2 protocol on a tiny tree with known maps, against plain per-region computations."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image
from sklearn.metrics import roc_auc_score

from anomalens.cli import main
from anomalens.errors import DatasetError
from anomalens.mvtec_ad2 import (
    ThresholdRule,
    private_images,
    run_ad2,
    seg_f1,
    submission_paths,
)

CAT = "widget"
H, W = 20, 24


def _img(rng: np.random.Generator, level: int = 100) -> np.ndarray:
    """A gray image with a few quantised levels (few distinct map values)."""
    return (level + 10 * rng.integers(0, 3, (H, W))).astype(np.uint8)


def _save(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


@pytest.fixture(scope="module")
def ad2_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """train/good 3, validation/good 3, test_public good 2 + bad 3 (masks with one or two
    regions), test_private 2, test_private_mixed 1 (in a subfolder)."""
    root = tmp_path_factory.mktemp("ad2")
    cat = root / CAT
    rng = np.random.default_rng(0)
    for split, n in (("train", 3), ("validation", 3)):
        for i in range(n):
            _save(cat / split / "good" / f"{i:03d}.png", _img(rng))
    for i in range(2):
        img = _img(rng)
        img[0, : 2 + i] = 220  # normal pixels scoring like defects
        _save(cat / "test_public" / "good" / f"{i:03d}.png", img)
    for i in range(3):
        img, mask = _img(rng), np.zeros((H, W), np.uint8)
        boxes = [(2 + i, 3, 5, 6), (12, 14 + i, 4, 5)][: 1 + (i % 2)]
        for y, x, h, w in boxes:
            img[y : y + h, x : x + w] = 200 + 20 * rng.integers(0, 2, (h, w))
            mask[y : y + h, x : x + w] = 255
        img[y + 1, x + 1] = 100  # a pixel of the region scoring like the background
        _save(cat / "test_public" / "bad" / f"{i:03d}.png", img)
        _save(cat / "test_public" / "ground_truth" / "bad" / f"{i:03d}_mask.png", mask)
    for i in range(2):
        _save(cat / "test_private" / f"{i:03d}_regular.png", _img(rng, 120))
    _save(cat / "test_private_mixed" / "sub" / "000_mixed.png", _img(rng, 90))
    return root


def _gray(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"), dtype=np.float32).mean(axis=2)


def _fake_maps(root: Path, paths: list[Path]) -> list[np.ndarray]:
    """FakeDetector's maps recomputed from the files: ``|gray - mean gray of train|``."""
    train = sorted((root / CAT / "train" / "good").glob("*.png"))
    mean = float(np.mean([_gray(p).mean() for p in train]))
    return [np.abs(_gray(p) - mean) for p in paths]


def _plain_aupro(masks: list[np.ndarray], maps: list[np.ndarray], limit: float) -> float:
    """Per-region overlap by loops over thresholds and 4-/8-connected regions (scipy label)."""
    from scipy import ndimage

    regions = []
    for i, m in enumerate(masks):
        labelled, n = ndimage.label(m > 0, structure=np.ones((3, 3)))
        regions += [(i, labelled == k) for k in range(1, n + 1)]
    normal = np.concatenate([mp[m == 0] for m, mp in zip(masks, maps, strict=True)])
    points = [(0.0, 0.0)]
    for t in sorted({float(v) for mp in maps for v in mp.ravel()}, reverse=True):
        fpr = float(np.mean(normal >= t))
        pro = float(np.mean([np.mean(maps[i][r] >= t) for i, r in regions]))
        points.append((fpr, pro))
    x, y = np.array(points).T
    keep = x <= limit
    area = np.trapezoid(y[keep], x[keep])
    k = int(keep.sum())
    if k < len(x) and x[k - 1] < limit:
        y_at = y[k - 1] + (y[k] - y[k - 1]) * (limit - x[k - 1]) / (x[k] - x[k - 1])
        area += 0.5 * (y[k - 1] + y_at) * (limit - x[k - 1])
    return float(area / limit)


def test_protocol_metrics_thresholds_and_submission(
    ad2_root: Path, tmp_path: Path, fake_method: str
) -> None:
    out = tmp_path / "out"
    result = run_ad2(ad2_root, CAT, fake_method, output=out, progress=False)
    cat = ad2_root / CAT
    val = _fake_maps(ad2_root, sorted((cat / "validation" / "good").glob("*.png")))
    values = np.concatenate([m.ravel() for m in val])
    assert result.pixel_threshold == pytest.approx(values.mean() + 3 * values.std(), rel=1e-5)
    val_scores = np.array([m.max() for m in val])
    assert result.threshold == pytest.approx(val_scores.mean() + 3 * val_scores.std(), rel=1e-5)

    good = sorted((cat / "test_public" / "good").glob("*.png"))
    bad = sorted((cat / "test_public" / "bad").glob("*.png"))
    maps = _fake_maps(ad2_root, good + bad)
    masks = [np.zeros((H, W))] * 2 + [
        np.asarray(Image.open(cat / "test_public" / "ground_truth" / "bad" / f"{p.stem}_mask.png"))
        for p in bad
    ]
    labels = [0, 0, 1, 1, 1]
    m = result.metrics
    assert m["image_auroc"] == pytest.approx(roc_auc_score(labels, [x.max() for x in maps]))
    flat_t = np.concatenate([(x > 0).ravel() for x in masks])
    flat_s = np.concatenate([x.ravel() for x in maps])
    assert m["pixel_auroc"] == pytest.approx(roc_auc_score(flat_t, flat_s))
    assert m["aupro_05"] == pytest.approx(_plain_aupro(masks, maps, 0.05), abs=1e-9)
    assert m["aupro_30"] == pytest.approx(_plain_aupro(masks, maps, 0.3), abs=1e-9)
    pred = flat_s >= result.pixel_threshold
    tp, fp = np.sum(pred & flat_t), np.sum(pred & ~flat_t)
    fn = np.sum(~pred & flat_t)
    assert m["seg_f1"] == pytest.approx(2 * tp / (2 * tp + fp + fn))
    assert 0 < m["seg_f1"] < 1

    assert result.submission == {"test_private": 2, "test_private_mixed": 1}
    private = [
        *sorted((cat / "test_private").glob("*.png")),
        cat / "test_private_mixed" / "sub" / "000_mixed.png",
    ]
    for path, expected in zip(private, _fake_maps(ad2_root, private), strict=True):
        tiff, png = submission_paths(ad2_root, path)
        assert tiff.parts[:3] == ("anomaly_images", CAT, path.relative_to(cat).parts[0])
        stored = tifffile.imread(out / tiff)
        assert stored.dtype == np.float16
        assert stored.shape == (H, W)
        np.testing.assert_allclose(stored.astype(np.float32), expected, rtol=1e-3, atol=1e-3)
        binary = np.asarray(Image.open(out / png))
        assert binary.dtype == np.uint8
        assert set(np.unique(binary)) <= {0, 255}
        np.testing.assert_array_equal(binary == 255, expected >= result.pixel_threshold)
    saved = json.loads((out / "ad2_results.json").read_text())
    assert saved["metrics"]["seg_f1"] == pytest.approx(m["seg_f1"])
    assert saved["n_validation"] == 3
    assert saved["rule"]["rule"] == "mean_std"


def test_seg_f1_and_threshold_rules() -> None:
    masks = [np.array([[1, 1, 0, 0]]), np.array([[0, 0, 0, 1]])]
    maps = [np.array([[0.9, 0.2, 0.8, 0.1]]), np.array([[0.1, 0.1, 0.1, 0.7]])]
    # at 0.5: tp = 2 (0.9, 0.7), fp = 1 (0.8), fn = 1 (0.2)
    assert seg_f1(masks, maps, 0.5) == pytest.approx(2 * 2 / (2 * 2 + 1 + 1))
    assert np.isnan(seg_f1([np.zeros((2, 2))], [np.zeros((2, 2))], 1.0))
    with pytest.raises(ValueError, match=r"masks\[0\] has shape"):
        seg_f1([np.zeros((2, 2))], [np.zeros((2, 3))], 0.5)
    v = np.arange(1000, dtype=np.float64)
    assert ThresholdRule("quantile", q=0.9)(v) == pytest.approx(np.quantile(v, 0.9))
    assert ThresholdRule(k=2.0)(v) == pytest.approx(v.mean() + 2 * v.std())
    with pytest.raises(ValueError, match="threshold rule must be one of"):
        ThresholdRule("max")


def test_missing_private_split_and_cli(ad2_root: Path, tmp_path: Path, fake_method, capsys) -> None:
    with pytest.raises(DatasetError, match="test_private_mixed: folder not found"):
        private_images(tmp_path, CAT, "test_private_mixed")
    out = tmp_path / "cli"
    code = main(
        [
            "mvtec-ad2",
            "--root",
            str(ad2_root),
            "--category",
            CAT,
            "--method",
            fake_method,
            "--output",
            str(out),
            "--no-progress",
            "--threshold-rule",
            "quantile",
        ]
    )
    assert code == 0
    text = capsys.readouterr().out
    assert f"{CAT} test_public: image_auroc" in text
    assert "wrote 2 maps and masks of test_private" in text
    assert len(list((out / "anomaly_images_thresholded" / CAT).rglob("*.png"))) == 3
    code = main(["mvtec-ad2", "--root", str(tmp_path), "--category", CAT, "--output", str(out)])
    assert code == 2
