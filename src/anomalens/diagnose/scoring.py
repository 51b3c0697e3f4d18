"""Scoring answers as MMAD does, the five tests of seed 000 section 10 with seed 001's pass
marks, and the decision line.

MMAD (``evaluation/examples/helper/summary.py``, ``caculate_accuracy_mmad``):

* the answer letter is the first match of ``\\b([A-E])\\b`` in the reply; when there is none,
  the option whose text is closest to the reply (``difflib.get_close_matches``, cutoff 0) wins;
* replies that still give no letter in A-E are left out of the counts;
* "Object Structure" and "Object Details" are merged into "Object Analysis";
* per dataset (first path component) and subtask: accuracy, except Anomaly Detection, which is
  the balanced accuracy ``(normal accuracy + anomalous accuracy) / 2`` (normal: "good" in the
  path); overkill = 1 - normal accuracy, miss = 1 - anomalous accuracy;
* the average of a dataset is the mean over its subtasks; the overall row is the mean over
  datasets (of each column and of the averages).
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from anomalens.diagnose.questions import (
    ANOMALY_DETECTION,
    DEFECT_CLASSIFICATION,
    DEFECT_LOCALIZATION,
    DESCRIPTION,
    Question,
)

__all__ = [
    "MMAD_REFERENCE",
    "PASS_MARKS",
    "Record",
    "decision",
    "description_matches",
    "mmad_table",
    "parse_answer",
    "seed_tests",
]

ANSWER_PATTERN = re.compile(r"\b([A-E])\b")
OBJECT_ANALYSIS = "Object Analysis"
MERGED = {"Object Structure": OBJECT_ANALYSIS, "Object Details": OBJECT_ANALYSIS}
#: MMAD's column order.
COLUMNS = (
    ANOMALY_DETECTION,
    DEFECT_CLASSIFICATION,
    DEFECT_LOCALIZATION,
    "Defect Description",
    "Defect Analysis",
    "Object Classification",
    OBJECT_ANALYSIS,
)

#: Seed 001 Phase 0 pass marks: (metric, comparison, mark).
PASS_MARKS: dict[str, tuple[str, str, float]] = {
    "binary_discrimination": ("balanced accuracy", ">", 0.80),
    "hallucination_rate": ("false positives on good images", "<", 0.10),
    "miss_rate": ("false negatives on defective images", "<", 0.15),
    "defect_type": ("accuracy", ">", 0.70),
    "description_consistency": ("keyword match rate", ">", 0.70),
}

#: MMAD's released results (1-shot, random template; ``all_result/*_accuracy.csv`` of
#: github.com/jam-cc/MMAD, "Average" row, percent). The paper's numbers, not ours.
MMAD_REFERENCE: dict[str, dict[str, float]] = {
    "GPT-4o": {
        "Anomaly Detection": 67.5,
        "Defect Classification": 64.8,
        "Defect Localization": 55.0,
        "Defect Description": 72.3,
        "Defect Analysis": 83.0,
        "Object Classification": 94.9,
        "Object Analysis": 82.7,
        "Average": 74.3,
        "Overkill": 32.4,
        "Miss": 32.6,
    },
    "Qwen2-VL-72B": {
        "Anomaly Detection": 76.2,
        "Defect Classification": 62.1,
        "Defect Localization": 69.3,
        "Defect Description": 77.1,
        "Defect Analysis": 85.2,
        "Object Classification": 92.2,
        "Object Analysis": 88.4,
        "Average": 78.6,
    },
    "LLaVA-OneVision-7B": {
        "Anomaly Detection": 51.8,
        "Defect Classification": 46.1,
        "Defect Localization": 41.8,
        "Defect Description": 62.2,
        "Defect Analysis": 69.7,
        "Object Classification": 90.3,
        "Object Analysis": 80.9,
        "Average": 63.3,
        "Overkill": 1.4,
        "Miss": 95.1,
    },
}
MMAD_SOURCE = "MMAD's released results (github.com/jam-cc/MMAD all_result/), not measured here"


def parse_answer(reply: str, options: dict[str, str]) -> str | None:
    """The answer letter of ``reply``: the first ``\\b([A-E])\\b`` match, else the letter of
    the closest option text (difflib, cutoff 0), else None (no options)."""
    found = ANSWER_PATTERN.findall(reply or "")
    if found:
        return found[0]
    values = list(options.values())
    close = difflib.get_close_matches(reply or "", values, n=1, cutoff=0.0)
    if close:
        for key, value in options.items():
            if value == close[0]:
                return key
    return None


def description_matches(reply: str, keywords: Sequence[str]) -> bool:
    """True when a keyword occurs in the reply as a word (case-insensitive)."""
    text = (reply or "").lower()
    return any(re.search(rf"\b{re.escape(k.lower())}\b", text) for k in keywords)


@dataclass
class Record:
    """One answered question: the question, the raw reply, the parsed letter (None for free
    descriptions or unparseable replies) and whether it is right."""

    question: Question
    reply: str
    letter: str | None
    correct: bool | None

    @classmethod
    def of(cls, question: Question, reply: str) -> Record:
        if not question.is_choice:
            return cls(question, reply, None, description_matches(reply, question.keywords))
        letter = parse_answer(reply, question.options)
        correct = None if letter is None else letter == question.answer
        return cls(question, reply, letter, correct)

    def to_dict(self) -> dict[str, Any]:
        q = self.question
        return {
            "image": q.image,
            "question_type": q.type,
            "question": q.text,
            "options": q.options,
            "correct_answer": q.answer,
            "reply": self.reply,
            "answer": self.letter,
            "correct": self.correct,
        }


def _ratio(num: int, den: int) -> float | None:
    return num / den if den else None


def mmad_table(records: Iterable[Record]) -> dict[str, Any]:
    """MMAD's accuracy table in percent: ``{"rows": {dataset: {column: value}}, "average":
    {...}, "counts": {...}}`` (see the module doc; free descriptions are not part of it)."""
    stats: dict[str, dict[str, list[int]]] = {}
    det: dict[str, dict[int, list[int]]] = {}
    left_out = 0
    for r in records:
        q = r.question
        if q.type == DESCRIPTION:
            continue
        if r.letter not in tuple("ABCDE") or q.answer not in tuple("ABCDE"):
            left_out += 1
            continue
        col = MERGED.get(q.type, q.type)
        cell = stats.setdefault(q.dataset, {}).setdefault(col, [0, 0])
        cell[0] += int(bool(r.correct))
        cell[1] += 1
        if col == ANOMALY_DETECTION:
            d = det.setdefault(q.dataset, {0: [0, 0], 1: [0, 0]})
            d[q.label][0] += int(bool(r.correct))
            d[q.label][1] += 1
    rows: dict[str, dict[str, float | None]] = {}
    for dataset, cols in stats.items():
        row: dict[str, float | None] = {}
        for col in [c for c in COLUMNS if c in cols] + sorted(set(cols) - set(COLUMNS)):
            correct, total = cols[col]
            row[col] = 100.0 * correct / total
        if dataset in det:
            normal = _ratio(*det[dataset][0]) or 0.0
            anomalous = _ratio(*det[dataset][1]) or 0.0
            row[ANOMALY_DETECTION] = 100.0 * (normal + anomalous) / 2
        values = [v for v in row.values() if v is not None]
        row["Average"] = sum(values) / len(values) if values else None
        if dataset in det:
            row["Overkill"] = 100.0 * (1 - (_ratio(*det[dataset][0]) or 0.0))
            row["Miss"] = 100.0 * (1 - (_ratio(*det[dataset][1]) or 0.0))
        rows[dataset] = row
    columns = list(dict.fromkeys(c for row in rows.values() for c in row))
    average = {}
    for col in columns:
        vals = [row[col] for row in rows.values() if row.get(col) is not None]
        average[col] = sum(vals) / len(vals) if vals else None
    counts = {d: {c: v[1] for c, v in cols.items()} for d, cols in stats.items()}
    return {"rows": rows, "average": average, "counts": counts, "left_out": left_out}


def _test(name: str, value: float | None, n: int) -> dict[str, Any]:
    metric, op, mark = PASS_MARKS[name]
    passed = None if value is None else (value > mark if op == ">" else value < mark)
    return {"metric": metric, "value": value, "mark": f"{op} {mark:.0%}", "passed": passed, "n": n}


def seed_tests(records: Sequence[Record]) -> dict[str, Any]:
    """The five tests (pooled over datasets) plus the informational localisation accuracy.

    binary discrimination: balanced accuracy of the Anomaly Detection answers; hallucination
    rate: share of good images answered "defective"; miss rate: share of defective images
    answered "good"; defect type: Defect Classification accuracy; description consistency:
    share of free descriptions naming the type. A test without questions has value None and
    is not passed."""
    ad = [r for r in records if r.question.type == ANOMALY_DETECTION and r.letter is not None]
    good = [r for r in ad if r.question.label == 0]
    bad = [r for r in ad if r.question.label == 1]
    fp = sum(not r.correct for r in good)
    fn = sum(not r.correct for r in bad)
    hall = _ratio(fp, len(good))
    miss = _ratio(fn, len(bad))
    balanced = None if hall is None or miss is None else ((1 - hall) + (1 - miss)) / 2

    def accuracy(kind: str) -> tuple[float | None, int]:
        rs = [r for r in records if r.question.type == kind and r.correct is not None]
        return _ratio(sum(bool(r.correct) for r in rs), len(rs)), len(rs)

    types, n_types = accuracy(DEFECT_CLASSIFICATION)
    desc, n_desc = accuracy(DESCRIPTION)
    loc, n_loc = accuracy(DEFECT_LOCALIZATION)
    tests = {
        "binary_discrimination": _test("binary_discrimination", balanced, len(ad)),
        "hallucination_rate": _test("hallucination_rate", hall, len(good)),
        "miss_rate": _test("miss_rate", miss, len(bad)),
        "defect_type": _test("defect_type", types, n_types),
        "description_consistency": _test("description_consistency", desc, n_desc),
    }
    return {
        "tests": tests,
        "localization": {"metric": "accuracy (informational)", "value": loc, "n": n_loc},
        "decision": decision(tests),
    }


def decision(tests: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Seed 001's decision from the number of passed tests (of 5)."""
    passed = sum(1 for t in tests.values() if t["passed"])
    if passed >= 4:
        text = "fine-tuning the VLM is viable"
    elif passed >= 2:
        text = "fine-tuning the VLM is viable only with intensive fine-tuning"
    else:
        text = "detect with AA-CLIP / the detectors and use the VLM only to describe"
    return {"passed": passed, "total": len(tests), "recommendation": text}
