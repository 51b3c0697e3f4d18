"""Multi-process training on CPU: torch.distributed with the gloo backend, torchrun-compatible.

A trainer uses five things from here, so any trainable method can run on N processes::

    from anomalens import distributed as dist

    ctx = dist.context()                      # rank and world size (1 process: rank 0 of 1)
    step = ctx.wrap(module, loss_fn)          # DDP over the module's trained tensors only
    mine = ctx.shard(global_batch)            # this rank's part of the global batch
    loss, parts = step(mine, ...)             # loss_fn(mine, ...) through DDP
    (loss * ctx.loss_scale(len(mine), len(global_batch))).backward()   # grads = 1 process's
    totals = ctx.sum(totals)                  # e.g. epoch loss sums for the log
    if ctx.is_main: save_checkpoint(...)      # rank 0 writes; then ctx.barrier()

and the entry point calls :func:`launch` (``--nproc N``: N spawned processes on this machine)
or runs under ``torchrun`` (which sets ``RANK``, ``WORLD_SIZE``, ``MASTER_ADDR``,
``MASTER_PORT``); either way :func:`init_from_env` joins the process group.

Why the numbers match one process: every rank draws the same global batch (the data order
comes from the seed), takes its contiguous share, and scales its loss by
``n_local * world / n_global``; DDP averages the gradients over ranks, which gives exactly the
gradient of the mean loss over the global batch, for losses that are means over images.
DDP broadcasts rank 0's parameters and buffers when it wraps a module, so every rank starts
from the same weights. The frozen backbone is never wrapped: only the module passed to
:meth:`Context.wrap` (the method's trained tensors) is, so DDP all-reduces only their gradients.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import logging
import os
import socket
import sys
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

__all__ = ["Context", "context", "init_from_env", "is_main", "launch"]

logger = logging.getLogger(__name__)

BACKEND = "gloo"
#: Environment variables torchrun sets (and :func:`launch` sets for its processes).
ENV_VARS = ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


class _Step(nn.Module):
    """One training step as a ``forward``, so DDP sees it: ``module`` holds the trained
    tensors (registered, hence wrapped), ``fn`` computes the loss with them."""

    def __init__(self, module: nn.Module, fn: Callable[..., Any]) -> None:
        super().__init__()
        self.module = module
        self._fn = fn

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return self._fn(*args, **kwargs)


@dataclass(frozen=True)
class Context:
    """This process's place in the group: ``rank`` of ``world`` processes."""

    rank: int = 0
    world: int = 1

    @property
    def is_main(self) -> bool:
        """Rank 0: the process that validates, logs and writes checkpoints."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world > 1

    def shard(self, batch: Sequence) -> list:
        """This rank's contiguous share of a global batch (sizes differ by at most one)."""
        n = len(batch)
        start = self.rank * n // self.world
        end = (self.rank + 1) * n // self.world
        return list(batch[start:end])

    def loss_scale(self, n_local: int, n_global: int) -> float:
        """Factor for the local mean loss so that DDP's gradient average equals the gradient
        of the mean over the global batch (1.0 on one process or with equal shares)."""
        return n_local * self.world / n_global if n_global else 0.0

    def wrap(self, module: nn.Module, fn: Callable[..., Any]) -> Callable[..., Any]:
        """``fn`` as a step whose gradients for ``module``'s trainable parameters are averaged
        over ranks (DDP); on one process ``fn`` itself. Wrap after setting ``requires_grad``:
        DDP syncs the parameters that require gradients when it is built."""
        if not self.distributed:
            return fn
        from torch.nn.parallel import DistributedDataParallel

        return DistributedDataParallel(_Step(module, fn), find_unused_parameters=False)

    def no_sync(self, step: Any, sync: bool):
        """Context manager: skip DDP's gradient all-reduce (gradient accumulation) when not
        ``sync``."""
        if self.distributed and not sync and hasattr(step, "no_sync"):
            return step.no_sync()
        return contextlib.nullcontext()

    def sum(self, values: dict[str, float]) -> dict[str, float]:
        """``values`` summed over ranks (every rank must pass the same keys)."""
        if not self.distributed or not values:
            return dict(values)
        keys = sorted(values)
        t = torch.tensor([float(values[k]) for k in keys], dtype=torch.float64)
        dist.all_reduce(t)
        return dict(zip(keys, t.tolist(), strict=True))

    def sum_tensor(self, tensor: torch.Tensor) -> torch.Tensor:
        """``tensor`` summed over ranks (in place, and returned)."""
        if self.distributed:
            dist.all_reduce(tensor)
        return tensor

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier()


def context() -> Context:
    """The current process group's context (rank 0 of 1 when not distributed)."""
    if dist.is_available() and dist.is_initialized():
        return Context(dist.get_rank(), dist.get_world_size())
    return Context()


def is_main() -> bool:
    """True on rank 0 (and when not distributed)."""
    return context().is_main


def env_world_size() -> int:
    """``WORLD_SIZE`` from the environment (torchrun or :func:`launch`), 1 when unset."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def init_from_env() -> bool:
    """Join the gloo process group described by the environment when ``WORLD_SIZE > 1``;
    return True when this call created it (the caller then destroys it with
    :func:`shutdown`)."""
    if env_world_size() <= 1 or dist.is_initialized():
        return False
    missing = [v for v in ENV_VARS if v not in os.environ]
    if missing:
        raise ValueError(f"distributed training needs {', '.join(missing)} in the environment")
    dist.init_process_group(BACKEND)
    atexit.register(shutdown)
    logger.debug("rank %d of %d joined the process group", dist.get_rank(), dist.get_world_size())
    return True


def shutdown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _worker(
    rank: int,
    world: int,
    target: str,
    kwargs: dict[str, Any],
    threads: int,
    errors: str,
    log_level: int,
) -> None:
    """Body of a spawned process: set the torchrun variables, join, call ``target``."""
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world))
    torch.set_num_threads(threads)
    if rank == 0 and log_level:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(message)s"))
        root = logging.getLogger("anomalens")
        root.addHandler(handler)
        root.setLevel(log_level)
    module, name = target.rsplit(":", 1)
    fn = getattr(__import__(module, fromlist=[name]), name)
    try:
        fn(**kwargs)
    except Exception as exc:
        if rank == 0 or not Path(errors).exists():
            Path(errors).write_text(json.dumps({"type": type(exc).__name__, "message": str(exc)}))
        raise


def _reraise(errors: Path) -> None:
    """Raise the error a spawned process recorded (its type when it is a user error)."""
    import builtins

    from anomalens import errors as anomalens_errors

    info = json.loads(errors.read_text())
    cls = getattr(anomalens_errors, info["type"], None) or getattr(builtins, info["type"], None)
    if not (isinstance(cls, type) and issubclass(cls, Exception)):
        cls = RuntimeError
    raise cls(info["message"])


def launch(nproc: int, target: str, kwargs: dict[str, Any], threads: int | None = None) -> None:
    """Run ``target`` (``"module:function"``, called with ``**kwargs``) in ``nproc`` spawned
    processes forming a gloo group on this machine, as torchrun would; return when all end.

    Each process gets ``threads`` torch threads (default: the CPUs shared out). An error in a
    process stops the others and is raised here with its type and message."""
    if nproc < 1:
        raise ValueError(f"nproc must be >= 1, got {nproc}")
    if env_world_size() > 1:
        raise ValueError("already running under torchrun (WORLD_SIZE is set): drop --nproc")
    import torch.multiprocessing as mp

    threads = threads or max(1, (os.cpu_count() or 1) // nproc)
    saved = {k: os.environ.get(k) for k in ("MASTER_ADDR", "MASTER_PORT")}
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(_free_port()))
    level = logging.getLogger("anomalens").getEffectiveLevel()
    with tempfile.TemporaryDirectory(prefix="anomalens-ddp-") as tmp:
        errors = Path(tmp) / "error.json"
        try:
            mp.start_processes(
                _worker,
                args=(nproc, target, kwargs, threads, str(errors), level),
                nprocs=nproc,
                start_method="spawn",
            )
        except Exception:
            if errors.is_file():
                _reraise(errors)
            raise
        finally:
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v
