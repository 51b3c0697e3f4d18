"""Answerers: anything with ``name`` and ``answer(question) -> str`` (the reply text).

* scripted: :class:`AlwaysYes`, :class:`AlwaysNo`, :class:`RandomAnswerer` (seeded),
  :class:`Oracle` (the only one that reads the ground truth), with results computable by hand;
* :class:`DetectorAnswerer`: a fitted detector's verdict (score >= its calibrated threshold),
  the type of the strongest hotspot named by a :class:`TypeNamer` (nearest labelled regions),
  and the 3 x 3 cell of the hotspot;
* :class:`VLMAnswerer`: sends the question's images and MMAD prompt to a
  :class:`TextGenerator` (a vision-language model backend) and returns its reply.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Any, Protocol, runtime_checkable

import numpy as np

from anomalens.diagnose.questions import (
    ANOMALY_DETECTION,
    CELLS,
    DEFECT_CLASSIFICATION,
    DEFECT_LOCALIZATION,
    Question,
    point_cell,
)

__all__ = [
    "AlwaysNo",
    "AlwaysYes",
    "Answerer",
    "DetectorAnswerer",
    "Oracle",
    "RandomAnswerer",
    "TextGenerator",
    "TypeNamer",
    "VLMAnswerer",
    "scripted",
]


@runtime_checkable
class Answerer(Protocol):
    """Replies to a :class:`Question` with text (a letter, an option text or a description)."""

    name: str

    def answer(self, question: Question) -> str: ...


class _Scripted:
    name = "scripted"

    def _yes_no(self, q: Question, yes: bool) -> str:
        letter = q.option_letter("Yes" if yes else "No")
        return letter if letter is not None else ("Yes" if yes else "No")


class AlwaysYes(_Scripted):
    """ "Yes" to every yes/no question (every image is defective), option A otherwise, and
    "Yes" as a description (which names no defect)."""

    name = "always-yes"

    def answer(self, question: Question) -> str:
        if not question.is_choice:
            return "Yes"
        if question.option_letter("Yes") is not None:
            return self._yes_no(question, True)
        return "A"


class AlwaysNo(_Scripted):
    """ "No" to every yes/no question (every image is good), option A otherwise, and "No" as a
    description."""

    name = "always-no"

    def answer(self, question: Question) -> str:
        if not question.is_choice:
            return "No"
        if question.option_letter("No") is not None:
            return self._yes_no(question, False)
        return "A"


class RandomAnswerer:
    """A uniformly random option letter (seeded; one draw per question, in call order);
    descriptions are "nothing to report"."""

    def __init__(self, seed: int = 0) -> None:
        self.name = f"random-{seed}"
        self._rng = random.Random(seed)

    def answer(self, question: Question) -> str:
        if not question.is_choice:
            return "nothing to report"
        return self._rng.choice(sorted(question.options))


class Oracle:
    """The right letter, and the defect type's first keyword as a description."""

    name = "oracle"

    def answer(self, question: Question) -> str:
        if not question.is_choice:
            return f"There is a {question.keywords[0]} on the {question.object_name}."
        return str(question.answer)


def scripted(name: str) -> Answerer:
    """A scripted answerer by name: ``always-yes``, ``always-no``, ``oracle``, ``random`` or
    ``random-SEED``."""
    key = name.strip().lower()
    if key == "always-yes":
        return AlwaysYes()
    if key == "always-no":
        return AlwaysNo()
    if key == "oracle":
        return Oracle()
    if key == "random" or key.startswith("random-"):
        seed = key.partition("-")[2]
        if seed and not seed.isdigit():
            raise ValueError(f"scripted answerer {name!r}: expected random-SEED")
        return RandomAnswerer(int(seed) if seed else 0)
    raise ValueError(
        f"unknown scripted answerer {name!r}; use always-yes, always-no, oracle or random-SEED"
    )


# ----------------------------------------------------------------------------- detector


@runtime_checkable
class TypeNamer(Protocol):
    """Names the defect type of the strongest hotspot of ``image`` given the detector's
    prediction (a one-image :class:`~anomalens.methods.base.Prediction`); ``exclude`` is the
    path of the question's image, whose own labelled region must not be used."""

    def name_type(self, image: np.ndarray, prediction: Any, exclude: str | None) -> str | None: ...


class DetectorAnswerer:
    """Answers the binary, type and location questions from a fitted detector.

    Verdict: ``score >= threshold`` (the detector's calibration, from good images only); type:
    ``namer.name_type`` (None: the question is answered "A"); location: the 3 x 3 cell of the
    map's maximum. Descriptions: "a <type> at the <cell> of the <object>" (or "no defect").
    The prediction and type of the last image asked about are kept (its questions come
    together).
    """

    def __init__(self, detector: Any, namer: TypeNamer | None = None, name: str = "") -> None:
        if detector.threshold is None:
            raise ValueError("the detector has no threshold (fit it on at least 2 good images)")
        self.detector = detector
        self.namer = namer
        self.name = name or f"detector:{detector.method}"
        self._cache: dict[str, tuple[np.ndarray, Any]] = {}
        self._types: dict[str, str | None] = {}

    def _predict(self, question: Question) -> tuple[np.ndarray, Any]:
        key = str(question.path)
        if key not in self._cache:
            image = question.load_images()[-1]
            self._cache = {key: (image, self.detector.predict([image]))}
        return self._cache[key]

    def verdict(self, question: Question) -> bool:
        _, pred = self._predict(question)
        return bool(pred.scores[0] >= pred.threshold)

    def cell(self, question: Question) -> int:
        _image, pred = self._predict(question)
        m = np.asarray(pred.maps[0])
        y, x = np.unravel_index(int(np.argmax(m)), m.shape)
        h, w = m.shape
        return point_cell(x + 0.5, y + 0.5, w, h)

    def type_name(self, question: Question) -> str | None:
        if self.namer is None:
            return None
        key = str(question.path)
        if key not in self._types:
            image, pred = self._predict(question)
            self._types = {key: self.namer.name_type(image, pred, key)}
        return self._types[key]

    def answer(self, question: Question) -> str:
        if question.type == ANOMALY_DETECTION:
            yes = self.verdict(question)
            letter = question.option_letter("Yes" if yes else "No")
            return letter or ("Yes" if yes else "No")
        if question.type == DEFECT_CLASSIFICATION:
            name = self.type_name(question)
            return (name and question.option_letter(name)) or "A"
        if question.type == DEFECT_LOCALIZATION:
            return question.option_letter(CELLS[self.cell(question)]) or "A"
        if not question.is_choice:
            if not self.verdict(question):
                return "no defect"
            kind = self.type_name(question) or "defect"
            where = CELLS[self.cell(question)]
            return f"a {kind.replace('_', ' ')} at the {where} of the {question.object_name}"
        return "A"  # other MMAD subtasks: the detector has nothing to say


# ----------------------------------------------------------------------------- VLM


@runtime_checkable
class TextGenerator(Protocol):
    """A vision-language model: RGB images and a prompt in, text out."""

    def generate(self, images: Sequence[np.ndarray], prompt: str, max_new_tokens: int) -> str: ...


class VLMAnswerer:
    """Sends the templates and the query image with the question's MMAD prompt to a
    :class:`TextGenerator`. ``max_new_tokens``: 16 for choices (a letter is expected; MMAD
    allows 64), ``describe_tokens`` for free descriptions."""

    def __init__(
        self,
        generator: TextGenerator,
        name: str,
        max_new_tokens: int = 16,
        describe_tokens: int = 64,
    ) -> None:
        self.generator = generator
        self.name = name
        self.max_new_tokens = max_new_tokens
        self.describe_tokens = describe_tokens

    def answer(self, question: Question) -> str:
        tokens = self.max_new_tokens if question.is_choice else self.describe_tokens
        return str(self.generator.generate(question.load_images(), question.prompt(), tokens))
