"""Report folders: files, PNG sizes, CSV/JSON content and hotspot boxes."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from conftest import png_size, read_csv

from anomalens.methods.base import Prediction
from anomalens.metrics import compute_all
from anomalens.postprocess import hotspots
from anomalens.report import (
    ReportWriter,
    color_range,
    figure_names,
    jsonable,
    write_json,
    write_report,
)

FIGURE_SIZE = (1350, 480)  # visualize.PREDICTION_FIGSIZE at dpi 100
PLOT_SIZE = (500, 450)  # visualize.PLOT_FIGSIZE at dpi 100
H, W = 48, 64


def make_batch(n: int = 4, threshold: float | None = 0.5, pixel_threshold: float | None = 0.5):
    """Images with a bright square in the odd ones; maps are 1 on the square, 0 elsewhere."""
    images, maps, masks = [], [], []
    for i in range(n):
        img = np.full((H, W, 3), 90, np.uint8)
        m = np.zeros((H, W), np.float32)
        mask = np.zeros((H, W), np.uint8)
        if i % 2:
            img[10:20, 20 + i : 32 + i] = 250
            m[10:20, 20 + i : 32 + i] = 0.6 + 0.1 * i
            mask[10:20, 20 + i : 32 + i] = 1
        m[40, 5] = 0.3  # a cold speck below the threshold
        images.append(img)
        maps.append(m)
        masks.append(mask)
    scores = np.array([m.max() for m in maps], np.float32)
    paths = [f"/data/part_{i}.png" for i in range(n)]
    labels = [i % 2 for i in range(n)]
    return paths, images, Prediction(scores, maps, threshold, pixel_threshold), labels, masks


def test_report_with_labels_writes_every_file(tmp_path: Path) -> None:
    paths, images, pred, labels, masks = make_batch()
    summary = write_report(tmp_path, paths, images, pred, labels=labels, masks=masks, title="t")
    for i in range(4):
        assert png_size(tmp_path / "overlays" / f"part_{i}.png") == FIGURE_SIZE
    assert png_size(tmp_path / "roc.png") == PLOT_SIZE
    assert png_size(tmp_path / "histogram.png") == PLOT_SIZE

    on_disk = json.loads((tmp_path / "summary.json").read_text())
    assert on_disk == summary
    assert summary["n_images"] == 4
    assert summary["n_defective"] == 2
    assert summary["n_labelled_defective"] == 2
    expected = compute_all(labels, pred.scores, masks, pred.maps)
    assert summary["metrics"] == pytest.approx(expected)
    assert summary["metrics"]["image_auroc"] == 1.0
    assert summary["files"]["roc"] == "roc.png"
    assert summary["files"]["overlays"] == "overlays"

    columns, rows = read_csv(tmp_path / "scores.csv")
    assert columns == ["path", "score", "threshold", "is_defective", "label"]
    assert [r["path"] for r in rows] == paths
    assert [float(r["score"]) for r in rows] == pytest.approx(pred.scores.tolist())
    assert [r["is_defective"] for r in rows] == ["false", "true", "false", "true"]
    assert [int(r["label"]) for r in rows] == labels


def test_scores_json_boxes_are_the_hotspots_above_the_pixel_threshold(tmp_path: Path) -> None:
    paths, images, pred, _, _ = make_batch()
    write_report(tmp_path, paths, images, pred)
    data = json.loads((tmp_path / "scores.json").read_text())
    assert data["threshold"] == 0.5
    assert data["pixel_threshold"] == 0.5
    for i, record in enumerate(data["images"]):
        expected = [b.as_dict() for b in hotspots(pred.maps[i], 0.5)]
        assert record["boxes"] == expected
        assert record["is_defective"] == bool(pred.scores[i] >= 0.5)
        assert record["figure"] == f"overlays/part_{i}.png"
    box = data["images"][1]["boxes"][0]
    assert (box["x0"], box["y0"], box["x1"], box["y1"]) == (21, 10, 33, 20)
    assert data["images"][0]["boxes"] == []  # the 0.3 speck is below the threshold


def test_report_without_labels_has_no_plots_and_four_csv_columns(tmp_path: Path) -> None:
    paths, images, pred, _, _ = make_batch()
    summary = write_report(tmp_path, paths, images, pred, figures=[True, False, False, True])
    assert not (tmp_path / "roc.png").exists()
    assert not (tmp_path / "histogram.png").exists()
    assert "metrics" not in summary
    columns, rows = read_csv(tmp_path / "scores.csv")
    assert columns == ["path", "score", "threshold", "is_defective"]
    assert len(rows) == 4
    assert sorted(p.name for p in (tmp_path / "overlays").iterdir()) == [
        "part_0.png",
        "part_3.png",
    ]


def test_report_without_thresholds(tmp_path: Path) -> None:
    paths, images, pred, _, _ = make_batch(2, threshold=None, pixel_threshold=None)
    summary = write_report(tmp_path, paths, images, pred)
    assert summary["threshold"] is None
    assert summary["n_defective"] is None
    _, rows = read_csv(tmp_path / "scores.csv")
    assert [r["is_defective"] for r in rows] == ["", ""]
    records = json.loads((tmp_path / "scores.json").read_text())["images"]
    assert "boxes" not in records[0]
    assert records[0]["is_defective"] is None


def test_writer_in_chunks_equals_one_call(tmp_path: Path) -> None:
    paths, images, pred, labels, _ = make_batch(4)
    write_report(tmp_path / "one", paths, images, pred, labels=labels, figures=False)
    writer = ReportWriter(tmp_path / "chunks")
    for sl in (slice(0, 3), slice(3, 4)):
        part = Prediction(pred.scores[sl], pred.maps[sl], pred.threshold, pred.pixel_threshold)
        writer.add(paths[sl], images[sl], part, labels=labels[sl], figures=False)
    writer.finish()
    for name in ("scores.csv", "scores.json"):
        assert (tmp_path / "one" / name).read_text() == (tmp_path / "chunks" / name).read_text()
    with pytest.raises(ValueError, match="labels for every chunk"):
        writer.add(paths[:1], images[:1], Prediction(pred.scores[:1], pred.maps[:1]))


def test_mismatched_lengths_are_rejected(tmp_path: Path) -> None:
    paths, images, pred, labels, _ = make_batch(4)
    with pytest.raises(ValueError, match="4 paths but 3 images"):
        write_report(tmp_path, paths, images[:3], pred)
    with pytest.raises(ValueError, match="labels"):
        write_report(tmp_path, paths, images, pred, labels=labels[:2])
    with pytest.raises(ValueError, match="4 paths but 2 labels"):
        ReportWriter(tmp_path).add(paths, images, pred, labels=labels[:2])


def test_figure_names_are_unique_and_readable() -> None:
    assert figure_names(["a/x.png", "a/y.jpg"]) == ["x", "y"]
    names = figure_names(["d/test/good/000.png", "d/test/scratch/000.png", "d/test/good/001.png"])
    assert names == ["good_000", "scratch_000", "good_001"]
    assert figure_names(["a/x.png", "a/x.jpg"]) == ["x", "x-2"]


def test_json_helpers_turn_nan_into_null(tmp_path: Path) -> None:
    data = {"a": float("nan"), "b": np.float32(1.5), "c": [np.int64(2), np.inf], "d": Path("p")}
    assert jsonable(data) == {"a": None, "b": 1.5, "c": [2, None], "d": "p"}
    text = write_json(tmp_path / "x" / "f.json", data).read_text()
    assert "NaN" not in text
    assert json.loads(text)["a"] is None


def test_color_range_centres_on_the_pixel_threshold() -> None:
    lo, hi = color_range(2.0)
    assert lo < 2.0 < hi
    assert (lo, hi) == (1.0, 2.5)
    assert color_range(None) == (None, None)
    assert color_range(0.0) == (None, None)
    assert color_range(math.nan) == (None, None)
