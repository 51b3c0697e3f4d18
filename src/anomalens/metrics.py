"""Evaluation metrics for anomaly detection, exact and vectorised.

All metrics sort the scores once and sweep every distinct score as a threshold (a pixel or image
is predicted anomalous when its score is ``>=`` the threshold). Tied scores form a single step of
the curve, exactly as in scikit-learn and MVTec's official evaluation code.

Inputs
------
* image level: ``labels`` and ``scores`` of the same shape (usually ``[N]``).
* pixel level: ``masks`` and ``maps`` as arrays ``[N, H, W]`` (a single ``[H, W]`` image and
  ``[N, 1, H, W]`` are accepted too) or as lists of ``H x W`` arrays whose sizes may differ
  between images but must match between a mask and its map.

Any nonzero label / mask value counts as anomalous (so 0/255 masks work). NaN or inf scores raise
``ValueError``; when only one class is present the metric is undefined and ``nan`` is returned
with an :class:`UndefinedMetricWarning`.

Speed: float32 scores (and float64 scores that are exactly representable as float32) are sorted
as packed 64-bit keys (score bits + payload), which takes well under a second for 42M pixels;
other float64 scores fall back to an ``argsort``.
"""

from __future__ import annotations

import sys
import warnings
from typing import Any

import numpy as np
from scipy import ndimage

__all__ = [
    "UndefinedMetricWarning",
    "aupro",
    "compute_all",
    "f1_max",
    "image_auroc",
    "pixel_ap",
    "pixel_auroc",
]

_EIGHT_CONNECTED = np.ones((3, 3), dtype=bool)
_MAX_LISTED = 10


class UndefinedMetricWarning(UserWarning):
    """A metric is undefined for the given data (e.g. a single class); ``nan`` was returned."""


# --------------------------------------------------------------------------------------------
# input handling
# --------------------------------------------------------------------------------------------


def _is_image_list(x: Any) -> bool:
    """True for a list/tuple of arrays (as opposed to a list of scalars)."""
    return isinstance(x, (list, tuple)) and len(x) > 0 and np.ndim(x[0]) >= 1


def _as_image(a: Any, name: str, index: int) -> np.ndarray:
    """One image as a 2-D array; a singleton channel axis (1xHxW, HxWx1) is dropped."""
    a = np.asarray(a)
    if a.ndim == 3 and a.shape[0] == 1:
        a = a[0]
    elif a.ndim == 3 and a.shape[-1] == 1:
        a = a[..., 0]
    if a.ndim != 2:
        raise ValueError(f"{name}[{index}] must be a 2-D H x W array, got shape {a.shape}")
    return a


def _as_image_stack(x: Any, name: str) -> np.ndarray | list[np.ndarray]:
    """An [N, H, W] array, or a list of 2-D arrays when given a list."""
    if _is_image_list(x):
        return [_as_image(a, name, i) for i, a in enumerate(x)]
    a = np.asarray(x)
    if a.ndim == 2:
        a = a[None]
    elif a.ndim == 4 and a.shape[1] == 1:
        a = a[:, 0]
    if a.ndim != 3:
        raise ValueError(f"{name} must be [N, H, W] or a list of H x W arrays, got {a.shape}")
    return a


def _shapes(stack: np.ndarray | list[np.ndarray]) -> list[tuple[int, int]]:
    if isinstance(stack, np.ndarray):
        return [tuple(stack.shape[1:])] * stack.shape[0]  # type: ignore[list-item]
    return [a.shape for a in stack]  # type: ignore[misc]


def _check_same_shapes(a: Any, b: Any, names: tuple[str, str]) -> None:
    """Raise ValueError naming both shapes when two image stacks do not match."""
    if isinstance(a, np.ndarray) and isinstance(b, np.ndarray):
        if a.shape != b.shape:
            raise ValueError(f"{names[0]} has shape {a.shape} but {names[1]} has shape {b.shape}")
        return
    sa, sb = _shapes(a), _shapes(b)
    if len(sa) != len(sb):
        raise ValueError(f"{names[0]} has {len(sa)} images but {names[1]} has {len(sb)} images")
    for i, (x, y) in enumerate(zip(sa, sb, strict=True)):
        if x != y:
            raise ValueError(f"{names[0]}[{i}] has shape {x} but {names[1]}[{i}] has shape {y}")


def _flatten(stack: np.ndarray | list[np.ndarray]) -> np.ndarray:
    if isinstance(stack, np.ndarray):
        return stack.reshape(-1)
    return np.concatenate([a.reshape(-1) for a in stack])


def _as_float(x: np.ndarray, name: str) -> np.ndarray:
    if x.dtype == np.float32 or x.dtype == np.float64:
        return x
    if x.dtype.kind in "biuf":
        return x.astype(np.float64)
    raise ValueError(f"{name} must be numeric, got dtype {x.dtype}")


def _check_finite(values: np.ndarray, name: str, image_sizes: list[int] | None) -> None:
    """Raise ValueError with the number of NaN/inf values and where they are."""
    if values.dtype.kind not in "fc" or np.isfinite(values).all():
        return
    bad = np.flatnonzero(~np.isfinite(values))
    n_nan = int(np.isnan(values[bad]).sum())
    n_inf = bad.size - n_nan
    if image_sizes is None:
        where, unit = bad, "indices"
    else:
        starts = np.cumsum([0, *image_sizes[:-1]])
        where, unit = np.unique(np.searchsorted(starts, bad, side="right") - 1), "images"
    listed = ", ".join(str(int(i)) for i in where[:_MAX_LISTED])
    more = f" and {where.size - _MAX_LISTED} more" if where.size > _MAX_LISTED else ""
    raise ValueError(
        f"{name} contains {n_nan} NaN and {n_inf} inf values (at {unit} {listed}{more})"
    )


def _prepare_images(masks: Any, maps: Any) -> tuple[np.ndarray, np.ndarray, list[np.ndarray]]:
    """Validated flat masks (bool), flat maps (float) and the per-image 2-D boolean masks."""
    masks_s = _as_image_stack(masks, "masks")
    maps_s = _as_image_stack(maps, "maps")
    _check_same_shapes(masks_s, maps_s, ("masks", "maps"))
    sizes = [h * w for h, w in _shapes(masks_s)]
    if sum(sizes) == 0:
        raise ValueError("masks and maps are empty")
    flat_scores = _as_float(_flatten(maps_s), "maps")
    flat_masks = _flatten(masks_s)
    _check_finite(flat_masks, "masks", sizes)
    _check_finite(flat_scores, "maps", sizes)
    flat_masks = flat_masks != 0
    per_image, start = [], 0
    for (h, w), n in zip(_shapes(masks_s), sizes, strict=True):
        per_image.append(flat_masks[start : start + n].reshape(h, w))
        start += n
    return flat_masks, flat_scores, per_image


def _prepare_binary(labels: Any, scores: Any) -> tuple[np.ndarray, np.ndarray]:
    """Validated flat labels (bool) and scores (float) for image or pixel inputs."""
    if _is_image_list(labels) or _is_image_list(scores) or np.ndim(scores) >= 2:
        flat_labels, flat_scores, _ = _prepare_images(labels, scores)
        return flat_labels, flat_scores
    labels_a, scores_a = np.asarray(labels), np.asarray(scores)
    if labels_a.shape != scores_a.shape:
        raise ValueError(f"labels has shape {labels_a.shape} but scores has shape {scores_a.shape}")
    if labels_a.size == 0:
        raise ValueError("labels and scores are empty")
    scores_a = _as_float(scores_a.reshape(-1), "scores")
    labels_a = labels_a.reshape(-1)
    _check_finite(labels_a, "labels", None)
    _check_finite(scores_a, "scores", None)
    return labels_a != 0, scores_a


# --------------------------------------------------------------------------------------------
# sorting and curves
# --------------------------------------------------------------------------------------------


def _exact_float32(scores: np.ndarray) -> np.ndarray | None:
    """The scores as float32 when that loses nothing, else None."""
    if scores.dtype == np.float32:
        return scores
    with np.errstate(over="ignore"):
        as32 = scores.astype(np.float32)
    return as32 if np.array_equal(as32, scores) else None


def _packed_keys(x32: np.ndarray, payload: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """uint64 keys whose ascending order is descending score order (ties equal but for the
    payload in the low 32 bits), plus views of their score half and payload half."""
    keys = np.empty(x32.size, dtype=np.uint64)
    halves = keys.view(np.uint32).reshape(-1, 2)
    hi, lo = (1, 0) if sys.byteorder == "little" else (0, 1)
    score_bits, payload_bits = halves[:, hi], halves[:, lo]
    np.add(x32, np.float32(0.0), out=score_bits.view(np.float32))  # -0.0 becomes +0.0
    # descending order: negative floats keep their bits (sign set, larger magnitude = larger
    # key); non-negative floats get 0x7FFFFFFF - bits (below every negative key).
    flip = score_bits >> np.uint32(31)
    flip -= np.uint32(1)
    flip &= np.uint32(0x7FFFFFFF)
    score_bits ^= flip
    del flip
    payload_bits[:] = payload
    return keys, score_bits, payload_bits


def _merge_sorted(scores: np.ndarray, payload: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Exact fallback for scores that are not float32: sort negatives (values only, fast) and
    positives (with their payload) separately, then merge the two sorted runs with a stable
    sort, which is linear for two runs. Returns descending scores and payloads."""
    is_positive = payload != 0
    negatives = np.sort(scores[~is_positive])
    positives, positive_payload = scores[is_positive], payload[is_positive]
    order = np.argsort(positives)
    merged = np.concatenate([negatives, positives[order]])
    merge_order = np.argsort(merged, kind="stable")
    merged_payload = np.concatenate(
        [np.zeros(negatives.size, dtype=payload.dtype), positive_payload[order]]
    )
    return merged[merge_order][::-1], merged_payload[merge_order][::-1]


def _sort_descending(scores: np.ndarray, payload: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``payload`` in descending score order, and the last index of each run of tied scores."""
    x32 = _exact_float32(scores)
    if x32 is not None:
        keys, sorted_scores, sorted_payload = _packed_keys(x32, payload)
        keys.sort()  # the views now show sorted scores and payloads
    else:
        sorted_scores, sorted_payload = _merge_sorted(scores, payload)
    ends = np.flatnonzero(sorted_scores[1:] != sorted_scores[:-1])
    return sorted_payload, np.append(ends, scores.size - 1)


def _counts(sorted_payload: np.ndarray, ends: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """True and false positive counts (int64) at each distinct threshold, highest first."""
    is_positive = (sorted_payload != 0).view(np.int8)
    accumulator = np.int32 if is_positive.size < 2**31 else np.int64  # int8 -> int32 is fast
    tp = np.cumsum(is_positive, dtype=accumulator)[ends].astype(np.int64)
    fp = ends + 1 - tp
    return tp, fp


def _binary_counts(labels: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return _counts(*_sort_descending(scores, labels))


def _undefined(metric: str, reason: str) -> float:
    warnings.warn(f"{metric} is undefined: {reason}; returning nan", UndefinedMetricWarning, 4)
    return float("nan")


def _one_class_reason(tp: np.ndarray, fp: np.ndarray) -> str | None:
    if tp[-1] == 0:
        return "no anomalous samples (only one class present)"
    if fp[-1] == 0:
        return "no normal samples (only one class present)"
    return None


def _auroc_from_counts(tp: np.ndarray, fp: np.ndarray, metric: str) -> float:
    reason = _one_class_reason(tp, fp)
    if reason:
        return _undefined(metric, reason)
    tp_f = np.concatenate([[0.0], tp.astype(np.float64)])
    d_fp = np.diff(np.concatenate([[0.0], fp.astype(np.float64)]))
    area2 = np.sum(d_fp * (tp_f[1:] + tp_f[:-1]))
    return float(area2 / (2.0 * float(tp[-1]) * float(fp[-1])))


def _ap_from_counts(tp: np.ndarray, fp: np.ndarray, metric: str) -> float:
    reason = _one_class_reason(tp, fp)
    if reason:
        return _undefined(metric, reason)
    tp_f = tp.astype(np.float64)
    precision = tp_f / (tp_f + fp)
    d_tp = np.diff(np.concatenate([[0.0], tp_f]))
    return float(np.sum(d_tp * precision) / tp_f[-1])


def _f1_from_counts(tp: np.ndarray, fp: np.ndarray, metric: str) -> float:
    reason = _one_class_reason(tp, fp)
    if reason:
        return _undefined(metric, reason)
    tp_f = tp.astype(np.float64)
    return float(np.max(2.0 * tp_f / (tp_f + fp + tp_f[-1])))


def _partial_trapezoid(x: np.ndarray, y: np.ndarray, x_max: float) -> float:
    """Trapezoid area under (x, y) for x <= x_max, interpolating y linearly at x_max.

    ``x`` must be non-decreasing.
    """
    k = int(np.searchsorted(x, x_max, side="right"))  # first index with x > x_max
    area = float(np.sum(0.5 * (y[1:k] + y[: k - 1]) * np.diff(x[:k])))
    if 0 < k < x.size and x[k - 1] < x_max:
        y_at = y[k - 1] + (y[k] - y[k - 1]) * (x_max - x[k - 1]) / (x[k] - x[k - 1])
        area += 0.5 * (y[k - 1] + y_at) * (x_max - x[k - 1])
    return area


def _component_payload(flat_masks: np.ndarray, per_image: list[np.ndarray]) -> np.ndarray:
    """Per pixel: 0 for normal pixels, else a global 1-based id of its 8-connected region."""
    payload = np.zeros(flat_masks.size, dtype=np.uint32)
    start, n_regions = 0, 0
    for mask in per_image:
        if mask.any():
            labelled, n = ndimage.label(mask, structure=_EIGHT_CONNECTED)
            region = labelled.reshape(-1)
            nonzero = region != 0
            payload[start : start + region.size][nonzero] = region[nonzero] + n_regions
            n_regions += n
        start += mask.size
    return payload


def _pixel_curves(masks: Any, maps: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """Counts (tp, fp) and PRO per distinct threshold (highest first), number of regions."""
    flat_masks, flat_scores, per_image = _prepare_images(masks, maps)
    payload = _component_payload(flat_masks, per_image)
    del flat_masks
    n_regions = int(payload.max(initial=0))
    sorted_payload, ends = _sort_descending(flat_scores, payload)
    del payload
    tp, fp = _counts(sorted_payload, ends)
    if n_regions == 0:
        return tp, fp, np.zeros(tp.size), 0
    regions = sorted_payload[sorted_payload != 0]  # region id of each positive, in order
    sizes = np.bincount(regions).astype(np.float64)
    weights = np.zeros(sizes.size)
    weights[1:] = 1.0 / (sizes[1:] * n_regions)
    cum_weight = np.concatenate([[0.0], np.cumsum(weights[regions])])
    return tp, fp, cum_weight[tp], n_regions


def _aupro_from_curves(
    tp: np.ndarray, fp: np.ndarray, pro: np.ndarray, n_regions: int, fpr_limit: float
) -> float:
    if n_regions == 0:
        return _undefined("aupro", "the masks contain no anomalous regions")
    if fp[-1] == 0:
        return _undefined("aupro", "the masks contain no normal pixels")
    fpr = np.concatenate([[0.0], fp / float(fp[-1])])
    pro = np.concatenate([[0.0], np.minimum(pro, 1.0)])
    return float(_partial_trapezoid(fpr, pro, fpr_limit) / fpr_limit)


def _check_fpr_limit(fpr_limit: float) -> None:
    if not 0.0 < fpr_limit <= 1.0:
        raise ValueError(f"fpr_limit must be in (0, 1], got {fpr_limit}")


# --------------------------------------------------------------------------------------------
# public metrics
# --------------------------------------------------------------------------------------------


def image_auroc(labels: Any, scores: Any) -> float:
    """Area under the ROC curve of image scores (labels: nonzero = anomalous)."""
    return _auroc_from_counts(*_binary_counts(*_prepare_binary(labels, scores)), "image_auroc")


def pixel_auroc(masks: Any, maps: Any) -> float:
    """Area under the ROC curve over all pixels of all images."""
    flat_masks, flat_scores, _ = _prepare_images(masks, maps)
    return _auroc_from_counts(*_binary_counts(flat_masks, flat_scores), "pixel_auroc")


def pixel_ap(masks: Any, maps: Any) -> float:
    """Average precision over all pixels, as sklearn's ``average_precision_score``."""
    flat_masks, flat_scores, _ = _prepare_images(masks, maps)
    return _ap_from_counts(*_binary_counts(flat_masks, flat_scores), "pixel_ap")


def f1_max(labels: Any, scores: Any) -> float:
    """Best F1 over all thresholds; accepts image scores or pixel masks/maps."""
    return _f1_from_counts(*_binary_counts(*_prepare_binary(labels, scores)), "f1_max")


def aupro(masks: Any, maps: Any, fpr_limit: float = 0.3) -> float:
    """Normalised area under the per-region-overlap curve for FPR in [0, ``fpr_limit``].

    PRO at a threshold is the mean, over the 8-connected ground-truth regions of every image, of
    the fraction of the region's pixels scoring ``>=`` the threshold; FPR is taken over the
    normal pixels of all images. The curve starts at (0, 0), is integrated with the trapezoidal
    rule, interpolated linearly at ``fpr_limit`` and divided by ``fpr_limit`` (perfect = 1.0).
    """
    _check_fpr_limit(fpr_limit)
    return _aupro_from_curves(*_pixel_curves(masks, maps), fpr_limit)


def compute_all(
    labels: Any,
    scores: Any,
    masks: Any | None = None,
    maps: Any | None = None,
    fpr_limit: float = 0.3,
) -> dict[str, float]:
    """All metrics in one dict; the pixel metrics are nan when ``masks``/``maps`` are absent.

    The pixel metrics share a single sort. ``f1_max`` is image-level.
    """
    _check_fpr_limit(fpr_limit)
    if (masks is None) != (maps is None):
        raise ValueError("give both masks and maps for pixel metrics, or neither")
    tp, fp = _binary_counts(*_prepare_binary(labels, scores))
    result = {
        "image_auroc": _auroc_from_counts(tp, fp, "image_auroc"),
        "pixel_auroc": float("nan"),
        "pixel_ap": float("nan"),
        "aupro": float("nan"),
        "f1_max": _f1_from_counts(tp, fp, "f1_max"),
    }
    if masks is not None:
        tp, fp, pro, n_regions = _pixel_curves(masks, maps)
        result["pixel_auroc"] = _auroc_from_counts(tp, fp, "pixel_auroc")
        result["pixel_ap"] = _ap_from_counts(tp, fp, "pixel_ap")
        result["aupro"] = _aupro_from_curves(tp, fp, pro, n_regions, fpr_limit)
    return result
