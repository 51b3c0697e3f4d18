"""The hostile-input corpus (issue 17): every verb run as a new user would, one bad input at a
time. Each case ends in one line naming the file and the problem (exit 2), or works; no model,
result or report is ever corrupted by a failure, a full disk or a kill.

The module writes its own files (tiny images), fits one PatchCore model per session, and uses a
saveable fake detector (no backbone) where the model itself is not under test.
"""

from __future__ import annotations

import errno
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
import tracemalloc
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import DEMO_TEXTURE, N_TEST_BAD, N_TEST_GOOD, N_TRAIN, TINY_FLAGS, FakeDetector
from PIL import Image

from anomalens.cli import main
from anomalens.data.datasets import build_dataset
from anomalens.data.io import BlurredMaskWarning, load_mask
from anomalens.errors import ImageLoadError
from anomalens.methods import METHODS
from anomalens.methods.base import (
    CONFIG_FILE,
    WEIGHTS_FILE,
    as_tensor_dict,
    load_detector,
    weights_digest,
)
from anomalens.overlap import training_record

N_TEST = N_TEST_GOOD + N_TEST_BAD
SRC = str(Path(__file__).resolve().parents[1] / "src")


def run(capsys: pytest.CaptureFixture, *argv: str | Path) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def one_line_error(code: int, err: str, *fragments: str) -> str:
    """Assert exit 2 and one ``anomalens: error:`` line holding ``fragments``; return it."""
    assert code == 2, err
    assert "Traceback" not in err
    lines = [
        line
        for line in err.replace("\r", "\n").splitlines()
        if line.startswith("anomalens:") and not line.startswith("anomalens: warning:")
    ]
    assert len(lines) == 1, err
    assert lines[0].startswith("anomalens: error: "), err
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
    return lines[0]


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` (relative path -> bytes)."""
    return {
        str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()
    }


def leftovers(folder: Path) -> list[str]:
    """Hidden staging / temporary entries beside or inside ``folder``."""
    return [p.name for p in folder.parent.iterdir() if p.name.startswith(f".{folder.name}.")]


def subprocess_env(**extra: str) -> dict[str, str]:
    env = dict(os.environ, PYTHONPATH=SRC + os.pathsep + os.environ.get("PYTHONPATH", ""))
    env.pop("ANOMALENS_DEBUG", None)
    return env | extra


# --------------------------------------------------------------------------------------------
# a saveable fake detector and the shared model
# --------------------------------------------------------------------------------------------


class SavedFake(FakeDetector):
    """:class:`FakeDetector` with a checkpoint (``stats`` tensor), for fast CLI tests."""

    def save(self, folder):
        self._require_fitted()
        stats = torch.tensor([self.mean, self.train_max], dtype=torch.float64)
        return self._write(folder, as_tensor_dict(stats=stats))

    @classmethod
    def load(cls, folder):
        model, _, tensors = cls._read(folder)
        model.mean, model.train_max = (float(v) for v in tensors["stats"])
        return model


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setitem(METHODS, "fake", SavedFake)
    return "fake"


@pytest.fixture(scope="module")
def model_dir(demo_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """PatchCore fitted once (128 px, 500 rows) on the demo data."""
    folder = tmp_path_factory.mktemp("rel_model") / "model"
    argv = ["fit", "--dataset", "mvtec", "--root", demo_root, "--output", folder, "-q"]
    assert main([str(a) for a in [*argv, *TINY_FLAGS]]) == 0
    return folder


def good_image(size: int = 64, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8))


def copy_model(model_dir: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(model_dir, tmp_path / "model"))


def edit_config(folder: Path, change) -> None:
    meta = json.loads((folder / CONFIG_FILE).read_text())
    meta.pop("weights_sha256", None)  # hand edits: the hash check is tested on its own
    meta = change(meta)
    (folder / CONFIG_FILE).write_text(json.dumps(meta))


# --------------------------------------------------------------------------------------------
# inputs that already behaved (kept so none can come back)
# --------------------------------------------------------------------------------------------


def _write_odd_images(folder: Path) -> dict[str, str | None]:
    """Files -> None when they must be scored, or a fragment of their error."""
    folder.mkdir(parents=True)
    cases: dict[str, str | None] = {}
    good_image().save(folder / "ok.png")
    cases["ok.png"] = None
    Image.new("RGB", (1, 1), (9, 9, 9)).save(folder / "one_pixel.png")
    cases["one_pixel.png"] = None
    Image.fromarray((np.arange(64 * 64).reshape(64, 64) * 16).astype(np.uint16)).save(
        folder / "sixteen.png"
    )
    cases["sixteen.png"] = None
    good_image().convert("RGBA").save(folder / "rgba.png")
    cases["rgba.png"] = None
    good_image().convert("P").save(folder / "palette.png")
    cases["palette.png"] = None
    good_image().convert("CMYK").save(folder / "cmyk.jpg")
    cases["cmyk.jpg"] = None
    frames = [good_image(seed=s) for s in range(2)]
    frames[0].save(folder / "pages.tif", save_all=True, append_images=frames[1:])
    cases["pages.tif"] = None
    exif = Image.Exif()
    exif[0x0112] = 6  # rotated 90 degrees
    Image.new("RGB", (40, 20)).save(folder / "exif.jpg", exif=exif)
    cases["exif.jpg"] = None
    good_image().save(folder / "ünïcødé name.png")
    cases["ünïcødé name.png"] = None
    (folder / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 20)
    cases["corrupt.png"] = "corrupt.png"
    buf = (folder / "ok.png").read_bytes()
    (folder / "truncated.png").write_bytes(buf[: len(buf) // 2])
    cases["truncated.png"] = "truncated.png"
    (folder / "empty.png").write_bytes(b"")
    cases["empty.png"] = "empty.png: file is empty (0 bytes)"
    (folder / "random.jpg").write_bytes(np.random.default_rng(1).bytes(500))
    cases["random.jpg"] = "random.jpg"
    return cases


def test_odd_and_broken_images(model_dir: Path, tmp_path: Path, capsys) -> None:
    cases = _write_odd_images(tmp_path / "in")
    for name, error in cases.items():
        if error is None:
            continue
        code, _, err = run(
            capsys, "predict", "--model", model_dir, "--input", tmp_path / "in" / name,
            "--output", tmp_path / "o", "-q",
        )  # fmt: skip
        one_line_error(code, err, error)
    # the whole folder with --skip-bad: every readable one scored, each bad one named
    code, out, err = run(
        capsys, "predict", "--model", model_dir, "--input", tmp_path / "in",
        "--output", tmp_path / "all", "--skip-bad", "-q",
    )  # fmt: skip
    assert code == 0, err
    summary = json.loads((tmp_path / "all" / "summary.json").read_text())
    bad = sorted(n for n, e in cases.items() if e is not None)
    assert summary["n_images"] == len(cases) - len(bad)
    assert sorted(Path(p).name for p in summary["skipped"]) == bad
    assert f"{len(bad)} unreadable skipped" in out
    scored = json.loads((tmp_path / "all" / "scores.json").read_text())["images"]
    assert sorted(Path(r["path"]).name for r in scored) == sorted(
        n for n, e in cases.items() if e is None
    )
    assert all(math.isfinite(r["score"]) for r in scored)
    assert len(list((tmp_path / "all" / "overlays").iterdir())) == len(scored)


def test_decompression_bomb_is_refused(model_dir, tmp_path, capsys, monkeypatch) -> None:
    import anomalens.data.io as io_module

    monkeypatch.setattr(io_module, "MAX_IMAGE_PIXELS", 1000)
    good_image(64).save(tmp_path / "bomb.png")
    code, _, err = run(
        capsys, "predict", "--model", model_dir, "--input", tmp_path / "bomb.png",
        "--output", tmp_path / "o",
    )  # fmt: skip
    one_line_error(code, err, "bomb.png: image is too large (64x64 = 4096 pixels, limit 1000)")


def test_wrong_layouts_unknown_ids_and_masks(demo_root: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "o"
    code, _, err = run(capsys, "fit", "--dataset", "mvtec", "--root", tmp_path, "--output", out)
    one_line_error(code, err, str(tmp_path), "no mvtec categories found")
    code, _, err = run(
        capsys, "fit", "--dataset", "mvtec", "--root", demo_root, "--category", "nope",
        "--output", out,
    )  # fmt: skip
    one_line_error(code, err, "nope: folder not found (expected category folder 'nope' inside")
    code, _, err = run(
        capsys, "fit", "--dataset", "mvtec", "--root", demo_root, "--backbone", "nope:x",
        "--output", out,
    )  # fmt: skip
    one_line_error(code, err, "nope")
    # a mask of the wrong size names the mask and the image
    root = tmp_path / "data"
    shutil.copytree(demo_root, root)
    mask = next((root / DEMO_TEXTURE / "ground_truth").rglob("*_mask.png"))
    Image.new("L", (10, 10), 255).save(mask)
    dataset = build_dataset("mvtec", root, DEMO_TEXTURE, "test")
    with pytest.raises(ImageLoadError, match=f"{mask.name}: mask size 10x10"):
        list(dataset)


# --------------------------------------------------------------------------------------------
# models are always the old or the new one
# --------------------------------------------------------------------------------------------


def _assert_consistent(folder: Path) -> dict:
    """The folder loads, its weights match config.json's hash and its recorded size."""
    meta = json.loads((folder / CONFIG_FILE).read_text())
    assert meta["weights_sha256"] == weights_digest(folder / WEIGHTS_FILE)
    detector = load_detector(folder)
    rows = detector.memory.shape[0] if hasattr(detector, "memory") else None
    if rows is not None:
        assert rows == meta["fit_report"]["memory_size"]
    return meta


def test_fit_over_a_model_replaces_it_whole(model_dir: Path, demo_root, tmp_path, capsys) -> None:
    folder = copy_model(model_dir, tmp_path)
    (folder / "last").mkdir()  # a training run's resume state survives
    (folder / "last" / "state.json").write_text("{}")
    code, _, err = run(
        capsys, "fit", "--dataset", "mvtec", "--root", demo_root, "--output", folder, "-q",
        "--image-size", "64", "--memory-size", "123",
    )  # fmt: skip
    assert code == 0, err
    meta = _assert_consistent(folder)
    assert meta["fit_report"]["memory_size"] == 123
    assert meta["config"]["image_size"] == 64
    assert (folder / "last" / "state.json").read_text() == "{}"
    assert leftovers(folder) == []
    record = meta["training_data"]
    assert (record["dataset"], record["split"]) == ("mvtec", "train")
    assert record["root"] == str(demo_root.resolve())
    assert (record["categories"], record["n_images"]) == ([DEMO_TEXTURE], N_TRAIN)
    assert len(record["sha256"]) == N_TRAIN


BIG_SOURCE = textwrap.dedent(
    """
    import torch
    from conftest import FakeDetector
    from anomalens.methods.base import as_tensor_dict

    class Big(FakeDetector):
        \"\"\"Saves ``seed`` rows of 4096 floats (seed 2000: a 32 MB file).\"\"\"

        def save(self, folder):
            rows = int(self.config.seed) or 1
            self.fit_report.memory_size = rows
            memory = torch.full((rows, 4096), float(rows))
            return self._write(folder, as_tensor_dict(memory=memory))

        @classmethod
        def load(cls, folder):
            model, _, tensors = cls._read(folder)
            model.memory = tensors["memory"]
            model.mean = 0.0
            return model
    """
)
KILL_SCRIPT = (
    "import sys\nsys.path.insert(0, sys.argv[1])\n"
    + BIG_SOURCE
    + "from anomalens.cli import main\nfrom anomalens.methods import METHODS\n"
    + "METHODS['fake'] = Big\nsys.exit(main(sys.argv[2:]))\n"
)


@pytest.fixture
def big(monkeypatch: pytest.MonkeyPatch) -> str:
    namespace: dict = {}
    exec(compile(BIG_SOURCE, "big_fake", "exec"), namespace)
    monkeypatch.setitem(METHODS, "fake", namespace["Big"])
    return "fake"


def _fit_and_kill(argv: list[str], folder: Path, trigger: str, timeout: float = 60.0) -> str:
    """Run ``fit`` in a child and SIGKILL it when ``trigger`` shows up in the staging folder
    beside ``folder`` ("" = the staging folder itself). Returns what happened."""
    proc = subprocess.Popen(argv, env=subprocess_env(), stderr=subprocess.PIPE)
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            for staging in folder.parent.glob(f".{folder.name}.staging-*"):
                hit = staging / trigger if trigger else staging
                if hit.exists() or any(staging.glob(f".{trigger}.tmp-*")):
                    proc.send_signal(signal.SIGKILL)
                    proc.wait()
                    return "killed"
            time.sleep(0.0005)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return "finished"


@pytest.mark.parametrize("trigger", [WEIGHTS_FILE, CONFIG_FILE])
def test_sigkill_while_saving_leaves_old_or_new_model(
    trigger: str, big: str, demo_root: Path, tmp_path: Path, capsys
) -> None:
    """``fit`` over a model is killed when ``trigger`` is being written in its staging
    folder; the folder is then the old model or the new one, complete."""
    folder = tmp_path / "model"
    argv = ["fit", "--method", big, "--dataset", "mvtec", "--root", demo_root, "--output", folder]
    assert run(capsys, *argv, "--seed", "3")[0] == 0
    old = snapshot(folder)
    assert _assert_consistent(folder)["fit_report"]["memory_size"] == 3
    child = [sys.executable, "-c", KILL_SCRIPT, str(Path(__file__).parent), *map(str, argv)]
    outcome = _fit_and_kill([*child, "--seed", "2000"], folder, trigger)  # a 32 MB tensor
    assert outcome == "killed"
    if snapshot(folder) != old:
        assert _assert_consistent(folder)["fit_report"]["memory_size"] == 2000
    assert leftovers(folder)  # the killed run's staging folder
    # the next run cleans up after the killed one and succeeds
    assert run(capsys, *argv, "--seed", "5")[0] == 0
    assert _assert_consistent(folder)["fit_report"]["memory_size"] == 5
    assert leftovers(folder) == []


@pytest.mark.slow
def test_sigkill_real_patchcore_fit(model_dir: Path, demo_root: Path, tmp_path: Path) -> None:
    folder = copy_model(model_dir, tmp_path)
    old = snapshot(folder)
    argv = [sys.executable, "-m", "anomalens", "fit", "--dataset", "mvtec", "--root"]
    argv += [str(demo_root), "--output", str(folder), "-q", "--image-size", "64"]
    argv += ["--memory-size", "77"]
    _fit_and_kill(argv, folder, WEIGHTS_FILE, timeout=120)
    if snapshot(folder) != old:
        assert _assert_consistent(folder)["fit_report"]["memory_size"] == 77
    else:
        _assert_consistent(folder)


def test_full_disk_while_saving_keeps_the_old_model(
    model_dir: Path, demo_root, tmp_path, capsys, monkeypatch
) -> None:
    import anomalens.methods.base as base

    folder = copy_model(model_dir, tmp_path)
    old = snapshot(folder)

    class SafetensorError(Exception):
        pass

    def full(tensors, path, metadata=None):
        Path(path).write_bytes(b"\0" * 100)
        raise SafetensorError("Error while serializing: IoError(No space left on device)")

    monkeypatch.setattr(base, "save_file", full)
    code, _, err = run(
        capsys, "fit", "--dataset", "mvtec", "--root", demo_root, "--output", folder,
        *TINY_FLAGS,
    )  # fmt: skip
    line = one_line_error(code, err, "model.safetensors: cannot write (", "No space left")
    assert line.endswith(f"the previous model folder {folder} is kept")
    assert snapshot(folder) == old
    assert leftovers(folder) == []


@pytest.mark.parametrize("output", ["", ".", "here"])
def test_fit_refuses_dangerous_outputs(output, fake, demo_root, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "config.json").write_text('{"mine": true}')
    (tmp_path / "here").mkdir()
    (tmp_path / "here" / "notes.txt").write_text("mine")
    code, _, err = run(
        capsys, "fit", "--method", fake, "--dataset", "mvtec", "--root", demo_root,
        "--output", output,
    )  # fmt: skip
    one_line_error(code, err, "refusing")
    assert (tmp_path / "config.json").read_text() == '{"mine": true}'
    assert (tmp_path / "here" / "notes.txt").read_text() == "mine"


# --------------------------------------------------------------------------------------------
# checkpoints are validated on load
# --------------------------------------------------------------------------------------------

BAD_CONFIGS = {
    "list": (lambda m: [m], "config.json: expected a JSON object, got a list"),
    "no grid": (
        lambda m: {k: v for k, v in m.items() if k != "grid"},
        "config.json: missing 'grid'",
    ),
    "grid text": (lambda m: m | {"grid": "8x8"}, "config.json: 'grid' has the wrong type"),
    "calibration text": (lambda m: m | {"calibration": "x"}, "'calibration' must be a JSON object"),
    "nan threshold": (
        lambda m: m | {"calibration": m["calibration"] | {"threshold": float("nan")}},
        "calibration threshold must be a finite number or null, got nan",
    ),
    "image size 7": (
        lambda m: m | {"config": m["config"] | {"image_size": 7}},
        "config.json: invalid config: image_size must be an integer from 32 to 2048",
    ),
    "version text": (lambda m: m | {"format_version": "1x"}, "'format_version' must be an integer"),
    "unknown field": (
        lambda m: m | {"config": m["config"] | {"colour": 1}},
        "unknown PatchCoreConfig fields in checkpoint: ['colour']",
    ),
}


@pytest.mark.parametrize("case", sorted(BAD_CONFIGS))
def test_edited_config_is_refused_naming_the_file(case, model_dir, tmp_path, capsys) -> None:
    folder = copy_model(model_dir, tmp_path)
    change, message = BAD_CONFIGS[case]
    edit_config(folder, change)
    good_image().save(tmp_path / "x.png")
    code, _, err = run(
        capsys, "predict", "--model", folder, "--input", tmp_path / "x.png", "--output",
        tmp_path / "o",
    )  # fmt: skip
    line = one_line_error(code, err, message)
    assert str(folder) in line


def _rewrite_weights(folder: Path, tensors: dict) -> None:
    from safetensors.torch import save_file

    save_file(tensors, str(folder / WEIGHTS_FILE))
    edit_config(folder, lambda m: m)  # drop the recorded hash, as a hand edit would


@pytest.mark.parametrize(
    ("tensors", "message"),
    [
        ({"other": torch.zeros(3, 3)}, "tensor 'memory' missing (found ['other'])"),
        ({"memory": torch.zeros(5)}, "tensor 'memory' must have 2 dimensions, got shape (5,)"),
        ({"memory": torch.zeros(5, 64, dtype=torch.float16)}, "must be torch.float32"),
        ({"memory": torch.full((5, 64), float("nan"))}, "tensor 'memory' holds NaN/inf values"),
    ],
)
def test_edited_weights_are_refused_naming_the_file(tensors, message, model_dir, tmp_path, capsys):
    folder = copy_model(model_dir, tmp_path)
    _rewrite_weights(folder, tensors)
    code, _, err = run(
        capsys, "predict", "--model", folder, "--input", tmp_path, "--output", tmp_path / "o"
    )
    one_line_error(code, err, f"{folder / WEIGHTS_FILE}: ", message)


def test_memory_of_the_wrong_width_is_named_at_predict(model_dir, tmp_path, capsys) -> None:
    folder = copy_model(model_dir, tmp_path)
    _rewrite_weights(folder, {"memory": torch.zeros(84, 7)})
    good_image().save(tmp_path / "x.png")
    code, _, err = run(
        capsys, "predict", "--model", folder, "--input", tmp_path / "x.png", "--output",
        tmp_path / "o",
    )  # fmt: skip
    one_line_error(code, err, f"{folder}: the saved model does not fit its backbone")


def test_mixed_old_config_and_new_weights_is_refused(model_dir, demo_root, tmp_path, capsys):
    old = copy_model(model_dir, tmp_path)
    new = tmp_path / "new"
    code, _, err = run(
        capsys, "fit", "--dataset", "mvtec", "--root", demo_root, "--output", new, "-q",
        "--image-size", "128", "--memory-size", "300",
    )  # fmt: skip
    assert code == 0, err
    shutil.copy(new / WEIGHTS_FILE, old / WEIGHTS_FILE)  # what an interrupted copy leaves
    code, _, err = run(
        capsys, "predict", "--model", old, "--input", demo_root, "--recursive", "--output",
        tmp_path / "o",
    )  # fmt: skip
    one_line_error(code, err, f"{old / WEIGHTS_FILE}: does not match config.json (SHA-256")


# --------------------------------------------------------------------------------------------
# reports and results are replaced only by complete runs
# --------------------------------------------------------------------------------------------


def test_failed_predict_keeps_the_earlier_report(model_dir: Path, tmp_path: Path, capsys) -> None:
    photos = tmp_path / "photos"
    photos.mkdir()
    for i in range(5):
        good_image(seed=i).save(photos / f"{i:02d}.png")
    out = tmp_path / "run"
    assert run(capsys, "predict", "--model", model_dir, "--input", photos, "--output", out)[0] == 0
    before = snapshot(out)
    assert len([k for k in before if k.startswith("overlays/")]) == 5
    (photos / "04.png").write_bytes(b"broken")  # the last file fails
    for i in range(5, 9):
        good_image(seed=i).save(photos / f"0{i}b.png")
    code, _, err = run(capsys, "predict", "--model", model_dir, "--input", photos, "--output", out)
    one_line_error(code, err, "04.png")
    assert snapshot(out) == before
    assert leftovers(out) == []


def test_full_disk_during_predict_names_the_file(model_dir, tmp_path, capsys, monkeypatch):
    import anomalens.visualize as visualize

    photos = tmp_path / "photos"
    photos.mkdir()
    for i in range(3):
        good_image(seed=i).save(photos / f"{i}.png")
    out = tmp_path / "run"
    assert run(capsys, "predict", "--model", model_dir, "--input", photos, "--output", out)[0] == 0
    before = snapshot(out)
    calls = []

    def full(path, write, fsync=True):
        calls.append(path)
        if len(calls) == 2:
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        return real(path, write, fsync)

    real = visualize.atomic_write_with
    monkeypatch.setattr(visualize, "atomic_write_with", full)
    code, _, err = run(capsys, "predict", "--model", model_dir, "--input", photos, "--output", out)
    line = one_line_error(code, err, "overlays/1.png: cannot write (No space left on device)")
    assert line.endswith(f"the previous report folder {out} is kept")
    assert snapshot(out) == before


def test_predict_refuses_to_replace_a_folder_that_is_not_a_report(model_dir, tmp_path, capsys):
    photos = tmp_path / "photos"
    photos.mkdir()
    good_image().save(photos / "a.png")
    code, _, err = run(
        capsys, "predict", "--model", model_dir, "--input", photos, "--output", photos
    )
    one_line_error(code, err, f"{photos}: not empty and not an anomalens report folder")
    assert [p.name for p in photos.iterdir()] == ["a.png"]


def test_recursive_predict_skips_its_own_output(model_dir: Path, tmp_path: Path, capsys) -> None:
    photos = tmp_path / "photos"
    (photos / "sub").mkdir(parents=True)
    for i in range(2):
        good_image(seed=i).save(photos / "sub" / f"{i}.png")
    argv = ["predict", "--model", model_dir, "--input", photos, "--recursive", "-q"]
    argv += ["--output", photos / "run"]
    for _ in range(2):
        code, _, err = run(capsys, *argv)
        assert code == 0, err
        summary = json.loads((photos / "run" / "summary.json").read_text())
        assert summary["n_images"] == 2


def test_failed_benchmark_keeps_complete_results(fake, demo_root, tmp_path, capsys) -> None:
    root = tmp_path / "data"
    for name in ("a_cat", "b_cat"):
        shutil.copytree(demo_root / DEMO_TEXTURE, root / name)
    out = tmp_path / "bench"
    argv = ["benchmark", "--method", fake, "--dataset", "mvtec", "--root", root, "--output", out]
    code, _, err = run(capsys, *argv)
    assert code == 0, err
    before = snapshot(out)
    assert sorted(json.loads(before["results.json"])["categories"]) == ["a_cat", "b_cat"]
    (root / "b_cat" / "test" / "good" / "000.png").write_bytes(b"")
    code, _, err = run(capsys, *argv)
    one_line_error(code, err, "000.png: file is empty")
    assert snapshot(out) == before
    partial = json.loads((tmp_path / "bench.partial" / "results.json").read_text())
    assert list(partial["categories"]) == ["a_cat"]
    assert "the categories this run finished are in" in err


# --------------------------------------------------------------------------------------------
# parse-time bounds and the command line itself
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["fit", "--image-size", "100000"], "argument --image-size: must be <= 2048, got 100000"),
        (["fit", "--image-size", "16"], "argument --image-size: must be >= 32, got 16"),
        (["fit", "--seed", "-1"], "argument --seed: must be >= 0, got -1"),
        (["train", "--lr", "inf"], "argument --lr: must be in (0, 1], got inf"),
        (["train", "--lr", "nan"], "argument --lr: must be in (0, 1], got nan"),
        (["train", "--lr", "1e30"], "argument --lr: must be in (0, 1], got 1e30"),
        (["train", "--text-lr", "0"], "argument --text-lr: must be in (0, 1], got 0"),
        (["train", "--val-fraction", "1"], "argument --val-fraction: must be in [0, 1), got 1"),
    ],
)
def test_bounds_are_checked_at_parse_time(argv, message, capsys) -> None:
    full = [*argv, "--dataset", "mvtec", "--root", "r", "--output", "o"]
    with pytest.raises(SystemExit) as info:
        main(full)
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert err.strip().splitlines()[-1].endswith(message)


def test_numerical_failure_in_training_is_one_line(capsys, monkeypatch) -> None:
    import anomalens.training as training

    def diverge(*args, **kwargs):
        raise FloatingPointError("non-finite training loss at stage 2, epoch 1, batch 0")

    monkeypatch.setattr(training, "train_detector", diverge)
    code, _, err = run(capsys, "train", "--dataset", "mvtec", "--root", "r", "--output", "o")
    one_line_error(code, err, "numerical error: non-finite training loss at stage 2")


def test_train_defaults_to_the_train_split(capsys) -> None:
    from anomalens.cli import build_parser
    from anomalens.training import MODE_SPLITS

    args = build_parser().parse_args(
        ["train", "--dataset", "mvtec", "--root", "r", "--output", "o"]
    )
    assert args.mode == "synthetic"
    assert MODE_SPLITS[args.mode] == "train"


def test_offline_model_error_keeps_the_save_command(demo_root, tmp_path, capsys) -> None:
    code, _, err = run(
        capsys, "fit", "--dataset", "mvtec", "--root", demo_root, "--output", tmp_path / "o",
        "--method", "anomalydino", "--backbone", f"dinov2:{tmp_path / 'missing'}",
    )  # fmt: skip
    assert code == 2
    assert err.startswith("anomalens: error: cannot load the dinov2")
    assert "save_pretrained" in err  # the lines after the first are kept
    assert "Traceback" not in err


def test_ctrl_c_during_imports_exits_130() -> None:
    """Deterministic: SIGINT arrives while ``run`` imports the CLI."""
    script = textwrap.dedent(
        """
        import builtins, os, signal, sys
        # a terminal's Ctrl-C: jobs started in the background (CI) inherit SIGINT ignored
        signal.signal(signal.SIGINT, signal.default_int_handler)
        import anomalens.__main__ as entry
        real = builtins.__import__
        def hooked(name, *a, **k):
            if name == "anomalens.cli":
                os.kill(os.getpid(), signal.SIGINT)
            return real(name, *a, **k)
        builtins.__import__ = hooked
        sys.argv = ["anomalens", "--version"]
        sys.exit(entry.run())
        """
    )
    proc = subprocess.run(
        [sys.executable, "-c", script], env=subprocess_env(), capture_output=True, text=True
    )
    assert proc.returncode == 130, proc.stderr
    assert proc.stderr == "anomalens: interrupted\n"


def test_debug_env_raises_for_the_traceback(tmp_path: Path, monkeypatch) -> None:
    from anomalens.errors import CheckpointError

    monkeypatch.setenv("ANOMALENS_DEBUG", "1")
    argv = ["predict", "--model", str(tmp_path), "--input", str(tmp_path), "--output", "o"]
    with pytest.raises(CheckpointError, match=r"config\.json: not found"):
        main(argv)


# --------------------------------------------------------------------------------------------
# file names, special files, layouts and masks
# --------------------------------------------------------------------------------------------


def test_names_that_are_not_utf8_under_lc_all_c(model_dir: Path, tmp_path: Path) -> None:
    photos = tmp_path / "photos"
    photos.mkdir()
    raw = os.fsencode(photos) + b"/bad\xff name.png"
    good_image().save(os.fsdecode(raw))
    good_image(seed=1).save(photos / "café.png")
    out = tmp_path / "out"
    proc = subprocess.run(
        [sys.executable, "-m", "anomalens", "predict", "--model", str(model_dir), "--input",
         str(photos), "--output", str(out)],
        env=subprocess_env(LC_ALL="C", LANG="C"), capture_output=True,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert b"Traceback" not in proc.stderr
    stdout = proc.stdout.decode("utf-8", "replace")
    assert "bad\\xff name.png" in stdout
    assert "café.png" in stdout
    csv_bytes = (out / "scores.csv").read_bytes()
    assert raw in csv_bytes  # the very file name, byte for byte
    assert os.path.exists(os.fsencode(out) + b"/overlays/bad\xff name.png")


def test_special_entries_in_train_good_are_warned_and_counted(fake, demo_root, tmp_path, capsys):
    root = tmp_path / "data"
    shutil.copytree(demo_root, root)
    good = root / DEMO_TEXTURE / "train" / "good"
    os.mkfifo(good / "pipe.png")
    os.symlink(tmp_path / "nowhere.png", good / "dangling.png")
    (good / "folder.png").mkdir()
    good_image().save(good / "photo.webp")
    good_image().save(good / "anim.gif")
    code, out, err = run(
        capsys, "fit", "--method", fake, "--dataset", "mvtec", "--root", root, "--output",
        tmp_path / "m",
    )  # fmt: skip
    assert code == 0, err
    warning = [line for line in err.splitlines() if "look like images" in line]
    assert len(warning) == 1, err
    assert warning[0].startswith(f"anomalens: warning: {good}: ignored 5 entries")
    assert "anim.gif (unsupported format .gif" in warning[0]
    assert "dangling.png (a dangling symbolic link" in warning[0]
    assert "folder.png (a folder" in warning[0]
    assert f"on {N_TRAIN} good images of 'brick' (5 non-image entries ignored)" in out
    meta = json.loads((tmp_path / "m" / CONFIG_FILE).read_text())
    assert meta["fit_report"]["n_ignored"] == 5
    # a FIFO given to predict is named as such
    code, _, err = run(
        capsys, "predict", "--model", tmp_path / "m", "--input", good / "pipe.png", "--output",
        tmp_path / "o",
    )  # fmt: skip
    one_line_error(code, err, "pipe.png: not a regular file (a FIFO (named pipe))")
    code, _, err = run(
        capsys, "predict", "--model", tmp_path / "m", "--input", good / "dangling.png",
        "--output", tmp_path / "o",
    )  # fmt: skip
    one_line_error(code, err, "dangling.png: dangling symbolic link")


def test_mvtec_ad2_on_an_mvtec_layout_is_refused(fake, demo_root, tmp_path, capsys) -> None:
    code, _, err = run(
        capsys, "fit", "--method", fake, "--dataset", "mvtec_ad2", "--root", demo_root,
        "--output", tmp_path / "m",
    )  # fmt: skip
    one_line_error(code, err, "not an MVTec AD 2 category", "use --dataset mvtec")
    assert not (tmp_path / "m").exists()


def test_blurred_masks_warn(tmp_path: Path) -> None:
    hard = np.zeros((32, 32), np.uint8)
    hard[8:16, 8:16] = 255
    Image.fromarray(hard).save(tmp_path / "hard.png")
    with warnings.catch_warnings():
        warnings.simplefilter("error", BlurredMaskWarning)
        assert load_mask(tmp_path / "hard.png").sum() == 64
    soft = hard.copy()
    soft[7, 8:16] = 100  # an anti-aliased edge
    Image.fromarray(soft).save(tmp_path / "soft.png")
    with pytest.warns(BlurredMaskWarning, match=r"soft\.png: mask has 2 nonzero gray levels"):
        assert load_mask(tmp_path / "soft.png").sum() == 72  # still every nonzero pixel


def test_figures_of_huge_photos_use_bounded_memory(tmp_path: Path) -> None:
    from anomalens.postprocess import Box
    from anomalens.visualize import save_prediction_figure

    side = 3000
    image = np.zeros((side, side, 3), np.uint8)
    anomaly = np.zeros((side, side), np.float32)
    anomaly[1000:1200, 1000:1200] = 1.0
    boxes = [Box(1000, 1000, 1200, 1200, 1.0, 40000)]
    tracemalloc.start()
    save_prediction_figure(tmp_path / "f.png", image, anomaly, boxes, 1.0, 0.5)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    # drawing at full size needs > 9e6 * 4 channels * 8 bytes = 288 MB for the colour map alone
    assert peak < 120 * 2**20, peak / 2**20
    assert Image.open(tmp_path / "f.png").size == (1350, 480)


# --------------------------------------------------------------------------------------------
# train/test overlap
# --------------------------------------------------------------------------------------------


def _checkpoint_trained_on(fake, demo_root: Path, folder: Path, record: dict) -> Path:
    train = build_dataset("mvtec", demo_root, DEMO_TEXTURE, "train")
    detector = SavedFake().fit([s.image for s in train])
    detector.training_data = record
    return detector.save(folder)


def test_benchmark_refuses_a_checkpoint_trained_on_its_test_split(
    fake, demo_root, tmp_path, capsys
):
    from anomalens.data.datasets import build_dataset

    test_paths = build_dataset("mvtec", demo_root, DEMO_TEXTURE, "test").paths
    record = training_record("mvtec", demo_root, [DEMO_TEXTURE], "test", test_paths)
    ckpt = _checkpoint_trained_on(fake, demo_root, tmp_path / "ckpt", record)
    argv = ["benchmark", "--method", fake, "--checkpoint", ckpt, "--dataset", "mvtec"]
    argv += ["--root", demo_root, "--output", tmp_path / "out"]
    code, _, err = run(capsys, *argv)
    one_line_error(
        code, err, f"{ckpt}: refusing to evaluate the checkpoint on images it was trained on",
        f"trained on the test split of 'brick' in {demo_root.resolve()} ({N_TEST} images)",
        "--allow-overlap",
    )  # fmt: skip
    assert not (tmp_path / "out").exists()
    code, out, err = run(capsys, *argv, "--allow-overlap")
    assert code == 0, err
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    assert results["overlap"] is True
    assert results["details"][DEMO_TEXTURE]["overlap"] is True
    table = out.splitlines()
    assert any(line.startswith(f"{DEMO_TEXTURE} (OVERLAP)") for line in table)
    assert any(line.startswith("(OVERLAP): evaluated on images") for line in table)


def test_overlap_by_file_contents_in_another_folder(fake, demo_root, tmp_path, capsys) -> None:
    copy = tmp_path / "copy"
    shutil.copytree(demo_root, copy)
    paths = build_dataset("mvtec", copy, DEMO_TEXTURE, "test").paths[:3]
    record = training_record("folder", copy, ["mine"], "train", paths)
    ckpt = _checkpoint_trained_on(fake, demo_root, tmp_path / "ckpt", record)
    code, _, err = run(
        capsys, "benchmark", "--method", fake, "--checkpoint", ckpt, "--dataset", "mvtec",
        "--root", demo_root, "--output", tmp_path / "out",
    )  # fmt: skip
    one_line_error(code, err, f"3 of the {N_TEST} test images of 'brick' have the same contents")
    # a checkpoint trained elsewhere evaluates without a mark
    other = training_record("folder", copy, ["mine"], "train", [])
    ckpt = _checkpoint_trained_on(fake, demo_root, tmp_path / "ckpt2", other)
    code, out, err = run(
        capsys, "benchmark", "--method", fake, "--checkpoint", ckpt, "--dataset", "mvtec",
        "--root", demo_root, "--output", tmp_path / "out2",
    )  # fmt: skip
    assert code == 0, err
    assert json.loads((tmp_path / "out2" / "results.json").read_text())["overlap"] is False
    assert "OVERLAP" not in out
