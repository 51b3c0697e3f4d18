"""Greedy k-center coreset selection (PatchCore's memory subsampling), vectorised.

The greedy rule: start from a random point, then repeatedly add the point farthest from the
points chosen so far. Distances are computed on a random Gaussian projection of the features
(Johnson-Lindenstrauss), which keeps each iteration a single matrix-vector product over
``[N, proj_dim]``. Large inputs are first reduced per image-sized block ("two-level" greedy):
each block keeps ``prefilter`` times the final share of its own farthest-first points, and the
global greedy runs on what is left. Selection quality is the same in practice, but the global
loop touches far fewer points, so it stays in cache.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator

import torch
from tqdm import tqdm


@contextlib.contextmanager
def single_thread() -> Iterator[None]:
    """Run torch ops on one thread inside the block."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _project(features: torch.Tensor, proj_dim: int | None, seed: int) -> torch.Tensor:
    features = features.float()
    d = features.shape[1]
    if proj_dim is None or proj_dim >= d:
        return features.contiguous()
    gen = torch.Generator().manual_seed(seed)
    matrix = torch.randn(d, proj_dim, generator=gen) / math.sqrt(proj_dim)
    return (features @ matrix).contiguous()


def greedy_kcenter(points: torch.Tensor, n: int, seed: int = 0, progress: bool = False):
    """Greedy k-center selection over ``points [N, p]`` or, batched, ``[G, N, p]``.

    Returns indices ``[n]`` (or ``[G, n]``, one selection per group), in selection order.
    Deterministic for a given seed (the seed picks the first point of each group).
    """
    batched = points.ndim == 3
    pts = points if batched else points[None]
    groups, total = pts.shape[0], pts.shape[1]
    n = min(int(n), total)
    selected = torch.empty(groups, max(n, 0), dtype=torch.long)
    if n <= 0:
        return selected if batched else selected[0]
    gen = torch.Generator().manual_seed(seed)
    rows = torch.arange(groups)
    current = torch.randint(total, (groups,), generator=gen)
    sq = pts.pow(2).sum(2)  # [G, N]
    min_d = torch.full((groups, total), float("inf"))
    # One small memory-bound step per point: torch's intra-op threads only add wake-up costs
    # here (milliseconds per op when the other core is busy), so the loop runs single-threaded.
    with single_thread():
        for k in tqdm(
            range(n), desc="coreset", unit="pt", disable=not progress, leave=False, mininterval=0.5
        ):
            selected[:, k] = current
            centre = pts[rows, current]  # [G, p]
            if groups == 1:
                d = torch.addmv(sq[0], pts[0], centre[0], alpha=-2.0)[None]
            else:
                d = torch.baddbmm(sq[:, :, None], pts, centre[:, :, None], alpha=-2.0)[:, :, 0]
            d.add_(sq[rows, current][:, None])
            torch.minimum(min_d, d, out=min_d)
            min_d[rows, current] = -1.0
            current = torch.argmax(min_d, dim=1)
    return selected if batched else selected[0]


def coreset_indices(
    features: torch.Tensor,
    n: int,
    proj_dim: int | None = 128,
    seed: int = 0,
    block: int | None = None,
    prefilter: float = 4.0,
    progress: bool = False,
) -> torch.Tensor:
    """Sorted indices of ``n`` rows of ``features [N, D]`` chosen by greedy k-center.

    ``block`` (e.g. the number of patches per image; must divide N) enables the two-level
    scheme when the input is large: each block of rows is first reduced, all blocks at once,
    to ``prefilter * n / N`` of its rows.
    """
    total = features.shape[0]
    n = min(int(n), total)
    points = _project(features, proj_dim, seed)
    candidates = None
    share = prefilter * n / total
    if block and total % block == 0 and share < 0.5 and total >= 8 * block:
        per_block = max(1, math.ceil(share * block))
        grouped = points.view(total // block, block, -1)
        local = greedy_kcenter(grouped, per_block, seed=seed + 1)  # [G, per_block]
        offsets = torch.arange(0, total, block)[:, None]
        candidates = (local + offsets).reshape(-1)
        points = points[candidates].contiguous()
    chosen = greedy_kcenter(points, n, seed=seed, progress=progress)
    if candidates is not None:
        chosen = candidates[chosen]
    return torch.sort(chosen).values
