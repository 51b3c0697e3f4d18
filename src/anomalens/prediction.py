"""What every detector's ``predict`` returns (torch-free, so the ONNX runtime can use it)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import cv2
import numpy as np

from anomalens.data.transforms import Frame, compose_affine

#: Sample points per grid cell side when a mask is pooled onto the patch grid.
POOL_SAMPLES = 4


@dataclass
class PatchFeatures:
    """The patch features of one image as a model saw them, and where they lie on the image.

    grid: ``[h, w, D]`` float32 features on a grid over the square model input; key: what made
    them (model and input settings): features are only compared with features of the same key;
    frame: where the (posed) image sat in the input; to_image: ``2 x 3`` affine map from input
    pixel ``(x, y)`` to the original image's pixel (letterbox, border and pose undone); shape:
    the original image's ``(H, W)``. Build with :meth:`placed`.
    """

    grid: np.ndarray
    key: str
    frame: Frame
    to_image: np.ndarray
    shape: tuple[int, int]
    _sampled: dict[tuple[int, int], tuple[np.ndarray, np.ndarray]] = field(
        default_factory=dict, init=False, repr=False
    )

    @classmethod
    def placed(
        cls, grid: np.ndarray, key: str, frame: Frame, shape: Sequence[int], pose: Any = None
    ) -> PatchFeatures:
        """Features of an image of ``shape`` placed in ``frame``; ``pose``: the
        :class:`~anomalens.pose.Pose` that image was normalised with (None: the original)."""
        affine = frame.input_to_image(shape)
        if pose is None:
            return cls(grid, key, frame, affine, (int(shape[0]), int(shape[1])))
        return cls(grid, key, frame, pose.to_original(affine), tuple(pose.shape))

    def _sampling(self, mask_shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
        """``(matrix, on)``: the ``2 x 3`` affine map from the sample grid (``POOL_SAMPLES x
        POOL_SAMPLES`` points per grid cell) to the pixels of a mask of ``mask_shape`` (the
        image at any resolution), and which sample points lie on the image's content (cached
        per shape)."""
        if mask_shape not in self._sampled:
            h, w = self.grid.shape[:2]
            samples = (h * POOL_SAMPLES, w * POOL_SAMPLES)
            ky, kx = self.frame.size / samples[0], self.frame.size / samples[1]
            # sample -> input pixel -> original pixel -> mask pixel (pixel centres aligned)
            to_input = np.array([[kx, 0.0, 0.5 * kx - 0.5], [0.0, ky, 0.5 * ky - 0.5]])
            fy, fx = mask_shape[0] / self.shape[0], mask_shape[1] / self.shape[1]
            to_mask = np.array([[fx, 0.0, 0.5 * fx - 0.5], [0.0, fy, 0.5 * fy - 0.5]])
            matrix = compose_affine(to_mask, compose_affine(self.to_image, to_input))
            self._sampled[mask_shape] = (matrix, self.frame.content_grid(samples))
        return self._sampled[mask_shape]

    def weights(self, mask: np.ndarray) -> np.ndarray:
        """``[h, w]`` share of each grid cell that falls inside ``mask`` (a boolean mask of the
        image at any resolution; the nearest pixel per sample point); a mask too small to
        cover a sample point gives its centre's cell 1."""
        h, w = self.grid.shape[:2]
        m = np.ascontiguousarray(mask, dtype=bool).view(np.uint8)
        matrix, on = self._sampling(m.shape)
        samples = cv2.warpAffine(
            m,
            matrix,
            on.shape[::-1],
            flags=cv2.INTER_NEAREST | cv2.WARP_INVERSE_MAP,
            borderMode=cv2.BORDER_CONSTANT,
            borderValue=0,
        )
        weight = cv2.resize(samples * on, (w, h), interpolation=cv2.INTER_AREA)
        if weight.any() or not m.any():
            return weight
        ys, xs = np.nonzero(m)  # the sample point nearest the mask's centre, and its cell
        sx, sy = cv2.invertAffineTransform(matrix) @ np.array([xs.mean(), ys.mean(), 1.0])
        row = int(np.clip(round(sy), 0, on.shape[0] - 1)) // POOL_SAMPLES
        col = int(np.clip(round(sx), 0, on.shape[1] - 1)) // POOL_SAMPLES
        weight[row, col] = 1.0
        return weight

    def pool(self, masks: Sequence[np.ndarray]) -> np.ndarray:
        """``[len(masks), D]`` L2-normalised features averaged inside each mask (weights:
        :meth:`weights`)."""
        cells = self.grid.reshape(-1, self.grid.shape[-1])
        out = []
        for mask in masks:
            weight = self.weights(mask).ravel()
            used = np.flatnonzero(weight)  # only the covered cells are read
            vec = (weight[used] @ cells[used]).astype(np.float64) / max(weight[used].sum(), 1e-12)
            out.append(vec / max(float(np.linalg.norm(vec)), 1e-12))
        return np.stack(out)


@dataclass
class Prediction:
    """Detector output for a batch of images.

    scores: ``[B]`` float32 image anomaly scores (higher = more anomalous).
    maps: one float32 ``H x W`` anomaly map per image, at that image's own resolution.
    threshold: calibrated image-score threshold (None when the detector is not calibrated).
    pixel_threshold: calibrated threshold on map values, used for hotspots and boxes.
    features: the patch features each map came from, when the detector keeps them (PatchCore
    with ``keep_features``; defect types reuse them instead of another backbone pass), else
    None.
    """

    scores: np.ndarray
    maps: list[np.ndarray]
    threshold: float | None = None
    pixel_threshold: float | None = None
    features: list[PatchFeatures] | None = field(default=None, repr=False)

    @property
    def is_defective(self) -> np.ndarray | None:
        """``[B]`` booleans ``score >= threshold``, or None when there is no threshold."""
        if self.threshold is None:
            return None
        return self.scores >= self.threshold
