"""What every VLM explainer shares: grounded findings first, then one question per image.

The detector decides; the VLM describes (seed 000 section 5.2). Images the detector calls good
are not sent unless ``explain_all``. The answer fills each finding's ``vlm_text``; a "no defect"
for a flagged region, or a defect named on an image the detector passed, marks the explanation
``disagrees``.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from anomalens.explain.base import AGREES, DISAGREES, GOOD, Explanation
from anomalens.explain.grounded import GroundedExplainer
from anomalens.explain.images import crop_box, numbered_boxes
from anomalens.explain.prompts import (
    Answer,
    build_prompt,
    names_defect,
    says_no_defect,
)
from anomalens.methods.base import Prediction

__all__ = ["VLMExplainer", "VLMRequest"]


@dataclass
class VLMRequest:
    """One question: RGB uint8 images (image 1 with numbered boxes, crops, reference) and the
    prompt; ``n_regions`` numbered regions; ``defective`` is the detector's verdict."""

    images: list[np.ndarray]
    prompt: str
    n_regions: int
    defective: bool


class VLMExplainer:
    """Base of the VLM explainers: subclasses set ``name``, ``model``, ``family`` and
    implement ``ask(request) -> Answer``.

    Options: defect_types, top_k, detector (as :class:`GroundedExplainer`); explain_all: also
    ask about images the detector calls good; reference: one good RGB image of the part sent
    with every question; class_name: what the part is called in the prompt; max_new_tokens.
    """

    name = "vlm"
    family = ""

    def __init__(
        self,
        model: str,
        *,
        defect_types: Any = None,
        top_k: int = 3,
        detector: Any = None,
        explain_all: bool = False,
        reference: np.ndarray | None = None,
        class_name: str = "part",
        max_new_tokens: int = 64,
    ) -> None:
        if max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
        self.model = model
        self.grounded = GroundedExplainer(
            defect_types=defect_types, top_k=top_k, detector=detector, explain_all=explain_all
        )
        self.explain_all = explain_all
        self.reference = reference
        self.class_name = class_name
        self.max_new_tokens = max_new_tokens

    def ask(self, request: VLMRequest) -> Answer:
        raise NotImplementedError

    def use_detector(self, detector: Any) -> None:
        """See :meth:`GroundedExplainer.use_detector`."""
        self.grounded.use_detector(detector)

    def request(self, image: np.ndarray, explanation: Explanation) -> VLMRequest:
        """The question about one image and its grounded explanation."""
        rgb = image if image.ndim == 3 else np.repeat(image[..., None], 3, axis=2)
        rgb = np.ascontiguousarray(rgb[..., :3])
        boxes = [f.box for f in explanation.findings]
        images = [numbered_boxes(rgb, boxes)] + [crop_box(rgb, b) for b in boxes]
        if self.reference is not None:
            images.append(np.ascontiguousarray(self.reference[..., :3]))
        defective = explanation.verdict != GOOD
        prompt = build_prompt(
            explanation.findings,
            len(boxes),
            self.reference is not None,
            self.class_name,
            defective,
            self.family,
        )
        return VLMRequest(images, prompt, len(boxes), defective)

    def explain(
        self,
        images: Sequence[np.ndarray],
        prediction: Prediction,
        names: Sequence[str] | None = None,
    ) -> list[Explanation]:
        """Grounded explanations, completed by the VLM's answers (see the module doc)."""
        out = []
        for i, image in enumerate(images):
            start = time.perf_counter()
            explanation, _ = self.grounded.explain_one(image, prediction, i)
            explanation.explainer, explanation.model = self.name, self.model
            if explanation.verdict != GOOD or self.explain_all:
                request = self.request(image, explanation)
                apply_answer(explanation, self.ask(request), request)
            explanation.seconds = time.perf_counter() - start
            out.append(explanation)
        return out


def apply_answer(explanation: Explanation, answer: Answer, request: VLMRequest) -> None:
    """Fill ``vlm_text`` of the explanation and its findings and set the agreement flags."""
    explanation.vlm_text = answer.text
    findings = explanation.findings
    if findings and not answer.regions:  # free-form answer: it is about the top region
        answer.regions[1] = answer.text
    for k, finding in enumerate(findings, 1):
        text = answer.regions.get(k)
        if text is not None:
            finding.vlm_text = text
            finding.agrees = not says_no_defect(text)
    if request.defective:
        rejected = answer.overall is False or (
            answer.overall is None and bool(findings) and all(f.agrees is False for f in findings)
        )
        if answer.overall is None and not findings:
            rejected = says_no_defect(answer.text)
    else:
        rejected = answer.overall is True or (answer.overall is None and names_defect(answer.text))
    explanation.agreement = DISAGREES if rejected else AGREES
    if answer.boxes:
        explanation.vlm_boxes = answer.boxes
