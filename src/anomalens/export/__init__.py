"""Deployment export: ONNX (and INT8) graphs of fitted detectors and the torch-free runtime.

``export_model(model, output, int8=False, calibration=None)`` writes ``model.onnx`` and
``config.json``; :class:`OnnxDetector` runs such a folder with onnxruntime alone. Importing this
package is cheap and torch-free: ``export_model`` imports torch when called.
"""

from __future__ import annotations

from typing import Any

from anomalens.export.runtime import OnnxDetector, is_exported

__all__ = ["OnnxDetector", "export_model", "is_exported"]


def export_model(*args: Any, **kwargs: Any):
    """See :func:`anomalens.export.onnx_export.export_model` (imports torch)."""
    from anomalens.export.onnx_export import export_model as _export

    return _export(*args, **kwargs)
