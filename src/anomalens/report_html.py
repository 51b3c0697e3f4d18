"""``report.html``: one offline file (no CDN, no network) to read a run without the tool.

Header (model, data, date, counts by verdict, metrics with ROC and histogram when labels
exist), a sortable, filterable, paginated table of every image (score, verdict, top finding,
agreement) and one card per image of the current page: original, overlay with numbered boxes,
hotspot crops, the explanation, the findings table and the agreement flag. Card pictures are
small JPEGs in the sibling folder ``report_files/`` (loaded lazily); the ROC curve and the
histogram are embedded. A run of 2,000 images opens in well under a second: the page renders
only :data:`PAGE_SIZE` rows and cards at a time from one embedded JSON block.

:func:`write_card_assets` is called while the images are in memory (``predict --report``);
:func:`write_html_report` writes the page; :func:`report_from_run` rebuilds it for an existing
run folder (``anomalens report RUN_DIR``), re-reading images from their paths when needed.
"""

from __future__ import annotations

import base64
import datetime
import html
import json
import logging
import os
from collections.abc import Sequence
from importlib import resources
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from anomalens.errors import DatasetError

__all__ = [
    "PAGE_SIZE",
    "REPORT_FILES",
    "REPORT_HTML",
    "report_from_run",
    "write_card_assets",
    "write_html_report",
]

logger = logging.getLogger(__name__)

REPORT_HTML = "report.html"
REPORT_FILES = "report_files"
#: The page (HTML, CSS and JS; package data next to this module).
TEMPLATE = "report_template.html"
PAGE_SIZE = 25
#: Longest side of the card pictures and of the crops (pixels).
CARD_SIDE, CROP_SIDE = 320, 160


def _jpeg(path: Path, rgb: np.ndarray, side: int) -> None:
    h, w = rgb.shape[:2]
    scale = min(1.0, side / max(h, w))
    if scale < 1.0:
        rgb = cv2.resize(rgb, (max(1, round(w * scale)), max(1, round(h * scale))), cv2.INTER_AREA)
    path.parent.mkdir(parents=True, exist_ok=True)
    ok, buf = cv2.imencode(
        ".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 85]
    )
    if not ok:  # pragma: no cover
        raise OSError(f"{path}: cannot encode JPEG")
    path.write_bytes(buf.tobytes())


def write_card_assets(
    folder: str | os.PathLike,
    name: str,
    image: np.ndarray,
    boxes: Sequence[Sequence[int]],
    anomaly_map: np.ndarray | None = None,
    vmin: float | None = None,
    vmax: float | None = None,
) -> dict[str, Any]:
    """Write ``report_files/<name>/{image,overlay,crop1..}.jpg``; returns their relative paths
    (``overlay`` is the heatmap with numbered boxes when ``anomaly_map`` is given, else the
    image with numbered boxes)."""
    from anomalens.explain.images import crop_box, numbered_boxes
    from anomalens.visualize import _as_rgb, overlay_heatmap

    rgb = _as_rgb(image)
    base = Path(folder) / REPORT_FILES / name
    rel = f"{REPORT_FILES}/{name}"
    _jpeg(base / "image.jpg", rgb, CARD_SIDE)
    shown = rgb if anomaly_map is None else overlay_heatmap(rgb, anomaly_map, vmin, vmax)
    _jpeg(base / "overlay.jpg", numbered_boxes(shown, boxes), CARD_SIDE)
    crops = []
    for k, box in enumerate(boxes):
        _jpeg(base / f"crop{k + 1}.jpg", crop_box(rgb, box), CROP_SIDE)
        crops.append(f"{rel}/crop{k + 1}.jpg")
    return {
        "image": f"{rel}/image.jpg",
        "overlay": f"{rel}/overlay.jpg",
        "heatmap": anomaly_map is not None,
        "crops": crops,
    }


def _embed_png(path: Path) -> str | None:
    if not path.is_file():
        return None
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode("ascii")


def _row(record: dict[str, Any]) -> dict[str, Any]:
    """What the page needs of one scores.json record."""
    e = record.get("explanation") or {}
    findings = e.get("findings") or []
    verdict = (
        e.get("verdict")
        or {True: "defective", False: "good", None: "unknown"}[record.get("is_defective")]
    )
    top = findings[0] if findings else None
    top_text = ""
    if top:
        top_text = f"{top.get('defect_type') or 'anomaly'} {top.get('location', '')}".strip()
    return {
        "name": record.get("name") or Path(record["path"]).stem,
        "path": record["path"],
        "score": record["score"],
        "threshold": record.get("threshold"),
        "verdict": verdict,
        "label": record.get("label"),
        "summary": e.get("summary", ""),
        "top": top_text,
        "agreement": e.get("agreement"),
        "vlm": e.get("vlm_text"),
        "explainer": e.get("explainer"),
        "model": e.get("model"),
        "seconds": e.get("seconds"),
        "findings": findings,
        "assets": record.get("assets") or {},
        "figure": record.get("figure"),
    }


def write_html_report(
    folder: str | os.PathLike,
    records: Sequence[dict[str, Any]],
    summary: dict[str, Any],
    title: str | None = None,
) -> Path:
    """Write ``folder/report.html`` for the records of ``scores.json`` and ``summary.json``."""
    folder = Path(folder)
    rows = [_row(r) for r in records]
    counts: dict[str, int] = {}
    for r in rows:
        counts[r["verdict"]] = counts.get(r["verdict"], 0) + 1
    counts["disagrees"] = sum(r["agreement"] == "disagrees" for r in rows)
    explainers = sorted(
        {
            f"{r['explainer']}" + (f" ({r['model']})" if r["model"] else "")
            for r in rows
            if r["explainer"]
        }
    )
    files = summary.get("files") or {}
    header = {
        "title": title or summary.get("title") or "anomalens inspection report",
        "model": summary.get("model"),
        "method": summary.get("method"),
        "inputs": summary.get("inputs"),
        "date": summary.get("date") or datetime.datetime.now().strftime("%Y-%m-%d %H:%M"),
        "threshold": summary.get("threshold"),
        "pixel_threshold": summary.get("pixel_threshold"),
        "n_images": len(rows),
        "counts": counts,
        "explainers": explainers,
        "metrics": summary.get("metrics"),
        "roc": _embed_png(folder / files["roc"]) if files.get("roc") else None,
        "histogram": _embed_png(folder / files["histogram"]) if files.get("histogram") else None,
        "page_size": PAGE_SIZE,
    }
    from anomalens.atomic import atomic_write_text
    from anomalens.report import jsonable

    data = json.dumps(jsonable({"header": header, "rows": rows}), allow_nan=False)
    data = data.replace("</", "<\\/")  # never close the script element early
    template = resources.files("anomalens").joinpath(TEMPLATE).read_text(encoding="utf-8")
    page = template.replace("__TITLE__", html.escape(header["title"])).replace("__DATA__", data)
    path = folder / REPORT_HTML
    atomic_write_text(path, page)
    logger.debug("wrote %s (%d images)", path, len(rows))
    return path


def report_from_run(folder: str | os.PathLike, progress: bool = False) -> Path:
    """Rebuild ``report.html`` of an existing run folder (``scores.json`` + ``summary.json``),
    writing card pictures that are missing from the images' paths (boxes from the records; no
    heatmap: the maps are not stored, so the overlay figure of ``overlays/`` is linked)."""
    from tqdm import tqdm

    from anomalens.data.io import load_image
    from anomalens.errors import ImageLoadError
    from anomalens.report import SCORES_JSON, SUMMARY_JSON, figure_names

    folder = Path(folder)
    scores_path, summary_path = folder / SCORES_JSON, folder / SUMMARY_JSON
    for p in (scores_path, summary_path):
        if not p.is_file():
            raise DatasetError(f"{p}: not found; is {folder} a run folder of anomalens predict?")
    try:
        scores = json.loads(scores_path.read_text(encoding="utf-8"))
        summary = json.loads(summary_path.read_text(encoding="utf-8"))
        records = list(scores["images"])
    except (ValueError, KeyError, TypeError) as exc:
        raise DatasetError(f"{scores_path}: not a scores.json of anomalens ({exc})") from exc
    names = figure_names([r["path"] for r in records])
    for record, name in tqdm(
        list(zip(records, names, strict=True)), desc="report", unit="img", disable=not progress
    ):
        record.setdefault("name", name)
        assets = record.get("assets")
        if assets and (folder / assets["image"]).is_file():
            continue
        findings = (record.get("explanation") or {}).get("findings") or []
        boxes = [f["box"] for f in findings] or [
            [b["x0"], b["y0"], b["x1"], b["y1"]] for b in record.get("boxes", [])[:3]
        ]
        try:
            record["assets"] = write_card_assets(
                folder, record["name"], load_image(record["path"]), boxes
            )
        except ImageLoadError as exc:
            logger.warning("report: no pictures for %s (%s)", record["path"], exc)
    return write_html_report(folder, records, summary)
