"""Shared fixtures: a tiny synthetic MVTec-layout dataset, tiny detector options and a fake
detector (deterministic, no backbone) for fast tests of the evaluation and report plumbing."""

from __future__ import annotations

import contextlib
import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from anomalens.cli import main
from anomalens.data.synthetic import make_demo_dataset
from anomalens.methods import METHODS
from anomalens.methods.base import Detector, Prediction

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


@pytest.fixture(scope="session")
def cli_benchmark(demo_root: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """``anomalens benchmark`` of ``demo_root`` with tiny PatchCore options and ``--save-maps 2``:
    ``(output folder, stdout)``. Do not modify the folder."""
    out = tmp_path_factory.mktemp("cli_bench")
    stdout = io.StringIO()  # session fixtures cannot use capsys
    with contextlib.redirect_stdout(stdout):
        code = main(
            ["benchmark", "--dataset", "mvtec", "--root", str(demo_root), "--output", str(out)]
            + ["--category", DEMO_TEXTURE, "--save-maps", "2", "--no-progress", *TINY_FLAGS]
        )
    assert code == 0
    return out, stdout.getvalue()


@dataclass
class FakeConfig:
    """Config of :class:`FakeDetector`; ``class_name`` mimics zero-shot methods."""

    class_name: str = ""
    seed: int = 0
    shots: int | None = None
    backbone: str = "none"


class FakeDetector(Detector):
    """Maps are ``|gray - mean gray of the good images|``; score = map maximum.

    Thresholds are fixed from the training images (max of their scores), so every number is
    reproducible and cheap.
    """

    method = "fake"
    config_class = FakeConfig

    def __init__(self, config: FakeConfig | None = None) -> None:
        self.config = config or FakeConfig()
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
