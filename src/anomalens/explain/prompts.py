"""What the VLM is asked and how its answer is read back (seed 003, MMAD's 1-shot protocol).

The VLM sees: the image with numbered boxes, close-up crops of the top regions, optionally a
good reference image of the same part, and a prompt carrying the grounded findings. It answers
one line per region (``Region 1: ...``) and an ``Overall: defective|good`` line. Qwen2-VL /
Qwen2.5-VL are also asked for ``bbox_2d`` JSON, parsed back to image pixels; Florence-2 gets a
task prompt per crop.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass, field

from anomalens.explain.base import Finding

__all__ = [
    "FLORENCE_TASK",
    "Answer",
    "build_prompt",
    "names_defect",
    "parse_answer",
    "parse_bboxes",
    "prompt_words",
    "says_no_defect",
]

FLORENCE_TASK = "<MORE_DETAILED_CAPTION>"
_NO_DEFECT = (
    "no defect", "no visible defect", "no anomal", "looks normal", "appears normal",
    "is normal", "nothing wrong", "no damage", "overall: good", "not defective", "no issue",
    "flawless",
)  # fmt: skip
_DEFECT_WORDS = (
    "defect", "scratch", "crack", "dent", "hole", "contamination", "stain", "break", "broken",
    "missing", "bent", "damage", "chip", "rust", "deform", "fray", "blowhole", "uneven",
)  # fmt: skip
_QWEN_FAMILIES = ("qwen2_vl", "qwen2_5_vl")


def build_prompt(
    findings: Sequence[Finding],
    n_crops: int,
    reference: bool,
    class_name: str = "part",
    defective: bool = True,
    family: str = "",
) -> str:
    """The text sent with the images (image 1: boxes; then the crops; then the reference)."""
    lines = [f"You are inspecting a {class_name} for manufacturing defects."]
    what = ["Image 1 shows the whole part"]
    if findings:
        what[0] += " with numbered boxes around the regions an anomaly detector flagged"
    if n_crops:
        what.append(f"images 2 to {n_crops + 1} are close-ups of regions 1 to {n_crops}")
    if reference:
        what.append(f"image {n_crops + 2} is a good part for comparison")
    lines.append("; ".join(what) + ".")
    if defective and findings:
        lines.append("The detector measured:")
        lines += [f"Region {k}: {f.sentence()}." for k, f in enumerate(findings, 1)]
        lines.append(
            "For each region write one line 'Region N: <what defect you see, e.g. scratch, "
            "crack, dent, contamination, missing material>' or 'Region N: no defect' if it looks "
            "normal. Then write 'Overall: defective' or 'Overall: good'."
        )
    else:
        lines.append(
            "The detector found no defect. If you see one, describe it in one sentence and "
            "write 'Overall: defective'; otherwise write 'Overall: good'."
        )
    if family in _QWEN_FAMILIES:
        lines.append(
            'Also give each defect you see as JSON: [{"bbox_2d": [x1, y1, x2, y2], '
            '"label": "<defect>"}] in image 1.'
        )
    return "\n".join(lines)


def prompt_words() -> list[str]:
    """Every word the prompts use (for tiny test tokenizers)."""
    f = Finding([0, 0, 1, 1], 1, 1.0, "near the wider end", "compact", None, "darker", 1.0, 1.0)
    text = build_prompt([f], 1, True, family="qwen2_vl") + " " + build_prompt([], 0, False)
    return sorted(set(re.findall(r"[a-z]+", text.lower())) | set(_DEFECT_WORDS))


def says_no_defect(text: str) -> bool:
    """The text states there is no defect."""
    t = text.lower()
    return any(p in t for p in _NO_DEFECT)


def names_defect(text: str) -> bool:
    """The text names a defect (and does not say there is none)."""
    t = text.lower()
    if "overall: defective" in t:
        return True
    return not says_no_defect(t) and any(w in t for w in _DEFECT_WORDS)


@dataclass
class Answer:
    """A parsed VLM answer: per-region texts (1-based keys), the overall verdict (True
    defective, False good, None not stated) and boxes (image pixels) with labels."""

    text: str
    regions: dict[int, str] = field(default_factory=dict)
    overall: bool | None = None
    boxes: list[dict] = field(default_factory=list)


_REGION = re.compile(r"region\s*#?\s*(\d+)\s*[:.)\-]\s*(.+)", re.IGNORECASE)
_OVERALL = re.compile(r"overall\s*[:\-]\s*(defective|good|defect|ok|normal)", re.IGNORECASE)


def parse_answer(text: str, n_regions: int) -> Answer:
    """Read region lines, the overall line and (Qwen) ``bbox_2d`` JSON from an answer."""
    out = Answer(text.strip())
    for line in text.splitlines():
        m = _REGION.search(line)
        if m and 1 <= int(m.group(1)) <= n_regions:
            out.regions.setdefault(int(m.group(1)), m.group(2).strip())
    m = _OVERALL.search(text)
    if m:
        out.overall = m.group(1).lower() in ("defective", "defect")
    return out


def parse_bboxes(
    text: str,
    family: str,
    image_size: tuple[int, int],
    input_size: tuple[int, int] | None = None,
) -> list[dict]:
    """``bbox_2d`` boxes of a Qwen answer in image pixels ``[x0, y0, x1, y1]``.

    Qwen2.5-VL answers in the pixels of its resized input (``input_size = (H, W)`` the
    processor fed it); Qwen2-VL on a 0-1000 grid. ``image_size = (H, W)`` of image 1.
    Malformed JSON gives no boxes.
    """
    height, width = image_size
    items = []
    for blob in re.findall(r"\[\s*\{.*?\}\s*\]", text, flags=re.DOTALL):
        try:
            data = json.loads(blob)
        except ValueError:
            continue
        items += [d for d in data if isinstance(d, dict)]
    boxes = []
    for d in items:
        b = d.get("bbox_2d")
        if not (
            isinstance(b, list) and len(b) == 4 and all(isinstance(v, (int, float)) for v in b)
        ):
            continue
        if family == "qwen2_5_vl" and input_size:
            sy, sx = height / input_size[0], width / input_size[1]
        else:
            sy, sx = height / 1000.0, width / 1000.0
        x0, y0, x1, y1 = b
        box = [round(x0 * sx), round(y0 * sy), round(x1 * sx), round(y1 * sy)]
        limits = (width, height, width, height)
        box = [min(max(v, 0), lim) for v, lim in zip(box, limits, strict=True)]
        boxes.append({"box": box, "label": str(d.get("label", ""))})
    return boxes
