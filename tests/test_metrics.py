"""Metrics against scikit-learn and a slow, plainly written AUPRO reference."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage
from sklearn.metrics import average_precision_score, precision_recall_curve, roc_auc_score

from anomalens.metrics import (
    UndefinedMetricWarning,
    aupro,
    compute_all,
    f1_max,
    image_auroc,
    pixel_ap,
    pixel_auroc,
)

# --- references ------------------------------------------------------------------------------


def sklearn_f1_max(labels: np.ndarray, scores: np.ndarray) -> float:
    precision, recall, _ = precision_recall_curve(labels, scores)
    denom = precision + recall
    f1 = np.divide(2 * precision * recall, denom, out=np.zeros_like(denom), where=denom > 0)
    return float(f1.max())


def reference_aupro(masks: list[np.ndarray], maps: list[np.ndarray], limit: float = 0.3) -> float:
    """Loop over every distinct score as threshold; nothing clever."""
    structure = np.ones((3, 3), dtype=int)
    normal = np.concatenate([(m == 0).ravel() for m in masks])
    scores = np.concatenate([s.ravel() for s in maps])
    image_of_region = []
    for i, mask in enumerate(masks):
        labelled, n = ndimage.label(mask > 0, structure=structure)
        image_of_region += [(i, labelled == k) for k in range(1, n + 1)]
    points = [(0.0, 0.0)]
    for t in np.unique(scores):
        fpr = np.sum(scores[normal] >= t) / np.sum(normal)
        overlaps = [np.mean(maps[i][region] >= t) for i, region in image_of_region]
        points.append((fpr, float(np.mean(overlaps))))
    points.sort()
    x = np.array([p[0] for p in points])
    y = np.array([p[1] for p in points])
    area = 0.0
    for k in range(1, len(x)):
        if x[k] <= limit:
            area += (x[k] - x[k - 1]) * (y[k] + y[k - 1]) / 2
        else:
            if x[k - 1] < limit:
                y_at = y[k - 1] + (y[k] - y[k - 1]) * (limit - x[k - 1]) / (x[k] - x[k - 1])
                area += (limit - x[k - 1]) * (y_at + y[k - 1]) / 2
            break
    return area / limit


def blob_example(seed: int, n_images: int = 3, size: int = 20, ties: bool = False):
    """A few images with a few rectangular/diagonal blobs and a noisy, partly correct map."""
    rng = np.random.default_rng(seed)
    masks, maps = [], []
    for i in range(n_images):
        h, w = size + (i % 2), size
        mask = np.zeros((h, w), dtype=np.uint8)
        for _ in range(rng.integers(0 if i == 0 else 1, 4)):
            y, x = rng.integers(0, h - 4), rng.integers(0, w - 4)
            mask[y : y + rng.integers(1, 5), x : x + rng.integers(1, 5)] = 1
        mask[np.eye(h, w, k=int(rng.integers(-3, 3)), dtype=bool) & (rng.random((h, w)) < 0.15)] = 1
        score = rng.normal(size=(h, w)) + 1.5 * mask
        if ties:
            score = np.round(score * 2) / 2
        masks.append(mask)
        maps.append(score)
    return masks, maps


# --- image / pixel scores vs sklearn ----------------------------------------------------------


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("ties", [0, 1, 2])
def test_binary_metrics_match_sklearn(dtype: type, ties: int) -> None:
    rng = np.random.default_rng(ties)
    labels = rng.random(3000) < 0.2
    scores = rng.normal(size=3000) + labels
    if ties == 1:
        scores = np.round(scores, 1)
    elif ties == 2:
        scores = rng.integers(0, 4, size=3000) + labels * rng.integers(0, 2, size=3000)
    scores = scores.astype(dtype)
    assert image_auroc(labels, scores) == pytest.approx(roc_auc_score(labels, scores), abs=1e-12)
    assert f1_max(labels, scores) == pytest.approx(sklearn_f1_max(labels, scores), abs=1e-12)
    masks, maps = labels.reshape(3, 20, 50), scores.reshape(3, 20, 50)
    assert pixel_auroc(masks, maps) == pytest.approx(roc_auc_score(labels, scores), abs=1e-12)
    ap = average_precision_score(labels, scores)
    assert pixel_ap(masks, maps) == pytest.approx(ap, abs=1e-12)
    assert f1_max(masks, maps) == pytest.approx(sklearn_f1_max(labels, scores), abs=1e-12)


def test_negative_scores_and_signed_zero_ties() -> None:
    labels = np.array([0, 1, 0, 1, 1, 0, 0, 1])
    scores = np.array([-0.0, 0.0, -3.5, -1e-30, 2.0, 2.0, -np.float32(1e30), 7.0], np.float32)
    assert image_auroc(labels, scores) == pytest.approx(roc_auc_score(labels, scores), abs=1e-15)
    ap = average_precision_score(labels, scores)
    assert pixel_ap(labels.reshape(2, 4), scores.reshape(2, 4)) == pytest.approx(ap, abs=1e-15)


def test_lists_of_images_with_different_sizes() -> None:
    masks, maps = blob_example(3, n_images=4)
    labels = np.concatenate([m.ravel() for m in masks])
    scores = np.concatenate([s.ravel() for s in maps])
    assert pixel_auroc(masks, maps) == pytest.approx(roc_auc_score(labels, scores), abs=1e-12)
    ap = average_precision_score(labels, scores)
    assert pixel_ap(masks, maps) == pytest.approx(ap, abs=1e-12)


def test_masks_with_255_values() -> None:
    masks, maps = blob_example(4)
    masks255 = [m * 255 for m in masks]
    assert pixel_auroc(masks255, maps) == pixel_auroc(masks, maps)
    assert aupro(masks255, maps) == aupro(masks, maps)


# --- AUPRO -----------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("ties", [False, True])
def test_aupro_matches_reference(seed: int, ties: bool) -> None:
    masks, maps = blob_example(seed, ties=ties)
    assert aupro(masks, maps) == pytest.approx(reference_aupro(masks, maps), abs=1e-9)


def test_aupro_other_limits_and_float32() -> None:
    masks, maps = blob_example(11)
    maps32 = [s.astype(np.float32) for s in maps]
    for limit in (0.05, 0.3, 1.0):
        expected = reference_aupro(masks, maps32, limit)
        assert aupro(masks, maps32, fpr_limit=limit) == pytest.approx(expected, abs=1e-9)


def test_aupro_eight_connectivity() -> None:
    # two diagonal pixels are one region with 8-connectivity: PRO steps 0 -> 0.5 -> 1
    mask = np.zeros((6, 6), dtype=bool)
    mask[1, 1] = mask[2, 2] = True
    score = np.zeros((6, 6))
    score[1, 1], score[2, 2] = 3.0, 1.0
    score[4, 4] = 2.0  # one false positive between the two region pixels
    assert aupro(mask, score) == pytest.approx(reference_aupro([mask], [score]), abs=1e-12)
    fpr_step = 1 / 34
    expected = (0.5 * fpr_step + 1.0 * (0.3 - fpr_step)) / 0.3  # pro=0.5 until one FP, then 1
    assert aupro(mask, score) == pytest.approx(expected, abs=1e-12)


# --- perfect, random, degenerate -------------------------------------------------------------


def test_perfect_maps_score_one() -> None:
    masks, _ = blob_example(5)
    perfect = [m.astype(np.float64) + np.random.default_rng(0).random(m.shape) * 0.1 for m in masks]
    labels = np.array([m.any() for m in masks], dtype=int)
    scores = np.array([s.max() for s in perfect])
    labels[0], scores[0] = 0, 0.0  # make sure both classes are present
    result = compute_all(labels, scores, masks, perfect)
    assert result == pytest.approx(
        dict(image_auroc=1.0, pixel_auroc=1.0, pixel_ap=1.0, aupro=1.0, f1_max=1.0), abs=1e-12
    )


def test_random_scores_give_auroc_about_half() -> None:
    rng = np.random.default_rng(0)
    masks = rng.random((8, 64, 64)) < 0.1
    maps = rng.random((8, 64, 64))
    assert pixel_auroc(masks, maps) == pytest.approx(0.5, abs=0.02)
    assert image_auroc(rng.random(4000) < 0.5, rng.random(4000)) == pytest.approx(0.5, abs=0.03)
    assert aupro(masks, maps) == pytest.approx(0.15, abs=0.02)  # PRO ~ FPR: area 0.045 / 0.3


def test_compute_all_without_masks() -> None:
    result = compute_all([0, 1, 0, 1], [0.1, 0.9, 0.2, 0.3])
    assert set(result) == {"image_auroc", "pixel_auroc", "pixel_ap", "aupro", "f1_max"}
    assert result["image_auroc"] == 1.0
    assert result["f1_max"] == 1.0
    assert all(np.isnan(result[k]) for k in ("pixel_auroc", "pixel_ap", "aupro"))
    with pytest.raises(ValueError, match="both masks and maps"):
        compute_all([0, 1], [0.1, 0.2], masks=np.zeros((2, 4, 4)))


def test_nan_raises_with_count_and_image_index() -> None:
    maps = np.zeros((4, 5, 5))
    maps[2, 1, 1] = maps[2, 3, 3] = np.nan
    maps[3, 0, 0] = np.inf
    with pytest.raises(ValueError, match=r"2 NaN and 1 inf values \(at images 2, 3\)"):
        pixel_auroc(np.ones((4, 5, 5)), maps)
    with pytest.raises(ValueError, match=r"1 NaN and 0 inf values \(at indices 1\)"):
        image_auroc([0, 1, 1], [0.5, np.nan, 0.1])
    with pytest.raises(ValueError, match="NaN"):
        aupro(np.ones((4, 5, 5)), maps)


def test_shape_mismatch_names_both_shapes() -> None:
    with pytest.raises(ValueError, match=r"\(2, 4, 4\).*\(2, 4, 5\)"):
        pixel_auroc(np.zeros((2, 4, 4)), np.zeros((2, 4, 5)))
    with pytest.raises(ValueError, match=r"masks\[1\] has shape \(3, 3\).*\(3, 4\)"):
        aupro([np.zeros((2, 2)), np.zeros((3, 3))], [np.zeros((2, 2)), np.zeros((3, 4))])
    with pytest.raises(ValueError, match=r"\(3,\).*\(2,\)"):
        image_auroc([0, 1, 1], [0.1, 0.2])


def test_single_class_returns_nan_with_warning() -> None:
    with pytest.warns(UndefinedMetricWarning, match="only one class"):
        assert np.isnan(image_auroc([1, 1, 1], [0.1, 0.2, 0.3]))
    with pytest.warns(UndefinedMetricWarning):
        assert np.isnan(f1_max([0, 0], [0.1, 0.2]))
    with pytest.warns(UndefinedMetricWarning):
        assert np.isnan(pixel_ap(np.zeros((2, 3, 3)), np.random.rand(2, 3, 3)))
    with pytest.warns(UndefinedMetricWarning, match="no anomalous regions"):
        assert np.isnan(aupro(np.zeros((2, 3, 3)), np.random.rand(2, 3, 3)))
    with pytest.warns(UndefinedMetricWarning, match="no normal pixels"):
        assert np.isnan(aupro(np.ones((2, 3, 3)), np.random.rand(2, 3, 3)))


def test_bad_fpr_limit() -> None:
    with pytest.raises(ValueError, match="fpr_limit"):
        aupro(np.ones((1, 2, 2)), np.ones((1, 2, 2)), fpr_limit=0.0)


def test_float32_fast_path_equals_exact_fallback() -> None:
    # the same float32-representable data through the packed-key sort and the merge fallback
    from anomalens.metrics import _merge_sorted, _sort_descending

    rng = np.random.default_rng(7)
    scores = np.round(rng.normal(size=5000), 1).astype(np.float32).astype(np.float64)
    scores[:10] = -0.0
    payload = (rng.random(5000) < 0.2) * rng.integers(1, 50, size=5000).astype(np.uint32)
    fast_payload, fast_ends = _sort_descending(scores, payload)  # exact float32 -> fast path
    slow_scores, slow_payload = _merge_sorted(scores, payload)
    slow_ends = np.append(np.flatnonzero(slow_scores[1:] != slow_scores[:-1]), scores.size - 1)
    np.testing.assert_array_equal(fast_ends, slow_ends)
    fast_groups = np.split(fast_payload, fast_ends[:-1] + 1)
    slow_groups = np.split(slow_payload, slow_ends[:-1] + 1)
    for a, b in zip(fast_groups, slow_groups, strict=True):
        np.testing.assert_array_equal(np.sort(a), np.sort(b))  # same multiset within each tie


def test_channel_axis_and_single_image_inputs() -> None:
    masks, maps = blob_example(8, n_images=2, size=20)
    masks, maps = np.stack(masks[:1] * 2), np.stack(maps[:1] * 2)
    expected = aupro(masks, maps)
    assert aupro(masks[:, None], maps[:, None]) == expected
    assert aupro(list(masks), list(maps)) == expected
    assert aupro(masks[0], maps[0]) == pytest.approx(expected, abs=1e-12)
