"""Pictures: files open with the expected size, and the pixels of the saved PNGs show the image,
the overlay colours, the boxes and the mask outline where they should be."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from conftest import read_png
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


#: colours of visualize.py: the verdict (matplotlib's tab:red / tab:green), the mask outline
#: (lime), the boxes (white) and the overlay of the gray 128 image at alpha 0.5 with jet's
#: bottom (0, 0, 0.5) and top (0.5, 0, 0)
DEFECT_RGB, OK_RGB, LIME, WHITE = (214, 39, 40), (44, 160, 44), (0, 255, 0), (255, 255, 255)
GRAY, COLD_OVERLAY, HOT_OVERLAY = (128, 128, 128), (64, 64, 128), (128, 64, 64)


def count_colour(rgb: np.ndarray, colour: tuple[int, int, int], tol: int = 0) -> int:
    return int(np.all(np.abs(rgb.astype(int) - colour) <= tol, axis=2).sum())


class Panel:
    """Where an ``H x W`` image is shown in a figure PNG: the bounding box of the rows and
    columns (within ``columns``) that are mostly ``colour`` (the panel's background colour)."""

    def __init__(self, png: np.ndarray, colour, columns: slice, shape: tuple[int, int]):
        band = np.all(png[:, columns] == colour, axis=2)
        rows = np.flatnonzero(band.sum(1) > 0.5 * band.sum(1).max())
        cols = np.flatnonzero(band.sum(0) > 0.5 * band.sum(0).max())
        self.png, self.shape = png, shape
        self.top, self.left = rows[0], cols[0] + (columns.start or 0)
        self.sy, self.sx = (rows[-1] + 1 - rows[0]) / shape[0], (cols[-1] + 1 - cols[0]) / shape[1]

    def at(self, y: float, x: float) -> np.ndarray:
        """The PNG pixel at image coordinates ``(y, x)`` (pixel centres at ``i + 0.5``)."""
        return self.png[int(self.top + y * self.sy), int(self.left + x * self.sx)].astype(int)

    def near(self, y: float, x: float, radius: int = 2) -> np.ndarray:
        """The PNG pixels within ``radius`` of image coordinates ``(y, x)``, ``N x 3``."""
        r, c = int(self.top + y * self.sy), int(self.left + x * self.sx)
        return self.png[r - radius : r + radius + 1, c - radius : c + radius + 1].reshape(-1, 3)


def test_overlay_is_red_where_the_map_is_high() -> None:
    img, m = gray_image(), hot_map()
    out = overlay_heatmap(img, m)
    assert out.shape == img.shape
    assert out.dtype == np.uint8
    hot, cold = out[15, 40].astype(int), out[50, 10].astype(int)
    assert hot[0] - hot[2] > 50  # jet's top is (dark) red
    assert cold[2] - cold[0] > 50  # jet's bottom is (dark) blue
    assert not np.array_equal(out[10:20, 30:50], img[10:20, 30:50])
    np.testing.assert_array_equal(overlay_heatmap(img, m, alpha=0.0), img)
    # exact blend: 0.5 * gray 128 + 0.5 * 255 * jet(0 or 1)
    assert (out[m == 1] == HOT_OVERLAY).all()
    assert (out[m == 0] == COLD_OVERLAY).all()
    # against the overlay of an all-zero map with the same limits, only the hot pixels change
    zero = overlay_heatmap(img, np.zeros_like(m), vmin=0.0, vmax=1.0)
    changed = np.any(overlay_heatmap(img, m, vmin=0.0, vmax=1.0) != zero, axis=2)
    np.testing.assert_array_equal(changed, m > 0)
    # fixed limits: half the maximum is jet's middle (greenish), not its top
    half = overlay_heatmap(img, m * 0.5, vmin=0.0, vmax=1.0)[15, 40].astype(int)
    assert half[1] > 128
    assert half[1] > half[0] + 40
    assert half[1] > half[2] + 20


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
    assert drawn[:, 0].min() == 15
    assert drawn[:, 0].max() == 35
    assert drawn[:, 1].min() == 20
    assert drawn[:, 1].max() == 40
    outline = np.zeros((60, 80), bool)  # the outermost pixels of the box, by hand
    outline[[15, 35], 20:41] = True
    outline[15:36, [20, 40]] = True
    np.testing.assert_array_equal(np.any(out != 0, axis=2), outline)
    assert (out[outline] == (0, 255, 0)).all()  # exactly the requested colour
    assert out[25, 30].sum() == 0  # inside untouched
    assert out[15, 30, 1] == 255
    assert out[35, 30, 1] == 255
    assert out[25, 20, 1] == 255
    assert img.sum() == 0  # input not modified
    labelled = draw_boxes(img, [box], color=(0, 255, 0))
    assert labelled[:15, 15:60, 1].max() > 0  # the score is written above the box


def test_save_png_roundtrip(tmp_path: Path) -> None:
    rgb = np.random.default_rng(0).integers(0, 256, size=(30, 50, 3), dtype=np.uint8)
    path = save_png(tmp_path / "sub" / "x.png", rgb)
    with Image.open(path) as im:
        assert im.size == (50, 30)
        np.testing.assert_array_equal(np.asarray(im.convert("RGB")), rgb)


@pytest.mark.parametrize("threshold", [None, 0.5, 1.0, 2.0])
def test_prediction_figure(tmp_path: Path, threshold: float | None) -> None:
    mask = (hot_map() > 0).astype(np.uint8)  # rows 10..19, columns 30..49 of 64 x 80
    image_in = gray_image()
    image_in[50:60, 60:75] = 0  # a black block in the lower right corner: orientation
    path = save_prediction_figure(
        tmp_path / "pred.png",
        image_in,
        hot_map()[::2, ::2],  # smaller map: resized, boxes too
        boxes=[Box(15, 5, 25, 10, 1.0, 50)],  # map pixels; (30, 10, 50, 20) in image pixels
        score=1.0,
        threshold=threshold,
        mask=mask if threshold else None,
        title="bottle/broken_large/000.png",
    )
    with Image.open(path) as im:
        assert im.format == "PNG"
        assert im.size == (1350, 480)
    png = read_png(path)

    # title: the verdict colour (score 1.0 >= 0.5 or 1.0: defective, < 2.0: OK, else black)
    heading = png[:60]
    expected = {None: (0, 0, 0), 0.5: DEFECT_RGB, 1.0: DEFECT_RGB, 2.0: OK_RGB}[threshold]
    for colour in ((0, 0, 0), DEFECT_RGB, OK_RGB):
        assert (count_colour(heading, colour) > 100) == (colour == expected), colour

    # panel 1: the image itself (gray), outlined in lime along the mask edge when a mask is given
    image = Panel(png, GRAY, slice(0, 450), (64, 80))
    assert 4.5 < image.sx < 5.5
    assert abs(image.sx - image.sy) < 0.1
    assert (image.at(15.5, 40.5) == GRAY).all()
    assert (image.at(45.5, 10.5) == GRAY).all()
    assert (image.at(55.5, 67.5) == 0).all()
    assert (image.at(5.5, 10.5) == GRAY).all()
    edges = [(10, 40), (20, 40), (15, 30), (15, 50)]  # middles of the mask's four edges
    for y, x in edges:
        lime = np.all(np.abs(image.near(y, x) - LIME) <= 60, axis=1).any()
        assert lime == (threshold is not None), (y, x)
    if threshold is None:
        assert count_colour(png, LIME, tol=60) == 0

    # panel 2: overlay (exact blend colours) with the white box on the box's outermost pixels
    overlay = Panel(png, COLD_OVERLAY, slice(450, 880), (64, 80))
    assert abs(overlay.sx - image.sx) < 0.1  # same scale as the image panel
    assert (overlay.at(15.5, 40.5) == HOT_OVERLAY).all()  # inside the hot region and the box
    assert (overlay.at(45.5, 10.5) == COLD_OVERLAY).all()  # where the map is 0
    assert (overlay.at(55.5, 67.5) == (0, 0, 64)).all()  # black block under jet's blue
    for y, x in [(10.5, 40.5), (19.5, 40.5), (15.5, 30.5), (15.5, 49.5)]:  # box edge pixels
        assert (overlay.at(y, x) == WHITE).all(), (y, x)
    assert (overlay.at(8.5, 40.5) != WHITE).any()
    assert (overlay.at(21.5, 40.5) != WHITE).any()

    # panel 3: the raw map in jet: dark red where it is high, dark blue where it is 0
    raw = Panel(png, (0, 0, 127), slice(880, 1270), (64, 80))
    assert (raw.at(15.5, 40.5) == (127, 0, 0)).all()
    assert (raw.at(45.5, 10.5) == (0, 0, 127)).all()


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
    # the ROC curve is drawn in tab:red; the one-class figure has no curve
    assert count_colour(read_png(roc), DEFECT_RGB) > 300
    assert count_colour(read_png(single), DEFECT_RGB) == 0
    # histogram bars: green (normal) and red (anomalous) at alpha 0.55 on white
    bars = read_png(hist)
    for colour in OK_RGB, DEFECT_RGB:
        blended = tuple(round(0.55 * c + 0.45 * 255) for c in colour)
        assert count_colour(bars, blended, tol=2) > 2000, colour
    only_good = read_png(save_score_histogram(tmp_path / "h0.png", np.zeros(5), np.arange(5.0)))
    assert count_colour(only_good, (232, 136, 137), tol=2) == 0  # no anomalous bars
    with Image.open(save_roc_curve(tmp_path / "big.png", labels, scores, "x", dpi=200)) as im:
        assert im.size == (1000, 900)
