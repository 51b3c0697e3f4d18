"""What every detector's ``predict`` returns (torch-free, so the ONNX runtime can use it)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class Prediction:
    """Detector output for a batch of images.

    scores: ``[B]`` float32 image anomaly scores (higher = more anomalous).
    maps: one float32 ``H x W`` anomaly map per image, at that image's own resolution.
    threshold: calibrated image-score threshold (None when the detector is not calibrated).
    pixel_threshold: calibrated threshold on map values, used for hotspots and boxes.
    """

    scores: np.ndarray
    maps: list[np.ndarray]
    threshold: float | None = None
    pixel_threshold: float | None = None

    @property
    def is_defective(self) -> np.ndarray | None:
        """``[B]`` booleans ``score >= threshold``, or None when there is no threshold."""
        if self.threshold is None:
            return None
        return self.scores >= self.threshold
