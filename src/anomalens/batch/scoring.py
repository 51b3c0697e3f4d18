"""Scoring a batch of image locations: decode, predict, turn predictions into result rows.

Every engine runs the same two steps, so they all write the same rows: :func:`decode` reads
the images (an unreadable one becomes a row with its ``error``), :meth:`Scorer.score` predicts
the decoded images with the model loaded once (in the worker that owns the scorer).
"""

from __future__ import annotations

import json
import logging
import os
import socket
import uuid
from collections.abc import Sequence
from typing import Any

import numpy as np

from anomalens.batch.sources import read_image
from anomalens.errors import AnomalensError
from anomalens.methods.base import Detector, load_detector
from anomalens.postprocess import hotspots

__all__ = ["Scorer", "decode", "error_row"]

logger = logging.getLogger(__name__)


def error_row(path: str, fingerprint: str, error: str, worker: str | None = None) -> dict:
    """The result row of an image that could not be scored."""
    return {"path": path, "fingerprint": fingerprint, "error": error, "worker": worker}


def decode(
    paths: Sequence[str], prints: Sequence[str]
) -> tuple[list[int], list[np.ndarray], list[dict[str, Any]]]:
    """``(indices of the decoded images, the images, error rows of the others)``."""
    ok, images, errors = [], [], []
    for i, (path, fp) in enumerate(zip(paths, prints, strict=True)):
        try:
            images.append(read_image(path))
            ok.append(i)
        except AnomalensError as exc:
            errors.append(error_row(path, fp, str(exc)))
    return ok, images, errors


class Scorer:
    """A detector loaded once (from a saved model folder) plus the rows it produces.

    ``worker`` (``host:pid:load id``) names this load of the model in every row it scores, so
    the results show how many times the model was loaded and by whom.
    """

    def __init__(self, model: str | os.PathLike | Detector, threads: int | None = None) -> None:
        if threads:
            import torch

            torch.set_num_threads(int(threads))
        self.detector = model if isinstance(model, Detector) else load_detector(model)
        self.worker = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        logger.debug("scorer %s loaded %s", self.worker, self.detector.method)

    def score(
        self, paths: Sequence[str], prints: Sequence[str], images: Sequence[np.ndarray]
    ) -> list[dict[str, Any]]:
        """Rows for decoded images. When the batch fails (e.g. NaN scores), each image is
        predicted alone so only the failing ones get an ``error``."""
        if not images:
            return []
        try:
            return self._rows(paths, prints, images)
        except (AnomalensError, ValueError) as exc:
            if len(images) == 1:
                return [error_row(paths[0], prints[0], str(exc), self.worker)]
            rows = []
            for one in zip(paths, prints, images, strict=True):
                rows += self.score([one[0]], [one[1]], [one[2]])
            return rows

    def _rows(self, paths, prints, images) -> list[dict[str, Any]]:
        pred = self.detector.predict(list(images))
        verdicts = pred.is_defective
        rows = []
        for i, path in enumerate(paths):
            boxes = (
                [b.as_dict() for b in hotspots(pred.maps[i], pred.pixel_threshold)]
                if pred.pixel_threshold is not None
                else None
            )
            rows.append(
                {
                    "path": path,
                    "fingerprint": prints[i],
                    "score": float(pred.scores[i]),
                    "threshold": pred.threshold,
                    "is_defective": None if verdicts is None else bool(verdicts[i]),
                    "boxes": None if boxes is None else json.dumps(boxes),
                    "width": int(images[i].shape[1]),
                    "height": int(images[i].shape[0]),
                    "error": None,
                    "worker": self.worker,
                }
            )
        return rows

    def __call__(self, paths: Sequence[str], prints: Sequence[str]) -> list[dict[str, Any]]:
        """Decode and score: the rows of ``paths`` (in order)."""
        ok, images, errors = decode(paths, prints)
        rows = self.score([paths[i] for i in ok], [prints[i] for i in ok], images)
        for row in errors:
            row["worker"] = self.worker
        by_path = {r["path"]: r for r in rows + errors}
        return [by_path[p] for p in paths]
