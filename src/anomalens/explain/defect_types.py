"""Defect types from a few labelled examples: each finding is named by its nearest labelled
regions (patch features pooled inside the region plus its position on the part), with a
confidence, and "unknown type" when it is far from all of them. The patch features are the
detector's own when it keeps them (PatchCore: naming costs no second backbone pass), else those
of :func:`backbone_features`.

Give examples as a folder ``defects/<type>/*.png`` (masks optional: ``<type>/masks/<stem>.png``
or ``<type>/<stem>_mask.png``; without a mask the detector's strongest hotspot, else the whole
part, is the region) or call :func:`fit_defect_types` with arrays.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch

from anomalens.data.transforms import Frame
from anomalens.errors import DatasetError
from anomalens.prediction import PatchFeatures, Prediction

__all__ = [
    "BACKBONE_KEY",
    "UNKNOWN_TYPE",
    "DefectTypes",
    "backbone_features",
    "fit_defect_folder",
    "fit_defect_types",
    "hand_vector",
    "load_examples",
    "match_order",
    "own_features",
    "patch_features",
    "region_embeddings",
]

UNKNOWN_TYPE = "unknown type"
#: Numeric descriptors of a region (from ``describe_region``) compared between findings and
#: labelled regions: its position on the part. Outline-dependent numbers (area, elongation,
#: solidity, contrast against a ring) are left out: a finding's region is the map's blurred
#: footprint of a defect and a labelled region its exact outline, so those differ between the
#: two for the same defect (on MVTec screw the median contrast is +8.5 gray levels for the
#: masks and -6.4 for the hotspots).
HAND_FEATURES = ("axial", "lateral")
#: Candidate weights of the handcrafted part against the deep part (chosen per fit).
HAND_WEIGHTS = (0.0, 0.5, 1.0, 2.0)
_LOG = {"area_fraction", "elongation", "texture"}
#: Backbone, input side and taps of the pooled region features.
TYPE_BACKBONE, TYPE_IMAGE_SIZE, TYPE_LAYERS = "efficientnet-lite0", 320, (2, 3)


def hand_vector(numbers: dict[str, float]) -> np.ndarray:
    """The handcrafted descriptor of a region (logs of the scale-like numbers)."""
    out = []
    for name in HAND_FEATURES:
        v = float(numbers.get(name, 0.0))
        out.append(np.log(max(v, 1e-6)) if name in _LOG else v)
    return np.asarray(out, dtype=np.float64)


#: The feature key of :func:`backbone_features` (types fitted without a detector that keeps
#: its features).
BACKBONE_KEY = f"backbone {TYPE_BACKBONE} {TYPE_IMAGE_SIZE}px layers={list(TYPE_LAYERS)}"


@functools.lru_cache(maxsize=1)
def _backbone():
    from anomalens.backbones.registry import load_backbone

    return load_backbone(TYPE_BACKBONE, image_size=TYPE_IMAGE_SIZE, precision="fp32")


def backbone_features(image: np.ndarray) -> PatchFeatures:
    """The patch features regions are pooled on when the detector keeps none: a pass of
    :data:`TYPE_BACKBONE` over the image stretched to :data:`TYPE_IMAGE_SIZE`."""
    from anomalens.methods.common import pool_patches

    bb = _backbone()
    rgb = image if image.ndim == 3 else np.repeat(image[..., None], 3, axis=2)
    with torch.inference_mode():
        feats = bb.encode_image(bb.preprocess([np.ascontiguousarray(rgb[..., :3])]), TYPE_LAYERS)
        grid = pool_patches(feats, 3, len(TYPE_LAYERS) - 1)[0].numpy()
    frame = Frame.fit(image.shape, TYPE_IMAGE_SIZE, "square")
    return PatchFeatures.placed(grid, BACKBONE_KEY, frame, image.shape)


def own_features(detector: Any) -> str:
    """The key of the features regions are pooled on with ``detector``: its own when it can
    keep them (PatchCore; its ``keep_features`` is turned on, so its predictions carry them),
    else :data:`BACKBONE_KEY`."""
    key = getattr(detector, "feature_key", None)
    if key is None:
        return BACKBONE_KEY
    detector.keep_features = True
    return key


def patch_features(images: Sequence[np.ndarray], detector: Any, key: str) -> list[PatchFeatures]:
    """Patch features of ``images`` under ``key``: :func:`backbone_features`, or the
    detector's ``predict`` when ``key`` is its own (:func:`own_features`)."""
    if key == BACKBONE_KEY:
        return [backbone_features(img) for img in images]
    if detector is None or own_features(detector) != key:
        raise ValueError(
            f"these defect types compare features of '{key}'; give the detector they were "
            "fitted with"
        )
    return list(detector.predict(images).features)


def region_embeddings(
    image: np.ndarray, masks: Sequence[np.ndarray], features: PatchFeatures | None = None
) -> np.ndarray:
    """``[len(masks), D]`` L2-normalised patch features averaged inside each mask
    (:meth:`PatchFeatures.pool`; ``features`` None: :func:`backbone_features`)."""
    return (features or backbone_features(image)).pool(masks)


@dataclass
class DefectTypes:
    """Labelled region descriptors and a distance-weighted k-nearest-neighbour rule.

    deep: ``[N, D]`` unit-norm pooled features; hand: ``[N, H]`` handcrafted descriptors
    (:func:`hand_vector`); labels: index into ``types``; groups: the example image of each
    region (the "unknown" distance is measured between different images); feature_key: the
    features the deep part was pooled on (:class:`~anomalens.prediction.PatchFeatures`): a
    query is pooled on features of the same key; detector: the detector that makes them when
    they are its own. The handcrafted part
    is standardised over the examples and scaled by ``hand_weight`` (times the deep part's unit
    norm); None chooses it from :data:`HAND_WEIGHTS` on the examples alone: the weight whose
    rule names the most examples right from the examples of the other images (ties: the
    smaller weight), so position counts only where it tells the types apart.
    """

    types: tuple[str, ...]
    deep: np.ndarray
    hand: np.ndarray
    labels: np.ndarray
    groups: np.ndarray
    feature_key: str = BACKBONE_KEY
    k: int = 5
    unknown_factor: float = 2.0
    hand_weight: float | None = None
    detector: Any = field(default=None, repr=False)
    unknown_distance: float = field(init=False, default=float("inf"))

    def __post_init__(self) -> None:
        if len(self.deep) == 0:
            raise ValueError("defect types need at least one labelled region")
        if not len(self.deep) == len(self.hand) == len(self.labels) == len(self.groups):
            raise ValueError("deep, hand, labels and groups must have one row per region")
        self._mean = self.hand.mean(0)
        self._std = self.hand.std(0) + 1e-6
        other = self.groups[:, None] != self.groups[None, :]
        if self.hand_weight is None:
            scores = []
            for w in HAND_WEIGHTS:
                self.hand_weight = w
                self._vectors = self._combine(self.deep, self.hand)
                d = np.where(other, self._distances(self._vectors), np.inf)
                scores.append(float(np.mean(self._vote(d)[0] == self.labels)))
            self.hand_weight = HAND_WEIGHTS[int(np.argmax(scores))]
        self._vectors = self._combine(self.deep, self.hand)
        d = np.where(other, self._distances(self._vectors), np.inf)
        nearest = d.min(1)
        finite = nearest[np.isfinite(nearest)]
        if finite.size:
            self.unknown_distance = self.unknown_factor * float(np.percentile(finite, 95))

    def _combine(self, deep: np.ndarray, hand: np.ndarray) -> np.ndarray:
        z = (hand - self._mean) / self._std * (self.hand_weight / np.sqrt(hand.shape[1]))
        return np.concatenate([deep, z], axis=1)

    def _vote(self, d: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Per row of distances: the winning label, its vote share and the nearest distance
        (distance-weighted vote of the ``k`` nearest finite examples)."""
        k = min(self.k, d.shape[1])
        order = np.argsort(d, axis=1, kind="stable")[:, :k]
        near = np.take_along_axis(d, order, 1)
        weight = np.where(np.isfinite(near), 1.0 / (near + 1e-6), 0.0)
        votes = np.zeros((len(d), len(self.types)))
        np.add.at(votes, (np.arange(len(d))[:, None], self.labels[order]), weight)
        best = np.argmax(votes, 1)
        share = votes[np.arange(len(d)), best] / np.maximum(votes.sum(1), 1e-12)
        return best, share, near[:, 0]

    def _distances(self, queries: np.ndarray) -> np.ndarray:
        v = self._vectors
        sq = (queries**2).sum(1)[:, None] + (v**2).sum(1)[None, :] - 2.0 * queries @ v.T
        return np.sqrt(np.maximum(sq, 0.0))

    def classify(self, deep: np.ndarray, hand: np.ndarray) -> list[tuple[str, float | None]]:
        """``(type, confidence)`` per query row; ``(UNKNOWN_TYPE, None)`` when the nearest
        example is farther than ``unknown_distance``."""
        return [(name, conf) for name, conf, _ in self.match(deep, hand)]

    def match(self, deep: np.ndarray, hand: np.ndarray) -> list[tuple[str, float | None, float]]:
        """:meth:`classify` plus the distance to the nearest labelled example per query row."""
        d = self._distances(self._combine(np.atleast_2d(deep), np.atleast_2d(hand)))
        best, share, nearest = self._vote(d)
        return [
            (UNKNOWN_TYPE, None, float(n))
            if n > self.unknown_distance
            else (self.types[int(b)], float(c), float(n))
            for b, c, n in zip(best, share, nearest, strict=True)
        ]

    def subset(self, keep: np.ndarray) -> DefectTypes:
        """The same rule with only the regions where ``keep`` is True (leave-one-out)."""
        return DefectTypes(
            self.types,
            self.deep[keep],
            self.hand[keep],
            self.labels[keep],
            self.groups[keep],
            self.feature_key,
            self.k,
            self.unknown_factor,
            detector=self.detector,
        )

    def use_detector(self, detector: Any) -> None:
        """Take findings' features from ``detector`` from now on (a model reloaded in the
        service) when it makes the features this rule was fitted on; its ``keep_features`` is
        turned on. Otherwise the rule keeps the detector it was fitted with."""
        if self.feature_key != BACKBONE_KEY and (
            getattr(detector, "feature_key", None) == self.feature_key
        ):
            self.detector = detector
            own_features(detector)

    def predict_regions(
        self,
        image: np.ndarray,
        analysis: Any,
        numbers: Sequence[dict[str, float]],
        features: PatchFeatures | None = None,
    ) -> list[tuple[str, float | None, float]]:
        """``(type, confidence, distance to the nearest example)`` of the regions of an
        :class:`~anomalens.explain.grounded.Analysis` (:meth:`match`); ``features``: the
        image's patch features from the prediction, used when their key is this rule's (else
        they are computed: :func:`patch_features`)."""
        if features is None or features.key != self.feature_key:
            features = patch_features([image], self.detector, self.feature_key)[0]
        deep = features.pool([r.mask for r in analysis.regions])
        hand = np.stack([hand_vector(n) for n in numbers])
        return self.match(deep, hand)


def match_order(matches: Sequence[tuple[str, float | None, float]]) -> list[int]:
    """Order of findings by how closely each matches a labelled defect: named types before
    "unknown type", then by the distance to the nearest example (ties keep their order)."""
    return sorted(range(len(matches)), key=lambda i: (matches[i][0] == UNKNOWN_TYPE, matches[i][2]))


def _example_region(image: np.ndarray, mask: np.ndarray | None, prediction: Prediction | None):
    """``(analysis-like part, gray, region)`` of a labelled example (``prediction``: the
    detector's, used without a mask)."""
    from anomalens.explain.geometry import find_part, region_from_mask
    from anomalens.explain.grounded import analyse, region_threshold

    part, gray = find_part(image)
    if mask is not None and np.any(mask):
        return part, gray, region_from_mask(mask, gray.shape)
    if prediction is not None:
        m = prediction.maps[0]
        thr = region_threshold(m, prediction.pixel_threshold, prediction.threshold)
        found = analyse(image, m, thr, top_k=1, force=True)
        if found.regions:
            return part, gray, found.regions[0]
    full = cv2.resize(part.mask.astype(np.uint8), image.shape[1::-1], cv2.INTER_NEAREST)
    return part, gray, region_from_mask(full, gray.shape)


def fit_defect_types(
    images: Sequence[np.ndarray],
    masks: Sequence[np.ndarray | None] | None,
    types: Sequence[str],
    detector: Any = None,
) -> DefectTypes:
    """Defect types from labelled defective images (one region per image: its mask, else the
    detector's strongest hotspot, else the whole part). Regions are pooled on the detector's
    own patch features when it can keep them (PatchCore; its ``keep_features`` is turned on,
    so its predictions carry them and naming needs no second backbone pass), else on
    :func:`backbone_features`."""
    from anomalens.explain.grounded import describe_region

    if len(images) != len(types) or (masks is not None and len(masks) != len(images)):
        raise ValueError("fit_defect_types: give one type (and one mask or None) per image")
    if not images:
        raise ValueError("fit_defect_types needs at least one labelled image")
    names = tuple(sorted(set(types)))
    key = own_features(detector)
    deep, hand = [], []
    for i, image in enumerate(images):
        mask = None if masks is None else masks[i]
        prediction = None
        if detector is not None and (key != BACKBONE_KEY or mask is None or not np.any(mask)):
            prediction = detector.predict([image])
        part, gray, region = _example_region(image, mask, prediction)
        _, numbers = describe_region(region, part, gray, None)
        features = prediction.features[0] if prediction and prediction.features else None
        features = features or backbone_features(image)
        deep.append(features.pool([region.mask])[0])
        hand.append(hand_vector(numbers))
    labels = np.array([names.index(t) for t in types])
    return DefectTypes(
        names,
        np.stack(deep),
        np.stack(hand),
        labels,
        np.arange(len(images)),
        key,
        detector=detector if key != BACKBONE_KEY else None,
    )


def load_examples(
    folder: str | Path,
) -> tuple[list[np.ndarray], list[np.ndarray | None], list[str]]:
    """``(images, masks or None, types)`` of a folder ``<type>/*.png`` (see module doc)."""
    from anomalens.data.datasets import list_images
    from anomalens.data.io import load_image, load_mask

    root = Path(folder)
    if not root.is_dir():
        raise DatasetError(f"{root}: defect-type folder not found (expected <type>/*.png)")
    images, masks, types = [], [], []
    for sub in sorted(p for p in root.iterdir() if p.is_dir()):
        for path in list_images(sub):
            if path.stem.endswith("_mask"):
                continue
            image = load_image(path)
            mask_path = next(
                (
                    p
                    for p in (sub / "masks" / f"{path.stem}.png", sub / f"{path.stem}_mask.png")
                    if p.is_file()
                ),
                None,
            )
            images.append(image)
            masks.append(None if mask_path is None else load_mask(mask_path, image.shape[:2]))
            types.append(sub.name)
    if not images:
        raise DatasetError(f"{root}: no labelled images found (expected <type>/*.png)")
    return images, masks, types


def fit_defect_folder(folder: str | Path, detector: Any = None) -> DefectTypes:
    """:func:`fit_defect_types` on the examples of :func:`load_examples`."""
    images, masks, types = load_examples(folder)
    return fit_defect_types(images, masks, types, detector=detector)
