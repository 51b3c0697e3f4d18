"""Explanations: what each defect is, where on the part, how large, how sure.

``from anomalens.explain import build_explainer, Explanation``::

    explainer = build_explainer("grounded")            # or "hf:...", "openai:URL#model"
    explanations = explainer.explain(images, detector.predict(images))
    print(explanations[0].summary)
"""

from anomalens.explain.base import (
    DEFAULT_EXPLAINER,
    DEFAULT_VLM,
    Explainer,
    Explanation,
    Finding,
    build_explainer,
    parse_explainer_spec,
)

__all__ = [
    "DEFAULT_EXPLAINER",
    "DEFAULT_VLM",
    "Explainer",
    "Explanation",
    "Finding",
    "build_explainer",
    "parse_explainer_spec",
]
