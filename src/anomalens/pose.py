"""Pose normalisation of an elongated part on a plain background (few-shot matching).

A part that lies at any angle (a screw, a pin, a bolt) gives a k-shot memory that covers only
k of its orientations, so a good part at a new angle looks anomalous. :func:`estimate_pose`
finds the part's principal axis from the second moments of its foreground
(:func:`anomalens.postprocess.foreground_mask`) and :func:`normalise_pose` rotates the image
about the part so that the axis is horizontal and the part (the middle of its extent along
the axis) is at the centre of a square canvas; the background outside the image is filled
with the background's median colour. The 180-degree ambiguity of an axis is resolved by the
sign of the third moment of the foreground along the axis (the heavier end, e.g. a screw's
head, goes left). :func:`restore_map` takes a map of the normalised image back to the original
frame.

:func:`pose_decision` is the ``pose="auto"`` rule: on when every (sampled) good image shows
one elongated object (principal axes ratio >= :data:`MIN_ELONGATION`) on a plain background
(:func:`anomalens.postprocess.has_plain_background`); never for textures or surfaces.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from anomalens.data.transforms import compose_affine, spread_indices
from anomalens.errors import CheckpointError, check_choice
from anomalens.postprocess import foreground_mask, has_plain_background, to_gray

logger = logging.getLogger(__name__)

__all__ = [
    "MIN_ELONGATION",
    "POSE_MODES",
    "Pose",
    "PoseDecision",
    "PoseState",
    "check_pose",
    "estimate_pose",
    "normalise_pose",
    "pose_decision",
    "restore_map",
]

#: Settings of a detector's ``pose`` field.
POSE_MODES = ("auto", "on", "off")
#: ``pose="auto"`` needs the part's principal axes (square roots of the eigenvalues of the
#: foreground's second moments) to differ at least this much: an axis is then well defined.
MIN_ELONGATION = 2.0
#: Longer side of the downscaled image the pose is measured on (pixels).
POSE_SIZE = 256


def check_pose(value: str) -> str:
    """Return ``value`` if it is one of :data:`POSE_MODES`, else raise ValueError."""
    return check_choice(value, POSE_MODES, "pose")


@dataclass(frozen=True)
class Pose:
    """The pose of the part in one image.

    angle: direction of the principal axis in degrees (image coordinates, y down: positive is
    clockwise on screen), pointing from the heavier end to the lighter one; center: ``(x, y)``
    in pixels, on the axis through the foreground's centroid, halfway between the part's two
    ends (it goes to the centre of the normalised square); elongation: ratio of the principal axes
    (1 for a disc); shape: ``(H, W)`` of the image; side: side of the normalised square image;
    fill: background colour (median of the pixels outside the foreground) used outside the
    image.
    """

    angle: float
    center: tuple[float, float]
    elongation: float
    shape: tuple[int, int]
    side: int
    fill: tuple[float, ...]

    @property
    def matrix(self) -> np.ndarray:
        """``2 x 3`` affine map from original pixel coordinates to the normalised square."""
        t = math.radians(self.angle)
        c, s = math.cos(t), math.sin(t)
        rot = np.array([[c, s], [-s, c]])  # rotation by -angle: the axis goes to +x
        cx, cy = self.center
        mid = (self.side - 1) / 2.0
        offset = np.array([mid, mid]) - rot @ np.array([cx, cy])
        return np.hstack([rot, offset[:, None]])

    def to_original(self, affine: np.ndarray) -> np.ndarray:
        """``affine`` (``2 x 3``, to pixels of the normalised square) followed by the way back
        to the original image's pixels."""
        return compose_affine(cv2.invertAffineTransform(self.matrix), affine)

    def scaled_fill(self, gain: float) -> Pose:
        """The same pose with the background colour multiplied by ``gain`` (clipped to 255)."""
        fill = tuple(min(255.0, v * gain) for v in self.fill)
        return dataclasses.replace(self, fill=fill)


def _small(image: np.ndarray, size: int) -> tuple[np.ndarray, float]:
    """``image`` downscaled so its longer side is at most ``size`` (aspect kept) and the scale."""
    h, w = image.shape[:2]
    scale = min(1.0, size / max(h, w))
    if scale == 1.0:
        return image, 1.0
    dsize = (max(1, round(w * scale)), max(1, round(h * scale)))
    return cv2.resize(image, dsize, interpolation=cv2.INTER_AREA), scale


def estimate_pose(image: np.ndarray, size: int = POSE_SIZE) -> Pose | None:
    """The :class:`Pose` of the object in a uint8 image (``H x W`` or ``H x W x 3``), or None
    when :func:`~anomalens.postprocess.foreground_mask` finds no object."""
    image = np.asarray(image)
    to_gray(image)  # checks dtype and layout
    small, scale = _small(image, size)
    mask = foreground_mask(small, margin=0.0)
    if mask.all() or not mask.any():
        return None
    # second and third moments of the foreground pixels (cv2.moments: pixel indices)
    mask_u8 = mask.astype(np.uint8)
    mom = cv2.moments(mask_u8, binaryImage=True)
    n = mom["m00"]
    cov = np.array([[mom["mu20"], mom["mu11"]], [mom["mu11"], mom["mu02"]]]) / n
    evals, evecs = np.linalg.eigh(cov)  # ascending
    a, b = evecs[:, 1]
    # E[u^3] along the axis; the long (light) tail must point along +axis, the heavy end left
    skew = a**3 * mom["mu30"] + 3 * a * a * b * mom["mu21"] + 3 * a * b * b * mom["mu12"]
    if skew + b**3 * mom["mu03"] < 0:
        a, b = -a, -b
    # the centre is the middle of the part's extent along the axis (the centroid lies towards
    # the heavy end), so both ends stay inside the square whenever the part fits in it; the
    # extreme pixels along the axis lie on the outer contours
    cx, cy = mom["m10"] / n, mom["m01"] / n
    contours, _ = cv2.findContours(mask_u8, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    edge = np.concatenate([c.reshape(-1, 2) for c in contours]).astype(np.float64)
    u = (edge[:, 0] - cx) * a + (edge[:, 1] - cy) * b
    mid = (float(u.min()) + float(u.max())) / 2.0
    # pixel centres in original coordinates
    cx = (cx + mid * a + 0.5) / scale - 0.5
    cy = (cy + mid * b + 0.5) / scale - 0.5
    elongation = math.sqrt(max(evals[1], 0.0) / max(evals[0], 1e-12))
    angle = math.degrees(math.atan2(b, a)) % 360.0
    h, w = image.shape[:2]
    fill = _median_colour(small, ~mask)
    return Pose(angle, (cx, cy), float(elongation), (h, w), max(h, w), fill)


def _median_colour(image: np.ndarray, where: np.ndarray) -> tuple[float, ...]:
    """Per-channel median of the uint8 ``image`` pixels where ``where`` is True (the same
    values as ``np.median``, from histograms)."""
    mask = where.astype(np.uint8)
    n = int(mask.sum())
    image = np.ascontiguousarray(image)
    out = []
    for channel in range(1 if image.ndim == 2 else image.shape[2]):
        hist = cv2.calcHist([image], [channel], mask, [256], [0, 256])
        low, high = np.searchsorted(np.cumsum(hist.ravel()), [(n - 1) // 2 + 1, n // 2 + 1])
        out.append((float(low) + float(high)) / 2.0)
    return tuple(out)


def normalise_pose(image: np.ndarray, pose: Pose) -> np.ndarray:
    """``image`` rotated and shifted into the pose's square frame (axis horizontal, the part's
    centre at the centre; bilinear; outside the image filled with ``pose.fill``)."""
    fill = pose.fill if np.asarray(image).ndim == 3 else pose.fill[0]
    return cv2.warpAffine(
        np.ascontiguousarray(image),
        pose.matrix,
        (pose.side, pose.side),
        flags=cv2.INTER_LINEAR,
        borderMode=cv2.BORDER_CONSTANT,
        borderValue=fill,
    )


def restore_map(anomaly_map: np.ndarray, pose: Pose) -> np.ndarray:
    """A map of the normalised image (any square size; resized to ``pose.side`` first) in the
    original frame, ``pose.shape`` (bilinear; pixels outside the square, never seen by the
    detector, take the map's minimum)."""
    m = np.asarray(anomaly_map, dtype=np.float32)
    if m.shape != (pose.side, pose.side):
        m = cv2.resize(m, (pose.side, pose.side), interpolation=cv2.INTER_LINEAR)
    h, w = pose.shape
    return cv2.warpAffine(
        m,
        pose.matrix,
        (w, h),
        flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
        borderMode=cv2.BORDER_CONSTANT,
        borderValue=float(m.min()) if m.size else 0.0,
    )


@dataclass(frozen=True)
class PoseDecision:
    """What a ``pose`` setting decided for a set of good images, and why (one line)."""

    on: bool
    reason: str


def pose_decision(setting: str, images: Sequence[np.ndarray], n: int = 16) -> PoseDecision:
    """The decision of a ``pose`` setting for these good images (``auto``: on when each of up
    to ``n`` evenly spread images shows one object on a plain background whose principal axes
    differ by at least :data:`MIN_ELONGATION`)."""
    check_pose(setting)
    if setting != "auto":
        return PoseDecision(setting == "on", f"pose={setting}")
    if not images:
        return PoseDecision(False, "pose=auto: off (no images)")
    if not has_plain_background(images):
        return PoseDecision(
            False, "pose=auto: off (no object on a plain background: a texture or surface)"
        )
    chosen = spread_indices(len(images), n)
    poses = [estimate_pose(images[i]) for i in chosen]
    if any(p is None for p in poses):
        return PoseDecision(False, "pose=auto: off (no object found in some good images)")
    elong = min(p.elongation for p in poses)  # type: ignore[union-attr]
    if elong < MIN_ELONGATION:
        return PoseDecision(
            False,
            f"pose=auto: off (the object is not elongated: axes ratio {elong:.2f} "
            f"< {MIN_ELONGATION})",
        )
    angles = [p.angle for p in poses]  # type: ignore[union-attr]
    return PoseDecision(
        True,
        f"pose=auto: on (an elongated object on a plain background: axes ratio >= {elong:.2f}; "
        f"axis angles {min(angles):.0f} to {max(angles):.0f} degrees)",
    )


ScoreBatch = Callable[[list[np.ndarray]], tuple[Sequence[float], Sequence[np.ndarray]]]


@dataclass
class PoseState:
    """What a detector's ``fit`` decided about pose normalisation (saved with the model).

    on: normalise every image; reason: the one-line why (:func:`pose_decision`);
    background_level: with the brightness match, the good images' median background grey level
    each image is scaled to (None: no brightness match).
    """

    on: bool = False
    reason: str = ""
    background_level: float | None = None

    @classmethod
    def fit(
        cls, setting: str, images: Sequence[np.ndarray], brightness: bool, method: str = "fit"
    ) -> tuple[PoseState, list[np.ndarray]]:
        """Decide for these good images (``setting``: see :data:`POSE_MODES`), log the decision
        and why (INFO, as ``<method> fit: pose=...``), and return the state with the images
        normalised (the same images when off)."""
        decision = pose_decision(setting, images)
        logger.info("%s fit: %s", method, decision.reason)
        if not decision.on:
            return cls(False, decision.reason), list(images)
        poses = [estimate_pose(img) for img in images]
        fills = [float(np.mean(p.fill)) for p in poses if p is not None]
        level = float(np.median(fills)) if brightness and fills else None
        state = cls(True, decision.reason, level)
        return state, [state.normalise(i, p)[0] for i, p in zip(images, poses, strict=True)]

    def normalise(
        self, image: np.ndarray, pose: Pose | None = None
    ) -> tuple[np.ndarray, Pose | None]:
        """``image`` in its normalised pose and brightness, and the pose that
        :func:`restore_map` needs (unchanged and None when off or no object is found);
        ``pose``: the image's pose if already estimated."""
        if not self.on:
            return image, None
        pose = pose if pose is not None else estimate_pose(image)
        if pose is None:
            return image, None
        if self.background_level is not None:
            gain = self.background_level / max(float(np.mean(pose.fill)), 1.0)
            lut = np.clip(np.arange(256, dtype=np.float32) * gain + 0.5, 0, 255).astype(np.uint8)
            image = cv2.LUT(image, lut)  # = clip(image * gain + 0.5), as a table
            pose = pose.scaled_fill(gain)
        return normalise_pose(image, pose), pose

    def normalise_all(self, images: Sequence[np.ndarray]) -> list[np.ndarray]:
        """The images normalised (:meth:`normalise`); the same list when off."""
        return [self.normalise(img)[0] for img in images] if self.on else list(images)

    def wrap(self, score_batch: ScoreBatch) -> ScoreBatch:
        """``score_batch(images) -> (scores, maps)`` for original images: each is normalised,
        scored, and its map taken back to the image's frame (``score_batch`` itself when off)."""
        if not self.on:
            return score_batch

        def scored(batch: list[np.ndarray]) -> tuple[Sequence[float], list[np.ndarray]]:
            normed = [self.normalise(img) for img in batch]
            scores, maps = score_batch([n[0] for n in normed])
            return scores, [self.restore(m, p) for m, (_, p) in zip(maps, normed, strict=True)]

        return scored

    @staticmethod
    def restore(anomaly_map: np.ndarray, pose: Pose | None) -> np.ndarray:
        """The map of a normalised image back in the original frame (:func:`restore_map`;
        unchanged when :meth:`normalise` returned no pose)."""
        return anomaly_map if pose is None else restore_map(anomaly_map, pose)

    def to_meta(self) -> dict[str, Any]:
        """The fields a checkpoint's ``config.json`` stores."""
        return {
            "use_pose": self.on,
            "pose_reason": self.reason,
            "background_level": self.background_level,
        }

    @classmethod
    def from_meta(cls, meta: dict[str, Any], where: str | Path) -> PoseState:
        """The state saved by :meth:`to_meta` (a checkpoint without it: off), validated."""
        on = meta.get("use_pose", False)
        level = meta.get("background_level")
        if not isinstance(on, bool):
            raise CheckpointError(f"{where}: 'use_pose' has the wrong type (must be a boolean)")
        if level is not None and (
            isinstance(level, bool) or not isinstance(level, (int, float)) or not level > 0
        ):
            raise CheckpointError(
                f"{where}: 'background_level' has the wrong type (must be a positive number "
                f"or null), got {level!r}"
            )
        reason = meta.get("pose_reason", "")
        return cls(on, str(reason), None if level is None else float(level))
