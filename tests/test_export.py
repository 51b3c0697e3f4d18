"""ONNX export: parity with the torch detectors, the torch-free runtime, INT8, CLI and errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import onnx
import pytest

from anomalens import testing as tm
from anomalens.cli import main
from anomalens.errors import CheckpointError
from anomalens.export import OnnxDetector, export_model, is_exported
from anomalens.export.graphs import area_matrix
from anomalens.methods import AACLIP, AnomalyDINO, PatchCore, WinCLIP
from anomalens.methods.base import load_detector

#: Parity bounds of the issue: scores relative, maps relative to each map's range.
SCORE_RTOL, MAP_TOL = 1e-4, 1e-3


#: torch.onnx's tracer warns about every Python branch on shapes (expected: shapes are fixed)
pytestmark = [
    pytest.mark.filterwarnings("ignore::UserWarning"),
    pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning"),
]


@pytest.fixture(scope="module")
def hf_dirs(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("export_hf")
    return {k: tm.make_model(k, root / k) for k in ("clip", "siglip", "dinov2")}


@pytest.fixture(scope="module")
def objects() -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Good object images and test images: objects (one with a dark defect) and textures of
    other sizes (maps must come back at each image's own size)."""
    good = tm.object_images(6, size=96)
    bad = tm.object_images(1, seed=9, size=96)[0].copy()
    bad[40:52, 36:48] = 0
    test = [*tm.object_images(2, seed=5, size=96), bad, *tm.images(2, shape=(70, 90))]
    return good, test


def assert_parity(det, folder: Path, images: list[np.ndarray]) -> None:
    ref = det.predict(images)
    got = OnnxDetector.load(folder, threads=1).predict(images)
    assert got.threshold == ref.threshold
    assert got.pixel_threshold == ref.pixel_threshold
    rel = np.abs(got.scores - ref.scores) / np.abs(ref.scores)
    assert rel.max() <= SCORE_RTOL, rel
    for img, a, b in zip(images, ref.maps, got.maps, strict=True):
        assert b.shape == img.shape[:2] == a.shape
        assert np.abs(a - b).max() <= MAP_TOL * (a.max() - a.min())


@pytest.mark.parametrize(
    ("cls", "options"),
    [
        (PatchCore, {"foreground": "on"}),
        (PatchCore, {"foreground": "off", "neighbourhood": 1}),
        (PatchCore, {"foreground": "on", "resize": "letterbox", "border": 0.0625}),
        (PatchCore, {"foreground": "off", "resize": "letterbox", "top_fraction": 0.01}),
        (AnomalyDINO, {"foreground": "on", "top_fraction": 0.05}),
    ],
    ids=["patchcore-fg", "patchcore", "letterbox-fg", "letterbox", "anomalydino-fg"],
)
def test_efficientnet_methods_match_torch(cls, options, objects, tmp_path):
    good, test = objects
    det = cls(image_size=128, memory_size=300, batch_size=4, **options).fit(good, progress=False)
    export_model(det, tmp_path / "onnx")
    assert_parity(det, tmp_path / "onnx", test)  # 5 images: a batch of 4 and one of 1


@pytest.mark.parametrize(
    ("kind", "shots"),
    [("clip", 0), ("siglip", 0), ("siglip", None), ("dinov2", None)],
)
def test_winclip_tokens_matches_torch(kind, shots, hf_dirs, objects, tmp_path):
    good, test = objects
    extra = {"text_weight": 0.0} if kind == "dinov2" else {}
    det = WinCLIP(backbone=f"{kind}:{hf_dirs[kind]}", precision="fp32", shots=shots, **extra)
    det.fit([] if shots == 0 else good[:4], progress=False)
    export_model(det, tmp_path / "onnx")
    assert_parity(det, tmp_path / "onnx", test)


@pytest.mark.parametrize(("kind", "anchors"), [("clip", "text"), ("dinov2", "centroid")])
def test_aaclip_matches_torch(kind, anchors, hf_dirs, objects, tmp_path):
    good, test = objects
    det = AACLIP(
        backbone=f"{kind}:{hf_dirs[kind]}", image_size=32, precision="fp32", anchors=anchors
    )
    det.trained = True  # random adapters: parity does not need trained ones
    det.fit(good[:4], progress=False)
    export_model(det, tmp_path / "onnx")
    assert_parity(det, tmp_path / "onnx", test)


def test_winclip_windows_is_refused_with_a_reason(hf_dirs, tmp_path):
    det = WinCLIP(backbone=f"clip:{hf_dirs['clip']}", shots=0, scoring="windows").fit([], False)
    with pytest.raises(ValueError, match="only WinCLIP with scoring='tokens'"):
        export_model(det, tmp_path / "onnx")
    assert not (tmp_path / "onnx").exists()  # nothing half-written
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".onnx")]


def test_area_matrix_is_opencv_inter_area():
    rng = np.random.default_rng(0)
    img = rng.random((128, 128)).astype(np.float32)
    ah, aw = area_matrix(128, 20).numpy(), area_matrix(128, 23).numpy()
    ref = cv2.resize(img, (23, 20), interpolation=cv2.INTER_AREA)
    np.testing.assert_allclose(ah @ img @ aw.T, ref, rtol=0, atol=2e-6)


@pytest.fixture(scope="module")
def patchcore_export(objects, tmp_path_factory):
    good, _ = objects
    det = PatchCore(image_size=128, memory_size=300, foreground="on").fit(good, progress=False)
    root = tmp_path_factory.mktemp("pc_export")
    det.save(root / "torch")
    export_model(root / "torch", root / "onnx")
    return det, root


def test_config_and_dispatch(patchcore_export):
    det, root = patchcore_export
    cfg = json.loads((root / "onnx" / "config.json").read_text())
    assert cfg["format"] == "onnx"
    assert cfg["method"] == "patchcore"
    assert cfg["image_size"] == 128
    assert cfg["mean"] == [0.485, 0.456, 0.406]
    assert cfg["threshold"] == det.calibration.threshold
    assert cfg["anomalens_version"]
    assert is_exported(root / "onnx")
    assert not is_exported(root / "torch")
    assert isinstance(load_detector(root / "onnx"), OnnxDetector)
    model = onnx.load(str(root / "onnx" / "model.onnx"))
    # letterbox + reflected border (the defaults): the content cells are an input
    assert [i.name for i in model.graph.input] == ["pixels", "foreground", "content"]
    assert cfg["extra"]["resize"] == "letterbox"
    assert cfg["extra"]["border"] == 8  # 1/16 of 128 px
    assert model.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.UINT8
    # the memory is an initializer of the graph: no torch file next to it
    assert sorted(p.name for p in (root / "onnx").iterdir()) == ["config.json", "model.onnx"]


def test_runtime_runs_without_torch(patchcore_export, objects, tmp_path):
    det, root = patchcore_export
    _, test = objects
    np.save(tmp_path / "images.npy", np.stack([img for img in test if img.shape == test[0].shape]))
    code = f"""
import sys
sys.modules["torch"] = None  # any import of torch now fails
import numpy as np
from anomalens.export import OnnxDetector
images = list(np.load({str(tmp_path / "images.npy")!r}))
pred = OnnxDetector.load({str(root / "onnx")!r}, threads=1).predict(images)
np.save({str(tmp_path / "scores.npy")!r}, pred.scores)
assert not any(m == "torch" or m.startswith("torch.") for m in sys.modules if sys.modules[m])
"""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    same = [img for img in test if img.shape == test[0].shape]
    ref = det.predict(same).scores
    np.testing.assert_allclose(np.load(tmp_path / "scores.npy"), ref, rtol=SCORE_RTOL)


def test_int8_export_is_quantized_per_channel(objects, tmp_path):
    good, test = objects
    det = PatchCore(image_size=128, memory_size=300, foreground="off").fit(good, progress=False)
    export_model(det, tmp_path / "int8", int8=True, calibration=good)
    cfg = json.loads((tmp_path / "int8" / "config.json").read_text())
    assert cfg["precision"] == "int8"
    assert cfg["calibration_images"] == len(good)
    graph = onnx.load(str(tmp_path / "int8" / "model.onnx")).graph
    inits = {i.name: i for i in graph.initializer}
    conv_weights = [
        n for n in graph.node if n.op_type == "DequantizeLinear" and inits.get(n.input[0])
    ]
    assert conv_weights, "no quantised weights"
    per_channel = [n for n in conv_weights if len(inits[n.input[1]].dims) == 1]
    assert len(per_channel) >= len(conv_weights) // 2
    pred = OnnxDetector.load(tmp_path / "int8", threads=1).predict(test)
    ref = det.predict(test)
    assert [m.shape for m in pred.maps] == [m.shape for m in ref.maps]
    # the stem and depthwise convolutions stay float (quantised, good images scored 3x torch)
    stem = next(n for n in graph.node if n.op_type == "Conv")
    assert stem.input[1] in inits
    np.testing.assert_allclose(pred.scores, ref.scores, rtol=0.4)
    assert int(np.argmax(pred.scores[:3])) == int(np.argmax(ref.scores[:3])) == 2  # the defect


def test_cli_export_predict_and_errors(patchcore_export, objects, tmp_path, capsys):
    from PIL import Image

    _, root = patchcore_export
    good, _test = objects
    for i, img in enumerate(good[:3]):
        Image.fromarray(img).save(tmp_path / f"g{i}.png")
    out = tmp_path / "cli_int8"
    code = main(
        [
            "export",
            "--model",
            str(root / "torch"),
            "--format",
            "onnx",
            "--output",
            str(out),
            "--int8",
            "--calibration",
            str(tmp_path),
            "--no-progress",
        ]
    )
    assert code == 0
    printed = capsys.readouterr().out
    assert f"wrote {out / 'model.onnx'}" in printed
    assert "INT8 speed depends on AVX512-VNNI, AVX-VNNI or AMX-INT8; this CPU has" in printed
    assert json.loads((out / "config.json").read_text())["calibration_images"] == 3
    code = main(
        [
            "predict",
            "--model",
            str(root / "onnx"),
            "--input",
            str(tmp_path),
            "--output",
            str(tmp_path / "pred"),
            "--no-progress",
        ]
    )
    assert code == 0
    rows = json.loads((tmp_path / "pred" / "scores.json").read_text())
    assert len(rows["images"] if isinstance(rows, dict) else rows) == 3
    code = main(["export", "--model", str(root / "torch"), "--output", str(out), "--int8"])
    assert code == 2
    assert "--int8 needs --calibration DIR" in capsys.readouterr().err
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "config.json").write_text('{"format": "onnx", "method": "patchcore"}')
    with pytest.raises(CheckpointError, match=r"broken/model.onnx: not found"):
        OnnxDetector.load(tmp_path / "broken")
