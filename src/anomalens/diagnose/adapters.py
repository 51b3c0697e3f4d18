"""Thin adapters over :mod:`anomalens.explain` (imported lazily, only when used).

* :class:`GroundedTypeNamer`: names the strongest hotspot with the explain package's defect
  types (nearest labelled regions: pooled backbone features plus shape, contrast and position
  descriptors), fitted on the labelled defective images of the category with their masks and
  applied leave-one-image-out (an image's own labelled region is never used for it);
* :func:`load_generator`: a :class:`~anomalens.diagnose.answerers.TextGenerator` for a VLM
  spec (``hf:HUB_ID_OR_FOLDER`` or ``openai:URL#MODEL``, the explainers' specs).
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from typing import Any

import numpy as np

from anomalens.errors import ModelNotAvailableError

__all__ = ["GroundedTypeNamer", "load_generator", "require_explain"]

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


class _ExplainGenerator:
    """A TextGenerator over the explain package's VLM backend object (its ``generate`` or
    ``ask``/``chat`` method: images + prompt -> text)."""

    def __init__(self, backend: Any, spec: str) -> None:
        self.backend = backend
        self.spec = spec
        for name in ("generate", "ask", "chat", "query"):
            if callable(getattr(backend, name, None)):
                self._call = getattr(backend, name)
                break
        else:
            raise ModelNotAvailableError(
                f"{spec}: the explain package's VLM backend has no generate/ask method"
            )
        params = inspect.signature(self._call).parameters
        self._tokens_kw = next((k for k in ("max_new_tokens", "max_tokens") if k in params), None)

    def generate(self, images: Sequence[np.ndarray], prompt: str, max_new_tokens: int) -> str:
        kwargs = {self._tokens_kw: max_new_tokens} if self._tokens_kw else {}
        return str(self._call(list(images), prompt, **kwargs))


def load_generator(spec: str, **options: Any) -> Any:
    """The text generator of a VLM spec, built by the explain package (issue 11's backends:
    ``anomalens.explain.vlm`` ``load_vlm(spec)``, else the explainer's ``.backend``)."""
    explain = require_explain(f"--vlm {spec}")
    loader = getattr(explain, "load_vlm", None)
    if loader is None:
        try:
            from anomalens.explain import vlm as vlm_module  # type: ignore[attr-defined]

            loader = getattr(vlm_module, "load_vlm", None)
        except ImportError:
            loader = None
    if loader is not None:
        backend = loader(spec, **options)
    else:
        explainer = explain.build_explainer(spec, **options)
        backend = getattr(explainer, "backend", None) or getattr(explainer, "vlm", None)
        if backend is None:
            raise ModelNotAvailableError(
                f"{spec}: the explain package exposes no VLM backend (load_vlm or .backend)"
            )
    if hasattr(backend, "generate") and _takes_tokens(backend.generate):
        return backend
    return _ExplainGenerator(backend, spec)


def _takes_tokens(fn: Any) -> bool:
    try:
        params = list(inspect.signature(fn).parameters)
    except (TypeError, ValueError):
        return False
    return params[:3] == ["images", "prompt", "max_new_tokens"]
