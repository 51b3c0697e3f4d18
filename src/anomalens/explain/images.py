"""Pictures for explanations: the image with numbered boxes, crops around regions."""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np

__all__ = ["crop_box", "numbered_boxes"]

BOX_COLORS = ((255, 255, 255), (255, 220, 0), (0, 230, 255), (255, 120, 255), (120, 255, 120))


def numbered_boxes(rgb: np.ndarray, boxes: Sequence[Sequence[int]]) -> np.ndarray:
    """A copy of ``rgb`` with each box ``[x0, y0, x1, y1]`` outlined and numbered 1, 2, ...

    Boxes smaller than 10% of the shorter side are drawn at that size around their centre, so
    tiny defects stay visible in small pictures."""
    out = np.ascontiguousarray(rgb[..., :3]).copy()
    h, w = out.shape[:2]
    thick = max(2, round(min(h, w) / 150))
    scale = max(0.5, min(h, w) / 350)
    least = 0.1 * min(h, w)
    for k, box in enumerate(boxes):
        x0, y0, x1, y1 = (float(v) for v in box)
        if x1 - x0 < least:
            x0, x1 = (x0 + x1 - least) / 2, (x0 + x1 + least) / 2
        if y1 - y0 < least:
            y0, y1 = (y0 + y1 - least) / 2, (y0 + y1 + least) / 2
        x0, y0 = max(0.0, x0), max(0.0, y0)
        x1, y1 = min(float(w), x1), min(float(h), y1)
        color = BOX_COLORS[k % len(BOX_COLORS)]
        cv2.rectangle(out, (int(x0), int(y0)), (int(x1) - 1, int(y1) - 1), color, thick)
        label = str(k + 1)
        (tw, th), _ = cv2.getTextSize(label, cv2.FONT_HERSHEY_SIMPLEX, scale, 2)
        # the number sits outside the box (above, else below) so it never hides the defect
        ty = int(y0) - thick - 3 if int(y0) - th - thick - 3 >= 0 else min(h - 2, int(y1) + th + 4)
        tx = int(np.clip(x0, 0, max(0, w - tw)))
        cv2.rectangle(out, (tx - 1, ty - th - 2), (tx + tw + 1, ty + 3), (0, 0, 0), -1)
        cv2.putText(out, label, (tx, ty), cv2.FONT_HERSHEY_SIMPLEX, scale, color, 2, cv2.LINE_AA)
    return out


def crop_box(rgb: np.ndarray, box: Sequence[int], context: float = 1.8, least: int = 48):
    """A square crop centred on ``box`` with ``context`` times its longer side (at least
    ``least`` pixels), clipped to the image."""
    x0, y0, x1, y1 = (int(v) for v in box)
    h, w = rgb.shape[:2]
    side = max(x1 - x0, y1 - y0, least) * context
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    a, b = int(max(0, cx - side / 2)), int(max(0, cy - side / 2))
    return rgb[b : int(min(h, cy + side / 2)), a : int(min(w, cx + side / 2))]
