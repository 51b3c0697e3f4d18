"""The FastAPI application: ``create_app(model, token=..., explainer=..., config=...)``.

Routes: ``GET /`` (the inspection page), ``GET /healthz``, ``GET /readyz``, ``GET /v1/model``,
``POST /v1/predict`` (multipart field ``files`` or JSON ``{"images": [{"name", "data"}]}`` with
base64 data; ``?overlay=1`` adds the overlay PNG), ``POST /v1/model/reload`` (JSON
``{"model": "FOLDER"}``). Every error is JSON ``{"error": "..."}`` with a 4xx status for bad
requests (never a stack trace). Routes under ``/v1`` need ``Authorization: Bearer <token>``
when the app has a token; reload needs one in any case.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import io
import json
import logging
import os
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException as StarletteHTTPException

from anomalens import __version__
from anomalens.prediction import Prediction
from anomalens.service.auth import token_matches
from anomalens.service.batcher import MicroBatcher, QueueFullError, Scored
from anomalens.service.uploads import Limits, UploadError, decode_image

logger = logging.getLogger(__name__)
access_logger = logging.getLogger("anomalens.service.access")

STATIC_DIR = Path(__file__).parent / "static"
#: Seconds a client is told to wait after a 503.
RETRY_AFTER = 1


@dataclass
class ServiceConfig:
    """Batching, limits and timeouts of the service.

    max_batch / max_wait_ms: micro-batching (up to ``max_batch`` images collected within
    ``max_wait_ms`` go through one ``predict``); max_queue: images waiting at most (more: 503);
    limits: bytes per request, pixels per image, images per request; timeout_s: longest wait
    for a result (then 503); top_k: boxes per image.
    """

    max_batch: int = 4
    max_wait_ms: float = 10.0
    max_queue: int = 64
    limits: Limits = field(default_factory=Limits)
    timeout_s: float = 30.0
    top_k: int = 5

    def __post_init__(self) -> None:
        if self.timeout_s <= 0 or self.top_k < 1:
            raise ValueError("timeout_s must be > 0 and top_k >= 1")


class APIError(Exception):
    """An error answered as ``{"error": message}`` with ``status`` (and extra headers)."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.headers = status, message, headers or {}


def load_model(folder: str | os.PathLike) -> Any:
    """A saved model folder: an ONNX export (no torch) or a torch checkpoint."""
    from anomalens.export.runtime import OnnxDetector, is_exported

    if is_exported(folder):
        return OnnxDetector.load(folder)
    from anomalens.methods.base import load_detector

    return load_detector(folder)


def describe_model(model: Any, folder: str | None) -> dict[str, Any]:
    """Method, backbone, thresholds, runtime and version of a loaded model."""
    if hasattr(model, "describe"):  # OnnxDetector (torch detectors describe their config)
        info = dict(model.describe())
    else:
        c = model.config
        info = {
            "method": model.method,
            "backbone": getattr(c, "backbone", None),
            "image_size": getattr(c, "image_size", None),
            "runtime": "torch",
            "precision": getattr(c, "precision", None),
            "threshold": model.calibration.threshold,
            "pixel_threshold": model.calibration.pixel_threshold,
            "version": __version__,
        }
    return info | {"folder": folder}


@dataclass
class ModelSlot:
    """The model being served (replaced as a whole on reload)."""

    model: Any
    folder: str | None
    info: dict[str, Any]
    loaded_at: str

    def predict(self, images: Sequence[np.ndarray]) -> Any:
        return self.model.predict(images)


def _slot(model: Any, folder: str | None) -> ModelSlot:
    now = datetime.now(timezone.utc).isoformat(timespec="seconds")
    return ModelSlot(model, folder, describe_model(model, folder) | {"loaded_at": now}, now)


async def _read_body(request: Request, max_bytes: int) -> bytes:
    """The request body, refused (413) as soon as it exceeds ``max_bytes``."""
    declared = request.headers.get("content-length")
    too_big = f"request body exceeds the upload limit of {max_bytes} bytes"
    if declared is not None and declared.isdigit() and int(declared) > max_bytes:
        raise APIError(413, f"{too_big} (Content-Length {declared})")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > max_bytes:
            raise APIError(413, too_big)
        chunks.append(chunk)
    return b"".join(chunks)


async def _uploads(request: Request, body: bytes, limits: Limits) -> list[tuple[str, bytes]]:
    """``(name, bytes)`` of each image of a multipart or JSON request."""
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    files: list[tuple[str, bytes]] = []
    if ctype == "multipart/form-data":

        async def replay() -> dict[str, Any]:
            return {"type": "http.request", "body": body, "more_body": False}

        try:
            form = await Request(request.scope, replay).form(
                max_files=limits.max_images + 1, max_fields=limits.max_images + 8
            )
        except Exception as exc:  # starlette's multipart errors
            raise APIError(400, f"cannot parse the multipart body ({exc})") from exc
        for key, value in form.multi_items():
            if isinstance(value, UploadFile):
                files.append((value.filename or f"{key}{len(files)}", await value.read()))
    elif ctype == "application/json":
        try:
            payload = json.loads(body)
        except ValueError as exc:
            raise APIError(400, f"the JSON body is not valid JSON ({exc})") from exc
        items = payload.get("images") if isinstance(payload, dict) else None
        if not isinstance(items, list):
            raise APIError(400, 'the JSON body needs "images": a list of {"name", "data"}')
        for k, item in enumerate(items):
            name = item.get("name", f"image{k}") if isinstance(item, dict) else f"image{k}"
            data = item.get("data") if isinstance(item, dict) else item
            if not isinstance(data, str):
                raise APIError(400, f"{name}: 'data' must be a base64 string")
            try:
                files.append((str(name), base64.b64decode(data, validate=True)))
            except (binascii.Error, ValueError) as exc:
                raise APIError(400, f"{name}: 'data' is not valid base64") from exc
    else:
        raise APIError(
            415,
            f"unsupported content type {ctype or '(none)'!r}: send multipart/form-data "
            '(field \'files\') or application/json ({"images": [{"name", "data"}]})',
        )
    if not files:
        raise APIError(400, "no images in the request (multipart field 'files' or JSON 'images')")
    if len(files) > limits.max_images:
        raise APIError(413, f"{len(files)} images in one request; the limit is {limits.max_images}")
    return files


def _findings(boxes: list[Any], pixel_threshold: float, shape: tuple[int, int]) -> list[str]:
    out = []
    for b in boxes:
        ratio = b.score / pixel_threshold if pixel_threshold > 0 else float("nan")
        share = 100.0 * b.area / (shape[0] * shape[1])
        out.append(
            f"{b.width}x{b.height} px at ({b.x0}, {b.y0}), {share:.1f}% of the image, "
            f"peak {b.score:.3g} = {ratio:.2f}x the pixel threshold"
        )
    return out


def _overlay_png(image: np.ndarray, anomaly_map: np.ndarray, pixel_threshold: float | None) -> str:
    from PIL import Image

    from anomalens.visualize import overlay_heatmap

    vmax = float(anomaly_map.max())
    if pixel_threshold is not None:
        vmax = max(vmax, 1.5 * float(pixel_threshold))  # good images stay blue-green
    rgb = overlay_heatmap(image, anomaly_map, vmin=float(anomaly_map.min()), vmax=vmax)
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _results(
    names: Sequence[str],
    images: Sequence[np.ndarray],
    scored: Sequence[Scored],
    overlay: bool,
    explainer: Any,
    top_k: int,
) -> list[dict[str, Any]]:
    """The per-image JSON of a request (boxes, findings, explanation, overlay)."""
    from anomalens.postprocess import hotspots

    start = time.perf_counter()
    explanations: list[Any] = [None] * len(images)
    explain_error = None
    if explainer is not None:
        pred = Prediction(
            np.asarray([s.score for s in scored], dtype=np.float32),
            [s.map for s in scored],
            scored[0].threshold,
            scored[0].pixel_threshold,
            None if any(s.features is None for s in scored) else [s.features for s in scored],
        )
        try:
            explanations = [e.to_dict() for e in explainer.explain(list(images), pred, list(names))]
        except Exception as exc:  # the prediction still stands without its explanation
            logger.exception("explainer failed")
            explain_error = f"explanation failed: {type(exc).__name__}: {exc}"
    out = []
    for name, img, s, expl in zip(names, images, scored, explanations, strict=True):
        pt = s.pixel_threshold
        boxes = hotspots(s.map, pt, top_k=top_k) if pt is not None else []
        verdict = (
            "unknown" if s.threshold is None else "defective" if s.score >= s.threshold else "ok"
        )
        item: dict[str, Any] = {
            "name": name,
            "width": int(img.shape[1]),
            "height": int(img.shape[0]),
            "score": s.score,
            "threshold": s.threshold,
            "pixel_threshold": pt,
            "verdict": verdict,
            "boxes": [b.as_dict() for b in boxes],
            "findings": _findings(boxes, pt, img.shape[:2]) if pt is not None else [],
            "explanation": expl,
            "timings": {
                "queue_ms": round(s.queue_ms, 2),
                "predict_ms": round(s.predict_ms, 2),
                "batch_size": s.batch_size,
            },
        }
        if explain_error:
            item["explanation_error"] = explain_error
        if overlay:
            item["overlay"] = _overlay_png(img, s.map, pt)
        out.append(item)
    post_ms = (time.perf_counter() - start) * 1000
    for item in out:
        item["timings"]["post_ms"] = round(post_ms, 2)
    return out


def create_app(
    model: Any,
    *,
    token: str | None = None,
    explainer: Any = None,
    config: ServiceConfig | None = None,
    model_folder: str | os.PathLike | None = None,
) -> FastAPI:
    """The service for ``model`` (a loaded detector or a model folder, torch or ONNX).

    ``token``: bearer token for ``/v1`` routes (None: open, for loopback only; :func:`serve`
    enforces that); ``explainer``: an object with ``explain(images, prediction, names)``
    returning objects with ``to_dict()`` (``anomalens.explain``), or None.
    """
    config = config or ServiceConfig()
    # decoding and post-processing are CPU work: one thread per core, not starlette's 40 (which
    # multiplied allocator arenas and oversubscribed the cores under load)
    workers = ThreadPoolExecutor(max_workers=os.cpu_count() or 2, thread_name_prefix="http-work")

    async def in_workers(fn: Any, *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(workers, fn, *args)

    if isinstance(model, str | os.PathLike):
        model_folder, model = model, load_model(model)
    slot = _slot(model, None if model_folder is None else str(model_folder))
    state: dict[str, Any] = {"slot": slot, "ready": False}
    batcher = MicroBatcher(
        lambda: state["slot"], config.max_batch, config.max_wait_ms, config.max_queue
    )

    @contextlib.asynccontextmanager
    async def lifespan(_app: FastAPI):
        await run_in_threadpool(__import__, "anomalens.visualize")  # overlays: no first-call lag
        batcher.start()
        state["ready"] = True
        try:
            yield
        finally:
            state["ready"] = False
            await batcher.stop()
            workers.shutdown(wait=True)

    app = FastAPI(
        title="anomalens",
        version=__version__,
        description="Anomaly detection on images: scores, maps, boxes and verdicts.",
        lifespan=lifespan,
    )
    app.state.service = state
    app.state.config = config

    async def authorized(request: Request) -> None:
        if token is not None and not token_matches(request.headers.get("authorization"), token):
            raise APIError(
                401,
                "missing or wrong bearer token",
                {"WWW-Authenticate": 'Bearer realm="anomalens"'},
            )

    @app.exception_handler(APIError)
    async def _api_error(_request: Request, exc: APIError) -> JSONResponse:
        return JSONResponse({"error": exc.message}, exc.status, headers=exc.headers)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return JSONResponse({"error": str(exc.detail)}, exc.status_code, headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(_request: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(p) for p in first.get("loc", ()))
        return JSONResponse({"error": f"invalid request: {where}: {first.get('msg', '')}"}, 422)

    @app.exception_handler(Exception)
    async def _internal_error(_request: Request, exc: Exception) -> JSONResponse:
        logger.error("internal error: %s: %s", type(exc).__name__, exc)
        return JSONResponse({"error": "internal error (details in the server log)"}, 500)

    @app.middleware("http")
    async def access_log(request: Request, call_next):
        start = time.perf_counter()
        request.state.images = 0
        status = 500
        try:
            response = await call_next(request)
            status = response.status_code
            return response
        finally:
            route = request.scope.get("route")
            access_logger.info(
                json.dumps(
                    {
                        "time": datetime.now(timezone.utc).isoformat(timespec="milliseconds"),
                        "method": request.method,
                        "route": getattr(route, "path", request.url.path),
                        "status": status,
                        "latency_ms": round((time.perf_counter() - start) * 1000, 2),
                        "images": request.state.images,
                    }
                )
            )

    @app.get("/", include_in_schema=False)
    async def index() -> FileResponse:
        return FileResponse(STATIC_DIR / "index.html")

    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")

    @app.get("/healthz", summary="the process is up")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz", summary="a model is loaded and requests are accepted")
    async def readyz() -> JSONResponse:
        if not state["ready"]:
            return JSONResponse({"ready": False}, 503, headers={"Retry-After": str(RETRY_AFTER)})
        return JSONResponse({"ready": True, "method": state["slot"].info["method"]})

    @app.get("/v1/model", summary="the model being served", dependencies=[Depends(authorized)])
    async def model_info() -> dict[str, Any]:
        return state["slot"].info | {"auth": token is not None}

    @app.post(
        "/v1/predict",
        summary="score images: multipart field 'files' or JSON {'images': [{name, data}]}",
        dependencies=[Depends(authorized)],
    )
    async def predict(request: Request, overlay: bool = False) -> dict[str, Any]:
        t0 = time.perf_counter()
        body = await _read_body(request, config.limits.max_bytes)
        files = await _uploads(request, body, config.limits)
        request.state.images = len(files)
        try:
            images = await in_workers(
                lambda: [decode_image(data, name, config.limits) for name, data in files]
            )
        except UploadError as exc:
            raise APIError(exc.status, exc.message) from exc
        t1 = time.perf_counter()
        try:
            scored = await asyncio.wait_for(batcher.submit(images), config.timeout_s)
        except QueueFullError as exc:
            raise APIError(503, str(exc), {"Retry-After": str(RETRY_AFTER)}) from exc
        except TimeoutError as exc:
            raise APIError(
                503,
                f"no result within {config.timeout_s:g} s (the service is overloaded)",
                {"Retry-After": str(RETRY_AFTER)},
            ) from exc
        names = [name for name, _ in files]
        results = await in_workers(
            _results, names, images, scored, overlay, explainer, config.top_k
        )
        total = (time.perf_counter() - t0) * 1000
        for item in results:
            item["timings"] |= {
                "decode_ms": round((t1 - t0) * 1000, 2),
                "total_ms": round(total, 2),
            }
        return {"model": scored[0].model.info, "results": results}

    @app.post(
        "/v1/model/reload",
        summary="load another model folder and swap it in (token required)",
        dependencies=[Depends(authorized)],
    )
    async def reload(request: Request) -> dict[str, Any]:
        if token is None:
            raise APIError(403, "reload is disabled: start the service with a token")
        body = await _read_body(request, 64 * 1024)
        try:
            folder = json.loads(body)["model"]
            if not isinstance(folder, str):
                raise TypeError
        except (ValueError, KeyError, TypeError) as exc:
            raise APIError(400, 'reload needs a JSON body {"model": "FOLDER"}') from exc
        old = state["slot"]
        try:
            new = await run_in_threadpool(load_model, folder)
        except Exception as exc:
            logger.warning("reload of %s failed: %s", folder, exc)
            raise APIError(
                400, f"reload failed, still serving {old.folder or old.info['method']}: {exc}"
            ) from exc
        if hasattr(explainer, "use_detector"):  # defect types follow the new model
            explainer.use_detector(new)
        state["slot"] = _slot(new, folder)
        logger.info("reloaded model from %s", folder)
        return {"reloaded": True, "model": state["slot"].info}

    return app
