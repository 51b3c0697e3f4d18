"""INT8: static QDQ quantisation of an exported graph with onnxruntime.quantization.

Weights are quantised per channel (int8), activations per tensor (uint8) with ranges from the
graph inputs of good images only (MinMax calibration). Only convolutions and matrix products are
quantised (the backbone and the memory product); the nearest-neighbour re-rank, blur and scores
stay float32, so the INT8 product only picks the candidates whose exact distance is computed.
The first convolution (stem / patch embedding) and depthwise convolutions stay float32: with
them quantised, EfficientNet-Lite PatchCore scored good synthetic test images 58 instead of 17
(torch); without, 21 (docs/deploy.md).
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from anomalens.export.runtime import graph_inputs

#: Operators quantised (the rest of the graph stays float32).
QUANTIZED_OPS = ("Conv", "MatMul")
#: Calibration images fed per batch.
CALIBRATION_BATCH = 4


def int8_instruction_sets() -> dict[str, bool]:
    """Which instruction sets with fast int8 dot products the CPU has (``/proc/cpuinfo``; all
    False elsewhere): AVX512-VNNI, AVX-VNNI, AMX-INT8; plus AVX2 and AVX512F."""
    from anomalens.runtime import cpu_flags

    flags = cpu_flags()
    names = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "amx_int8")
    return {name: name in flags for name in names}


def describe_int8_support() -> str:
    """One line for users: ``INT8 speed depends on ...; this CPU has: ...``."""
    isa = int8_instruction_sets()
    fast = [n for n in ("avx512_vnni", "avx_vnni", "amx_int8") if isa[n]]
    has = ", ".join(n.upper().replace("_", "-") for n in fast) or "none of them"
    return f"INT8 speed depends on AVX512-VNNI, AVX-VNNI or AMX-INT8; this CPU has {has}"


class _Reader:
    """onnxruntime ``CalibrationDataReader`` over graph inputs of good images."""

    def __init__(self, config: dict[str, Any], images: Sequence[np.ndarray]) -> None:
        self.config, self.images = config, list(images)
        self._it: Iterator[dict[str, np.ndarray]] | None = None

    def _batches(self) -> Iterator[dict[str, np.ndarray]]:
        for start in range(0, len(self.images), CALIBRATION_BATCH):
            yield graph_inputs(self.config, self.images[start : start + CALIBRATION_BATCH])

    def get_next(self) -> dict[str, np.ndarray] | None:
        if self._it is None:
            self._it = self._batches()
        return next(self._it, None)

    def rewind(self) -> None:
        self._it = None


def float_nodes(model_path: str | Path) -> list[str]:
    """Names of the convolutions kept float32: the first one and the depthwise ones."""
    import onnx

    graph = onnx.load(str(model_path), load_external_data=False).graph
    convs = [n for n in graph.node if n.op_type == "Conv"]
    depthwise = [n.name for n in convs if any(a.name == "group" and a.i > 1 for a in n.attribute)]
    return [convs[0].name, *depthwise] if convs else []


def quantize_int8(
    model_path: str | Path, config: dict[str, Any], calibration: Sequence[np.ndarray]
) -> Path:
    """Replace the float32 graph at ``model_path`` by its INT8 QDQ version calibrated on
    ``calibration`` (good RGB uint8 images)."""
    from onnxruntime.quantization import (
        CalibrationDataReader,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    if not calibration:
        raise ValueError("INT8 quantisation needs calibration images")
    reader = type("Reader", (_Reader, CalibrationDataReader), {})(config, calibration)
    model_path = Path(model_path)
    with tempfile.TemporaryDirectory(dir=model_path.parent) as tmp:
        prepared = Path(tmp) / "prepared.onnx"
        quant_pre_process(str(model_path), str(prepared), skip_symbolic_shape=True)
        excluded = float_nodes(prepared)
        quantize_static(
            str(prepared),
            str(model_path),
            reader,
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            op_types_to_quantize=list(QUANTIZED_OPS),
            nodes_to_exclude=excluded,
            extra_options={"ActivationSymmetric": False, "WeightSymmetric": True},
        )
    return model_path
