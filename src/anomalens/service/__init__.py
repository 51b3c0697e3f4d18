"""The REST service and inspection page: ``anomalens serve`` (FastAPI + uvicorn).

``create_app(model, token=None, explainer=None, config=ServiceConfig())`` builds the app;
:func:`serve` checks the token rules, builds the explainer and runs uvicorn.
"""

from __future__ import annotations

from anomalens.service.app import ServiceConfig, create_app, load_model
from anomalens.service.serve import serve

__all__ = ["ServiceConfig", "create_app", "load_model", "serve"]
