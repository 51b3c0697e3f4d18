"""Small statistics of the encoder tests, in numpy / torch (no scikit-learn at runtime).

* :func:`silhouette`: mean silhouette coefficient (Euclidean), as ``sklearn.metrics.
  silhouette_score``;
* :func:`group_folds`: K folds where all rows of one group (image) fall in the same fold, so no
  image is on both sides of a split (the idea of ``sklearn.model_selection.GroupKFold``);
* :func:`fit_logistic` / :func:`probe_auroc`: an L2-regularised logistic regression on
  standardised features (Newton's method, scikit-learn's objective) and its cross-validated
  AUROC;
* :func:`knn_distance`: distance of each query to its nearest memory row (chunked);
* :func:`pca_2d`: the first two principal components (for the scatter figure).

numpy and torch are runtime dependencies already; the tests compare these functions
with scikit-learn (a dev dependency), which the runtime never imports.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from anomalens.metrics import image_auroc

__all__ = [
    "balanced_subsample",
    "fit_logistic",
    "group_folds",
    "knn_distance",
    "pca_2d",
    "probe_auroc",
    "silhouette",
]


def balanced_subsample(labels: np.ndarray, per_class: int, seed: int) -> np.ndarray:
    """Sorted indices of at most ``per_class`` rows of each label, drawn with ``seed``."""
    rng = np.random.default_rng(seed)
    keep = []
    for value in np.unique(labels):
        idx = np.flatnonzero(labels == value)
        if len(idx) > per_class:
            idx = rng.choice(idx, per_class, replace=False)
        keep.append(idx)
    return np.sort(np.concatenate(keep)) if keep else np.zeros(0, dtype=int)


def silhouette(x: np.ndarray, labels: np.ndarray) -> float | None:
    """Mean silhouette coefficient of ``x`` ``[N, D]`` with Euclidean distances; None with
    fewer than 2 labels. A row alone in its cluster scores 0 (scikit-learn's convention)."""
    labels = np.asarray(labels)
    values = np.unique(labels)
    if len(values) < 2 or len(values) >= len(labels):
        return None
    t = torch.as_tensor(np.asarray(x, dtype=np.float64))
    d = torch.cdist(t, t).numpy()
    n = len(labels)
    a = np.zeros(n)
    b = np.full(n, np.inf)
    sizes = {v: int((labels == v).sum()) for v in values}
    for v in values:
        cols = labels == v
        sums = d[:, cols].sum(1)
        own = labels == v
        if sizes[v] > 1:
            a[own] = sums[own] / (sizes[v] - 1)
        b[~own] = np.minimum(b[~own], sums[~own] / sizes[v])
    s = np.where(np.maximum(a, b) > 0, (b - a) / np.maximum(np.maximum(a, b), 1e-300), 0.0)
    singles = np.array([sizes[v] == 1 for v in labels])
    s[singles] = 0.0
    return float(s.mean())


def group_folds(groups: np.ndarray, k: int, seed: int = 0) -> list[np.ndarray]:
    """``k`` boolean test masks over the rows; every group (e.g. the image a patch comes from)
    lies in exactly one fold. Groups are shuffled with ``seed`` and dealt to the fold with the
    fewest rows so far (largest first), which balances the fold sizes."""
    groups = np.asarray(groups)
    uniq, counts = np.unique(groups, return_counts=True)
    if len(uniq) < k:
        raise ValueError(f"{k} folds need at least {k} groups, got {len(uniq)}")
    order = np.random.default_rng(seed).permutation(len(uniq))
    order = order[np.argsort(-counts[order], kind="stable")]
    fold_of = np.zeros(len(uniq), dtype=int)
    sizes = np.zeros(k, dtype=int)
    for g in order:
        f = int(np.argmin(sizes))
        fold_of[g] = f
        sizes[f] += counts[g]
    index = np.searchsorted(uniq, groups)
    return [fold_of[index] == f for f in range(k)]


def fit_logistic(
    x: np.ndarray, y: np.ndarray, l2: float = 1.0, max_iter: int = 50, tol: float = 1e-8
) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
    """``(mean, std, weights, bias)`` of a logistic regression on standardised ``x``:
    minimises ``sum(log-loss) + l2 / 2 * |w|^2`` (scikit-learn's objective with ``C = 1 / l2``;
    the bias is not penalised) by Newton's method with step halving, in float64 torch (which
    honours ``torch.set_num_threads``; numpy's BLAS may oversubscribe a busy machine)."""
    xs = np.asarray(x, dtype=np.float64)
    mean = xs.mean(0)
    std = xs.std(0) + 1e-8
    z = torch.as_tensor((xs - mean) / std)
    z = torch.cat([z, torch.ones(len(z), 1, dtype=z.dtype)], 1)  # last column: the bias
    t = torch.as_tensor(np.asarray(y, dtype=np.float64))
    sign = 2 * t - 1
    reg = torch.full((z.shape[1],), float(l2), dtype=z.dtype)
    reg[-1] = 0.0

    def objective(p: torch.Tensor) -> float:
        return float(-F.logsigmoid(sign * (z @ p)).sum() + 0.5 * (reg * p * p).sum())

    p = torch.zeros(z.shape[1], dtype=z.dtype)
    value = objective(p)
    for _ in range(max_iter):
        prob = torch.sigmoid(z @ p)
        grad = z.T @ (prob - t) + reg * p
        hess = (z.T * (prob * (1 - prob))) @ z + torch.diag(reg) + 1e-10 * torch.eye(len(p))
        step = torch.linalg.solve(hess, grad)
        scale = 1.0
        while scale > 1e-6:
            candidate = p - scale * step
            new = objective(candidate)
            if new <= value:
                break
            scale /= 2
        if new > value:  # no descent left: converged to rounding
            break
        p, done = candidate, value - new < tol * max(1.0, abs(value))
        value = new
        if done:
            break
    w = p.numpy()
    return mean, std, w[:-1], float(w[-1])


def _decision(model: tuple[np.ndarray, np.ndarray, np.ndarray, float], x: np.ndarray):
    mean, std, w, b = model
    return ((np.asarray(x, dtype=np.float64) - mean) / std) @ w + b


def probe_auroc(
    x: np.ndarray, y: np.ndarray, groups: np.ndarray, k: int = 5, seed: int = 0
) -> float | None:
    """AUROC of out-of-fold logistic-regression scores, folds by :func:`group_folds` (no group
    in both the training and the test side). None when a training side lacks a class or there
    are fewer than 2 groups."""
    y = np.asarray(y)
    if len(np.unique(y)) < 2 or len(np.unique(groups)) < 2:
        return None
    k = min(k, len(np.unique(groups)))
    scores = np.zeros(len(y))
    for test in group_folds(groups, k, seed):
        train = ~test
        if len(np.unique(y[train])) < 2:
            return None
        scores[test] = _decision(fit_logistic(x[train], y[train]), x[test])
    return image_auroc(y, scores)


def knn_distance(queries: np.ndarray, memory: np.ndarray, chunk: int = 2048) -> np.ndarray:
    """Euclidean distance of each query row to its nearest memory row."""
    m = torch.as_tensor(np.asarray(memory, dtype=np.float32))
    q = torch.as_tensor(np.asarray(queries, dtype=np.float32))
    out = []
    for start in range(0, len(q), chunk):
        out.append(torch.cdist(q[start : start + chunk], m).amin(1))
    return torch.cat(out).numpy() if out else np.zeros(0, dtype=np.float32)


def pca_2d(x: np.ndarray) -> np.ndarray:
    """``[N, 2]`` coordinates on the first two principal axes (signs fixed so the largest
    loading of each axis is positive)."""
    xs = torch.as_tensor(np.asarray(x, dtype=np.float64))
    xs = xs - xs.mean(0)
    _, _, vt = torch.linalg.svd(xs, full_matrices=False)
    axes = vt[:2].numpy()
    xs = xs.numpy()
    signs = np.sign(axes[np.arange(len(axes)), np.abs(axes).argmax(1)])
    axes = axes * signs[:, None]
    out = xs @ axes.T
    return out if out.shape[1] == 2 else np.pad(out, ((0, 0), (0, 2 - out.shape[1])))
