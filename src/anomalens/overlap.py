"""Train/test overlap: what a model was trained on, and whether an evaluation reuses it.

``fit`` and ``train`` store a :func:`training_record` in the checkpoint's ``config.json``
(``training_data``: dataset layout, resolved root, categories, split, and a SHA-256 digest of
every training file). ``benchmark --checkpoint`` calls :func:`checkpoint_overlap` before
evaluating: a category whose test split is the one the checkpoint was trained on (same layout,
root and category), or whose test files have the same contents as training files (copies in
another folder), overlaps. :func:`anomalens.evaluate.run_benchmark` refuses such a run unless
``allow_overlap`` and then marks the results ``"overlap": true``.
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = ["DIGEST_CHARS", "checkpoint_overlap", "file_digest", "training_record"]

#: Hex characters kept of each file's SHA-256 (128 bits).
DIGEST_CHARS = 32


def file_digest(path: str | os.PathLike) -> str | None:
    """The first :data:`DIGEST_CHARS` hex characters of the file's SHA-256 (None if unreadable)."""
    h = hashlib.sha256()
    try:
        with open(path, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
    except OSError:
        return None
    return h.hexdigest()[:DIGEST_CHARS]


def _resolved(root: str | os.PathLike) -> str:
    try:
        return str(Path(root).resolve())
    except (OSError, RuntimeError):
        return os.fspath(root)


def training_record(
    dataset: str,
    root: str | os.PathLike,
    categories: Sequence[str],
    split: str,
    paths: Sequence[str | os.PathLike],
) -> dict[str, Any]:
    """What a model is trained on, for ``config.json``: ``{dataset, root (resolved),
    categories, split, n_images, sha256 (sorted digests of the files)}``."""
    digests = {d for d in map(file_digest, paths) if d is not None}
    return {
        "dataset": dataset,
        "root": _resolved(root),
        "categories": list(categories),
        "split": split,
        "n_images": len(paths),
        "sha256": sorted(digests),
    }


def read_training_record(checkpoint: str | os.PathLike) -> dict[str, Any] | None:
    """The ``training_data`` of a checkpoint's ``config.json`` (None when not recorded)."""
    from anomalens.methods.base import CONFIG_FILE

    try:
        meta = json.loads((Path(checkpoint) / CONFIG_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    record = meta.get("training_data") if isinstance(meta, dict) else None
    return record if isinstance(record, dict) else None


def checkpoint_overlap(
    checkpoint: str | os.PathLike,
    dataset: str,
    root: str | os.PathLike,
    categories: Sequence[str],
) -> dict[str, str]:
    """``{category: reason}`` for the categories whose test split overlaps the checkpoint's
    training images (empty when none does). A checkpoint without a training record gets a
    warning (nothing can be checked)."""
    from anomalens.data.datasets import build_dataset
    from anomalens.errors import AnomalensError

    record = read_training_record(checkpoint)
    if record is None:
        warnings.warn(
            f"{checkpoint}: the checkpoint does not record its training data (written by an "
            "older anomalens); train/test overlap cannot be checked",
            stacklevel=2,
        )
        return {}
    trained = set(record.get("sha256") or [])
    same_place = record.get("dataset") == dataset and record.get("root") == _resolved(root)
    found: dict[str, str] = {}
    for category in categories:
        if same_place and record.get("split") == "test" and category in record["categories"]:
            found[category] = (
                f"trained on the test split of {category!r} in {record['root']} "
                f"({record.get('n_images', '?')} images)"
            )
            continue
        if not trained:
            continue
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                paths = build_dataset(dataset, root, category, "test").paths
        except (AnomalensError, ValueError):
            continue  # the evaluation itself reports a broken test split
        shared = sum(1 for p in paths if file_digest(p) in trained)
        if shared:
            found[category] = (
                f"{shared} of the {len(paths)} test images of {category!r} have the same "
                "contents as training images"
            )
    return found
