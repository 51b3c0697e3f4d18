"""Shared fixtures and helpers: a tiny synthetic MVTec-layout dataset, a texture image set with
synthetic defects, tiny detector options, a fake detector (deterministic, no backbone) for fast
tests of the evaluation and report plumbing, and CSV / PNG readers.

Helpers are imported by test modules with ``from conftest import ...``."""

from __future__ import annotations

import contextlib
import csv
import io
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pytest
import torch
from PIL import Image

from anomalens.backbones.base import AUTO_PRECISION_ENV
from anomalens.cli import main
from anomalens.data.synthetic import (
    _good_view,
    _load_texture,
    add_synthetic_defect,
    make_demo_dataset,
)
from anomalens.methods import METHODS
from anomalens.methods.base import Calibration, Detector, DetectorConfig, Prediction

# precision "auto" is fp32 in every test (and in the processes tests start), whatever the CPU:
# on AVX512-BF16 / AMX machines it would be bf16, and numbers compared with an fp32 reference
# (ONNX parity, one process against two) would differ by the bf16 rounding. Tests of bf16 ask
# for it by name; tests of the rule itself remove the variable.
os.environ[AUTO_PRECISION_ENV] = "fp32"

#: PatchCore options small enough for a fit + predict in a few seconds on 2 cores.
TINY_OPTIONS = {"image_size": 128, "memory_size": 500}
TINY_FLAGS = ["--image-size", "128", "--memory-size", "500"]
#: Demo dataset: one texture, 6 train images, 4 good + 4 defective test images, 128 px.
DEMO_TEXTURE = "brick"
N_TRAIN, N_TEST_GOOD, N_TEST_BAD, SIZE = 6, 4, 4, 128


@pytest.fixture(scope="session")
def demo_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Root of a tiny MVTec-AD-layout dataset with one category (``brick``). Do not modify."""
    root = tmp_path_factory.mktemp("demo_data")
    make_demo_dataset(
        root,
        n_train=N_TRAIN,
        n_test_good=N_TEST_GOOD,
        n_test_bad=N_TEST_BAD,
        size=SIZE,
        textures=(DEMO_TEXTURE,),
    )
    return root


class TextureSet(NamedTuple):
    """Good training views and labelled test views (good first) with their masks."""

    train: list[np.ndarray]
    test: list[np.ndarray]
    labels: np.ndarray
    masks: list[np.ndarray]


#: :func:`texture_set`: 10 train, 6 good and 8 defective test views of a brick photo, 128 px.
TEXTURE_TRAIN, TEXTURE_GOOD, TEXTURE_BAD, TEXTURE_SIZE = 10, 6, 8, 128


@pytest.fixture(scope="session")
def texture_set() -> TextureSet:
    """Random 128 px views of scikit-image's brick photo (seed 0): 10 good training views, then
    6 good and 8 defective test views (stain and cut-paste defects alternating) with their
    {0, 1} masks (all zero for the good ones). Do not modify the arrays."""
    rng = np.random.default_rng(0)
    tex = _load_texture("brick")
    size = TEXTURE_SIZE
    train = [_good_view(tex, size, rng) for _ in range(TEXTURE_TRAIN)]
    good = [_good_view(tex, size, rng) for _ in range(TEXTURE_GOOD)]
    bad, masks = [], []
    for j in range(TEXTURE_BAD):
        kind = ("stain", "cutpaste")[j % 2]
        img, mask = add_synthetic_defect(_good_view(tex, size, rng), rng, kind)
        bad.append(img)
        masks.append(mask)
    labels = np.array([0] * TEXTURE_GOOD + [1] * TEXTURE_BAD)
    all_masks = [np.zeros((size, size), np.uint8)] * TEXTURE_GOOD + masks
    return TextureSet(train, good + bad, labels, all_masks)


@pytest.fixture(scope="session")
def cli_benchmark(demo_root: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """``anomalens benchmark`` of ``demo_root`` with tiny PatchCore options and ``--save-maps 2``:
    ``(output folder, stdout)``. Do not modify the folder."""
    out = tmp_path_factory.mktemp("cli_bench")
    stdout = io.StringIO()  # session fixtures cannot use capsys
    with contextlib.redirect_stdout(stdout):
        argv = ["benchmark", "--dataset", "mvtec", "--root", str(demo_root), "--output", str(out)]
        code = main(
            [*argv, "--category", DEMO_TEXTURE, "--save-maps", "2", "--no-progress", *TINY_FLAGS]
        )
    assert code == 0
    return out, stdout.getvalue()


# ------------------------------------------------------------------------ shared checks


def assert_no_text_tower(bb, width: int) -> None:
    """Every text-tower method of a vision-only backbone raises TextTowerMissingError naming
    the backbone; ``width`` is the channel count of its tokens."""
    from anomalens.errors import TextTowerMissingError

    calls = [
        lambda: bb.encode_text(["a cat"]),
        lambda: bb.project_tokens(torch.zeros(1, 4, width)),
        bb.logit_scale,
        bb.logit_bias,
        bb.text_dims,
        lambda: bb.text_layer_module(1),
    ]
    for call in calls:
        with pytest.raises(TextTowerMissingError, match="no text tower") as info:
            call()
        assert bb.name in str(info.value)
    assert not bb.has_text
    assert not bb.supports_windows


def save_and_reload(detector: Detector, folder: Path) -> tuple[dict, Detector]:
    """``(config.json as a dict, the detector loaded back)`` after ``detector.save(folder)``;
    checks the method name and the class of the loaded detector."""
    from anomalens.methods import load_detector

    detector.save(folder)
    meta = json.loads((folder / "config.json").read_text())
    assert meta["method"] == detector.method
    loaded = load_detector(folder)
    assert type(loaded) is type(detector)
    return meta, loaded


# ------------------------------------------------------------------------ CSV / PNG readers


def read_csv(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    """``(column names, rows as dicts)`` of a UTF-8 CSV file with a header line."""
    with Path(path).open(newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        return list(reader.fieldnames or []), list(reader)


def read_csv_rows(path: Path) -> list[dict[str, str]]:
    """The rows of a CSV file with a header line, as dicts."""
    return read_csv(path)[1]


def png_size(path: Path) -> tuple[int, int]:
    """``(width, height)`` of an image file."""
    with Image.open(path) as img:
        return img.size


def read_png(path: Path) -> np.ndarray:
    """An image file as a ``H x W x 3`` uint8 RGB array (alpha dropped)."""
    with Image.open(path) as img:
        assert img.format == "PNG", img.format
        return np.asarray(img.convert("RGB"))


# ------------------------------------------------------------------------ fake detector


@dataclass
class FakeConfig(DetectorConfig):
    """Config of :class:`FakeDetector`; ``class_name`` mimics zero-shot methods."""

    class_name: str = ""
    backbone: str = "none"


class FakeDetector(Detector):
    """Maps are ``|gray - mean gray of the good images|``; score = map maximum.

    Thresholds are fixed from the training images (max of their scores), so every number is
    reproducible and cheap.
    """

    method = "fake"
    config_class = FakeConfig
    backbone = None  # no backbone to load

    def __init__(self, config: FakeConfig | None = None) -> None:
        super().__init__(config or FakeConfig())
        self.mean: float | None = None
        self.train_max: float | None = None

    def is_fitted(self) -> bool:
        return self.mean is not None

    def _maps(self, images) -> list[np.ndarray]:
        return [np.abs(im.astype(np.float32).mean(axis=2) - self.mean) for im in images]

    def fit(self, images, progress: bool = True) -> FakeDetector:
        images = list(images)
        if self.config.shots is not None:
            images = images[: self.config.shots]
        self.mean = float(np.mean([im.mean() for im in images]))
        self.train_max = float(max(m.max() for m in self._maps(images)))
        self.calibration = Calibration(self.train_max, self.train_max, n_images=len(images))
        return self

    def predict(self, images, progress: bool = False) -> Prediction:
        self._require_fitted()
        maps = self._maps(images)
        scores = np.array([m.max() for m in maps], dtype=np.float32)
        return Prediction(scores, maps, threshold=self.train_max, pixel_threshold=self.train_max)


@pytest.fixture
def fake_method(monkeypatch: pytest.MonkeyPatch) -> str:
    """Register :class:`FakeDetector` as method ``"fake"`` for one test."""
    monkeypatch.setitem(METHODS, "fake", FakeDetector)
    return "fake"


@pytest.fixture(autouse=True, scope="session")
def _one_torch_thread():
    """Tests run torch on one thread: with two threads, small ops stall for milliseconds each
    whenever the other core is busy (measured here), which made the suite 10x slower."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@pytest.fixture(scope="session")
def browser():
    """Headless Debian chromium driven by Playwright (no browser download); skips when absent.

    Use ``page = browser.new_page()`` and close it at the end of the test."""
    if not Path(CHROMIUM).exists():
        pytest.skip(f"{CHROMIUM} not found: install Debian's chromium (apt-get install chromium)")
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright not installed")
    with sync_api.sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield b
        b.close()
