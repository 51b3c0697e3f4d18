"""The grounded explainer: words from what the detector already knows (map, hotspots, the
part's foreground, the pixels). Offline, no weights; optional defect types from a few labelled
examples (:mod:`anomalens.explain.defect_types`).

It never states a defect on an image the detector calls good (the summary then reads "no
anomaly found: highest score 0.41, threshold 0.52") and never names a type it was not given.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from anomalens.explain.base import DEFECTIVE, GOOD, UNKNOWN, Explanation, Finding
from anomalens.explain.geometry import (
    Part,
    Region,
    appearance_of,
    find_part,
    location,
    map_baseline,
    peak_regions,
    scaled_map,
    shape_of,
)
from anomalens.methods.base import Prediction

__all__ = ["Analysis", "GroundedExplainer", "analyse", "describe_region"]

#: When no pixel reaches the threshold (an image flagged by its score alone), the peaks above
#: this fraction of the map's maximum are described.
BELOW_THRESHOLD_CUT = 0.8
#: Regions below this fraction of the working image are ignored (noise).
MIN_AREA_FRACTION = 1e-4


@dataclass
class Analysis:
    """The part, the working-copy gray image and the hotspot regions of one image."""

    part: Part
    gray: np.ndarray
    regions: list[Region]
    threshold: float
    below_threshold: bool = False


def region_threshold(
    anomaly_map: np.ndarray, pixel_threshold: float | None, threshold: float | None
) -> float:
    """The map level regions are cut at: the pixel threshold, else the image threshold, else
    80% of the map's peak."""
    for value in (pixel_threshold, threshold):
        if value is not None and np.isfinite(value):
            return float(value)
    return 0.8 * float(np.max(anomaly_map))


def analyse(
    image: np.ndarray,
    anomaly_map: np.ndarray,
    threshold: float,
    top_k: int = 3,
    force: bool = False,
) -> Analysis:
    """Part and regions of one image: the strongest peaks at or above ``threshold`` (with
    ``force`` and none: those above 80% of the map's peak, ``below_threshold``), each with its
    region out to
    its full width at half maximum above the part's typical map level
    (:func:`~anomalens.explain.geometry.peak_regions`)."""
    part, gray = find_part(image)
    min_area = max(2, int(MIN_AREA_FRACTION * gray.size))
    full = np.asarray(anomaly_map, dtype=np.float32)
    work_map = scaled_map(full, gray.shape)
    baseline = map_baseline(work_map, part)
    peak = float(work_map.max())
    below = force and peak < threshold
    cut = BELOW_THRESHOLD_CUT * peak if below else threshold
    regions = peak_regions(work_map, cut, baseline, full.shape, top_k, min_area, force=force)
    return Analysis(part, gray, regions, threshold, below)


def describe_region(
    region: Region, part: Part, gray: np.ndarray, pixel_threshold: float | None
) -> tuple[Finding, dict[str, Any]]:
    """The :class:`Finding` of one region and its numeric descriptors (shape, contrast,
    position on the part) used by defect types."""
    cx, cy = region.centroid
    words, where = location(part, cx, cy)
    shape, orientation, shape_numbers = shape_of(region, part)
    appearance, look = appearance_of(region, part, gray)
    area_work = int(region.mask.sum())
    part_area = part.area if not part.is_surface else part.mask.size
    scale2 = part.scale**2
    x0, y0, x1, y1 = part.bbox
    if part.elongated:  # along the axis (-1 narrow end .. 1 wide end) and off it
        t, s = part.axial(cx, cy)
    else:  # towards the outline or frame (0 centre .. 1 edge) and towards a corner
        bx = abs(2 * (cx - x0) / max(x1 - x0, 1) - 1)
        by = abs(2 * (cy - y0) / max(y1 - y0, 1) - 1)
        t, s = max(bx, by), min(bx, by)
    numbers = {
        **shape_numbers,
        **look,
        "area_fraction": area_work / max(part_area, 1),
        "axial": float(t),
        "lateral": float(abs(s)),
        "x": (cx - x0) / max(x1 - x0, 1),
        "y": (cy - y0) / max(y1 - y0, 1),
    }
    strength = (
        region.peak / pixel_threshold
        if pixel_threshold is not None and pixel_threshold > 0
        else float("nan")
    )
    finding = Finding(
        box=[region.box.x0, region.box.y0, region.box.x1, region.box.y1],
        area_px=round(area_work / scale2),
        area_pct=100.0 * numbers["area_fraction"],
        location=words,
        shape=shape,
        orientation=orientation,
        appearance=appearance,
        strength=float(strength),
        peak=float(region.peak),
        where=where,
    )
    return finding, numbers


def good_summary(score: float, threshold: float) -> str:
    return f"No anomaly found: highest score {score:.3g}, threshold {threshold:.3g}."


def defect_summary(
    score: float,
    threshold: float | None,
    findings: Sequence[Finding],
    below: bool,
    lead: str = "Strongest",
) -> str:
    head = (
        f"Defective: score {score:.3g} >= threshold {threshold:.3g}"
        if threshold is not None
        else f"Score {score:.3g} (no calibrated threshold)"
    )
    if not findings:
        return head + "; no distinct region stands out in the map."
    n = len(findings)
    regions = f"{n} region{'s' * (n != 1)}"
    note = " (none above the pixel threshold; the strongest areas are shown)" if below else ""
    top = findings[0].sentence()
    return f"{head}; {regions}{note}. {lead}: {top}."


class GroundedExplainer:
    """Explains predictions from the map, hotspots, foreground and pixels (see module doc).

    defect_types: a fitted :class:`~anomalens.explain.defect_types.DefectTypes`, or a folder
    ``<type>/*.png`` (masks optional, see :func:`~anomalens.explain.defect_types.load_examples`);
    top_k: hotspots described per image; detector: used to find the region of labelled examples
    without masks; explain_all: also analyse images called good (for VLM explainers; their
    explanation still has no findings and says no anomaly was found).
    """

    name = "grounded"
    model: str | None = None

    def __init__(
        self,
        defect_types: Any = None,
        top_k: int = 3,
        detector: Any = None,
        explain_all: bool = False,
        **unused: Any,
    ) -> None:
        if top_k < 1:
            raise ValueError(f"top_k must be >= 1, got {top_k}")
        if unused:
            raise ValueError(f"the grounded explainer has no option(s) {', '.join(sorted(unused))}")
        if defect_types is not None and not hasattr(defect_types, "predict_regions"):
            from anomalens.explain.defect_types import fit_defect_folder

            defect_types = fit_defect_folder(defect_types, detector=detector)
        self.defect_types = defect_types
        self.top_k = top_k
        self.explain_all = explain_all

    def use_detector(self, detector: Any) -> None:
        """A new detector replaces the one this explainer was built with (service reload):
        defect types follow it when it makes the same features (``DefectTypes.use_detector``)."""
        if self.defect_types is not None and hasattr(self.defect_types, "use_detector"):
            self.defect_types.use_detector(detector)

    def explain(
        self,
        images: Sequence[np.ndarray],
        prediction: Prediction,
        names: Sequence[str] | None = None,
    ) -> list[Explanation]:
        """One :class:`Explanation` per image (``names`` are not used by this explainer)."""
        if len(images) != len(prediction.scores):
            raise ValueError(f"{len(images)} images but {len(prediction.scores)} scores")
        return [self.explain_one(img, prediction, i)[0] for i, img in enumerate(images)]

    def explain_one(
        self, image: np.ndarray, prediction: Prediction, i: int
    ) -> tuple[Explanation, Analysis | None]:
        """The explanation of image ``i`` of ``prediction`` and its analysis (None for images
        called good without ``explain_all``)."""
        start = time.perf_counter()
        score = float(prediction.scores[i])
        anomaly_map = prediction.maps[i]
        verdicts = prediction.is_defective
        verdict = UNKNOWN if verdicts is None else (DEFECTIVE if verdicts[i] else GOOD)
        if verdict == GOOD and not self.explain_all:
            summary = good_summary(score, float(prediction.threshold))
            out = Explanation(GOOD, score, prediction.threshold, summary)
            out.seconds = time.perf_counter() - start
            return out, None
        thr = region_threshold(anomaly_map, prediction.pixel_threshold, prediction.threshold)
        analysis = analyse(image, anomaly_map, thr, self.top_k, force=True)
        if verdict == GOOD:  # explain_all: the analysis is for VLMs; no defect is stated
            summary = good_summary(score, float(prediction.threshold))
            out = Explanation(GOOD, score, prediction.threshold, summary)
            out.seconds = time.perf_counter() - start
            return out, analysis
        described = [
            describe_region(r, analysis.part, analysis.gray, prediction.pixel_threshold)
            for r in analysis.regions
        ]
        findings = [f for f, _ in described]
        lead = "Strongest"
        if self.defect_types is not None and findings:
            from anomalens.explain.defect_types import match_order

            features = prediction.features[i] if prediction.features else None
            numbers = [n for _, n in described]
            named = self.defect_types.predict_regions(image, analysis, numbers, features)
            for f, (name, confidence, _) in zip(findings, named, strict=True):
                f.defect_type, f.type_confidence = name, confidence
            # the finding most like a labelled defect leads (its type is the image's)
            findings = [findings[j] for j in match_order(named)]
            analysis.regions = [analysis.regions[j] for j in match_order(named)]
            lead = "Closest to a labelled defect"
        summary = defect_summary(
            score, prediction.threshold, findings, analysis.below_threshold, lead
        )
        out = Explanation(verdict, score, prediction.threshold, summary, findings)
        out.seconds = time.perf_counter() - start
        return out, analysis
