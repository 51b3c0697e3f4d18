"""Gaussian models of normal features and Mahalanobis distances (PaDiM, Gaussian AD, VFM).

* :func:`ledoit_wolf`: the Ledoit-Wolf shrunk covariance (as scikit-learn's ``LedoitWolf``),
  invertible even with fewer samples than dimensions (768-d ViT features of 100 images);
* :func:`fit_gaussian`: one Gaussian (mean, precision) with Ledoit-Wolf shrinkage or a ridge;
* :func:`fit_positional`: one Gaussian per grid position (PaDiM), covariance plus a ridge;
* :class:`Gaussian`: mean and precision (inverse covariance), one or ``P`` of them, and the
  Mahalanobis distance of features to them;
* :func:`held_out_scores`: k-fold scores of training items by models fitted without them
  (thresholds from good images that the model did not see).

Statistics are computed in float64 and stored in float32.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

#: relative diagonal floor added to Ledoit-Wolf covariances (times their mean variance)
JITTER = 1e-6
#: covariance regularisers :func:`fit_gaussian` accepts
SHRINKAGES = ("ledoit_wolf", "ridge")


def ledoit_wolf(x: Tensor) -> tuple[Tensor, float]:
    """``(covariance [D, D] float64, shrinkage)`` of samples ``x [N, D]``: the Ledoit-Wolf
    shrunk maximum-likelihood covariance ``(1 - s) * S + s * mean(diag(S)) * I`` with ``S`` the
    biased covariance of the centred samples (scikit-learn's ``LedoitWolf``, same formula)."""
    x = x.double()
    n, d = x.shape
    if n < 1:
        raise ValueError("ledoit_wolf needs at least one sample")
    xc = x - x.mean(0)
    emp = xc.T @ xc / n
    if n == 1:  # no spread: all shrinkage towards a (zero) multiple of the identity
        return emp, 1.0
    x2 = xc * xc
    trace_terms = x2.sum(0) / n
    mu = float(trace_terms.sum()) / d
    delta_ = float(((xc.T @ xc) ** 2).sum()) / n**2
    beta_ = float((x2.T @ x2).sum())
    beta = (beta_ / n - delta_) / (d * n)
    delta = (delta_ - 2.0 * mu * float(trace_terms.sum()) + d * mu**2) / d
    beta = min(beta, delta)
    shrinkage = 0.0 if beta == 0 else beta / delta
    cov = (1.0 - shrinkage) * emp
    cov.diagonal().add_(shrinkage * mu)
    return cov, shrinkage


def _inverse(cov: Tensor) -> Tensor:
    """Inverse of symmetric positive definite matrices ``[..., D, D]`` (float64, symmetrised)."""
    inv = torch.linalg.inv(cov)
    return (0.5 * (inv + inv.transpose(-1, -2))).contiguous()


@dataclass
class Gaussian:
    """Gaussian(s) of normal features: ``mean [D]`` and ``precision [D, D]`` (one Gaussian) or
    ``mean [P, D]`` and ``precision [P, D, D]`` (one per grid position); float32."""

    mean: Tensor
    precision: Tensor

    @property
    def positional(self) -> bool:
        return self.mean.dim() == 2

    @property
    def dim(self) -> int:
        return int(self.mean.shape[-1])

    def distance(self, x: Tensor) -> Tensor:
        """Mahalanobis distances ``sqrt((x - mean)^T precision (x - mean))``.

        One Gaussian: ``x [..., D]`` -> ``[...]``. Positional: ``x [B, P, D]`` -> ``[B, P]``
        (feature ``p`` against Gaussian ``p``)."""
        if self.positional and (x.dim() != 3 or x.shape[1:] != self.mean.shape):
            raise ValueError(
                f"expected features [B, {self.mean.shape[0]}, {self.dim}], got {tuple(x.shape)}"
            )
        diff = x.float() - self.mean
        if self.positional:
            sq = torch.einsum("bpd,pde,bpe->bp", diff, self.precision, diff)
        else:
            sq = ((diff @ self.precision) * diff).sum(-1)
        return sq.clamp_min(0).sqrt()

    def tensors(self, prefix: str) -> dict[str, Tensor]:
        """``{prefix.mean, prefix.precision}`` for a checkpoint."""
        return {f"{prefix}.mean": self.mean, f"{prefix}.precision": self.precision}

    @classmethod
    def from_tensors(cls, tensors: dict[str, Tensor], prefix: str) -> Gaussian:
        """Inverse of :meth:`tensors`."""
        return cls(tensors[f"{prefix}.mean"], tensors[f"{prefix}.precision"])


def fit_gaussian(x: Tensor, shrinkage: str = "ledoit_wolf", ridge: float = 0.01) -> Gaussian:
    """One Gaussian of samples ``x [N, D]``: Ledoit-Wolf shrinkage (plus :data:`JITTER` times
    the mean variance on the diagonal), or the unbiased covariance plus ``ridge * I``
    (``shrinkage="ridge"``)."""
    if shrinkage not in SHRINKAGES:
        raise ValueError(f"shrinkage must be one of {SHRINKAGES}, got {shrinkage!r}")
    x = x.double()
    if x.dim() != 2 or x.shape[0] < 1:
        raise ValueError(f"expected samples [N, D] with N >= 1, got {tuple(x.shape)}")
    if shrinkage == "ledoit_wolf":
        cov, _ = ledoit_wolf(x)
        # a relative 1e-6 floor keeps it invertible when the shrinkage is ~0 (two or three
        # samples) or features are constant (then ``ridge``)
        scale = float(cov.diagonal().mean())
        cov.diagonal().add_(JITTER * scale if scale > 0 else ridge)
    else:
        cov = _covariance(x[None])[0]
        cov.diagonal().add_(ridge)
    return Gaussian(x.mean(0).float(), _inverse(cov).float())


def _covariance(x: Tensor) -> Tensor:
    """Unbiased covariance (``np.cov``) of ``x [P, N, D]`` per ``p``: ``[P, D, D]`` float64
    (zero for ``N == 1``)."""
    n = x.shape[1]
    xc = x.double() - x.double().mean(1, keepdim=True)
    return xc.transpose(1, 2) @ xc / max(n - 1, 1)


def fit_positional(x: Tensor, ridge: float = 0.01, chunk: int = 256) -> Gaussian:
    """One Gaussian per position of features ``x [N, P, D]``: unbiased covariance plus
    ``ridge * I`` (PaDiM), computed ``chunk`` positions at a time."""
    if x.dim() != 3 or x.shape[0] < 1:
        raise ValueError(f"expected features [N, P, D] with N >= 1, got {tuple(x.shape)}")
    if ridge <= 0:
        raise ValueError(f"ridge must be > 0 (the covariance must be invertible), got {ridge}")
    per_pos = x.transpose(0, 1)  # [P, N, D]
    precisions = []
    for start in range(0, per_pos.shape[0], chunk):
        cov = _covariance(per_pos[start : start + chunk])
        cov.diagonal(dim1=-2, dim2=-1).add_(ridge)
        precisions.append(_inverse(cov).float())
    return Gaussian(x.double().mean(0).float(), torch.cat(precisions))


def fold_indices(n: int, folds: int) -> list[list[int]]:
    """``min(folds, n)`` interleaved folds of ``range(n)`` (``i % k``), each non-empty."""
    k = max(1, min(int(folds), n))
    return [list(range(i, n, k)) for i in range(k)]


def held_out_scores(
    n: int,
    folds: int,
    fit: Callable[[list[int]], object],
    score: Callable[[object, list[int]], Sequence[tuple[float, float]]],
) -> list[tuple[float, float]]:
    """``(score, map maximum)`` of every item ``0..n-1``, each from a model fitted by
    ``fit(train_indices)`` on the other folds and applied by ``score(model, fold_indices)``;
    empty when ``n < 2`` (nothing can be held out)."""
    if n < 2:
        return []
    out: list[tuple[float, float]] = [(0.0, 0.0)] * n
    for fold in fold_indices(n, folds):
        rest = sorted(set(range(n)) - set(fold))
        model = fit(rest)
        for i, value in zip(fold, score(model, fold), strict=True):
            out[i] = (float(value[0]), float(value[1]))
    return out


def select_channels(dim: int, keep: int | None, seed: int) -> Tensor | None:
    """Sorted random channel indices (PaDiM's random dimensionality reduction), or None when
    ``keep`` is None or not smaller than ``dim``."""
    if keep is None or keep >= dim:
        return None
    rng = np.random.default_rng(seed)
    return torch.from_numpy(np.sort(rng.choice(dim, size=keep, replace=False)).astype(np.int64))


def pca_projection(x: Tensor, keep: int) -> tuple[Tensor, Tensor]:
    """``(mean [D], components [D, keep])`` of the principal axes of samples ``x [N, D]``
    (float32; signs fixed so each component's largest entry is positive)."""
    x = x.double()
    mean = x.mean(0)
    cov = (x - mean).T @ (x - mean) / max(x.shape[0] - 1, 1)
    _, vecs = torch.linalg.eigh(cov)
    comps = vecs[:, -keep:].flip(1)
    signs = torch.sign(comps.gather(0, comps.abs().argmax(0, keepdim=True)))
    return mean.float(), (comps * signs).float()


__all__ = [
    "SHRINKAGES",
    "Gaussian",
    "fit_gaussian",
    "fit_positional",
    "fold_indices",
    "held_out_scores",
    "ledoit_wolf",
    "pca_projection",
    "select_channels",
]
