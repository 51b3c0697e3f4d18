"""``serve``: run the service with uvicorn (what ``anomalens serve`` calls)."""

from __future__ import annotations

import logging
import os
import sys
from typing import Any

from anomalens.errors import ServiceError
from anomalens.service.app import ServiceConfig, create_app, load_model
from anomalens.service.auth import load_token, require_token_for

#: Seconds in-flight requests get to finish after SIGINT / SIGTERM.
GRACEFUL_SHUTDOWN_S = 30


def build_explainer(spec: str, **options: Any) -> Any:
    """``anomalens.explain.build_explainer(spec)``, imported only when asked for."""
    try:
        from anomalens.explain import build_explainer as build
    except ImportError as exc:
        raise ServiceError(
            f"--explain {spec}: this installation has no anomalens.explain package ({exc})"
        ) from exc
    return build(spec, **options)


def access_log_to_stderr() -> None:
    """Print the JSON access-log lines on stderr (one per request)."""
    log = logging.getLogger("anomalens.service.access")
    if not log.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(message)s"))
        log.addHandler(handler)
        log.setLevel(logging.INFO)
        log.propagate = False


def serve(
    model: str | os.PathLike,
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    token_file: str | os.PathLike | None = None,
    explain: str | None = None,
    explain_options: dict[str, Any] | None = None,
    config: ServiceConfig | None = None,
) -> None:
    """Serve the model folder (torch or ONNX export) until interrupted.

    A token (``token_file`` or ``$ANOMALENS_TOKEN``) is required unless ``host`` is loopback;
    ServiceError otherwise, before anything is loaded. ``explain_options`` go to
    :func:`~anomalens.explain.build_explainer` (e.g. ``defect_types``).
    """
    import uvicorn

    token = load_token(token_file)
    require_token_for(host, token)
    detector = load_model(model)
    explainer = (
        build_explainer(explain, detector=detector, **(explain_options or {})) if explain else None
    )
    app = create_app(detector, token=token, explainer=explainer, config=config, model_folder=model)
    access_log_to_stderr()
    uvicorn.run(
        app,
        host=host,
        port=port,
        log_level="warning",
        access_log=False,
        timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_S,
    )
