"""Predict API: collect_images and predict_paths (chunking, skipping, report files, logging)."""

from __future__ import annotations

import csv
import json
import logging
from pathlib import Path

import numpy as np
import pytest
from conftest import DEMO_TEXTURE, N_TEST_BAD, N_TEST_GOOD, FakeDetector

from anomalens.data.datasets import SkippedImageWarning
from anomalens.data.io import load_image
from anomalens.errors import CheckpointError, DatasetError, ImageLoadError
from anomalens.inference import PREDICT_CHUNK, collect_images, predict_paths

N_TEST = N_TEST_GOOD + N_TEST_BAD


@pytest.fixture(scope="module")
def detector(demo_root: Path) -> FakeDetector:
    train = sorted((demo_root / DEMO_TEXTURE / "train" / "good").iterdir())
    return FakeDetector().fit([load_image(p) for p in train])


@pytest.fixture
def test_dir(demo_root: Path) -> Path:
    return demo_root / DEMO_TEXTURE / "test"


def read_scores(folder: Path) -> list[dict[str, str]]:
    with (folder / "scores.csv").open(newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def test_collect_images_sorts_per_folder_and_drops_duplicates(test_dir: Path) -> None:
    good = sorted((test_dir / "good").iterdir())
    assert collect_images([test_dir / "good"]) == good
    assert collect_images([good[1], test_dir / "good"]) == [good[1], good[0], *good[2:]]
    found = collect_images([str(test_dir)], recursive=True)
    assert len(found) == N_TEST
    assert found == sorted(found)


def test_collect_images_errors_name_the_path(test_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(DatasetError) as e:
        collect_images([test_dir])
    assert str(e.value) == (
        f"{test_dir}: no images found (extensions png, jpg, jpeg, bmp, tif, tiff) "
        "(subfolders are searched with --recursive)"
    )
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(DatasetError, match=r"notes.txt: not an image file \(extensions png"):
        collect_images([tmp_path / "notes.txt"])
    with pytest.raises(DatasetError, match=r"missing: file or folder not found$"):
        collect_images([tmp_path / "missing"])


def test_predict_paths_writes_the_report(detector, test_dir: Path, tmp_path: Path) -> None:
    result = predict_paths(detector, [test_dir], tmp_path, recursive=True, progress=False)
    paths = collect_images([test_dir], recursive=True)
    assert [r["path"] for r in result.records] == [str(p) for p in paths]
    expected = detector.predict([load_image(p) for p in paths])
    assert [r["score"] for r in result.records] == pytest.approx(expected.scores.tolist())
    verdicts = [bool(v) for v in expected.is_defective]
    assert [r["is_defective"] for r in result.records] == verdicts
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary == result.summary
    assert summary["n_images"] == N_TEST
    assert summary["n_defective"] == sum(verdicts)
    assert summary["model"] is None
    assert summary["method"] == "fake"
    assert summary["skipped"] == []
    assert [r["path"] for r in read_scores(tmp_path)] == [str(p) for p in paths]
    figures = sorted(f.name for f in result.overlays.iterdir())
    assert len(figures) == N_TEST
    assert "good_000.png" in figures
    assert result.scores_csv == tmp_path / "scores.csv"
    assert result.skipped == []


def test_chunks_give_the_same_report(detector, test_dir: Path, tmp_path: Path) -> None:
    assert PREDICT_CHUNK == 32
    one = predict_paths(detector, [test_dir], tmp_path / "a", recursive=True, progress=False)
    small = predict_paths(
        detector, [test_dir], tmp_path / "b", recursive=True, progress=False, chunk_size=3
    )
    assert small.records == one.records
    with pytest.raises(ValueError, match="chunk_size must be >= 1, got 0"):
        predict_paths(detector, [test_dir], tmp_path / "c", chunk_size=0)


def test_skip_bad_and_no_figures(detector, test_dir: Path, tmp_path: Path) -> None:
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    good = test_dir / "good" / "000.png"
    with pytest.raises(ImageLoadError, match=r"broken\.png"):
        predict_paths(detector, [broken, good], tmp_path / "o", progress=False)
    with pytest.warns(SkippedImageWarning, match=r"^skipping .*broken\.png"):
        result = predict_paths(
            detector, [broken, good], tmp_path / "o", skip_bad=True, figures=False, progress=False
        )
    assert result.skipped == [broken]
    assert result.summary["skipped"] == [str(broken)]
    assert [r["path"] for r in result.records] == [str(good)]
    assert result.records[0]["figure"] is None
    assert not result.overlays.exists()
    with (
        pytest.warns(SkippedImageWarning),
        pytest.raises(DatasetError, match=r"broken.png: no readable images$"),
    ):
        predict_paths(detector, [broken], tmp_path / "p", skip_bad=True, progress=False)


def test_a_model_folder_is_loaded(tmp_path: Path, test_dir: Path) -> None:
    with pytest.raises(CheckpointError, match=r"config\.json"):
        predict_paths(tmp_path / "none", [test_dir], tmp_path / "o")


def test_predict_paths_logs_debug_lines(detector, test_dir: Path, tmp_path: Path, caplog) -> None:
    caplog.set_level(logging.DEBUG, logger="anomalens")
    predict_paths(
        detector, [test_dir], tmp_path, recursive=True, progress=False, chunk_size=5, figures=False
    )
    messages = [r.getMessage() for r in caplog.records if r.name == "anomalens.inference"]
    assert messages == [
        f"predict: fake model, {N_TEST} images in chunks of 5",
        f"predicted 5 of {N_TEST} images",
        f"predicted {N_TEST} of {N_TEST} images",
    ]
    assert all(r.levelno == logging.DEBUG for r in caplog.records)
    assert np.isfinite([float(r["score"]) for r in read_scores(tmp_path)]).all()
