"""Pictures: heatmap overlays, boxes, prediction figures, ROC curves and score histograms.

Figures are drawn with matplotlib's object API on an Agg canvas (no pyplot, no global backend
change), so this works headless and in threads. Figure sizes are fixed, so output sizes in
pixels are predictable: ``inches * dpi``.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path

import cv2
import matplotlib
import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from PIL import Image

from .atomic import atomic_write_with
from .errors import display_path
from .metrics import image_auroc
from .postprocess import Box, resize_map

__all__ = [
    "PREDICTION_FIGSIZE",
    "draw_boxes",
    "overlay_heatmap",
    "save_png",
    "save_prediction_figure",
    "save_roc_curve",
    "save_score_histogram",
]

PREDICTION_FIGSIZE = (13.5, 4.8)  # inches; 1350 x 480 px at dpi=100
#: Longest side at which a prediction figure draws its panels: a larger image and its map are
#: shrunk first, so drawing memory does not grow with the photo (each panel is ~450 px wide).
FIGURE_MAX_SIDE = 512
PLOT_FIGSIZE = (5.0, 4.5)  # ROC curve and histogram; 500 x 450 px at dpi=100
_DEFECT_COLOR = "#d62728"
_OK_COLOR = "#2ca02c"
_MASK_COLOR = "lime"


# --------------------------------------------------------------------------------------------
# arrays
# --------------------------------------------------------------------------------------------


def _as_rgb(image: np.ndarray) -> np.ndarray:
    """A contiguous ``H x W x 3`` uint8 copy of a gray, RGB or RGBA uint8 image."""
    image = np.asarray(image)
    if image.dtype != np.uint8:
        raise ValueError(f"image must be uint8, got {image.dtype}")
    if image.ndim == 2:
        return np.repeat(image[..., None], 3, axis=2)
    if image.ndim == 3 and image.shape[2] in (3, 4):
        return np.ascontiguousarray(image[..., :3])
    raise ValueError(f"image must be H x W or H x W x 3, got shape {image.shape}")


def _map_limits(
    anomaly_map: np.ndarray, vmin: float | None, vmax: float | None
) -> tuple[float, float]:
    lo = float(np.min(anomaly_map)) if vmin is None else float(vmin)
    hi = float(np.max(anomaly_map)) if vmax is None else float(vmax)
    return lo, hi


def shrink_for_display(
    image: np.ndarray, max_side: int = FIGURE_MAX_SIDE, interpolation: int = cv2.INTER_AREA
) -> np.ndarray:
    """``image`` (any 2-D or H x W x C array) resized so its longest side is at most
    ``max_side`` (aspect ratio kept); returned as it is when already small enough."""
    h, w = image.shape[:2]
    if max(h, w) <= max_side:
        return image
    scale = max_side / max(h, w)
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    return cv2.resize(np.ascontiguousarray(image), size, interpolation=interpolation)


def _fit_map(anomaly_map: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    m = np.asarray(anomaly_map, dtype=np.float32)
    if m.ndim != 2:
        raise ValueError(f"anomaly_map must be 2-D, got shape {m.shape}")
    if not np.isfinite(m).all():
        raise ValueError(f"anomaly_map contains {int(np.sum(~np.isfinite(m)))} NaN/inf values")
    return m if m.shape == shape else resize_map(m, shape)


def overlay_heatmap(
    image_rgb: np.ndarray,
    anomaly_map: np.ndarray,
    vmin: float | None = None,
    vmax: float | None = None,
    alpha: float = 0.5,
) -> np.ndarray:
    """The image blended with the jet-coloured map (resized to the image if needed), uint8 RGB.

    The map is scaled from ``vmin`` (blue) to ``vmax`` (red), by default its own min and max;
    pass fixed limits (e.g. 0 and a threshold-based maximum) to compare images.
    """
    rgb = _as_rgb(image_rgb)
    m = _fit_map(anomaly_map, rgb.shape[:2])
    lo, hi = _map_limits(m, vmin, vmax)
    scaled = np.clip((m - lo) / (hi - lo), 0.0, 1.0) if hi > lo else np.zeros_like(m)
    heat = matplotlib.colormaps["jet"](scaled)[..., :3] * 255.0
    blended = (1.0 - alpha) * rgb.astype(np.float32) + alpha * heat
    return np.clip(np.rint(blended), 0, 255).astype(np.uint8)


def draw_boxes(
    image_rgb: np.ndarray,
    boxes: Iterable[Box],
    color: tuple[int, int, int] = (255, 255, 255),
    label_scores: bool = True,
    thickness: int | None = None,
) -> np.ndarray:
    """A copy of the image with each box's outline (on its outermost pixels) and its score."""
    out = _as_rgb(image_rgb).copy()
    height, width = out.shape[:2]
    thickness = thickness or max(1, round(min(height, width) / 200))
    font_scale = max(0.35, min(height, width) / 600)
    for box in boxes:
        top_left, bottom_right = (box.x0, box.y0), (box.x1 - 1, box.y1 - 1)
        cv2.rectangle(out, top_left, bottom_right, color, thickness, lineType=cv2.LINE_8)
        if label_scores:
            text = f"{box.score:.3g}"
            (tw, th), base = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, font_scale, 1)
            y = box.y0 - 3 if box.y0 - th - 3 >= 0 else min(height - base, box.y1 + th + 2)
            x = int(np.clip(box.x0, 0, max(0, width - tw)))
            cv2.putText(
                out, text, (x, y), cv2.FONT_HERSHEY_SIMPLEX, font_scale, color, 1, cv2.LINE_AA
            )
    return out


def save_png(path: str | Path, rgb: np.ndarray) -> Path:
    """Write a uint8 gray/RGB array as PNG (parent folders are created); returns the path."""
    image = Image.fromarray(_as_rgb(rgb))
    return atomic_write_with(path, lambda tmp: image.save(tmp, format="PNG"), fsync=False)


# --------------------------------------------------------------------------------------------
# figures
# --------------------------------------------------------------------------------------------


def _save_figure(fig: Figure, path: str | Path, dpi: int) -> Path:
    FigureCanvasAgg(fig)
    return atomic_write_with(
        path, lambda tmp: fig.savefig(tmp, dpi=dpi, format="png", facecolor="white"), fsync=False
    )


def _scale_boxes(
    boxes: Sequence[Box], from_shape: tuple[int, ...], to_shape: tuple[int, int]
) -> list[Box]:
    """Boxes in ``from_shape`` pixel coordinates moved to ``to_shape`` coordinates."""
    if tuple(from_shape) == tuple(to_shape):
        return list(boxes)
    sy, sx = to_shape[0] / from_shape[0], to_shape[1] / from_shape[1]
    return [
        Box(
            x0=int(np.floor(b.x0 * sx)),
            y0=int(np.floor(b.y0 * sy)),
            x1=int(np.ceil(b.x1 * sx)),
            y1=int(np.ceil(b.y1 * sy)),
            score=b.score,
            area=b.area,
        )
        for b in boxes
    ]


def _outline_mask(ax, mask: np.ndarray | None, shape: tuple[int, int]) -> None:
    if mask is None:
        return
    m = np.asarray(mask).astype(np.float32)
    if m.shape != shape:
        m = resize_map(m, shape)
    if m.max() > 0:
        ax.contour(m > 0.5 * m.max(), levels=[0.5], colors=_MASK_COLOR, linewidths=1.2)


def _verdict(score: float, threshold: float | None) -> tuple[str, str]:
    if threshold is None:
        return f"score {score:.4g}", "black"
    if score >= threshold:
        return f"score {score:.4g} >= {threshold:.4g}: DEFECTIVE", _DEFECT_COLOR
    return f"score {score:.4g} < {threshold:.4g}: OK", _OK_COLOR


def save_prediction_figure(
    path: str | Path,
    image: np.ndarray,
    anomaly_map: np.ndarray,
    boxes: Sequence[Box],
    score: float,
    threshold: float | None = None,
    mask: np.ndarray | None = None,
    title: str | None = None,
    vmin: float | None = None,
    vmax: float | None = None,
    dpi: int = 100,
) -> Path:
    """Three panels (image, overlay with hotspot boxes, raw map with colour bar) and a title
    line with the score and, when ``threshold`` is given, the verdict DEFECTIVE / OK.

    The ground-truth ``mask`` is outlined in green on the first two panels when given. ``boxes``
    are in the pixel coordinates of ``anomaly_map`` (rescaled if the map is smaller than the
    image, like the map itself). The PNG is
    ``PREDICTION_FIGSIZE * dpi`` pixels (1350 x 480 at dpi=100). Images larger than
    :data:`FIGURE_MAX_SIDE` are drawn shrunk to it, so memory does not grow with the photo.
    """
    map_shape = np.shape(anomaly_map)
    rgb = _as_rgb(shrink_for_display(np.asarray(image)))
    shape = rgb.shape[:2]
    boxes = _scale_boxes(boxes, map_shape, shape)
    m = _fit_map(anomaly_map, shape)
    if mask is not None:
        mask = shrink_for_display(np.asarray(mask, dtype=np.float32))
    lo, hi = _map_limits(m, vmin, vmax)
    if hi <= lo:
        hi = lo + 1e-6

    fig = Figure(figsize=PREDICTION_FIGSIZE)
    axes = fig.subplots(1, 3)
    axes[0].imshow(rgb)
    axes[0].set_title("image" + (" (ground truth outlined)" if mask is not None else ""))
    overlay = draw_boxes(overlay_heatmap(rgb, m, lo, hi), boxes)
    axes[1].imshow(overlay)
    axes[1].set_title(f"anomaly overlay ({len(boxes)} hotspot{'s' * (len(boxes) != 1)})")
    shown = axes[2].imshow(m, cmap="jet", vmin=lo, vmax=hi)
    axes[2].set_title("anomaly map")
    fig.colorbar(shown, ax=axes[2], fraction=0.046, pad=0.04)
    for ax in axes[:2]:
        _outline_mask(ax, mask, shape)
    for ax in axes:
        ax.set_axis_off()

    line, color = _verdict(float(score), threshold)
    title = display_path(title) if title else title  # file names that are not valid UTF-8
    heading = f"{title} - {line}" if title else line
    fig.suptitle(heading, color=color, fontsize=14, fontweight="bold")
    fig.subplots_adjust(left=0.01, right=0.96, bottom=0.03, top=0.84, wspace=0.08)
    return _save_figure(fig, path, dpi)


def _roc_points(labels: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """ROC points (fpr, tpr) at every distinct score, from (0, 0) to (1, 1)."""
    order = np.argsort(-scores, kind="stable")
    s, y = scores[order], labels[order]
    ends = np.append(np.flatnonzero(s[1:] != s[:-1]), s.size - 1)
    tp = np.cumsum(y)[ends]
    fp = ends + 1 - tp
    return np.r_[0.0, fp / fp[-1]], np.r_[0.0, tp / tp[-1]]


def save_roc_curve(
    path: str | Path,
    labels: np.ndarray,
    scores: np.ndarray,
    title: str = "ROC curve",
    dpi: int = 100,
) -> Path:
    """ROC curve of image scores with the AUROC in the legend (``PLOT_FIGSIZE * dpi`` px).

    With a single class the figure says so instead of drawing a curve.
    """
    y = np.asarray(labels).reshape(-1) != 0
    s = np.asarray(scores, dtype=np.float64).reshape(-1)
    fig = Figure(figsize=PLOT_FIGSIZE)
    ax = fig.subplots()
    ax.plot([0, 1], [0, 1], color="0.7", linestyle="--", linewidth=1)
    if y.any() and not y.all():
        fpr, tpr = _roc_points(y, s)
        ax.plot(fpr, tpr, color=_DEFECT_COLOR, linewidth=2, label=f"AUROC {image_auroc(y, s):.4f}")
        ax.legend(loc="lower right")
    else:
        ax.text(0.5, 0.5, "undefined: only one class", ha="center", va="center")
    ax.set(xlim=(0, 1), ylim=(0, 1.01), xlabel="false positive rate", ylabel="true positive rate")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return _save_figure(fig, path, dpi)


def save_score_histogram(
    path: str | Path,
    labels: np.ndarray,
    scores: np.ndarray,
    threshold: float | None = None,
    title: str = "image scores",
    dpi: int = 100,
) -> Path:
    """Overlaid histograms of the scores of normal (green) and anomalous (red) images with the
    threshold as a dashed line (``PLOT_FIGSIZE * dpi`` px)."""
    y = np.asarray(labels).reshape(-1) != 0
    s = np.asarray(scores, dtype=np.float64).reshape(-1)
    if y.shape != s.shape:
        raise ValueError(f"labels has shape {y.shape} but scores has shape {s.shape}")
    fig = Figure(figsize=PLOT_FIGSIZE)
    ax = fig.subplots()
    finite = s[np.isfinite(s)]
    bins = np.histogram_bin_edges(finite if finite.size else [0.0, 1.0], bins=30)
    for selected, name, color in ((~y, "normal", _OK_COLOR), (y, "anomalous", _DEFECT_COLOR)):
        if selected.any():
            ax.hist(
                s[selected], bins=bins, alpha=0.55, color=color, label=f"{name} ({selected.sum()})"
            )
    if threshold is not None:
        ax.axvline(threshold, color="black", linestyle="--", label=f"threshold {threshold:.4g}")
    ax.set(xlabel="anomaly score", ylabel="images")
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    return _save_figure(fig, path, dpi)
