"""Resume state shared by the trainers (AA-CLIP, VFM): tensors and optimizer state written
atomically as safetensors (never pickled)."""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import save_file

from anomalens.atomic import atomic_write_with

__all__ = ["load_optimizer_tensors", "optimizer_tensors", "save_tensors"]


def save_tensors(tensors: dict[str, torch.Tensor], path: Path) -> None:
    """Write ``tensors`` to ``path`` as safetensors, replacing it atomically."""
    flat = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    atomic_write_with(path, lambda tmp: save_file(flat, str(tmp)))


def optimizer_tensors(opt: torch.optim.Optimizer) -> dict[str, torch.Tensor]:
    """Adam state as flat tensors (``{i}.exp_avg`` ... per parameter index)."""
    out: dict[str, torch.Tensor] = {}
    for index, entry in opt.state_dict()["state"].items():
        for key, value in entry.items():
            out[f"{index}.{key}"] = torch.as_tensor(value).clone()
    return out


def load_optimizer_tensors(opt: torch.optim.Optimizer, tensors: dict[str, torch.Tensor]) -> None:
    """Inverse of :func:`optimizer_tensors` (learning rates come from the scheduler)."""
    sd = opt.state_dict()
    state: dict[int, dict[str, torch.Tensor]] = {}
    for name, value in tensors.items():
        index, key = name.split(".", 1)
        state.setdefault(int(index), {})[key] = value
    sd["state"] = state
    opt.load_state_dict(sd)
