"""Micro-batching: images of concurrent requests go through one ``predict`` call.

A single worker task takes the first waiting image, collects more for up to ``max_wait_ms`` or
until ``max_batch`` images, and runs ``predict`` on them in one worker thread (the event loop
stays free). The queue is bounded in images: a request that does not fit is refused at once
(:class:`QueueFullError`, the service answers 503 with Retry-After) instead of waiting.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np


class QueueFullError(Exception):
    """The bounded queue cannot take the request's images."""


@dataclass
class Scored:
    """One image's result: score, map, the thresholds of the model that scored it, timings."""

    score: float
    map: np.ndarray
    threshold: float | None
    pixel_threshold: float | None
    model: Any
    queue_ms: float
    predict_ms: float
    batch_size: int
    features: Any = None  # the image's PatchFeatures when the model keeps them (defect types)


@dataclass
class _Item:
    image: np.ndarray
    future: asyncio.Future
    queued: float


class MicroBatcher:
    """``await batcher.submit(images) -> list[Scored]``; ``model()`` gives the model (anything
    with ``predict(images) -> Prediction``) for the next batch, so a reload takes effect between
    batches; each result carries the model that scored it."""

    def __init__(
        self,
        model: Callable[[], Any],
        max_batch: int = 4,
        max_wait_ms: float = 10.0,
        max_queue: int = 64,
    ) -> None:
        if max_batch < 1 or max_queue < 1 or max_wait_ms < 0:
            raise ValueError("max_batch and max_queue must be >= 1, max_wait_ms >= 0")
        self.model = model
        self.max_batch, self.max_wait, self.max_queue = max_batch, max_wait_ms / 1000, max_queue
        self.pending = 0
        self._queue: asyncio.Queue[_Item | None] = asyncio.Queue()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="predict")
        self._worker: asyncio.Task | None = None

    def start(self) -> None:
        if self._worker is None:
            self._worker = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        """Finish every queued image, then stop the worker."""
        if self._worker is not None:
            await self._queue.put(None)
            await self._worker
            self._worker = None
        self._executor.shutdown(wait=True)

    async def submit(self, images: Sequence[np.ndarray]) -> list[Scored]:
        if self.pending + len(images) > self.max_queue:
            raise QueueFullError(
                f"busy: {self.pending} images queued (limit {self.max_queue}); retry shortly"
            )
        loop = asyncio.get_running_loop()
        now = time.perf_counter()
        items = [_Item(img, loop.create_future(), now) for img in images]
        self.pending += len(items)
        for item in items:
            self._queue.put_nowait(item)
        return list(await asyncio.gather(*(i.future for i in items)))

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            first = await self._queue.get()
            if first is None:
                return
            batch, stop = [first], False
            deadline = loop.time() + self.max_wait
            while len(batch) < self.max_batch:
                timeout = deadline - loop.time()
                try:
                    item = (
                        self._queue.get_nowait()
                        if timeout <= 0
                        else await asyncio.wait_for(self._queue.get(), timeout)
                    )
                except (asyncio.QueueEmpty, TimeoutError):
                    break
                if item is None:
                    stop = True
                    break
                batch.append(item)
            self.pending -= len(batch)
            await self._score(loop, batch)
            if stop:
                # images queued after the stop sentinel cannot exist: submit is closed by then
                return

    async def _score(self, loop: asyncio.AbstractEventLoop, batch: list[_Item]) -> None:
        model = self.model()
        start = time.perf_counter()
        try:
            pred = await loop.run_in_executor(
                self._executor, model.predict, [i.image for i in batch]
            )
        except Exception as exc:  # the requests get the error; the worker keeps going
            for item in batch:
                if not item.future.done():
                    item.future.set_exception(exc)
            return
        predict_ms = (time.perf_counter() - start) * 1000
        for k, item in enumerate(batch):
            if item.future.done():  # the request timed out or was cancelled
                continue
            item.future.set_result(
                Scored(
                    float(pred.scores[k]),
                    pred.maps[k],
                    pred.threshold,
                    pred.pixel_threshold,
                    model,
                    (start - item.queued) * 1000,
                    predict_ms,
                    len(batch),
                    pred.features[k] if pred.features else None,
                )
            )
