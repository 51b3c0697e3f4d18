"""Nearest-neighbour search of patch features against a memory bank, chunked.

One matrix product per chunk of queries gives, for every bank row ``m``,

    s(q, m) = q.m - |m|^2/2 - |q|^2/2 - e(q) = -|q - m|^2/2 - e(q)  <= 0

(the bank is augmented with ``-|m|^2/2`` and ``-1`` columns, the queries with ``1`` and
``-(|q|^2/2 + e(q))`` columns; each of these scalars is split into a high and a low part so
that rounding them to the product's dtype loses nothing). ``e(q)``, a bound on the product's
rounding error, keeps every computed ``s`` at or below zero. For floats of one sign the bit
pattern read as a signed integer is monotonic in the value: for non-positive floats the integer
*decreases* towards zero, so the nearest row is the *smallest* integer key. Integer minima are
several times cheaper than float maxima with indices, which dominated the search before.

Selection works on the product viewed as ``[queries, GROUPS, columns]``: the minimum over the
groups per column (a cheap strided reduction), the ``rerank`` best columns, then the best row in
each; these ``rerank`` candidates are re-ranked by their exact float32 distance. The returned
distance is always the exact distance to the returned row, so it can only err upwards, and
only when the product's rounding hides the true neighbour from the shortlist (bf16: rare;
``tests/test_neighbors_sampler.py`` measures it; fp32: never in practice).

* ``precision="bf16"``: the product runs in bfloat16 (several times faster than float32 on
  CPUs with AVX512-BF16 or AMX; docs/benchmarks.md).
* ``precision="fp32"``: the product runs in float32.
* ``precision="auto"``: bf16 where the CPU computes it natively (AVX512-BF16, AMX), else fp32.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from anomalens.backbones.base import resolve_precision

#: Queries per product (the fastest chunk for a 10240-row bank; docs/benchmarks.md).
QUERY_CHUNK = 512
#: Rows of the bank grouped per column for the two-level minimum (see the module doc).
GROUPS = 16
_KEY_DTYPE = {torch.bfloat16: torch.int16, torch.float32: torch.int32}
_DTYPE = {"bf16": torch.bfloat16, "fp32": torch.float32}


def _split(x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``[N, 2]`` high and low parts of float32 ``x`` in ``dtype`` (their sum ~ x in float32)."""
    high = x.to(dtype)
    return torch.stack([high, (x - high.float()).to(dtype)], 1)


class MemoryBank:
    """Float32 memory ``[M, D]`` prepared for repeated nearest-neighbour queries."""

    def __init__(self, features: torch.Tensor, precision: str = "auto", rerank: int = 4) -> None:
        if features.ndim != 2 or features.shape[0] == 0:
            raise ValueError(
                f"memory bank must be a non-empty [M, D] tensor, got {tuple(features.shape)}"
            )
        precision = resolve_precision(precision, "search precision")
        self.features = features.float().contiguous()
        self.precision = precision
        self.rerank = max(1, int(rerank))
        self.dtype = _DTYPE[precision]
        self.center = self.features.mean(0)
        n, dim = self.features.shape
        # pad to a multiple of GROUPS with rows that are infinitely far (never selected, and
        # their exact distance is infinite)
        padded = -(-n // GROUPS) * GROUPS
        centred = torch.full((padded, dim), float("inf"))
        centred[:n] = self.features - self.center
        self._centred = centred
        half_sq = torch.zeros(padded, 2, dtype=self.dtype)
        half_sq[:n] = _split(centred[:n].pow(2).sum(1) / 2, self.dtype)
        half_sq[n:, 0] = float("inf")  # padding: s = -inf
        self._max_norm = float(centred[:n].norm(dim=1).max())
        rows = torch.cat(
            [
                torch.where(centred.isinf(), 0.0, centred).to(self.dtype),
                -half_sq,
                -torch.ones(padded, 2, dtype=self.dtype),
            ],
            1,
        )
        self._augmented = rows.contiguous()  # [padded, D + 4]

    def __len__(self) -> int:
        return self.features.shape[0]

    def _augment_queries(self, q: torch.Tensor) -> torch.Tensor:
        """``[Q, D + 4]`` queries for the product (see the module doc)."""
        norm = q.norm(dim=1)
        eps = torch.finfo(self.dtype).eps  # 2 x unit roundoff
        # rounding q and m to dtype moves q.m by at most ~eps |q| |m|; fp32 accumulation
        # of the D + 4 terms by far less than the second term
        error = 2 * eps * norm * self._max_norm + 1e-5 * (norm + self._max_norm).pow(2)
        return torch.cat(
            [
                q.to(self.dtype),
                torch.ones(q.shape[0], 2, dtype=self.dtype),
                _split(norm.pow(2) / 2 + error, self.dtype),
            ],
            1,
        )

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
        hidden = None
        if exclude is not None:
            if bool(exclude.all()):
                raise ValueError("exclude hides every row of the memory bank")
            hidden = exclude.nonzero()[:, 0]
        q = queries.float() - self.center
        q_aug = self._augment_queries(q)
        key_dtype = _KEY_DTYPE[self.dtype]
        worst = torch.iinfo(key_dtype).max
        columns = self._centred.shape[0] // GROUPS
        k = min(self.rerank, columns)
        dists, idx = [], []
        with torch.inference_mode():
            for start in range(0, q.shape[0], QUERY_CHUNK):
                stop = start + QUERY_CHUNK
                key = F.linear(q_aug[start:stop], self._augmented).view(key_dtype)
                if hidden is not None:
                    key.index_fill_(1, hidden, worst)
                blocks = key.view(-1, GROUPS, columns)
                col = blocks.amin(1).int().topk(k, 1, largest=False).indices  # [c, k]
                picked = blocks.gather(2, col[:, None, :].expand(-1, GROUPS, k))
                group = picked.transpose(1, 2).contiguous().argmin(2)  # [c, k]
                cand = group * columns + col
                exact = (self._centred[cand] - q[start:stop, None, :]).pow_(2).sum(2)
                if hidden is not None:
                    exact.masked_fill_(exclude[cand.clamp(max=len(self) - 1)], float("inf"))
                best, j = exact.min(1)
                dists.append(best.sqrt_())
                idx.append(cand.gather(1, j[:, None])[:, 0])
        dist, index = torch.cat(dists), torch.cat(idx)
        missed = dist.isinf() & queries.isfinite().all(1)
        if bool(missed.any()):  # shortlist held only hidden rows (tiny or mostly hidden banks)
            dist[missed], index[missed] = self._exhaustive(q[missed], exclude)
        return dist, index

    def cosine_distance(
        self, queries: torch.Tensor, exclude: torch.Tensor | None = None
    ) -> torch.Tensor:
        """``1 - cos`` to the nearest row, for unit-norm queries ``[Q, D]`` and bank rows
        (``|a - b|^2 = 2 - 2 cos`` for unit vectors); ``exclude`` as in :meth:`search`."""
        dist, _ = self.search(queries, exclude)
        return dist.square().mul_(0.5).clamp_(0.0, 2.0)

    def _exhaustive(
        self, q: torch.Tensor, exclude: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Exact float32 search of centred queries (the fallback for rare misses)."""
        d = torch.cdist(q, self._centred[: len(self)])
        if exclude is not None:
            d[:, exclude] = float("inf")
        best = d.min(1)
        return best.values, best.indices
