"""What an explanation is: :class:`Finding` per hotspot, :class:`Explanation` per image, the
:class:`Explainer` protocol and :func:`build_explainer` (spec strings, like backbones).

Specs::

    grounded                                   offline, from the map, hotspots and pixels
    hf:llava-hf/llava-onevision-qwen2-0.5b-ov-hf   a transformers VLM (hub id or local folder)
    hf:/path/to/local/folder
    openai:http://127.0.0.1:11434/v1#moondream  any OpenAI-compatible server; model after '#'
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol, runtime_checkable

import numpy as np

from anomalens.methods.base import Prediction

__all__ = [
    "DEFAULT_EXPLAINER",
    "DEFAULT_VLM",
    "Explainer",
    "Explanation",
    "Finding",
    "build_explainer",
    "parse_explainer_spec",
]

DEFAULT_EXPLAINER = "grounded"
#: The VLM ``hf:`` without a model id loads.
DEFAULT_VLM = "llava-hf/llava-onevision-qwen2-0.5b-ov-hf"

#: Verdicts of an explanation.
DEFECTIVE, GOOD, UNKNOWN = "defective", "good", "unknown"
#: Agreement of a VLM with the detector.
AGREES, DISAGREES = "agrees", "disagrees"


@dataclass
class Finding:
    """One hotspot, described.

    box: ``[x0, y0, x1, y1]`` in image pixels (end exclusive); area_px / area_pct: pixels of
    the region and their share of the part (%); location: words relative to the part ("upper
    left of the part", "near the wider end, along the edge"); shape: elongated / compact /
    irregular; orientation: e.g. "along the part's axis", "diagonal" (None for compact
    regions); appearance: against the surrounding normal surface ("darker", "brighter",
    "texture change"); strength: peak map value / pixel threshold; defect_type and
    type_confidence: the nearest labelled type (None without labelled examples, "unknown type"
    when far from all of them); vlm_text: the VLM's answer about this region; agrees: False when
    the VLM says there is no defect here.
    """

    box: list[int]
    area_px: int
    area_pct: float
    location: str
    shape: str
    orientation: str | None
    appearance: str
    strength: float
    peak: float
    defect_type: str | None = None
    type_confidence: float | None = None
    vlm_text: str | None = None
    agrees: bool | None = None
    #: machine-readable location: ``{"frame": ..., "cell": ...}`` (see grounded.py)
    where: dict[str, Any] = field(default_factory=dict)

    @property
    def center(self) -> tuple[float, float]:
        """``(x, y)`` centre of the box."""
        x0, y0, x1, y1 = self.box
        return (x0 + x1) / 2, (y0 + y1) / 2

    def sentence(self) -> str:
        """One sentence about this finding (without the VLM's text)."""
        what = self.defect_type if self.defect_type else "anomaly"
        if self.defect_type and self.type_confidence is not None:
            what += f" ({self.type_confidence:.0%} sure)"
        shape = self.shape + (f", {self.orientation}" if self.orientation else "")
        return (
            f"{what} {self.location}: {shape}, {self.appearance}, "
            f"{self.area_pct:.2g}% of the part, {self.strength:.2f}x the pixel threshold"
        )

    def to_dict(self) -> dict[str, Any]:
        return _jsonable(asdict(self))


@dataclass
class Explanation:
    """Everything said about one image.

    verdict: defective / good / unknown (no threshold); score, threshold: the detector's;
    summary: one or two sentences; findings: one per hotspot (empty for good images);
    agreement: "agrees" / "disagrees" when a VLM ran, else None; vlm_text: the VLM's whole
    answer (``vlm_boxes``: boxes it gave, Qwen-VL); explainer, model: who explained (model
    None for ``grounded``); seconds: time taken.
    """

    verdict: str
    score: float
    threshold: float | None
    summary: str
    findings: list[Finding] = field(default_factory=list)
    explainer: str = DEFAULT_EXPLAINER
    model: str | None = None
    seconds: float = 0.0
    agreement: str | None = None
    vlm_text: str | None = None
    #: boxes the VLM gave itself (Qwen ``bbox_2d``), image pixels: ``{"box", "label"}``
    vlm_boxes: list[dict[str, Any]] = field(default_factory=list)

    @property
    def top(self) -> Finding | None:
        return self.findings[0] if self.findings else None

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe dict (plain Python types, NaN/inf as None)."""
        d = {k: v for k, v in asdict(self).items() if k != "findings"}
        d["findings"] = [f.to_dict() for f in self.findings]
        return _jsonable(d)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Explanation:
        """Inverse of :meth:`to_dict`."""
        data = dict(data)
        findings = [Finding(**f) for f in data.pop("findings", [])]
        return cls(findings=findings, **data)


def _jsonable(value: Any) -> Any:
    from anomalens.report import jsonable

    return jsonable(value)


@runtime_checkable
class Explainer(Protocol):
    """Turns a prediction into one :class:`Explanation` per image."""

    name: str
    model: str | None

    def explain(
        self,
        images: Sequence[np.ndarray],
        prediction: Prediction,
        names: Sequence[str] | None = None,
    ) -> list[Explanation]: ...


def parse_explainer_spec(spec: str) -> tuple[str, str | None, str | None]:
    """``(kind, target, model)``: ``grounded`` -> ("grounded", None, None); ``hf:ID`` ->
    ("hf", ID, None); ``openai:URL#MODEL`` -> ("openai", URL, MODEL)."""
    spec = (spec or DEFAULT_EXPLAINER).strip()
    if spec == "grounded":
        return "grounded", None, None
    kind, sep, rest = spec.partition(":")
    if kind == "hf" and sep:
        return "hf", rest.strip() or DEFAULT_VLM, None
    if kind == "hf" and not sep:
        return "hf", DEFAULT_VLM, None
    if kind == "openai" and sep:
        url, _, model = rest.partition("#")
        if not url.startswith(("http://", "https://")) or not model:
            raise ValueError(
                f"explainer spec {spec!r}: expected openai:http(s)://HOST[:PORT]/v1#MODEL"
            )
        return "openai", url, model
    raise ValueError(
        f"unknown explainer spec {spec!r}; use grounded, hf:HUB_ID_OR_FOLDER or openai:URL#MODEL"
    )


def build_explainer(spec: str = DEFAULT_EXPLAINER, **options: Any) -> Explainer:
    """The explainer named by ``spec`` (see the module docstring).

    Options of every explainer: ``defect_types`` (a folder ``<type>/*.png`` with optional
    ``<type>/masks/``, or a fitted :class:`~anomalens.explain.defect_types.DefectTypes`),
    ``top_k`` (hotspots described, 3). VLM explainers also take ``explain_all`` (send images the
    detector passed too), ``reference`` (one good RGB image of the part), ``max_new_tokens``;
    ``hf:`` takes ``precision`` and ``trust_remote_code``; ``openai:`` takes ``timeout``,
    ``retries`` and ``api_key_env``.
    """
    kind, target, model = parse_explainer_spec(spec)
    if kind == "grounded":
        from anomalens.explain.grounded import GroundedExplainer

        return GroundedExplainer(**options)
    if kind == "hf":
        from anomalens.explain.vlm_hf import HFExplainer

        return HFExplainer(target, **options)
    from anomalens.explain.vlm_openai import OpenAIExplainer

    return OpenAIExplainer(target, model, **options)
