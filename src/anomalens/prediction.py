"""What every detector's ``predict`` returns (torch-free, so the ONNX runtime can use it)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import cv2
import numpy as np

#: Sample points per grid cell side when a mask is pooled onto the patch grid.
POOL_SAMPLES = 4


@dataclass
class PatchFeatures:
    """The patch features of one image as a model saw them, and where they lie on the image.

    grid: ``[h, w, D]`` float32 features on a grid over the square model input of side
    ``size``; key: what made them (model and input settings): features are only compared with
    features of the same key; to_image: ``2 x 3`` affine map from input pixel ``(x, y)`` to
    the original image's pixel (letterbox, border and pose undone); content: ``(top, left,
    height, width)`` of the image inside the input (the rest is padding); shape: the original
    image's ``(H, W)``.
    """

    grid: np.ndarray
    key: str
    to_image: np.ndarray
    size: int
    content: tuple[int, int, int, int]
    shape: tuple[int, int]

    _sampled: dict[tuple[int, int], tuple[np.ndarray, np.ndarray]] = field(
        default_factory=dict, init=False, repr=False
    )

    def _sampling(self, mask_shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
        """``(matrix, on)``: the ``2 x 3`` affine map from the sample grid (``POOL_SAMPLES x
        POOL_SAMPLES`` points per grid cell) to the pixels of a mask of ``mask_shape`` (the
        image at any resolution), and which sample points lie on the image's content (cached
        per shape)."""
        if mask_shape not in self._sampled:
            self._sampled[mask_shape] = self._make_sampling(mask_shape)
        return self._sampled[mask_shape]

    def _make_sampling(self, mask_shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
        h, w = self.grid.shape[:2]
        ky, kx = self.size / (h * POOL_SAMPLES), self.size / (w * POOL_SAMPLES)
        # sample (j, i) -> input pixel -> original pixel -> mask pixel (pixel centres aligned)
        to_input = np.array([[kx, 0.0, 0.5 * kx - 0.5], [0.0, ky, 0.5 * ky - 0.5]])
        (mh, mw), (height, width) = mask_shape, self.shape
        to_mask = np.array(
            [[mw / width, 0.0, 0.5 * mw / width - 0.5], [0.0, mh / height, 0.5 * mh / height - 0.5]]
        )
        matrix = _compose(to_mask, _compose(self.to_image, to_input))
        top, left, ch, cw = self.content
        ys = (np.arange(h * POOL_SAMPLES) + 0.5) * ky - 0.5
        xs = (np.arange(w * POOL_SAMPLES) + 0.5) * kx - 0.5
        rows = (ys >= top - 0.5) & (ys < top + ch - 0.5)
        cols = (xs >= left - 0.5) & (xs < left + cw - 0.5)
        return matrix, (rows[:, None] & cols[None, :]).astype(np.float32)

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
            (w * POOL_SAMPLES, h * POOL_SAMPLES),
            flags=cv2.INTER_NEAREST | cv2.WARP_INVERSE_MAP,
            borderMode=cv2.BORDER_CONSTANT,
            borderValue=0,
        )
        weight = cv2.resize(samples * on, (w, h), interpolation=cv2.INTER_AREA)
        if weight.any() or not m.any():
            return weight
        (mh, mw), (height, width) = m.shape, self.shape
        ys, xs = np.nonzero(m)  # the cell of the mask's centre, in input pixels
        cx = (xs.mean() + 0.5) * width / mw - 0.5
        cy = (ys.mean() + 0.5) * height / mh - 0.5
        back = cv2.invertAffineTransform(self.to_image)
        ix = back[0, 0] * cx + back[0, 1] * cy + back[0, 2]
        iy = back[1, 0] * cx + back[1, 1] * cy + back[1, 2]
        row = int(np.clip((iy + 0.5) * h / self.size, 0, h - 1))
        col = int(np.clip((ix + 0.5) * w / self.size, 0, w - 1))
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


def _compose(outer: np.ndarray, inner: np.ndarray) -> np.ndarray:
    """The ``2 x 3`` affine map ``outer(inner(p))``."""
    out = outer[:, :2] @ inner
    out[:, 2] += outer[:, 2]
    return out


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
