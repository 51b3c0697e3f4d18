"""Benchmark API: results.json / predictions.csv agree with the metrics, tables, options."""

from __future__ import annotations

import csv
import json
import logging
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import DEMO_TEXTURE, N_TEST_BAD, N_TEST_GOOD, N_TRAIN, TINY_OPTIONS

from anomalens.data import datasets
from anomalens.data.datasets import SkippedImageWarning
from anomalens.data.transforms import spread_indices
from anomalens.demo import format_summary, run_demo
from anomalens.errors import DatasetError, ImageLoadError, ModelNotAvailableError
from anomalens.evaluate import (
    build_detector,
    evaluate_category,
    resolve_categories,
    run_benchmark,
)
from anomalens.metrics import compute_all
from anomalens.results import (
    MEAN_KEYS,
    METRIC_KEYS,
    RESULT_KEYS,
    environment,
    format_table,
    mean_row,
)

N_TEST = N_TEST_GOOD + N_TEST_BAD


def read_predictions(path: Path) -> list[dict[str, str]]:
    with path.open(newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        assert reader.fieldnames == ["category", "path", "label", "score"]
        return list(reader)


def test_results_json_matches_metrics_recomputed_from_predictions_csv(cli_benchmark) -> None:
    out, _ = cli_benchmark  # a tiny PatchCore benchmark of the demo data
    data = json.loads((out / "results.json").read_text())
    assert data["method"] == "patchcore"
    assert data["dataset"] == "mvtec"
    assert data["options"] == TINY_OPTIONS
    assert data["config"]["image_size"] == 128
    assert data["config"]["memory_size"] == 500
    assert set(data["environment"]) >= {"python", "torch", "cpu", "cores", "date"}
    assert list(data["categories"]) == [DEMO_TEXTURE]
    row = data["categories"][DEMO_TEXTURE]
    assert set(row) == set(RESULT_KEYS)
    assert row["n_train"] == N_TRAIN
    assert row["n_test"] == N_TEST
    assert row["fit_seconds"] > 0
    assert row["ms_per_image"] > 0

    rows = read_predictions(out / "predictions.csv")
    assert len(rows) == row["n_test"]
    assert {r["category"] for r in rows} == {DEMO_TEXTURE}
    labels = np.array([int(r["label"]) for r in rows])
    scores = np.array([float(r["score"]) for r in rows])
    assert labels.sum() == N_TEST_BAD
    assert all(("good" in r["path"]) == (r["label"] == "0") for r in rows)
    expected = compute_all(labels, scores)
    assert row["image_auroc"] == pytest.approx(expected["image_auroc"], abs=1e-9)
    assert row["f1_max"] == pytest.approx(expected["f1_max"], abs=1e-9)
    # the demo data has masks: pixel metrics are real numbers in [0, 1]
    for key in ("pixel_auroc", "pixel_ap", "aupro"):
        assert 0.0 <= row[key] <= 1.0
    assert data["mean"] == pytest.approx({**{k: row[k] for k in MEAN_KEYS}, "n_categories": 1})
    details = data["details"][DEMO_TEXTURE]
    assert details["skipped"] == []
    assert details["threshold"] > 0
    summary = json.loads((out / DEMO_TEXTURE / "summary.json").read_text())
    assert summary["threshold"] == details["threshold"]
    assert summary["metrics"] == pytest.approx({k: row[k] for k in METRIC_KEYS})


def test_evaluate_category_result_is_what_gets_written(fake_method, demo_root, tmp_path) -> None:
    result = run_benchmark("mvtec", demo_root, None, fake_method, {}, output=tmp_path)
    data = json.loads((tmp_path / "results.json").read_text())
    cat = result.categories[0]
    assert data["categories"][DEMO_TEXTURE] == pytest.approx(cat.as_dict())
    assert data["details"][DEMO_TEXTURE]["threshold"] == pytest.approx(cat.threshold)
    rows = read_predictions(tmp_path / "predictions.csv")
    assert [r["path"] for r in rows] == cat.paths
    assert [float(r["score"]) for r in rows] == pytest.approx(cat.scores)
    # evaluate_category alone gives the same numbers (the fake detector is deterministic)
    again = evaluate_category("mvtec", demo_root, DEMO_TEXTURE, fake_method, progress=False)
    assert again.scores == cat.scores
    assert again.image_auroc == cat.image_auroc


def test_benchmark_writes_category_plots(fake_method, demo_root: Path, tmp_path: Path) -> None:
    run_benchmark("mvtec", demo_root, None, fake_method, {}, output=tmp_path, progress=False)
    folder = tmp_path / DEMO_TEXTURE
    for name in ("roc.png", "histogram.png", "scores.csv", "scores.json", "summary.json"):
        assert (folder / name).is_file(), name
    assert not (folder / "overlays").exists()  # save_maps=0


def test_mean_row_ignores_nan_and_table_shows_it() -> None:
    rows = {
        "a": {k: 0.5 for k in MEAN_KEYS} | {"pixel_auroc": float("nan"), "n_train": 1},
        "b": {k: 0.9 for k in MEAN_KEYS} | {"pixel_auroc": 0.8, "fit_seconds": 10.0},
        "c": {k: 0.7 for k in MEAN_KEYS} | {"pixel_auroc": None, "aupro": None},
    }
    mean = mean_row(rows)
    assert mean["image_auroc"] == pytest.approx(0.7)
    assert mean["pixel_auroc"] == pytest.approx(0.8)  # NaN and None ignored
    assert mean["aupro"] == pytest.approx(0.7)  # (0.5 + 0.9) / 2
    assert mean["fit_seconds"] == pytest.approx((0.5 + 10.0 + 0.7) / 3)
    assert math.isnan(mean_row({"a": {"aupro": float("nan")}})["aupro"])

    lines = format_table(rows).splitlines()
    header = lines[0].split()
    assert header[0] == "category"
    assert "I-AUROC" in header
    assert "ms/image" in header
    body = {line.split()[0]: line.split()[1:] for line in lines if line[:1].isalpha()}
    assert body["a"][1] == "-"  # NaN pixel AUROC
    assert body["MEAN"][0] == "0.700"
    assert body["MEAN"][1] == "0.800"
    assert body["MEAN"][5] == f"{(0.5 + 10.0 + 0.7) / 3:.1f}"


def test_table_mean_row_is_the_mean_of_the_printed_rows(fake_method, demo_root, tmp_path) -> None:
    # two categories: the demo texture and a copy under another name
    root = tmp_path / "data"
    shutil.copytree(demo_root / DEMO_TEXTURE, root / "brick")
    shutil.copytree(demo_root / DEMO_TEXTURE, root / "brick_copy")
    result = run_benchmark("mvtec", root, None, fake_method, {}, progress=False)
    rows = result.rows()
    assert list(rows) == ["brick", "brick_copy"]
    lines = format_table(rows).splitlines()
    parsed = {line.split()[0]: line.split()[1:] for line in lines if line[:1].isalpha()}
    for j, key in enumerate(MEAN_KEYS):  # MEAN_KEYS are the table's columns, in order
        rounding = 0.05 if key in ("fit_seconds", "ms_per_image") else 0.0005  # .1f / .3f
        printed = [float(parsed[c][j]) for c in rows]
        mean = float(parsed["MEAN"][j])
        assert mean == pytest.approx(np.mean(printed), abs=2 * rounding + 1e-9), key
        assert mean == pytest.approx(np.mean([rows[c][key] for c in rows]), abs=rounding), key


def test_folder_dataset_without_masks_gives_null_pixel_metrics(
    fake_method, demo_root: Path, tmp_path: Path
) -> None:
    src = demo_root / DEMO_TEXTURE
    root = tmp_path / "parts"
    shutil.copytree(src / "train" / "good", root / "good")
    bad = root / "bad"
    bad.mkdir()
    for p in sorted((src / "test").glob("*/*.png")):
        if p.parent.name != "good":
            shutil.copy(p, bad / f"{p.parent.name}_{p.name}")
    result = run_benchmark(
        "folder", root, None, fake_method, {}, output=tmp_path / "out", progress=False
    )
    data = json.loads((tmp_path / "out" / "results.json").read_text())
    row = data["categories"]["parts"]
    assert row["pixel_auroc"] is None
    assert row["pixel_ap"] is None
    assert row["aupro"] is None
    assert row["image_auroc"] is not None
    assert data["mean"]["aupro"] is None
    assert "-" in format_table(result.rows()).splitlines()[2].split()


def test_skip_bad_skips_a_corrupt_test_image(fake_method, demo_root: Path, tmp_path) -> None:
    root = tmp_path / "data"
    shutil.copytree(demo_root / DEMO_TEXTURE, root / DEMO_TEXTURE)
    broken = root / DEMO_TEXTURE / "test" / "good" / "000.png"
    broken.write_bytes(b"not a png")
    with pytest.raises(ImageLoadError, match=r"000\.png"):
        evaluate_category("mvtec", root, DEMO_TEXTURE, fake_method, progress=False)
    with pytest.warns(SkippedImageWarning, match="000.png"):
        result = run_benchmark(
            "mvtec",
            root,
            None,
            fake_method,
            {},
            output=tmp_path / "o",
            skip_bad=True,
            progress=False,
        )
    cat = result.categories[0]
    assert cat.n_test == N_TEST - 1
    assert len(cat.paths) == N_TEST - 1
    data = json.loads((tmp_path / "o" / "results.json").read_text())
    assert data["categories"][DEMO_TEXTURE]["n_test"] == N_TEST - 1
    skipped = data["details"][DEMO_TEXTURE]["skipped"]
    assert [s["path"] for s in skipped] == [str(broken)]
    assert len(read_predictions(tmp_path / "o" / "predictions.csv")) == N_TEST - 1


def test_save_maps_writes_the_first_n_figures(fake_method, demo_root: Path, tmp_path) -> None:
    result = run_benchmark(
        "mvtec", demo_root, None, fake_method, {}, output=tmp_path, save_maps=3, progress=False
    )
    figures = sorted(p.name for p in (tmp_path / DEMO_TEXTURE / "overlays").iterdir())
    first = result.categories[0].paths[:3]
    assert figures == sorted(f"{Path(p).parent.name}_{Path(p).stem}.png" for p in first)


def test_n_train_counts_the_images_used(fake_method, demo_root: Path) -> None:
    result = run_benchmark("mvtec", demo_root, None, fake_method, {"shots": 2}, progress=False)
    assert result.categories[0].n_train == 2
    result = run_benchmark("mvtec", demo_root, None, fake_method, {"shots": 99}, progress=False)
    assert result.categories[0].n_train == N_TRAIN


def test_class_name_is_passed_from_the_category(fake_method) -> None:
    det = build_detector(fake_method, "metal_nut", seed=3, backbone=None)
    assert det.config.class_name == "metal nut"
    assert det.config.seed == 3
    assert build_detector(fake_method, "x", class_name="given").config.class_name == "given"
    assert not hasattr(build_detector("patchcore", "metal_nut").config, "class_name")


def test_bad_options_fail_before_loading_data(tmp_path: Path) -> None:
    missing = tmp_path / "nothing_here"  # would raise DatasetError if it were read first
    with pytest.raises(ModelNotAvailableError, match="unknown backbone 'nope'"):
        run_benchmark("mvtec", missing, None, "patchcore", {"backbone": "nope"})
    with pytest.raises(ValueError, match="no option"):
        run_benchmark("mvtec", missing, None, "patchcore", {"not_an_option": 1})
    with pytest.raises(ValueError, match="unknown method"):
        run_benchmark("mvtec", missing, None, "nope", {})
    with pytest.raises(DatasetError, match="nothing_here"):
        run_benchmark("mvtec", missing, None, "patchcore", {})


def test_unknown_category_lists_the_available_ones(demo_root: Path) -> None:
    with pytest.raises(DatasetError, match=r"'tile' not found; available: brick"):
        run_benchmark("mvtec", demo_root, ["tile"], "patchcore", TINY_OPTIONS)


def test_run_demo_synthetic_writes_data_and_report(fake_method, tmp_path: Path, caplog) -> None:
    caplog.set_level(logging.INFO, logger="anomalens")
    result = run_demo(
        tmp_path,
        method=fake_method,
        textures=("grass",),
        n_train=3,
        n_test_good=2,
        n_test_bad=4,
        size=64,
        progress=False,
    )
    assert (tmp_path / "data" / "grass" / "train" / "good" / "002.png").is_file()
    report = tmp_path / "report"
    assert (report / "results.json").is_file()
    assert (report / "predictions.csv").is_file()
    assert len(list((report / "grass" / "overlays").glob("*.png"))) == 6  # every test image
    assert result.categories[0].n_test == 6
    assert caplog.messages == [
        f"Writing the synthetic demo dataset (grass) to {tmp_path / 'data'}",
        f"benchmark: fake (defaults) on mvtec at {tmp_path / 'data'}",
        "[1/1] grass",
        caplog.messages[3],  # the metrics line, checked in test_benchmark_logs_...
    ]
    lines = format_summary(result, tmp_path).splitlines()
    assert lines[0].startswith("category")
    assert lines[-6].startswith("MEAN")
    assert lines[-4:] == [
        f"Report: {report.resolve()}",
        "  results.json, predictions.csv   metrics and image scores of every category",
        "  grass/overlays/*.png   image, heatmap with hotspot boxes, verdict",
        "  grass/roc.png, grass/histogram.png, grass/summary.json",
    ]


def test_benchmark_logs_what_runs_and_each_category_start_and_end(
    fake_method, demo_root: Path, caplog
) -> None:
    caplog.set_level(logging.DEBUG, logger="anomalens")
    result = run_benchmark("mvtec", demo_root, None, fake_method, {"seed": 3}, progress=False)
    cat = result.categories[0]
    info = [r.getMessage() for r in caplog.records if r.levelno == logging.INFO]
    assert info == [
        f"benchmark: fake (seed=3) on mvtec at {demo_root}",
        f"[1/1] {DEMO_TEXTURE}",
        f"[1/1] {DEMO_TEXTURE}: image AUROC {cat.image_auroc:.3f}, fit {cat.fit_seconds:.1f} s, "
        f"{cat.ms_per_image:.1f} ms/image",
    ]
    debug = [r.getMessage() for r in caplog.records if r.levelno == logging.DEBUG]
    assert f"categories: {DEMO_TEXTURE}" in debug
    assert (
        f"{DEMO_TEXTURE}: {N_TRAIN} train and {N_TEST} test images (0 unreadable skipped), "
        "masks: yes" in debug
    )
    assert {r.name for r in caplog.records} == {"anomalens.evaluate"}


def test_resolve_categories_lives_in_datasets(demo_root: Path) -> None:
    assert resolve_categories is datasets.resolve_categories  # evaluate re-exports it
    assert resolve_categories("mvtec", demo_root, None) == [DEMO_TEXTURE]
    assert resolve_categories("mvtec", demo_root, [DEMO_TEXTURE] * 2) == [DEMO_TEXTURE]
    folder = demo_root / DEMO_TEXTURE / "test"  # holds good/: a folder dataset
    assert resolve_categories("folder", folder, ["any"]) == ["any"]  # names it only
    assert datasets.DATASET_NAMES == ("mvtec", "mpdd", "btad", "visa", "mvtec_ad2", "folder")


def test_spread_indices_and_environment() -> None:
    assert spread_indices(10, 3) == [0, 4, 9]  # linspace 0, 4.5, 9: round(4.5) == 4
    # banker's rounding: 2.5 -> 2 (down to even), 3.5 -> 4 (up to even)
    assert spread_indices(6, 3) == [0, 2, 5]
    assert spread_indices(8, 3) == [0, 4, 7]
    assert spread_indices(3, 10) == [0, 1, 2]
    assert spread_indices(5, 0) == []
    env = environment()
    assert env["cores"] >= 1
    assert env["torch"]
    assert env["date"][:2] == "20"
