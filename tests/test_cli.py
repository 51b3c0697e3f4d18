"""Command line: outputs of benchmark / fit / predict / demo, and one-line errors with exit 2."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import DEMO_TEXTURE, N_TEST_BAD, N_TEST_GOOD, N_TRAIN, TINY_FLAGS, png_size, read_csv
from PIL import Image

from anomalens.cli import main
from anomalens.errors import ImageLoadError

FIGURE_SIZE = (1350, 480)
PLOT_SIZE = (500, 450)
N_TEST = N_TEST_GOOD + N_TEST_BAD


def run(capsys: pytest.CaptureFixture, *argv: str | Path) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def assert_one_line_error(code: int, out: str, err: str, *fragments: str) -> None:
    assert code == 2
    assert "Traceback" not in err
    assert "Traceback" not in out
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("anomalens: error: ")
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])


@pytest.fixture
def bench(cli_benchmark: tuple[Path, str]) -> tuple[Path, str]:
    return cli_benchmark


@pytest.fixture(scope="module")
def model_dir(demo_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("cli_model") / "model"
    code = main(
        [
            "fit",
            "--dataset",
            "mvtec",
            "--root",
            str(demo_root),
            "--output",
            str(folder),
            "--no-progress",
            *TINY_FLAGS,
        ]
    )
    assert code == 0
    return folder


def test_benchmark_prints_the_table_and_writes_files(bench) -> None:
    out, stdout = bench
    lines = stdout.splitlines()
    header = next(line for line in lines if line.startswith("category"))
    assert header.split() == [
        "category",
        "I-AUROC",
        "P-AUROC",
        "P-AP",
        "AUPRO",
        "F1-max",
        "fit",
        "s",
        "ms/image",
    ]
    row = next(line for line in lines if line.startswith(DEMO_TEXTURE + " "))
    mean = next(line for line in lines if line.startswith("MEAN"))
    assert mean.split()[1:] == row.split()[1:]  # one category: the mean is the row
    results = json.loads((out / "results.json").read_text())
    assert f"{results['categories'][DEMO_TEXTURE]['image_auroc']:.3f}" == row.split()[1]
    _, rows = read_csv(out / "predictions.csv")
    assert len(rows) == results["categories"][DEMO_TEXTURE]["n_test"] == N_TEST
    assert png_size(out / DEMO_TEXTURE / "roc.png") == PLOT_SIZE
    assert png_size(out / DEMO_TEXTURE / "histogram.png") == PLOT_SIZE
    figures = sorted((out / DEMO_TEXTURE / "overlays").iterdir())
    assert len(figures) == 2
    assert all(png_size(f) == FIGURE_SIZE for f in figures)


def test_fit_then_predict_reproduces_the_benchmark_scores(
    model_dir: Path, bench, demo_root: Path, tmp_path: Path, capsys
) -> None:
    assert (model_dir / "config.json").is_file()
    assert (model_dir / "model.safetensors").is_file()
    test_dir = demo_root / DEMO_TEXTURE / "test"
    out = tmp_path / "pred"
    code, stdout, err = run(
        capsys, "predict", "--model", model_dir, "--input", test_dir, "--recursive",
        "--output", out, "--no-progress",
    )  # fmt: skip
    assert code == 0, err
    columns, rows = read_csv(out / "scores.csv")
    assert columns == ["path", "score", "threshold", "is_defective"]
    assert len(rows) == N_TEST
    # same data, same config and seed: the saved model scores like the benchmark's detector
    _, bench_rows = read_csv(bench[0] / "predictions.csv")
    expected = {r["path"]: float(r["score"]) for r in bench_rows}
    for r in rows:
        assert float(r["score"]) == pytest.approx(expected[r["path"]], rel=1e-4)
        verdict = float(r["score"]) >= float(r["threshold"])
        assert r["is_defective"] == str(verdict).lower()
    n_defective = sum(r["is_defective"] == "true" for r in rows)
    assert f"{N_TEST} images: {n_defective} defective" in stdout

    data = json.loads((out / "scores.json").read_text())
    assert all("boxes" in rec for rec in data["images"])
    figures = sorted((out / "overlays").iterdir())
    assert len(figures) == N_TEST
    assert png_size(figures[0]) == FIGURE_SIZE
    assert {f.stem for f in figures} >= {"good_000", "scratch_000"}


def test_predict_single_files_and_skip_bad(model_dir: Path, demo_root, tmp_path, capsys) -> None:
    good = demo_root / DEMO_TEXTURE / "test" / "good" / "001.png"
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    out = tmp_path / "pred"
    code, stdout, err = run(
        capsys, "predict", "--model", model_dir, "--input", good, broken, "--output", out,
        "--skip-bad", "--no-progress",
    )  # fmt: skip
    assert code == 0, err
    assert err.count("anomalens: warning: skipping") == 1
    assert str(broken) in err
    _, rows = read_csv(out / "scores.csv")
    assert [r["path"] for r in rows] == [str(good)]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["skipped"] == [str(broken)]
    assert summary["method"] == "patchcore"
    assert (out / "overlays" / "001.png").is_file()
    assert "1 unreadable skipped" in stdout


@pytest.mark.parametrize(
    "case", ["empty folder", "missing path", "corrupt image", "not an image", "only corrupt"]
)
def test_predict_bad_input_gives_one_line_errors(case, model_dir, tmp_path, capsys) -> None:
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"this is not a jpeg")
    if case == "empty folder":
        target = tmp_path / "empty"
        target.mkdir()
        extra, fragments = [], [str(target), "no images found"]
    elif case == "missing path":
        target = tmp_path / "missing"
        extra, fragments = [], [str(target), "not found"]
    elif case == "corrupt image":
        target = broken
        extra, fragments = [], [str(broken), "corrupt", "--skip-bad"]
    elif case == "not an image":
        target = tmp_path / "notes.txt"
        target.write_text("hello")
        extra, fragments = [], [str(target), "not an image file"]
    else:
        target = broken
        extra, fragments = ["--skip-bad"], [str(broken), "no readable images"]
    code, out, err = run(
        capsys, "predict", "--model", model_dir, "--input", target, "--output", tmp_path / "o",
        "--no-progress", *extra,
    )  # fmt: skip
    if case == "only corrupt":  # the skip warning comes first, then the error
        assert "anomalens: warning: skipping" in err
        err = err.split("\n", 1)[1]
    assert_one_line_error(code, out, err, *fragments)


def test_predict_with_an_unknown_model_folder(tmp_path: Path, demo_root: Path, capsys) -> None:
    image = demo_root / DEMO_TEXTURE / "test" / "good" / "000.png"
    code, out, err = run(
        capsys, "predict", "--model", tmp_path / "nope", "--input", image, "--output", tmp_path
    )
    assert_one_line_error(code, out, err, str(tmp_path / "nope"), "config.json")


def test_fit_errors(demo_root: Path, tmp_path: Path, capsys) -> None:
    base = ["fit", "--dataset", "mvtec", "--output", tmp_path / "m", "--no-progress"]
    code, out, err = run(capsys, *base, "--root", demo_root, "--backbone", "resnet-9000")
    assert_one_line_error(code, out, err, "unknown backbone 'resnet-9000'")
    code, out, err = run(capsys, *base, "--root", tmp_path / "nowhere")
    assert_one_line_error(code, out, err, str(tmp_path / "nowhere"), "folder not found")
    two = tmp_path / "two"
    for name in ("cat_a", "cat_b"):
        shutil.copytree(demo_root / DEMO_TEXTURE / "train", two / name / "train")
    code, out, err = run(capsys, *base, "--root", two)
    assert_one_line_error(code, out, err, "2 categories (cat_a, cat_b)", "--category")
    broken = tmp_path / "broken"
    shutil.copytree(demo_root / DEMO_TEXTURE / "train", broken / "x" / "train")
    (broken / "x" / "train" / "good" / "002.png").write_bytes(b"")
    code, out, err = run(capsys, *base, "--root", broken)
    assert_one_line_error(code, out, err, "002.png", "empty", "--skip-bad")
    assert not (tmp_path / "m").exists()


def test_benchmark_errors(demo_root: Path, tmp_path: Path, capsys) -> None:
    base = ["benchmark", "--dataset", "mvtec", "--root", demo_root, "--output", tmp_path]
    code, out, err = run(capsys, *base, "--category", "tile", "--no-progress")
    assert_one_line_error(code, out, err, str(demo_root), "'tile' not found", "brick")
    code, out, err = run(capsys, *base, "--method", "patchcore", "--precision", "fp32",
                         "--backbone", "clip:")  # fmt: skip
    assert_one_line_error(code, out, err, "unknown backbone 'clip:'")
    assert not (tmp_path / "results.json").exists()
    code, out, err = run(capsys, *base, "--shots", "0")  # PatchCore needs good images
    assert_one_line_error(code, out, err, "shots must be >= 1")
    with pytest.raises(SystemExit) as exc:
        main(["benchmark", "--dataset", "mvtec", "--root", str(demo_root), "--output", "x",
              "--shots", "-1"])  # fmt: skip
    assert exc.value.code == 2
    assert "--shots: must be >= 0" in capsys.readouterr().err


def test_demo_on_user_data(demo_root: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "demo"
    code, stdout, err = run(
        capsys, "demo", "--root", demo_root, "--category", DEMO_TEXTURE, "--output", out,
        "--no-progress", *TINY_FLAGS,
    )  # fmt: skip
    assert code == 0, err
    assert not (out / "data").exists()  # no synthetic data on the user's run
    report = out / "report"
    assert f"Report: {report.resolve()}" in stdout
    assert any(line.startswith("MEAN") for line in stdout.splitlines())
    figures = list((report / DEMO_TEXTURE / "overlays").glob("*.png"))
    assert len(figures) == N_TEST  # at most 16, spread over the test set
    results = json.loads((report / "results.json").read_text())
    assert results["root"] == str(demo_root)
    assert results["options"]["image_size"] == 128

    code, out_text, err = run(capsys, "demo", "--category", "brick")
    assert_one_line_error(code, out_text, err, "--category needs --root")


def test_python_dash_m_entry_point(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "anomalens", "predict", "--model", str(tmp_path / "none"),
         "--input", str(tmp_path), "--output", str(tmp_path / "o")],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert_one_line_error(proc.returncode, proc.stdout, proc.stderr, "config.json: not found")


# --------------------------------------------------------------------------------------------
# choices, logging (-q / -v), exceptions in main
# --------------------------------------------------------------------------------------------


def _choices(parser, *path: str) -> dict[str, tuple]:
    """``{option: choices}`` of a sub-command."""
    sub = next(a for a in parser._actions if a.dest == "command").choices[path[0]]
    return {a.option_strings[-1]: tuple(a.choices) for a in sub._actions if a.choices}


def test_choices_come_from_the_modules_that_define_them() -> None:
    from anomalens.backbones.base import PRECISIONS
    from anomalens.cli import build_parser
    from anomalens.data.datasets import DATASET_NAMES
    from anomalens.methods import METHODS
    from anomalens.methods.aaclip import ANCHOR_SOURCES, TRAINING_MODES

    parser = build_parser()
    bench = _choices(parser, "benchmark")
    assert bench["--dataset"] == DATASET_NAMES
    assert bench["--method"] == tuple(sorted(METHODS))
    assert bench["--precision"] == PRECISIONS
    assert bench["--anchors"] == ANCHOR_SOURCES
    train = _choices(parser, "train")
    assert train["--mode"] == TRAINING_MODES
    assert train["--anchors"] == ANCHOR_SOURCES


def _fake_benchmark(capsys, demo_root: Path, tmp_path: Path, *flags: str) -> tuple[str, str]:
    code, out, err = run(
        capsys, "benchmark", "--method", "fake", "--dataset", "mvtec", "--root", demo_root,
        "--output", tmp_path / "b", *flags,
    )  # fmt: skip
    assert code == 0, err
    assert any(line.startswith("MEAN") for line in out.splitlines())  # results: stdout
    assert out.rstrip().endswith("predictions.csv")  # the "wrote ..." line
    return out, err


def test_progress_lines_go_to_stderr(fake_method, demo_root, tmp_path, capsys) -> None:
    out, err = _fake_benchmark(capsys, demo_root, tmp_path, "--no-progress")
    lines = err.splitlines()
    assert lines[0] == f"benchmark: fake (defaults) on mvtec at {demo_root}"
    assert lines[1] == f"[1/1] {DEMO_TEXTURE}"
    assert lines[2].startswith(f"[1/1] {DEMO_TEXTURE}: image AUROC ")
    assert len(lines) == 3
    assert "[1/1]" not in out
    assert "benchmark:" not in out


def test_quiet_prints_no_info_lines_and_no_bars(fake_method, demo_root, tmp_path, capsys) -> None:
    _, err = _fake_benchmark(capsys, demo_root, tmp_path, "-q")  # no --no-progress
    assert err == ""


def test_verbose_prints_debug_lines(fake_method, demo_root, tmp_path, capsys) -> None:
    _, err = _fake_benchmark(capsys, demo_root, tmp_path, "--verbose", "--no-progress")
    lines = err.splitlines()
    debug = [line for line in lines if line.startswith("anomalens: debug: ")]
    assert f"anomalens: debug: categories: {DEMO_TEXTURE}" in debug
    assert f"[1/1] {DEMO_TEXTURE}" in lines  # and the info lines
    with pytest.raises(SystemExit) as exc:
        main(["predict", "-q", "-v", "--model", "m", "--input", "i", "--output", "o"])
    assert exc.value.code == 2
    assert "not allowed with argument" in capsys.readouterr().err


def test_quiet_still_prints_warnings(model_dir: Path, tmp_path: Path, capsys) -> None:
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"")
    good = tmp_path / "good.png"
    Image.new("RGB", (64, 64), (90, 60, 40)).save(good)
    code, out, err = run(
        capsys, "predict", "-q", "--model", model_dir, "--input", good, broken,
        "--output", tmp_path / "o", "--skip-bad",
    )  # fmt: skip
    assert code == 0, err
    assert err == f"anomalens: warning: skipping {broken}: file is empty (0 bytes)\n"
    assert out.splitlines()[-1] == f"wrote {tmp_path / 'o' / 'scores.csv'}, " + (
        f"{tmp_path / 'o' / 'scores.json'} and {tmp_path / 'o' / 'overlays'}/"
    )


PREDICT_ARGV = ["predict", "--model", "m", "--input", "i", "--output", "o"]


def _raise_from_predict(monkeypatch: pytest.MonkeyPatch, exc: BaseException) -> None:
    import anomalens.inference

    def fail(*args, **kwargs):
        raise exc

    monkeypatch.setattr(anomalens.inference, "predict_paths", fail)


@pytest.mark.parametrize(
    ("exc", "message"),
    [
        (FloatingPointError("overflow encountered in exp"), "numerical error: overflow "
         "encountered in exp"),
        (ValueError("first line\nsecond line"), "first line"),
        (OSError(28, "No space left on device", "o/scores.csv"),
         "o/scores.csv: No space left on device"),
    ],
)  # fmt: skip
def test_caught_errors_are_one_line(monkeypatch, capsys, exc, message) -> None:
    monkeypatch.delenv("ANOMALENS_DEBUG", raising=False)
    _raise_from_predict(monkeypatch, exc)
    code, out, err = run(capsys, *PREDICT_ARGV)
    assert (code, out, err) == (2, "", f"anomalens: error: {message}\n")


def test_keyboard_interrupt_exits_130(monkeypatch, capsys) -> None:
    monkeypatch.delenv("ANOMALENS_DEBUG", raising=False)
    _raise_from_predict(monkeypatch, KeyboardInterrupt())
    assert run(capsys, *PREDICT_ARGV) == (130, "", "anomalens: interrupted\n")


def test_runtime_errors_are_bugs_and_keep_their_traceback(monkeypatch) -> None:
    monkeypatch.delenv("ANOMALENS_DEBUG", raising=False)
    _raise_from_predict(monkeypatch, RuntimeError("mat1 and mat2 shapes cannot be multiplied"))
    with pytest.raises(RuntimeError, match="shapes cannot be multiplied"):
        main(PREDICT_ARGV)


@pytest.mark.parametrize(
    "exc", [FloatingPointError("overflow"), ImageLoadError("x.png: corrupt"), KeyboardInterrupt()]
)
def test_anomalens_debug_reraises(monkeypatch, capsys, exc) -> None:
    monkeypatch.setenv("ANOMALENS_DEBUG", "1")
    _raise_from_predict(monkeypatch, exc)
    with pytest.raises(type(exc)):
        main(PREDICT_ARGV)
    assert capsys.readouterr().err == ""
    monkeypatch.setenv("ANOMALENS_DEBUG", "0")  # "0" (or empty) turns it off
    code, _, err = run(capsys, *PREDICT_ARGV)
    assert code in (2, 130)
    assert len(err.splitlines()) == 1


def test_anomalens_debug_shows_the_traceback(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "anomalens", "predict", "--model", str(tmp_path / "none"),
         "--input", str(tmp_path), "--output", str(tmp_path / "o")],
        capture_output=True, text=True, timeout=120,
        env={**os.environ, "ANOMALENS_DEBUG": "1"},
    )  # fmt: skip
    assert proc.returncode == 1
    assert "Traceback (most recent call last)" in proc.stderr
    assert proc.stderr.rstrip().splitlines()[-1].startswith("anomalens.errors.CheckpointError: ")


def test_download_without_transformers_names_the_hf_extra(monkeypatch, capsys) -> None:
    from anomalens import download

    monkeypatch.setitem(sys.modules, "transformers", None)  # import raises ImportError
    code = download.main(["clip:openai/clip-vit-base-patch16", "somewhere"])
    assert code == 2
    assert capsys.readouterr().err == (
        "anomalens.download: error: downloading hub models needs transformers (transformers "
        "is not installed); install it with: pip install 'anomalens[hf]'\n"
    )


def test_fit_says_how_many_images_it_used(demo_root: Path, tmp_path: Path, capsys) -> None:
    code, out, err = run(
        capsys, "fit", "--dataset", "mvtec", "--root", demo_root, "--output", tmp_path / "m",
        "--shots", "2", "-q", *TINY_FLAGS,
    )  # fmt: skip
    assert (code, err) == (0, "")
    fitted, foreground, inputs, pose, saved = out.splitlines()
    assert foreground.startswith("foreground weighting off (auto): ")  # a texture
    assert inputs.startswith("inputs: each image is scaled to fit a ")
    assert pose.startswith("pose normalisation: pose=auto: off (")
    head, threshold = fitted.split("; image threshold ")
    assert head == f"fitted patchcore on 2 of {N_TRAIN} good images of {DEMO_TEXTURE!r}"
    assert float(threshold) > 0  # two shots calibrate leave-one-out
    assert saved == f"saved model to {tmp_path / 'm'} (config.json, model.safetensors)"
