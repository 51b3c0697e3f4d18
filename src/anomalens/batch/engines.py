"""The three engines: each turns ``(path, fingerprint)`` pairs into result rows.

* ``local``: one process, the model loaded once;
* ``process``: a :class:`~concurrent.futures.ProcessPoolExecutor` (spawned processes) whose
  initializer loads the model once per worker; chunks of ``batch_size`` images go to the
  workers, at most two per worker in flight;
* ``ray``: Ray Data reads the paths, decodes the images in tasks and scores them in an actor
  pool (``map_batches`` with :class:`RayScorer`, the model loaded once per actor from a copy
  of the model folder shipped through the object store); the rows come back to the driver,
  which writes the shards.

Every engine yields lists of rows (see :data:`anomalens.batch.results.COLUMNS`); the driver
(:func:`anomalens.batch.run_batch`) writes them.
"""

from __future__ import annotations

import concurrent.futures as cf
import logging
import multiprocessing
import os
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from anomalens.batch.scoring import Scorer, decode
from anomalens.errors import EngineError
from anomalens.methods.base import batches

__all__ = ["ENGINES", "RAY_HINT", "RayScorer", "require_ray", "rows_of"]

logger = logging.getLogger(__name__)

ENGINES = ("local", "process", "ray")
RAY_HINT = "pip install 'anomalens[ray]'"

Pairs = Sequence[tuple[str, str]]


# ------------------------------------------------------------------------------ local


def local_rows(model: str | os.PathLike, todo: Pairs, batch_size: int, **_: Any) -> Iterator:
    scorer = Scorer(model)
    for chunk in batches(todo, batch_size):
        yield scorer([p for p, _ in chunk], [f for _, f in chunk])


# ------------------------------------------------------------------------------ process

_WORKER_SCORER: Scorer | None = None


def _init_worker(model: str, threads: int) -> None:
    """ProcessPoolExecutor initializer: load the model once in this worker."""
    global _WORKER_SCORER
    _WORKER_SCORER = Scorer(model, threads=threads)


def _score_in_worker(paths: list[str], prints: list[str]) -> list[dict[str, Any]]:
    assert _WORKER_SCORER is not None, "worker not initialised"
    return _WORKER_SCORER(paths, prints)


def process_rows(
    model: str | os.PathLike,
    todo: Pairs,
    batch_size: int,
    workers: int | None = None,
    cpus_per_worker: int = 1,
    **_: Any,
) -> Iterator:
    workers = workers or max(1, (os.cpu_count() or 1) // cpus_per_worker)
    context = multiprocessing.get_context("spawn")  # fork after torch threads can deadlock
    chunks = iter(batches(todo, batch_size))
    with cf.ProcessPoolExecutor(
        workers, context, initializer=_init_worker, initargs=(str(model), cpus_per_worker)
    ) as pool:
        pending: set[cf.Future] = set()
        while True:
            while len(pending) < 2 * workers:
                chunk = next(chunks, None)
                if chunk is None:
                    break
                paths, prints = [p for p, _ in chunk], [f for _, f in chunk]
                pending.add(pool.submit(_score_in_worker, paths, prints))
            if not pending:
                return
            done, pending = cf.wait(pending, return_when=cf.FIRST_COMPLETED)
            for future in done:
                yield future.result()


# ------------------------------------------------------------------------------ ray


def require_ray():
    """The ``ray`` module; EngineError naming the extra when Ray Data is not installed."""
    try:
        import ray
        import ray.data
    except ImportError as exc:
        raise EngineError(
            f"--engine ray needs Ray Data, which is not installed: {RAY_HINT}"
        ) from exc
    return ray


def _model_files(model: str | os.PathLike) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in Path(model).iterdir() if p.is_file()}


def decode_batch(batch: dict[str, np.ndarray]) -> Any:
    """Ray task: decode the images of a batch of ``path, fingerprint`` rows; an unreadable
    image keeps a 1x1 placeholder and its ``error``."""
    paths = [str(p) for p in batch["path"]]
    prints = [str(f) for f in batch["fingerprint"]]
    ok, images, errors = decode(paths, prints)
    by_index = dict(zip(ok, images, strict=True))
    messages = {e["path"]: e["error"] for e in errors}
    placeholder = np.zeros((1, 1, 3), np.uint8)
    return {
        "path": np.array(paths, dtype=object),
        "fingerprint": np.array(prints, dtype=object),
        "image": [by_index.get(i, placeholder) for i in range(len(paths))],
        "error": np.array([messages.get(p, "") for p in paths], dtype=object),
    }


class RayScorer:
    """Ray actor (``map_batches`` callable class): loads the model once, scores batches."""

    def __init__(self, files: Any, threads: int) -> None:
        import ray

        if isinstance(files, ray.ObjectRef):
            files = ray.get(files)
        self._folder = tempfile.TemporaryDirectory(prefix="anomalens-model-")
        for name, data in files.items():
            (Path(self._folder.name) / name).write_bytes(data)
        self.scorer = Scorer(self._folder.name, threads=threads)

    def __call__(self, batch: dict[str, np.ndarray]) -> Any:
        import pyarrow as pa

        from anomalens.batch.results import schema
        from anomalens.batch.scoring import error_row

        paths = [str(p) for p in batch["path"]]
        prints = [str(f) for f in batch["fingerprint"]]
        errors = [str(e) for e in batch["error"]]
        ok = [i for i, e in enumerate(errors) if not e]
        rows = self.scorer.score(
            [paths[i] for i in ok], [prints[i] for i in ok], [batch["image"][i] for i in ok]
        )
        rows += [
            error_row(paths[i], prints[i], errors[i], self.scorer.worker)
            for i, e in enumerate(errors)
            if e
        ]
        return pa.Table.from_pylist(rows, schema())


def ray_rows(
    model: str | os.PathLike,
    todo: Pairs,
    batch_size: int,
    workers: int | None = None,
    cpus_per_worker: int = 1,
    address: str | None = None,
    progress: bool = True,
    **_: Any,
) -> Iterator:
    ray = require_ray()
    started = not ray.is_initialized()
    if started:
        try:
            ray.init(address=address, include_dashboard=False, log_to_driver=False)
        except (ConnectionError, ValueError, RuntimeError) as exc:
            raise EngineError(f"--address {address}: cannot connect to Ray ({exc})") from exc
    try:
        ctx = ray.data.DataContext.get_current()
        ctx.enable_progress_bars = False
        if workers is None:
            cpus = int(ray.cluster_resources().get("CPU", 1))
            workers = max(1, cpus // cpus_per_worker)
        files = ray.put(_model_files(model))
        ds = ray.data.from_items(
            [{"path": p, "fingerprint": f} for p, f in todo],
            override_num_blocks=max(1, min(len(todo) // batch_size, 4 * workers * 8)),
        )
        # decoding is light next to the model: its tasks reserve no CPU, so they run beside
        # actors that hold every CPU; at most ``workers`` of them run at a time
        ds = ds.map_batches(
            decode_batch,
            batch_size=batch_size,
            batch_format="numpy",
            num_cpus=0,
            compute=ray.data.TaskPoolStrategy(size=workers),
        )
        ds = ds.map_batches(
            RayScorer,
            fn_constructor_args=(files, cpus_per_worker),
            batch_size=batch_size,
            batch_format="numpy",
            compute=ray.data.ActorPoolStrategy(size=workers),
            num_cpus=cpus_per_worker,
        )
        for table in ds.iter_batches(batch_size=None, batch_format="pyarrow"):
            yield table.to_pylist()
    finally:
        if started:
            ray.shutdown()


RUNNERS = {"local": local_rows, "process": process_rows, "ray": ray_rows}


def rows_of(engine: str, model: str | os.PathLike, todo: Pairs, **options: Any) -> Iterator:
    """Result rows of ``todo`` from ``engine`` (lists of row dicts, in any order)."""
    if engine not in RUNNERS:
        raise ValueError(f"engine must be one of {', '.join(ENGINES)}, got {engine!r}")
    return RUNNERS[engine](model, todo, **options)
