"""Pictures: files open with the expected size, overlays and boxes land where they should."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from anomalens.postprocess import Box
from anomalens.visualize import (
    draw_boxes,
    overlay_heatmap,
    save_png,
    save_prediction_figure,
    save_roc_curve,
    save_score_histogram,
)


def gray_image(h: int = 64, w: int = 80) -> np.ndarray:
    return np.full((h, w, 3), 128, dtype=np.uint8)


def hot_map(h: int = 64, w: int = 80) -> np.ndarray:
    m = np.zeros((h, w), dtype=np.float32)
    m[10:20, 30:50] = 1.0
    return m


def test_overlay_is_red_where_the_map_is_high() -> None:
    img, m = gray_image(), hot_map()
    out = overlay_heatmap(img, m)
    assert out.shape == img.shape and out.dtype == np.uint8
    hot, cold = out[15, 40].astype(int), out[50, 10].astype(int)
    assert hot[0] - hot[2] > 50  # jet's top is (dark) red
    assert cold[2] - cold[0] > 50  # jet's bottom is (dark) blue
    assert not np.array_equal(out[10:20, 30:50], img[10:20, 30:50])
    np.testing.assert_array_equal(overlay_heatmap(img, m, alpha=0.0), img)


def test_overlay_resizes_small_maps_and_handles_flat_maps() -> None:
    img = gray_image()
    small = hot_map()[::4, ::4]
    assert overlay_heatmap(img, small).shape == img.shape
    flat = overlay_heatmap(img, np.ones((8, 10)))
    assert np.all(flat == flat[0, 0])  # one colour everywhere, no division by zero
    with pytest.raises(ValueError, match="NaN"):
        overlay_heatmap(img, np.full((8, 10), np.nan))


def test_boxes_drawn_at_the_right_place() -> None:
    img = np.zeros((60, 80, 3), dtype=np.uint8)
    box = Box(x0=20, y0=15, x1=41, y1=36, score=0.9, area=100)
    out = draw_boxes(img, [box], color=(0, 255, 0), label_scores=False, thickness=1)
    drawn = np.argwhere(out[..., 1] == 255)
    assert drawn[:, 0].min() == 15 and drawn[:, 0].max() == 35  # rows y0 .. y1 - 1
    assert drawn[:, 1].min() == 20 and drawn[:, 1].max() == 40  # columns x0 .. x1 - 1
    assert out[25, 30].sum() == 0  # inside untouched
    assert out[15, 30, 1] == 255 and out[35, 30, 1] == 255 and out[25, 20, 1] == 255
    assert img.sum() == 0  # input not modified
    labelled = draw_boxes(img, [box], color=(0, 255, 0))
    assert labelled[:15, 15:60, 1].max() > 0  # the score is written above the box


def test_save_png_roundtrip(tmp_path: Path) -> None:
    rgb = np.random.default_rng(0).integers(0, 256, size=(30, 50, 3), dtype=np.uint8)
    path = save_png(tmp_path / "sub" / "x.png", rgb)
    with Image.open(path) as im:
        assert im.size == (50, 30)
        np.testing.assert_array_equal(np.asarray(im.convert("RGB")), rgb)


@pytest.mark.parametrize("threshold", [None, 0.5, 2.0])
def test_prediction_figure(tmp_path: Path, threshold: float | None) -> None:
    mask = (hot_map() > 0).astype(np.uint8)
    boxes = [Box(30, 10, 50, 20, 1.0, 200)]
    path = save_prediction_figure(
        tmp_path / "pred.png",
        gray_image(),
        hot_map()[::2, ::2],  # smaller map: resized, boxes too
        boxes=[Box(15, 5, 25, 10, 1.0, 50)] if threshold else boxes,
        score=1.0,
        threshold=threshold,
        mask=mask if threshold else None,
        title="bottle/broken_large/000.png",
    )
    with Image.open(path) as im:
        assert im.format == "PNG" and im.size == (1350, 480)


def test_roc_and_histogram(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    labels = np.r_[np.zeros(40), np.ones(30)]
    scores = rng.normal(size=70) + labels
    roc = save_roc_curve(tmp_path / "roc.png", labels, scores, title="bottle")
    hist = save_score_histogram(tmp_path / "hist.png", labels, scores, threshold=0.5)
    single = save_roc_curve(tmp_path / "roc1.png", np.zeros(5), np.arange(5.0), title="one class")
    for path in (roc, hist, single):
        with Image.open(path) as im:
            assert im.size == (500, 450)
    with Image.open(save_roc_curve(tmp_path / "big.png", labels, scores, "x", dpi=200)) as im:
        assert im.size == (1000, 900)
