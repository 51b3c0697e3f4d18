"""Questions in MMAD's format: generated from any dataset with masks, or MMAD's ``mmad.json``.

MMAD (Jiang et al., ICLR 2025; github.com/jam-cc/MMAD) stores one JSON object keyed by image
paths relative to the data root. Each value holds ``conversation``: a list of items with
``Question``, ``Options`` (letter -> text), ``Answer`` (a letter) and ``type`` (Anomaly
Detection, Defect Classification, Defect Localization, Defect Description, Defect Analysis,
Object Classification, Object Structure, Object Details), and ``random_templates`` /
``similar_templates``: normal images of the same product (paths relative to the root). The
evaluation is 1-shot: the first template is shown before the query image.

:func:`generate_questions` writes the same format from a dataset with defect folders and masks:
per test image an Anomaly Detection question (Yes / No); per defective image a Defect
Classification question (options: the category's defect folders, at most 5) and a Defect
Localization question (options: cells of a 3 x 3 grid of the image, the right one being the
cell of the mask's centre of mass, plus 3 other cells drawn with the seed). Each defective
image also gets a free description request (:data:`DESCRIPTION`, not part of MMAD), scored by
defect-type keywords (:func:`type_keywords`).
"""

from __future__ import annotations

import json
import os
import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from anomalens.errors import DatasetError

__all__ = [
    "ANOMALY_DETECTION",
    "CELLS",
    "DEFECT_CLASSIFICATION",
    "DEFECT_LOCALIZATION",
    "DESCRIPTION",
    "Question",
    "generate_questions",
    "load_mmad",
    "mask_cell",
    "questions_from_mmad",
    "type_keywords",
]

ANOMALY_DETECTION = "Anomaly Detection"
DEFECT_CLASSIFICATION = "Defect Classification"
DEFECT_LOCALIZATION = "Defect Localization"
#: The free-text request behind the description-consistency test (not an MMAD type).
DESCRIPTION = "Free Description"
MMAD_TYPES = (
    ANOMALY_DETECTION,
    DEFECT_CLASSIFICATION,
    DEFECT_LOCALIZATION,
    "Defect Description",
    "Defect Analysis",
    "Object Classification",
    "Object Structure",
    "Object Details",
)
LETTERS = "ABCDE"
#: Names of the 3 x 3 grid cells, row-major from the top left.
CELLS = (
    "top left",
    "top",
    "top right",
    "left",
    "center",
    "right",
    "bottom left",
    "bottom",
    "bottom right",
)
#: MMAD's instruction to the model.
INSTRUCTION = (
    "You are an industrial inspector who checks products by images. You should judge whether "
    "there is a defect in the query image and answer the questions about it."
)
ANSWER_DIRECTLY = "Answer with the option's letter from the given choices directly."

#: Words that count as naming a defect type in a free description (seed 000, section 10.6,
#: extended to the MVTec AD and Magnetic Tile folder names). A type folder name is split on
#: ``_``/``-``/spaces; each part brings its synonyms; position words bring none.
KEYWORDS: dict[str, tuple[str, ...]] = {
    "scratch": ("scratch", "scratched", "line", "mark"),
    "crack": ("crack", "cracked", "broken", "fracture"),
    "contamination": ("contamination", "dirt", "stain", "spot"),
    "missing": ("missing", "absent", "hole", "gap"),
    "bent": ("bent", "deformed", "warped", "twisted"),
    "blowhole": ("blowhole", "hole", "pore", "pit", "bubble"),
    "hole": ("hole", "pore", "pit", "puncture"),
    "break": ("break", "broken", "chip", "chipped", "fracture"),
    "fray": ("fray", "frayed", "worn", "ragged", "chipped edge"),
    "uneven": ("uneven", "irregular", "bump", "rough", "dent"),
    "manipulated": ("manipulated", "deformed", "damaged", "bent", "dent"),
    "thread": ("thread", "threads", "threading"),
    "color": ("color", "colour", "discolored", "discoloration", "stain"),
    "cut": ("cut", "slit", "incision"),
    "dent": ("dent", "dented", "deformed"),
}
POSITION_WORDS = frozenset(
    {"side", "top", "front", "back", "head", "neck", "large", "small", "inner", "outer"}
)


def type_keywords(defect_type: str) -> tuple[str, ...]:
    """Lower-case words whose presence in a description names ``defect_type``."""
    parts = defect_type.lower().replace("-", " ").replace("_", " ").split()
    words: list[str] = []
    for part in parts:
        if part in POSITION_WORDS:
            continue
        words += KEYWORDS.get(part, (part,))
    return tuple(dict.fromkeys(words)) or (" ".join(parts),)


@dataclass
class Question:
    """One question about one image.

    image: the key (path relative to the data root, as in MMAD); path: the file; templates:
    normal images shown first (1-shot: one); text, options (letter -> text), answer (a letter;
    None for the free description); type: MMAD's subtask or :data:`DESCRIPTION`; dataset:
    first component of ``image`` (MMAD groups its scores by it); label: 1 when the image is
    defective (MMAD: "good" not in the path); defect_type: the image's defect folder ("good"
    for normal images); keywords: words scoring a free description; cell: index into
    :data:`CELLS` of the mask's centre (defective images with a mask).

    Only the scripted oracle may read the ground-truth fields (answer, label, defect_type,
    cell); answerers see :meth:`prompt`, :attr:`options` and the images.
    """

    image: str
    path: Path
    templates: list[Path]
    text: str
    options: dict[str, str]
    answer: str | None
    type: str
    dataset: str
    label: int
    defect_type: str
    object_name: str = "object"
    keywords: tuple[str, ...] = ()
    cell: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def is_choice(self) -> bool:
        return bool(self.options)

    def option_letter(self, text: str) -> str | None:
        """The letter of the option whose text is ``text`` (case-insensitive), or None."""
        for letter, value in self.options.items():
            if value.strip().lower() == text.strip().lower():
                return letter
        return None

    def prompt(self) -> str:
        """The text sent with the images (MMAD's 1-shot wording)."""
        lines = [INSTRUCTION]
        if self.templates:
            n = len(self.templates)
            lines.append(
                f"The first {n} image{'s' * (n > 1)} {'are' if n > 1 else 'is'} the normal "
                "sample, which can be used as a template to compare. The last image is the "
                "query image."
            )
        if not self.is_choice:
            lines.append(self.text)
            return "\n".join(lines)
        lines.append(f"Question: {self.text}")
        lines += [f"{k}. {v}" for k, v in self.options.items()]
        lines.append(ANSWER_DIRECTLY)
        return "\n".join(lines)

    def load_images(self) -> list[np.ndarray]:
        """Templates then the query image, RGB uint8."""
        from anomalens.data.io import load_image

        return [load_image(p) for p in [*self.templates, self.path]]


def mask_cell(mask: np.ndarray) -> int | None:
    """Index into :data:`CELLS` of the 3 x 3 cell holding the mask's centre of mass (None for an
    empty mask)."""
    ys, xs = np.nonzero(np.asarray(mask))
    if len(ys) == 0:
        return None
    h, w = mask.shape[:2]
    return point_cell(float(xs.mean()) + 0.5, float(ys.mean()) + 0.5, w, h)


def point_cell(x: float, y: float, width: int, height: int) -> int:
    """Index into :data:`CELLS` of the 3 x 3 cell holding pixel position ``(x, y)``."""
    col = min(2, max(0, int(3 * x / width)))
    row = min(2, max(0, int(3 * y / height)))
    return 3 * row + col


# ----------------------------------------------------------------------------- generation


def _options(correct: str, others: Sequence[str], rng: random.Random) -> tuple[dict, str]:
    """Shuffled options (at most 5: the correct one and up to 4 others) and the right letter."""
    pool = [o for o in others if o != correct]
    if len(pool) > len(LETTERS) - 1:
        pool = rng.sample(pool, len(LETTERS) - 1)
    items = [correct, *pool]
    rng.shuffle(items)
    options = {LETTERS[i]: text for i, text in enumerate(items)}
    return options, LETTERS[items.index(correct)]


def _rel(path: str | os.PathLike, root: Path) -> str:
    p = Path(path)
    try:
        return p.resolve().relative_to(root.resolve()).as_posix()
    except ValueError:
        return p.as_posix()


def generate_questions(
    dataset: str,
    root: str | os.PathLike,
    category: str,
    *,
    seed: int = 0,
    max_images: int | None = None,
    skip_bad: bool = False,
) -> dict[str, dict[str, Any]]:
    """MMAD-format questions (see the module doc) for the test split of one category.

    ``max_images`` keeps at most that many test images, drawn with ``seed`` in the proportions of
    good and defective images. Keys are paths relative to ``root``; the template of every image
    is a train image drawn with ``seed``. Defective images need masks (for the location)."""
    from anomalens.data.datasets import build_dataset
    from anomalens.data.io import load_mask

    root = Path(root)
    test = build_dataset(dataset, root, category, "test", skip_bad=skip_bad)
    train = build_dataset(dataset, root, category, "train", skip_bad=skip_bad)
    if not train.paths:
        raise DatasetError(f"{root}: category {category!r} has no train images for templates")
    types = sorted({e.defect_type for e in test.entries if e.label == 1})
    if not types:
        raise DatasetError(f"{root}: category {category!r} has no defective test images")
    entries = list(test.entries)
    if max_images is not None and len(entries) > max_images:
        rng_np = np.random.default_rng(seed)
        labels = np.array([e.label for e in entries])
        keep = []
        for value in (0, 1):
            idx = np.flatnonzero(labels == value)
            n = round(max_images * len(idx) / len(entries))
            keep += list(rng_np.choice(idx, min(len(idx), max(1, n)), replace=False))
        entries = [entries[i] for i in sorted(keep)]
    rng = random.Random(seed)
    obj = category.replace("_", " ")
    out: dict[str, dict[str, Any]] = {}
    for entry in entries:
        key = _rel(entry.image, root)
        template = _rel(train.paths[rng.randrange(len(train.paths))], root)
        conv = []
        yes_no, ad_answer = {"A": "Yes", "B": "No"}, "A" if entry.label else "B"
        conv.append(
            {
                "Question": "Is there any defect in the object?",
                "Answer": ad_answer,
                "Options": yes_no,
                "type": ANOMALY_DETECTION,
            }
        )
        item: dict[str, Any] = {"random_templates": [template], "conversation": conv}
        if entry.label:
            options, letter = _options(entry.defect_type, types, rng)
            conv.append(
                {
                    "Question": "There is a defect in the object. What is the type of the defect?",
                    "Answer": letter,
                    "Options": options,
                    "type": DEFECT_CLASSIFICATION,
                }
            )
            if entry.mask is None:
                raise DatasetError(f"{entry.image}: defective image without a mask")
            from anomalens.data.io import load_image

            shape = load_image(entry.image).shape[:2]
            cell = mask_cell(load_mask(entry.mask, shape))
            if cell is not None:
                others = [c for i, c in enumerate(CELLS) if i != cell]
                cells = [CELLS[cell], *rng.sample(others, 3)]
                rng.shuffle(cells)
                options = {LETTERS[i]: c for i, c in enumerate(cells)}
                conv.append(
                    {
                        "Question": "There is a defect in the object. Where is the defect?",
                        "Answer": LETTERS[cells.index(CELLS[cell])],
                        "Options": options,
                        "type": DEFECT_LOCALIZATION,
                    }
                )
                item["cell"] = cell
            item["mask_path"] = _rel(entry.mask, root)
            item["description"] = {
                "Question": f"Describe the defect on this {obj} in detail.",
                "keywords": list(type_keywords(entry.defect_type)),
            }
        item["object"] = obj
        out[key] = item
    return out


# ----------------------------------------------------------------------------- loading


def load_mmad(path: str | os.PathLike) -> dict[str, dict[str, Any]]:
    """Read and check an ``mmad.json``: an object keyed by image path whose values hold a
    ``conversation`` list of ``Question`` / ``Options`` / ``Answer`` / ``type`` items."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise DatasetError(f"{path}: cannot read the MMAD file ({exc.strerror or exc})") from exc
    except ValueError as exc:
        raise DatasetError(f"{path}: not valid JSON ({exc})") from exc
    if not isinstance(data, dict) or not data:
        raise DatasetError(f"{path}: expected a JSON object keyed by image path")
    for key, item in data.items():
        conv = item.get("conversation") if isinstance(item, dict) else None
        if not isinstance(conv, list):
            raise DatasetError(f"{path}: entry {key!r} has no 'conversation' list")
        for i, qa in enumerate(conv):
            missing = [k for k in ("Question", "Options", "Answer", "type") if k not in qa]
            if missing:
                raise DatasetError(
                    f"{path}: entry {key!r} question {i + 1} lacks {', '.join(missing)}"
                )
            if not isinstance(qa["Options"], dict) or qa["Answer"] not in qa["Options"]:
                raise DatasetError(
                    f"{path}: entry {key!r} question {i + 1}: Answer {qa['Answer']!r} is not "
                    "one of its Options"
                )
    return data


def _defect_folder(key: str) -> str:
    """The defect folder of an MMAD key ``DATASET/OBJECT/test/<defect>/<file>`` ("good" when
    the path says so), else "defect"."""
    parts = key.split("/")
    if "good" in key:
        return "good"
    return parts[-2] if len(parts) >= 3 else "defect"


def questions_from_mmad(
    data: dict[str, dict[str, Any]],
    root: str | os.PathLike,
    shots: int = 1,
    template_key: str = "random_templates",
    describe: bool = True,
) -> list[Question]:
    """:class:`Question` objects of an MMAD-format dict (loaded or generated), images under
    ``root``. MMAD's conventions: the dataset is the first path component and an image is
    normal when "good" is in its path. With ``describe``, every defective image also gets the
    free description request (its keywords from the generated entry, else from the defect
    folder name)."""
    root = Path(root)
    out: list[Question] = []
    for key, item in data.items():
        path = root / key
        templates = [root / t for t in item.get(template_key, [])[:shots]]
        label = 0 if "good" in key else 1
        defect = _defect_folder(key)
        parts = key.split("/")
        obj = item.get("object") or (parts[1].replace("_", " ") if len(parts) > 2 else "object")
        common = dict(
            image=key,
            path=path,
            templates=templates,
            dataset=parts[0],
            label=label,
            defect_type=defect,
            object_name=obj,
            cell=item.get("cell"),
        )
        for qa in item["conversation"]:
            out.append(
                Question(
                    text=str(qa["Question"]),
                    options={str(k): str(v) for k, v in qa["Options"].items()},
                    answer=str(qa["Answer"]),
                    type=str(qa["type"]),
                    **common,
                )
            )
        if describe and label:
            desc = item.get("description") or {}
            text = desc.get("Question", f"Describe the defect on this {obj} in detail.")
            words = tuple(desc.get("keywords") or type_keywords(defect))
            out.append(
                Question(
                    text=text, options={}, answer=None, type=DESCRIPTION, keywords=words, **common
                )
            )
    return out
