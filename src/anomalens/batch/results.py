"""Result files of batch inference: Parquet shards, the resume index, ``summary.json``.

An output folder ``OUT`` holds

* ``OUT/results/part-<run>-<n>.parquet``: one row per image (:data:`COLUMNS`), written by the
  driver every ``shard_size`` images, each atomically (a temporary file renamed into place), so
  a killed run leaves only complete shards;
* ``OUT/run.json``: the model the results belong to (method, path, SHA-256 of its files);
  a rerun with another model is refused;
* ``OUT/summary.json``: counts, verdicts and score quantiles over all shards, rewritten at the
  end of every run.

The resume index is the ``(path, fingerprint)`` pairs of the shards themselves: a rerun skips
the images whose path and fingerprint are already there (rows with an error are retried).
Read all results with ``pyarrow.parquet.read_table(OUT / "results")`` (or pandas, Spark,
DuckDB, ``ray.data.read_parquet``).
"""

from __future__ import annotations

import hashlib
import json
import os
import time
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from anomalens.atomic import atomic_write_text, atomic_write_with, check_output_path
from anomalens.errors import ResumeError
from anomalens.methods.base import CONFIG_FILE, checkpoint_method
from anomalens.report import jsonable

__all__ = [
    "COLUMNS",
    "RESULTS_DIR",
    "RUN_JSON",
    "SUMMARY_JSON",
    "ShardWriter",
    "check_run",
    "read_index",
    "read_results",
    "summarize",
]

RESULTS_DIR = "results"
RUN_JSON = "run.json"
SUMMARY_JSON = "summary.json"
#: Score quantiles reported in ``summary.json``.
QUANTILES = (0.0, 0.01, 0.05, 0.25, 0.5, 0.75, 0.95, 0.99, 1.0)
#: Columns of a result row: image location, its fingerprint (see
#: :func:`anomalens.batch.sources.fingerprint`), image score, threshold, verdict, hotspot boxes
#: (JSON list, as in ``scores.json``), image size, the error when the image could not be
#: scored (score is then null), and the worker that scored it (``host:pid:load id``).
COLUMNS = (
    "path",
    "fingerprint",
    "score",
    "threshold",
    "is_defective",
    "boxes",
    "width",
    "height",
    "error",
    "worker",
)


def _pa():
    import pyarrow as pa
    import pyarrow.parquet as pq

    return pa, pq


def schema():
    """The Arrow schema of a shard."""
    pa, _ = _pa()
    return pa.schema(
        [
            ("path", pa.string()),
            ("fingerprint", pa.string()),
            ("score", pa.float64()),
            ("threshold", pa.float64()),
            ("is_defective", pa.bool_()),
            ("boxes", pa.string()),
            ("width", pa.int32()),
            ("height", pa.int32()),
            ("error", pa.string()),
            ("worker", pa.string()),
        ]
    )


def write_json_atomic(path: Path, data: Any) -> None:
    """``data`` as indented JSON, written to a temporary file and renamed into place."""
    atomic_write_text(path, json.dumps(jsonable(data), indent=2, allow_nan=False) + "\n")


class ShardWriter:
    """Buffers result rows and writes them as Parquet shards of ``shard_size`` rows."""

    def __init__(self, output: str | os.PathLike, shard_size: int = 10_000) -> None:
        if shard_size < 1:
            raise ValueError(f"shard_size must be >= 1, got {shard_size}")
        self.folder = Path(output) / RESULTS_DIR
        self.folder.mkdir(parents=True, exist_ok=True)
        self.shard_size = shard_size
        # sorts by start time, so "the last shard wins" means the latest run
        self.run = time.strftime("%Y%m%d%H%M%S") + uuid.uuid4().hex[:4]
        self.shards: list[Path] = []
        self.n_rows = 0
        self._rows: list[dict[str, Any]] = []

    def add(self, rows: Sequence[Mapping[str, Any]]) -> None:
        self._rows.extend(dict(r) for r in rows)
        while len(self._rows) >= self.shard_size:
            self._flush(self._rows[: self.shard_size])
            self._rows = self._rows[self.shard_size :]

    def close(self) -> None:
        """Write the rows still buffered."""
        if self._rows:
            self._flush(self._rows)
            self._rows = []

    def _flush(self, rows: list[dict[str, Any]]) -> None:
        pa, pq = _pa()
        table = pa.Table.from_pylist([{c: r.get(c) for c in COLUMNS} for r in rows], schema())
        path = self.folder / f"part-{self.run}-{len(self.shards):05d}.parquet"
        atomic_write_with(path, lambda tmp: pq.write_table(table, tmp))
        self.shards.append(path)
        self.n_rows += len(rows)


def _shards(output: str | os.PathLike) -> list[Path]:
    folder = Path(output) / RESULTS_DIR
    return sorted(folder.glob("part-*.parquet")) if folder.is_dir() else []


def read_results(output: str | os.PathLike, columns: Sequence[str] | None = None):
    """All result rows of ``output`` as one ``pyarrow.Table`` (empty when there are none).

    When an image was scored by several runs (an error retried), the last shard wins."""
    pa, pq = _pa()
    shards = _shards(output)
    if not shards:
        return schema().empty_table().select(list(columns or COLUMNS))
    tables = [pq.read_table(p, columns=list(columns) if columns else None) for p in shards]
    return pa.concat_tables(tables)


def read_index(output: str | os.PathLike) -> set[tuple[str, str]]:
    """``(path, fingerprint)`` of every image scored without error in ``output``."""
    table = read_results(output, ["path", "fingerprint", "error"])
    paths = table.column("path").to_pylist()
    prints = table.column("fingerprint").to_pylist()
    errors = table.column("error").to_pylist()
    return {(p, f) for p, f, e in zip(paths, prints, errors, strict=True) if e is None}


def model_digest(model_dir: str | os.PathLike) -> str:
    """SHA-256 over the files of a saved model folder (names and bytes, sorted)."""
    digest = hashlib.sha256()
    for path in sorted(p for p in Path(model_dir).iterdir() if p.is_file()):
        digest.update(path.name.encode() + b"\0")
        with path.open("rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


def check_run(output: str | os.PathLike, model_dir: str | os.PathLike) -> dict[str, Any]:
    """Write or check ``OUT/run.json``: results in ``output`` must come from the same model.

    Raises ResumeError naming the folder when ``output`` holds results of another model."""
    output = check_output_path(output)
    run = {
        "model": str(model_dir),
        "method": checkpoint_method(model_dir),
        "model_sha256": model_digest(model_dir),
    }
    path = output / RUN_JSON
    if path.is_file() and _shards(output):
        before = json.loads(path.read_text(encoding="utf-8"))
        if before.get("model_sha256") != run["model_sha256"]:
            raise ResumeError(
                f"{output}: holds results of another model ({before.get('model')}); "
                "choose another --output or delete the folder to rescore"
            )
        return before
    output.mkdir(parents=True, exist_ok=True)
    if not (Path(model_dir) / CONFIG_FILE).is_file():  # pragma: no cover - checked above
        raise ResumeError(f"{model_dir}: not a saved model folder")
    write_json_atomic(path, run)
    return run


def summarize(output: str | os.PathLike, extra: Mapping[str, Any] | None = None) -> dict:
    """Counts, verdicts and score quantiles over all shards of ``output``; written to
    ``OUT/summary.json`` (atomically) and returned. When an image has several rows (an error
    retried later), its last row counts."""
    table = read_results(output, ["path", "score", "threshold", "is_defective", "error"])
    columns = {name: table.column(name).to_pylist() for name in table.column_names}
    latest: dict[str, int] = {}
    for i, p in enumerate(columns["path"]):
        latest[p] = i
    keep = sorted(latest.values())
    picked = [columns["score"][i] for i in keep]
    scores = np.array([s for s in picked if s is not None], dtype=np.float64)
    verdicts = [columns["is_defective"][i] for i in keep]
    errors = [columns["error"][i] for i in keep]
    thresholds = {t for t in columns["threshold"] if t is not None}
    n_errors = sum(e is not None for e in errors)
    summary: dict[str, Any] = {
        "n_images": len(keep),
        "n_scored": len(keep) - n_errors,
        "n_errors": n_errors,
        "n_defective": sum(v is True for v in verdicts),
        "n_good": sum(v is False for v in verdicts),
        "threshold": max(thresholds) if len(thresholds) == 1 else None,
        "score_quantiles": {
            f"q{round(q * 100):02d}": float(np.quantile(scores, q)) if scores.size else None
            for q in QUANTILES
        },
        "score_mean": float(scores.mean()) if scores.size else None,
        "n_shards": len(_shards(output)),
        "files": {"results": f"{RESULTS_DIR}/part-*.parquet", "run": RUN_JSON},
    }
    if extra:
        summary.update(extra)
    write_json_atomic(Path(output) / SUMMARY_JSON, summary)
    return jsonable(summary)
