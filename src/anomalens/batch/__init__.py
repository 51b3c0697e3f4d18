"""Batch inference over many images: ``anomalens predict --engine {local,process,ray}``.

::

    from anomalens.batch import run_batch
    result = run_batch("models/screw", ["/archive/2026-12-01/"], "runs/day", engine="process")
    print(result.summary["n_defective"], "defective of", result.summary["n_images"])

The engines (:mod:`anomalens.batch.engines`) differ only in where the model runs; they score
with the same code (:mod:`anomalens.batch.scoring`) and the driver writes the same files
(:mod:`anomalens.batch.results`): Parquet shards under ``OUT/results/``, ``OUT/run.json`` and
``OUT/summary.json``. A rerun with the same ``OUT`` skips the images already scored
(:func:`~anomalens.batch.results.read_index`); images that could not be read are rows with an
``error``, never fatal, and are retried by a rerun. Progress (a tqdm bar with images/s, and a
final ``logging`` line) goes to stderr.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tqdm import tqdm

from anomalens.batch.engines import ENGINES, require_ray, rows_of
from anomalens.batch.results import ShardWriter, check_run, read_index, summarize
from anomalens.batch.sources import fingerprints, list_sources
from anomalens.methods.base import checkpoint_method

__all__ = ["BATCH_SIZE", "ENGINES", "BatchResult", "ShardWriter", "run_batch"]

logger = logging.getLogger(__name__)

#: Images per decode / predict call (and per Ray batch).
BATCH_SIZE = 16
#: Rows per Parquet shard.
SHARD_SIZE = 10_000


@dataclass
class BatchResult:
    """What :func:`run_batch` did. ``summary`` is ``OUT/summary.json`` (all runs so far);
    ``n_listed`` images were found, ``n_skipped`` of them were already scored, ``n_new`` rows
    were written by this run (``n_errors`` of them with an error) in ``seconds``."""

    output: Path
    summary: dict[str, Any]
    n_listed: int
    n_skipped: int
    n_new: int
    n_errors: int
    seconds: float

    @property
    def images_per_second(self) -> float:
        return self.n_new / self.seconds if self.seconds > 0 else 0.0


def run_batch(
    model: str | os.PathLike,
    inputs: Sequence[str | os.PathLike],
    output: str | os.PathLike,
    *,
    engine: str = "local",
    workers: int | None = None,
    cpus_per_worker: int = 1,
    address: str | None = None,
    content_hash: bool = False,
    batch_size: int = BATCH_SIZE,
    shard_size: int = SHARD_SIZE,
    progress: bool = True,
) -> BatchResult:
    """Score every image of ``inputs`` (see :func:`~anomalens.batch.sources.list_sources`)
    with the saved model folder ``model`` on ``engine`` and write the results to ``output``.

    ``workers``: processes (``process``) or actors (``ray``); default one per
    ``cpus_per_worker`` CPUs. ``address``: Ray cluster to join (``auto``, ``ray://host:10001``;
    None starts a local Ray unless one is running). ``content_hash``: resume by SHA-256 of
    the bytes instead of size and mtime. Raises CheckpointError for a bad model folder,
    DatasetError for bad inputs, ResumeError when ``output`` holds another model's results,
    EngineError when Ray is missing or unreachable.
    """
    if engine not in ENGINES:
        raise ValueError(f"engine must be one of {', '.join(ENGINES)}, got {engine!r}")
    for name, value in (("batch_size", batch_size), ("cpus_per_worker", cpus_per_worker)):
        if value < 1:
            raise ValueError(f"{name} must be >= 1, got {value}")
    if workers is not None and workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    if engine == "ray":
        require_ray()
    method = checkpoint_method(model)
    check_run(output, model)
    paths = list_sources(inputs, exclude=output)
    prints = fingerprints(paths, content_hash)
    done = read_index(output)
    todo = [(p, f) for p, f in zip(paths, prints, strict=True) if (p, f) not in done]
    logger.info(
        "predict (%s engine): %d images, %d already scored, %d to score",
        engine,
        len(paths),
        len(paths) - len(todo),
        len(todo),
    )
    writer = ShardWriter(output, shard_size)
    n_errors = 0
    start = time.perf_counter()
    first: float | None = None
    bar = tqdm(total=len(todo), desc=f"predict ({engine})", unit="img", disable=not progress)
    try:
        if todo:
            rows_iter = rows_of(
                engine,
                model,
                todo,
                batch_size=batch_size,
                workers=workers,
                cpus_per_worker=cpus_per_worker,
                address=address,
                progress=progress,
            )
            for rows in rows_iter:
                if first is None:
                    first = time.perf_counter() - start
                writer.add(rows)
                n_errors += sum(r.get("error") is not None for r in rows)
                bar.update(len(rows))
    finally:
        writer.close()
        bar.close()
    seconds = time.perf_counter() - start
    rate = writer.n_rows / seconds if seconds > 0 else 0.0
    summary = summarize(
        output,
        extra={
            "model": str(model),
            "method": method,
            "last_run": {
                "engine": engine,
                "workers": workers,
                "cpus_per_worker": cpus_per_worker,
                "n_listed": len(paths),
                "n_skipped": len(paths) - len(todo),
                "n_new": writer.n_rows,
                "n_errors": n_errors,
                "seconds": seconds,
                "startup_seconds": first,
                "images_per_second": rate,
                "content_hash": content_hash,
            },
        },
    )
    logger.info(
        "scored %d images in %.1f s (%.1f images/s), %d with errors; %d shards in %s",
        writer.n_rows,
        seconds,
        rate,
        n_errors,
        len(writer.shards),
        Path(output) / "results",
    )
    return BatchResult(
        Path(output), summary, len(paths), len(paths) - len(todo), writer.n_rows, n_errors, seconds
    )
