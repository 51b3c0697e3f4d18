"""Batch inference (anomalens.batch): sources, result shards, resume, local and process engines,
and ``anomalens predict --engine``. The Ray engine is tested in test_batch_ray.py."""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from conftest import DEMO_TEXTURE

from anomalens.batch import run_batch
from anomalens.batch.results import COLUMNS, read_results
from anomalens.batch.scoring import Scorer
from anomalens.batch.sources import fingerprint, list_sources, read_image
from anomalens.cli import main
from anomalens.data.io import load_image
from anomalens.errors import DatasetError, ImageLoadError, ResumeError
from anomalens.methods import load_detector
from anomalens.methods.patchcore import PatchCore

#: Tiny PatchCore (EfficientNet-Lite0 at 64 px): loads and scores in well under a second.
MODEL_OPTIONS = {"image_size": 64, "memory_size": 200}


def build_model(demo_root: Path, folder: Path) -> Path:
    """A tiny PatchCore fitted on the demo train images, saved to ``folder``."""
    train = sorted((demo_root / DEMO_TEXTURE / "train" / "good").iterdir())
    PatchCore(**MODEL_OPTIONS).fit([load_image(p) for p in train], progress=False).save(folder)
    return folder


def build_inputs(demo_root: Path, folder: Path) -> Path:
    """The 8 demo test images in two subfolders plus ``bad/broken.png`` (not an image)."""
    shutil.copytree(demo_root / DEMO_TEXTURE / "test", folder)
    (folder / "bad").mkdir()
    (folder / "bad" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    return folder


def rows_by_path(output: Path) -> dict[str, dict]:
    """The last row per path of the result shards."""
    return {r["path"]: r for r in read_results(output).to_pylist()}


@pytest.fixture(scope="module")
def model_dir(demo_root, tmp_path_factory) -> Path:
    return build_model(demo_root, tmp_path_factory.mktemp("batch_model") / "model")


@pytest.fixture(scope="module")
def inputs(demo_root, tmp_path_factory) -> Path:
    return build_inputs(demo_root, tmp_path_factory.mktemp("batch_in") / "images")


@pytest.fixture(scope="module")
def reference(model_dir, inputs) -> dict[str, float]:
    """Scores of the readable images predicted directly, one call for all of them."""
    paths = [p for p in sorted(inputs.rglob("*.png")) if p.parent.name != "bad"]
    pred = load_detector(model_dir).predict([load_image(p) for p in paths])
    return {str(p): float(s) for p, s in zip(paths, pred.scores, strict=True)}


# ----------------------------------------------------------------------------- sources


def test_sources_folder_glob_list_and_output_excluded(inputs, tmp_path) -> None:
    every = sorted(str(p) for p in inputs.rglob("*.png"))
    assert list_sources([inputs]) == every
    assert list_sources([str(inputs / "**" / "0*.png")]) == [p for p in every if "broken" not in p]
    assert list_sources([str(inputs / "good" / "*.png")]) == [p for p in every if "/good/" in p]
    listing = tmp_path / "paths.txt"
    absolute = inputs / "good" / "001.png"
    (tmp_path / "rel").mkdir()
    shutil.copy(inputs / "good" / "000.png", tmp_path / "rel" / "a.png")
    listing.write_text(f"# comment\n\n{absolute}\nrel/a.png\nrel/missing.png\n")
    assert list_sources([listing, absolute]) == [
        str(absolute),
        str(tmp_path / "rel" / "a.png"),
        str(tmp_path / "rel" / "missing.png"),
    ]
    out = inputs / "good" / "out"
    out.mkdir()
    shutil.copy(absolute, out / "copy.png")
    try:
        assert list_sources([inputs], exclude=out) == every
        assert len(list_sources([inputs])) == len(every) + 1
    finally:
        shutil.rmtree(out)


def test_sources_errors_name_the_input(tmp_path) -> None:
    with pytest.raises(DatasetError, match=r"missing: file or folder not found$"):
        list_sources([tmp_path / "missing"])
    (tmp_path / "notes.md").write_text("x")
    with pytest.raises(DatasetError, match=r"notes\.md: neither an image .* nor a list of paths"):
        list_sources([tmp_path / "notes.md"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match=r"empty: no images found \(extensions png"):
        list_sources([tmp_path / "empty"])
    with pytest.raises(DatasetError, match=r"\*\.png: no images found"):
        list_sources([str(tmp_path / "*.png")])


def test_fsspec_uris_are_listed_read_and_fingerprinted(inputs) -> None:
    fsspec = pytest.importorskip("fsspec")
    fs = fsspec.filesystem("memory")
    data = (inputs / "good" / "000.png").read_bytes()
    fs.pipe("/anomalens-test/a/x.png", data)
    fs.pipe("/anomalens-test/a/notes.txt", b"x")
    try:
        (found,) = list_sources(["memory://anomalens-test/a"])
        assert found in ("memory://anomalens-test/a/x.png", "memory:///anomalens-test/a/x.png")
        assert list_sources(["memory://anomalens-test/a/*.png"]) == [found]
        image = read_image(found)
        assert np.array_equal(image, load_image(inputs / "good" / "000.png"))
        hashed = fingerprint("memory://anomalens-test/a/x.png", content_hash=True)
        assert hashed == fingerprint(str(inputs / "good" / "000.png"), content_hash=True)
        fs.pipe("/anomalens-test/a/bad.png", b"junk")
        with pytest.raises(ImageLoadError, match=r"^memory://anomalens-test/a/bad\.png: not an"):
            read_image("memory://anomalens-test/a/bad.png")
    finally:
        fs.rm("/anomalens-test", recursive=True)


# ----------------------------------------------------------------------------- local engine


def test_local_engine_rows_scores_errors_and_summary(model_dir, inputs, reference, tmp_path):
    out = tmp_path / "out"
    result = run_batch(model_dir, [inputs], out, batch_size=3, shard_size=4, progress=False)
    assert (result.n_listed, result.n_skipped, result.n_new, result.n_errors) == (9, 0, 9, 1)
    shards = sorted((out / "results").glob("part-*.parquet"))
    assert len(shards) == 3  # 4 + 4 + 1 rows
    assert pq.read_schema(shards[0]).names == list(COLUMNS)
    rows = rows_by_path(out)
    assert {p: r["score"] for p, r in rows.items() if r["error"] is None} == reference
    bad = rows[str(inputs / "bad" / "broken.png")]
    assert bad["score"] is None
    assert (
        bad["error"]
        == f"{inputs / 'bad' / 'broken.png'}: image file is truncated (Truncated File Read)"
    )
    detector = load_detector(model_dir)
    good = rows[str(inputs / "good" / "000.png")]
    assert good["threshold"] == detector.threshold
    assert good["is_defective"] == (good["score"] >= detector.threshold)
    assert (good["width"], good["height"]) == (128, 128)
    assert isinstance(json.loads(good["boxes"]), list)
    assert len({r["worker"] for r in rows.values()}) == 1
    summary = json.loads((out / "summary.json").read_text())
    assert summary == result.summary
    scores = np.array(list(reference.values()))
    defective = sum(s >= detector.threshold for s in scores)
    assert (summary["n_images"], summary["n_scored"], summary["n_errors"]) == (9, 8, 1)
    assert (summary["n_defective"], summary["n_good"]) == (defective, 8 - defective)
    assert summary["score_quantiles"]["q50"] == pytest.approx(np.median(scores))
    assert summary["score_quantiles"]["q100"] == pytest.approx(scores.max())
    assert summary["last_run"]["engine"] == "local"
    run = json.loads((out / "run.json").read_text())
    assert run["method"] == "patchcore"


def test_interrupted_run_resumes_and_changed_files_are_rescored(
    model_dir, inputs, reference, tmp_path, monkeypatch
):
    out, src = tmp_path / "out", tmp_path / "images"
    shutil.copytree(inputs, src)
    real_call = Scorer.__call__
    calls = {"n": 0}

    def interrupted(self, paths, prints):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return real_call(self, paths, prints)

    monkeypatch.setattr(Scorer, "__call__", interrupted)
    with pytest.raises(KeyboardInterrupt):
        run_batch(model_dir, [src], out, batch_size=2, shard_size=3, progress=False)
    assert len(read_results(out)) == 4  # two batches of 2, flushed on the way out
    monkeypatch.setattr(Scorer, "__call__", real_call)
    again = run_batch(model_dir, [src], out, batch_size=2, progress=False)
    # the first batch held bad/broken.png: its error row is retried, the 3 scores are kept
    assert (again.n_skipped, again.n_new) == (3, 6)
    rows = rows_by_path(out)
    assert len(rows) == 9
    assert len(read_results(out)) == 10
    by_name = {Path(p).relative_to(src): r["score"] for p, r in rows.items() if not r["error"]}
    assert by_name == {Path(p).relative_to(inputs): s for p, s in reference.items()}
    # unchanged files are skipped, the unreadable one is retried, a touched one is rescored
    touched = src / "good" / "001.png"
    os.utime(touched, ns=(1, 1))
    third = run_batch(model_dir, [src], out, progress=False)
    assert (third.n_skipped, third.n_new, third.n_errors) == (7, 2, 1)
    assert third.summary["n_images"] == 9
    # by content hash, a new mtime alone is not a change, new bytes are
    hashed = tmp_path / "hashed"
    run_batch(model_dir, [src / "good"], hashed, content_hash=True, progress=False)
    os.utime(touched, ns=(2, 2))
    assert (
        run_batch(model_dir, [src / "good"], hashed, content_hash=True, progress=False).n_new == 0
    )
    shutil.copy(src / "good" / "000.png", touched)
    rerun = run_batch(model_dir, [src / "good"], hashed, content_hash=True, progress=False)
    assert rerun.n_new == 1
    assert rows_by_path(hashed)[str(touched)]["fingerprint"].startswith("sha256:")


def test_results_of_another_model_are_refused(model_dir, inputs, demo_root, tmp_path) -> None:
    out = tmp_path / "out"
    run_batch(model_dir, [inputs / "good"], out, progress=False)
    other = tmp_path / "other"
    shutil.copytree(model_dir, other)
    meta = json.loads((other / "config.json").read_text())
    meta["calibration"]["threshold"] = 1.0
    (other / "config.json").write_text(json.dumps(meta))
    with pytest.raises(ResumeError) as info:
        run_batch(other, [inputs / "good"], out, progress=False)
    assert str(info.value) == (
        f"{out}: holds results of another model ({model_dir}); choose another --output or "
        "delete the folder to rescore"
    )


# ----------------------------------------------------------------------------- process engine


def test_process_engine_gives_the_local_rows_with_one_load_per_worker(
    model_dir, inputs, tmp_path
) -> None:
    local = run_batch(model_dir, [inputs], tmp_path / "local", batch_size=2, progress=False)
    proc = run_batch(
        model_dir,
        [inputs],
        tmp_path / "proc",
        engine="process",
        workers=2,
        batch_size=2,
        progress=False,
    )
    assert (proc.n_new, proc.n_errors) == (local.n_new, local.n_errors) == (9, 1)
    a, b = rows_by_path(tmp_path / "local"), rows_by_path(tmp_path / "proc")
    strip = ("worker",)
    assert {p: {k: v for k, v in r.items() if k not in strip} for p, r in a.items()} == {
        p: {k: v for k, v in r.items() if k not in strip} for p, r in b.items()
    }
    workers = {r["worker"] for r in b.values()}
    # 5 batches went to at most 2 workers, each of which loaded the model once
    assert 1 <= len(workers) <= 2
    assert all(w.split(":")[1] != str(os.getpid()) for w in workers)
    for key in ("n_images", "n_errors", "n_defective", "score_quantiles"):
        assert proc.summary[key] == local.summary[key]


# ----------------------------------------------------------------------------- CLI


def test_cli_predict_engine_local(model_dir, inputs, tmp_path, capsys) -> None:
    out = tmp_path / "out"
    argv = ["predict", "--model", str(model_dir), "--input", str(inputs), "--output", str(out)]
    assert main([*argv, "--engine", "local", "--no-progress"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("9 images scored (")
    assert lines[0].endswith(", 1 unreadable), 0 already scored; all 9: " + _verdicts(out))
    assert lines[1] == f"wrote {out / 'results'}/part-*.parquet and {out / 'summary.json'}"
    assert main([*argv, "--engine", "local", "-q"]) == 0
    assert capsys.readouterr().out.startswith("1 images scored (")  # the unreadable one
    assert main([*argv, "--engine", "process", "--address", "auto"]) == 2
    assert capsys.readouterr().err == "anomalens: error: --address needs --engine ray\n"
    assert main([*argv, "--workers", "2"]) == 2
    assert capsys.readouterr().err == (
        "anomalens: error: --workers and --address need --engine (local, process or ray)\n"
    )


def _verdicts(out: Path) -> str:
    s = json.loads((out / "summary.json").read_text())
    return f"{s['n_defective']} defective, {s['n_good']} ok, 1 errors"


def test_cli_engine_ray_without_ray_names_the_extra(
    model_dir, inputs, tmp_path, capsys, monkeypatch
):
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray -> ImportError
    argv = ["predict", "--model", str(model_dir), "--input", str(inputs)]
    assert main([*argv, "--output", str(tmp_path / "o"), "--engine", "ray"]) == 2
    assert capsys.readouterr().err == (
        "anomalens: error: --engine ray needs Ray Data, which is not installed: "
        "pip install 'anomalens[ray]'\n"
    )
