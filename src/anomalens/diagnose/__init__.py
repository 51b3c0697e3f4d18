"""Diagnostics: how anomaly-aware is a model? (``anomalens diagnose``)

* encoder tests (:mod:`~anomalens.diagnose.encoder`): do a backbone's patch and image features
  separate defects (silhouette, linear probe cross-validated by image, kNN to good memory,
  PCA scatter)? For CLIP / SigLIP / AA-CLIP also the text space (anchor cosine, zero-shot
  AUROC, per-state-word table, SigLIP's sigmoid probabilities);
* question tests (:mod:`~anomalens.diagnose.questions`, :mod:`~anomalens.diagnose.scoring`):
  multiple-choice questions in MMAD's format (generated from a dataset with masks, or MMAD's
  own ``mmad.json``) asked to answerers (:mod:`~anomalens.diagnose.answerers`: scripted, a
  fitted detector, VLMs), scored as MMAD scores them, the five tests of the seeds with their
  pass marks and the decision line;
* writers (:mod:`~anomalens.diagnose.write`): ``diagnostic_results.json``, ``diagnostics.md``,
  figures.

scikit-learn is not needed at runtime (:mod:`~anomalens.diagnose.stats` implements the few
statistics in numpy / torch; the tests compare them with scikit-learn).
"""

from anomalens.diagnose.answerers import (
    AlwaysNo,
    AlwaysYes,
    Answerer,
    DetectorAnswerer,
    Oracle,
    RandomAnswerer,
    TextGenerator,
    VLMAnswerer,
    scripted,
)
from anomalens.diagnose.questions import (
    Question,
    generate_questions,
    load_mmad,
    questions_from_mmad,
)
from anomalens.diagnose.run import answer_all, run_diagnose
from anomalens.diagnose.scoring import MMAD_REFERENCE, PASS_MARKS, parse_answer, seed_tests

__all__ = [
    "MMAD_REFERENCE",
    "PASS_MARKS",
    "AlwaysNo",
    "AlwaysYes",
    "Answerer",
    "DetectorAnswerer",
    "Oracle",
    "Question",
    "RandomAnswerer",
    "TextGenerator",
    "VLMAnswerer",
    "answer_all",
    "generate_questions",
    "load_mmad",
    "parse_answer",
    "questions_from_mmad",
    "run_diagnose",
    "scripted",
    "seed_tests",
]
