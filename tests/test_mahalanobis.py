"""Gaussian statistics against scikit-learn / scipy / numpy references."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.spatial.distance import mahalanobis as scipy_mahalanobis
from sklearn.covariance import LedoitWolf

from anomalens.mahalanobis import (
    fit_gaussian,
    fit_positional,
    fold_indices,
    held_out_scores,
    ledoit_wolf,
    pca_projection,
    select_channels,
)


def _samples(n: int, d: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, d)) @ rng.normal(size=(d, d)) * 0.3 + rng.normal(size=d)


@pytest.mark.parametrize(("n", "d"), [(60, 12), (30, 96), (80, 384)])
def test_ledoit_wolf_matches_sklearn(n: int, d: int) -> None:
    x = _samples(n, d)
    cov, shrinkage = ledoit_wolf(torch.from_numpy(x))
    ref = LedoitWolf().fit(x)
    assert shrinkage == pytest.approx(ref.shrinkage_, rel=1e-10)
    np.testing.assert_allclose(cov.numpy(), ref.covariance_, rtol=1e-9, atol=1e-12)


def test_fewer_images_than_dimensions_is_invertible_with_shrinkage() -> None:
    x = _samples(100, 768, seed=1)  # 100 ViT-B-sized features
    sample_cov = np.cov(x, rowvar=False)
    assert np.linalg.matrix_rank(sample_cov) < 768  # singular without shrinkage
    g = fit_gaussian(torch.from_numpy(x))
    cov, _ = ledoit_wolf(torch.from_numpy(x))
    identity = cov.numpy() @ g.precision.double().numpy()
    np.testing.assert_allclose(identity, np.eye(768), atol=2e-3)
    assert torch.isfinite(g.distance(torch.from_numpy(x[:5]))).all()


def test_fit_gaussian_distance_matches_scipy() -> None:
    x = _samples(80, 10, seed=2)
    queries = _samples(7, 10, seed=3)
    g = fit_gaussian(torch.from_numpy(x))
    vi = np.linalg.inv(LedoitWolf().fit(x).covariance_)
    ref = [scipy_mahalanobis(q, x.mean(0), vi) for q in queries]
    np.testing.assert_allclose(g.distance(torch.from_numpy(queries)).numpy(), ref, rtol=1e-4)
    # ridge variant: unbiased covariance + ridge * I, as PaDiM
    r = fit_gaussian(torch.from_numpy(x), shrinkage="ridge", ridge=0.5)
    vi = np.linalg.inv(np.cov(x, rowvar=False) + 0.5 * np.eye(10))
    ref = [scipy_mahalanobis(q, x.mean(0), vi) for q in queries]
    np.testing.assert_allclose(r.distance(torch.from_numpy(queries)).numpy(), ref, rtol=1e-4)


def test_fit_positional_matches_numpy_per_position() -> None:
    rng = np.random.default_rng(4)
    x = rng.normal(size=(6, 5, 8))  # 6 images < 8 dims: the ridge keeps it invertible
    q = rng.normal(size=(3, 5, 8))
    g = fit_positional(torch.from_numpy(x), ridge=0.01, chunk=2)
    out = g.distance(torch.from_numpy(q)).numpy()
    for p in range(5):
        vi = np.linalg.inv(np.cov(x[:, p], rowvar=False) + 0.01 * np.eye(8))
        ref = [scipy_mahalanobis(q[b, p], x[:, p].mean(0), vi) for b in range(3)]
        np.testing.assert_allclose(out[:, p], ref, rtol=1e-4)
    with pytest.raises(ValueError, match=r"expected features \[B, 5, 8\]"):
        g.distance(torch.zeros(2, 4, 8))
    with pytest.raises(ValueError, match="ridge must be > 0"):
        fit_positional(torch.from_numpy(x), ridge=0.0)


def test_held_out_scores_never_score_an_item_with_itself() -> None:
    assert fold_indices(5, 3) == [[0, 3], [1, 4], [2]]
    seen: list[tuple[list[int], list[int]]] = []

    def fit(rest):
        return rest

    def score(model, fold):
        seen.append((model, fold))
        return [(float(i), float(-i)) for i in fold]

    out = held_out_scores(5, 3, fit, score)
    assert out == [(float(i), float(-i)) for i in range(5)]
    for rest, fold in seen:
        assert not set(rest) & set(fold)
        assert sorted(rest + fold) == list(range(5))
    assert held_out_scores(1, 3, fit, score) == []


def test_channel_selection_and_pca() -> None:
    a, b = select_channels(20, 5, seed=3), select_channels(20, 5, seed=3)
    assert torch.equal(a, b)
    assert a.tolist() == sorted(set(a.tolist()))
    assert len(a) == 5
    assert select_channels(20, 20, seed=3) is None
    x = _samples(50, 6, seed=5)
    mean, comps = pca_projection(torch.from_numpy(x), 2)
    _vals, vecs = np.linalg.eigh(np.cov(x, rowvar=False))
    ref = vecs[:, ::-1][:, :2]
    for k in range(2):  # same axis up to sign
        assert abs(float(np.dot(comps[:, k].numpy(), ref[:, k]))) == pytest.approx(1, abs=1e-5)
    np.testing.assert_allclose(mean.numpy(), x.mean(0), rtol=1e-5)
