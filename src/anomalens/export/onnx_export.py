"""``export_model``: a fitted detector -> a folder with ``model.onnx`` and ``config.json``.

The graph is traced by torch's TorchScript-based ONNX exporter (``dynamo=False``, opset 17):
the backbones run Python control flow (forward hooks that stop the ViT after the deepest tap,
adapter hooks) that the tracer records as it runs; the dynamo exporter is available with
``exporter="dynamo"`` (docs/deploy.md compares them). The batch axis is dynamic.
"""

from __future__ import annotations

import json
import logging
import os
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from anomalens import __version__
from anomalens.atomic import atomic_write_json, check_output_path, staged_folder
from anomalens.export.graphs import build_graph, fp32_backbone
from anomalens.export.runtime import (
    CONFIG_FILE,
    EXPORT_FORMAT,
    EXPORT_VERSION,
    MODEL_FILE,
    graph_inputs,
)
from anomalens.methods.base import Detector, load_detector

logger = logging.getLogger(__name__)

OPSET = 17
EXPORTERS = ("legacy", "dynamo")


def _example_images(size: int, n: int = 2, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (size, size, 3), dtype=np.uint8) for _ in range(n)]


def export_config(detector: Detector, spec: Any) -> dict[str, Any]:
    """What the runtime needs besides the graph (see :class:`~.runtime.OnnxDetector`)."""
    bb, c = detector.backbone, detector.config
    cal = detector.calibration
    return {
        "format": EXPORT_FORMAT,
        "export_version": EXPORT_VERSION,
        "anomalens_version": __version__,
        "method": detector.method,
        "backbone": c.backbone,
        "image_size": int(bb.image_size),
        "mean": list(bb.mean),
        "std": list(bb.std),
        "batch_size": int(c.batch_size),
        "precision": "fp32",
        "inputs": spec.inputs,
        "outputs": spec.outputs,
        "foreground": spec.foreground,
        "score": spec.score,
        "normalize": spec.normalize,
        "extra": spec.extra,
        "threshold": cal.threshold,
        "pixel_threshold": cal.pixel_threshold,
        "calibration": {"quantile": cal.quantile, "n_images": cal.n_images},
        "detector_config": json.loads(json.dumps(vars(c), default=list)),
        # pose normalisation (PatchCore, AnomalyDINO) runs around the graph, in the runtime
        "pose": detector.pose.to_meta() if hasattr(detector, "pose") else None,
    }


def trace_to_onnx(spec: Any, feeds: dict[str, np.ndarray], path: Path, exporter: str) -> None:
    """Write ``spec.module`` traced on ``feeds`` to ``path`` (batch axis dynamic)."""
    if exporter not in EXPORTERS:
        raise ValueError(f"exporter must be one of {EXPORTERS}, got {exporter!r}")
    args = tuple(torch.from_numpy(feeds[name]) for name in spec.inputs)
    with torch.no_grad(), warnings.catch_warnings():
        # the tracer's notes on Python branches over fixed shapes, and the legacy exporter's
        # deprecation notice (docs/deploy.md: why it is still the default)
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        if exporter == "legacy":
            axes = {name: {0: "batch"} for name in [*spec.inputs, *spec.outputs]}
            torch.onnx.export(
                spec.module,
                args,
                str(path),
                input_names=spec.inputs,
                output_names=spec.outputs,
                dynamic_axes=axes,
                opset_version=OPSET,
                do_constant_folding=True,
                dynamo=False,
            )
        else:
            batch = torch.export.Dim("batch", min=1, max=1024)
            # forward(pixels, *extra): the extra inputs are one varargs entry
            shapes = ({0: batch}, tuple({0: batch} for _ in spec.inputs[1:]))
            program = torch.onnx.export(
                spec.module,
                args,
                input_names=spec.inputs,
                output_names=spec.outputs,
                dynamic_shapes=shapes,
                opset_version=18,
                dynamo=True,
            )
            program.save(str(path))


def read_calibration_images(folder: str | os.PathLike, n: int = 32) -> list[np.ndarray]:
    """Up to ``n`` images spread evenly over the image files of ``folder`` (good images only:
    INT8 ranges must not be learned from defects)."""
    from anomalens.data.io import load_image
    from anomalens.data.transforms import spread_indices
    from anomalens.inference import collect_images

    paths = collect_images([folder])
    return [load_image(paths[i]) for i in spread_indices(len(paths), n)]


def export_model(
    model: Detector | str | os.PathLike,
    output: str | os.PathLike,
    *,
    int8: bool = False,
    calibration: Sequence[np.ndarray] | None = None,
    exporter: str = "legacy",
) -> Path:
    """Export a fitted detector (or a saved model folder) to ``output``: ``model.onnx`` and
    ``config.json`` (method, input size, normalisation, thresholds, versions).

    ``int8`` quantises the graph (static QDQ, per-channel weights) with ``calibration``, good
    images only (RGB uint8). The folder is written next to ``output`` and swapped in when complete
    (:func:`anomalens.atomic.staged_folder`). Returns ``output``.
    """
    detector = load_detector(model) if not isinstance(model, Detector) else model
    if int8 and not calibration:
        raise ValueError("INT8 export needs calibration images (good images only)")
    output = check_output_path(output)
    # written beside ``output`` and swapped in complete: the folder is the old export or the new
    with staged_folder(
        output, replaceable=lambda p: (p / CONFIG_FILE).is_file(), what="exported model folder"
    ) as tmp:
        with fp32_backbone(detector):
            spec = build_graph(detector)
            config = export_config(detector, spec)
            feeds = graph_inputs(config, _example_images(config["image_size"]))
            trace_to_onnx(spec, feeds, tmp / MODEL_FILE, exporter)
        config["exporter"] = exporter
        if int8:
            from anomalens.export.quantize import quantize_int8

            quantize_int8(tmp / MODEL_FILE, config, calibration)
            config["precision"] = "int8"
            config["calibration_images"] = len(calibration)
        atomic_write_json(tmp / CONFIG_FILE, config)
    logger.info("exported %s to %s", detector.method, output)
    return output
