"""Thin adapters over :mod:`anomalens.explain` (imported lazily, only when used).

* :class:`GroundedTypeNamer`: names the strongest hotspot with the explain package's defect
  types (nearest labelled regions: pooled backbone features plus shape, contrast and position
  descriptors), fitted on the labelled defective images of the category with their masks and
  applied leave-one-image-out (an image's own labelled region is never used for it);
* :func:`load_generator`: a :class:`~anomalens.diagnose.answerers.TextGenerator` for a VLM
  spec (``hf:HUB_ID_OR_FOLDER`` or ``openai:URL#MODEL``, the explainers' specs): the explain
  package's VLM explainer asked with one ``VLMRequest`` per question.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from anomalens.errors import ModelNotAvailableError

__all__ = ["ExplainerGenerator", "GroundedTypeNamer", "load_generator", "require_explain"]

MISSING_EXPLAIN = (
    "{what} needs anomalens.explain (the explainers: grounded defect types and VLM backends), "
    "which this installation lacks"
)


def require_explain(what: str) -> Any:
    """Import :mod:`anomalens.explain` or raise ModelNotAvailableError naming ``what``."""
    try:
        import anomalens.explain as explain
    except ImportError as exc:
        raise ModelNotAvailableError(MISSING_EXPLAIN.format(what=what)) from exc
    return explain


class GroundedTypeNamer:
    """Defect type of the strongest hotspot by the explain package's nearest labelled regions.

    ``images``, ``masks``, ``types`` and ``paths``: the labelled defective images; the one
    whose path is ``exclude`` is left out when naming (leave-one-image-out).
    """

    def __init__(
        self,
        images: Sequence[np.ndarray],
        masks: Sequence[np.ndarray],
        types: Sequence[str],
        paths: Sequence[str],
    ) -> None:
        require_explain("naming defect types")
        from anomalens.explain.defect_types import fit_defect_types

        self.types = fit_defect_types(list(images), list(masks), list(types))
        self.index = {str(p): i for i, p in enumerate(paths)}

    def name_type(self, image: np.ndarray, prediction: Any, exclude: str | None) -> str | None:
        from anomalens.explain.grounded import analyse, describe_region, region_threshold

        group = self.index.get(str(exclude)) if exclude is not None else None
        rule = self.types if group is None else self.types.subset(self.types.groups != group)
        m = np.asarray(prediction.maps[0])
        thr = region_threshold(m, prediction.pixel_threshold, prediction.threshold)
        analysis = analyse(image, m, thr, top_k=1, force=True)
        if not analysis.regions:
            return None
        _, numbers = describe_region(
            analysis.regions[0], analysis.part, analysis.gray, prediction.pixel_threshold
        )
        named = rule.predict_regions(image, analysis, [numbers])
        return named[0][0] if named else None


#: VLM families that take one image: only the query image is sent (no template).
SINGLE_IMAGE_FAMILIES = ("moondream", "florence2")


class ExplainerGenerator:
    """A :class:`~anomalens.diagnose.answerers.TextGenerator` over one of the explain package's
    VLM explainers (``hf:`` / ``openai:``): each call is one ``VLMRequest`` (the question's
    images and MMAD prompt, no region) to the explainer's ``ask``; the reply is ``Answer.text``.
    Families that take a single image (Moondream, Florence-2) get the query image only."""

    def __init__(self, explainer: Any, spec: str) -> None:
        self.explainer = explainer
        self.spec = spec

    def generate(self, images: Sequence[np.ndarray], prompt: str, max_new_tokens: int) -> str:
        from anomalens.explain.vlm import VLMRequest

        ex = self.explainer
        if callable(getattr(ex, "load", None)):
            ex.load()
        imgs = [np.ascontiguousarray(i) for i in images]
        if getattr(ex, "family", "") in SINGLE_IMAGE_FAMILIES:
            imgs = imgs[-1:]
        ex.max_new_tokens = int(max_new_tokens)
        request = VLMRequest(images=imgs, prompt=prompt, n_regions=0, defective=False)
        return str(ex.ask(request).text)


def load_generator(spec: str, **options: Any) -> ExplainerGenerator:
    """The text generator of a VLM spec (``hf:HUB_ID_OR_FOLDER`` or ``openai:URL#MODEL``), built
    by :func:`anomalens.explain.build_explainer` with ``options``."""
    explain = require_explain(f"--vlm {spec}")
    kind, _, _ = explain.parse_explainer_spec(spec)
    if kind == "grounded":
        raise ValueError(f"--vlm {spec!r}: expected hf:HUB_ID_OR_FOLDER or openai:URL#MODEL")
    return ExplainerGenerator(explain.build_explainer(spec, **options), spec)
