"""Nearest-neighbour search of patch features against a memory bank, chunked.

Ranking a bank row ``m`` for a query ``q`` needs only ``q.m - |m|^2 / 2`` (``|q|^2`` is the same
for every row), which is one matrix product with the bank augmented by a ``-|m|^2 / 2`` column.

* ``precision="fp32"``: exact; float32 products, chunked over queries.
* ``precision="bf16"``: the product runs in bfloat16 (about 3x faster on CPUs with
  AVX512-BF16 or AMX) to *shortlist* ``rerank`` rows per query; their distances are then
  recomputed exactly in float32 and the smallest is kept. The returned distance is always the
  exact distance to the returned row, so it can only err upwards, and only when the true
  neighbour is missing from the shortlist (rare: features are centred on the bank mean, which
  keeps norms, and so rounding, small; ``tests/test_neighbors_sampler.py`` measures it).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

#: Queries per product: 256 x 10240 bf16 scores stay in cache; measured 1.5x faster than 1024
#: or one product for all queries.
QUERY_CHUNK = 256


class MemoryBank:
    """Float32 memory ``[M, D]`` prepared for repeated nearest-neighbour queries."""

    def __init__(self, features: torch.Tensor, precision: str = "bf16", rerank: int = 4) -> None:
        if features.ndim != 2 or features.shape[0] == 0:
            raise ValueError(
                f"memory bank must be a non-empty [M, D] tensor, got {tuple(features.shape)}"
            )
        if precision not in ("fp32", "bf16"):
            raise ValueError(f"precision must be 'fp32' or 'bf16', got {precision!r}")
        self.features = features.float().contiguous()
        self.precision = precision
        self.rerank = max(1, int(rerank))
        self.center = self.features.mean(0)
        self._centred = self.features - self.center
        half_sq = self._centred.pow(2).sum(1, keepdim=True) / 2
        augmented = torch.cat([self._centred, half_sq], 1).contiguous()  # [M, D + 1]
        self._augmented = augmented.to(torch.bfloat16) if precision == "bf16" else augmented

    def __len__(self) -> int:
        return self.features.shape[0]

    def search(
        self, queries: torch.Tensor, exclude: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Distance (L2, float32) and index of the nearest bank row for each query ``[Q, D]``.

        ``exclude`` (bool ``[M]``) hides bank rows, e.g. those from the image being scored
        when calibrating thresholds on training images.
        """
        dim = self.features.shape[1]
        if queries.ndim != 2 or queries.shape[1] != dim:
            raise ValueError(f"queries must be [Q, {dim}], got {tuple(queries.shape)}")
        if exclude is not None and bool(exclude.all()):
            raise ValueError("exclude hides every row of the memory bank")
        q = queries.float() - self.center
        q_aug = torch.cat([q, -torch.ones(q.shape[0], 1)], 1).to(self._augmented.dtype)
        k = 1 if self.precision == "fp32" else min(self.rerank, len(self))
        penalty = None
        if exclude is not None:
            penalty = torch.zeros(len(self), dtype=self._augmented.dtype)
            penalty[exclude] = float("-inf")
        dists, idx = [], []
        with torch.inference_mode():
            for start in range(0, q.shape[0], QUERY_CHUNK):
                stop = start + QUERY_CHUNK
                similarity = F.linear(q_aug[start:stop], self._augmented)  # q.m - |m|^2/2
                if penalty is not None:
                    similarity += penalty
                cand = similarity.topk(k, dim=1).indices if k > 1 else similarity.argmax(1)[:, None]
                exact = (self._centred[cand] - q[start:stop, None, :]).pow_(2).sum(2)
                best, j = exact.min(1)
                dists.append(best.sqrt_())
                idx.append(cand.gather(1, j[:, None])[:, 0])
        return torch.cat(dists).clone(), torch.cat(idx).clone()
