"""Nearest-neighbour search and coreset selection against plain, slow references."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from anomalens.neighbors import MemoryBank
from anomalens.sampler import coreset_indices, greedy_kcenter


def _brute_force(queries: torch.Tensor, bank: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    d = torch.cdist(queries.double(), bank.double())
    best = d.min(1)
    return best.values.numpy(), best.indices.numpy()


@pytest.fixture(scope="module")
def clustered():
    gen = torch.Generator().manual_seed(0)
    centres = torch.randn(50, 24, generator=gen) * 4 + 10  # offset: norms >> distances
    bank = centres.repeat_interleave(200, 0) + torch.randn(10_000, 24, generator=gen)
    queries = centres.repeat_interleave(60, 0) + torch.randn(3000, 24, generator=gen)
    return bank, queries


def test_fp32_search_matches_brute_force(clustered):
    bank, queries = clustered
    dist, idx = MemoryBank(bank, precision="fp32").search(queries)
    ref_d, ref_i = _brute_force(queries, bank)
    np.testing.assert_allclose(dist.numpy(), ref_d, rtol=1e-4, atol=1e-4)
    assert (idx.numpy() == ref_i).mean() > 0.999


def test_bf16_search_reranks_to_exact_float32_distances(clustered):
    bank, queries = clustered
    dist, idx = MemoryBank(bank, precision="bf16", rerank=4).search(queries)
    ref_d, _ = _brute_force(queries, bank)
    # returned distance is the exact distance to the returned index ...
    exact_to_idx = (queries.double() - bank[idx].double()).norm(dim=1).numpy()
    np.testing.assert_allclose(dist.numpy(), exact_to_idx, rtol=1e-5, atol=1e-5)
    # ... it is never below the true nearest distance, and nearly always equal to it (dense
    # clusters of 200 near-equidistant points are the hard case for a bf16 shortlist)
    assert (dist.numpy() >= ref_d - 1e-4).all()
    assert np.mean(np.abs(dist.numpy() - ref_d) < 1e-4) > 0.95
    assert np.abs(dist.numpy() - ref_d).max() < 0.1 * ref_d.mean()


def test_exclude_hides_bank_rows(clustered):
    bank, queries = clustered
    exclude = torch.zeros(len(bank), dtype=torch.bool)
    exclude[:5000] = True
    for precision in ("fp32", "bf16"):
        dist, idx = MemoryBank(bank, precision=precision).search(queries[:500], exclude=exclude)
        assert (idx >= 5000).all()
        ref_d, _ = _brute_force(queries[:500], bank[5000:])
        np.testing.assert_allclose(dist.numpy(), ref_d, rtol=1e-3, atol=1e-3)


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
@pytest.mark.parametrize("rows", [1, 5, 16, 17, 40])
def test_small_banks_not_a_multiple_of_the_groups(precision, rows):
    gen = torch.Generator().manual_seed(rows)
    bank = torch.randn(rows, 8, generator=gen) * 3
    queries = torch.cat([torch.randn(50, 8, generator=gen) * 3, bank[[0, rows // 2, -1]]])
    dist, idx = MemoryBank(bank, precision=precision).search(queries)
    ref_d, ref_i = _brute_force(queries, bank)
    np.testing.assert_allclose(dist.numpy(), ref_d, rtol=1e-4, atol=1e-4)
    assert (idx < rows).all()
    # a query equal to a bank row finds it at distance 0
    assert dist[-3:].abs().max() < 1e-4
    assert idx[-3:].tolist() == ref_i[-3:].tolist()


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_exclude_all_but_a_few_rows_still_finds_them(clustered, precision):
    bank, queries = clustered
    exclude = torch.ones(len(bank), dtype=torch.bool)
    keep = torch.tensor([17, 4321, 9876])
    exclude[keep] = False
    dist, idx = MemoryBank(bank, precision=precision).search(queries[:300], exclude=exclude)
    ref_d, ref_i = _brute_force(queries[:300], bank[keep])
    np.testing.assert_allclose(dist.numpy(), ref_d, rtol=1e-4, atol=1e-4)
    assert idx.tolist() == keep[ref_i].tolist()


def test_bank_rejects_bad_shapes():
    with pytest.raises(ValueError, match="non-empty"):
        MemoryBank(torch.empty(0, 4))
    with pytest.raises(ValueError, match="queries must be"):
        MemoryBank(torch.randn(10, 4)).search(torch.randn(3, 5))


def _naive_greedy(points: np.ndarray, n: int, first: int) -> list[int]:
    """Farthest-first traversal written plainly (O(n N) distance evaluations)."""
    chosen = [first]
    for _ in range(n - 1):
        best, best_d = -1, -1.0
        for j in range(len(points)):
            if j in chosen:
                continue
            d = min(float(np.sum((points[j] - points[c]) ** 2)) for c in chosen)
            if d > best_d:
                best, best_d = j, d
        chosen.append(best)
    return chosen


def test_greedy_kcenter_matches_naive_loop():
    rng = np.random.default_rng(3)
    pts = rng.normal(size=(120, 5)).astype(np.float64)
    got = greedy_kcenter(torch.from_numpy(pts).float(), 15, seed=7)
    ref = _naive_greedy(pts, 15, int(got[0]))
    assert got.tolist() == ref


def test_batched_greedy_equals_per_group_runs():
    gen = torch.Generator().manual_seed(1)
    pts = torch.randn(4, 300, 8, generator=gen)
    batched = greedy_kcenter(pts, 20, seed=5)
    assert batched.shape == (4, 20)
    for g in range(4):
        ref = _naive_greedy(pts[g].double().numpy(), 20, int(batched[g, 0]))
        assert batched[g].tolist() == ref


def test_coreset_covers_data_and_is_deterministic():
    gen = torch.Generator().manual_seed(2)
    # low intrinsic dimension embedded in 32-D, with a few rare far-away modes
    latent = torch.randn(64 * 100, 3, generator=gen)
    latent[::500] += 12.0
    feats = latent @ torch.randn(3, 32, generator=gen)
    a = coreset_indices(feats, 400, proj_dim=16, seed=0, block=64)
    b = coreset_indices(feats, 400, proj_dim=16, seed=0, block=64)
    assert torch.equal(a, b)
    assert len(a) == 400
    assert len(set(a.tolist())) == 400
    assert torch.all(a[1:] > a[:-1])
    # coverage: the coreset's covering radius is far smaller than a random subset's
    rand = torch.randperm(len(feats), generator=gen)[:400]
    radius = torch.cdist(feats, feats[a]).min(1).values.max()
    radius_random = torch.cdist(feats, feats[rand]).min(1).values.max()
    assert radius < 0.9 * radius_random
    # asking for more points than exist returns all of them
    assert torch.equal(coreset_indices(feats[:50], 80), torch.arange(50))
