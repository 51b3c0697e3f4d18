"""VLM explainer over any OpenAI-compatible chat-completions server (Ollama, vLLM, llama.cpp's
server): spec ``openai:http://127.0.0.1:11434/v1#moondream`` (the model after ``#``).

Standard library only (``urllib``): images go as base64 JPEG data URLs; each request has a
timeout and is retried with exponential backoff on connection errors, timeouts, HTTP 429 and
5xx. The API key comes from an environment variable (``OPENAI_API_KEY`` unless
``api_key_env`` names another) and is never logged, put in an error message or written to a
report.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import socket
import time
import urllib.error
import urllib.request
from typing import Any

import cv2
import numpy as np

from anomalens.errors import ExplainerError
from anomalens.explain.prompts import Answer, parse_answer
from anomalens.explain.vlm import VLMExplainer, VLMRequest

__all__ = ["OpenAIExplainer", "data_url"]

logger = logging.getLogger(__name__)

#: HTTP statuses worth retrying (rate limit, server errors)
RETRY_STATUS = (429, 500, 502, 503, 504)


def data_url(rgb: np.ndarray, quality: int = 90) -> str:
    """``data:image/jpeg;base64,...`` of an RGB uint8 image."""
    ok, buf = cv2.imencode(
        ".jpg",
        cv2.cvtColor(np.ascontiguousarray(rgb), cv2.COLOR_RGB2BGR),
        [cv2.IMWRITE_JPEG_QUALITY, quality],
    )
    if not ok:  # pragma: no cover
        raise ValueError("cannot encode the image as JPEG")
    return "data:image/jpeg;base64," + base64.b64encode(buf.tobytes()).decode("ascii")


class OpenAIExplainer(VLMExplainer):
    """Asks a model on an OpenAI-compatible server. ``timeout`` (seconds per request),
    ``retries`` (extra attempts), ``backoff`` (first wait, doubled each retry),
    ``api_key_env``; other options as :class:`~anomalens.explain.vlm.VLMExplainer`."""

    name = "openai"

    def __init__(
        self,
        base_url: str,
        model: str,
        *,
        timeout: float = 120.0,
        retries: int = 2,
        backoff: float = 1.0,
        api_key_env: str = "OPENAI_API_KEY",
        **options: Any,
    ) -> None:
        if timeout <= 0 or retries < 0 or backoff < 0:
            raise ValueError("timeout must be > 0, retries and backoff >= 0")
        super().__init__(model, **options)
        self.base_url = base_url.rstrip("/")
        self.timeout, self.retries, self.backoff = timeout, retries, backoff
        self.api_key_env = api_key_env

    @property
    def endpoint(self) -> str:
        return f"{self.base_url}/chat/completions"

    def ask(self, request: VLMRequest) -> Answer:
        content: list[dict[str, Any]] = [{"type": "text", "text": request.prompt}]
        content += [
            {"type": "image_url", "image_url": {"url": data_url(im)}} for im in request.images
        ]
        body = {
            "model": self.model,
            "messages": [{"role": "user", "content": content}],
            "max_tokens": self.max_new_tokens,
            "temperature": 0,
        }
        return parse_answer(self.chat(body), request.n_regions)

    def chat(self, body: dict[str, Any]) -> str:
        """POST ``body`` to ``/chat/completions`` and return the first choice's text."""
        data = json.dumps(body).encode("utf-8")
        headers = {"Content-Type": "application/json"}
        key = os.environ.get(self.api_key_env)
        if key:
            headers["Authorization"] = f"Bearer {key}"
        where = f"{self.endpoint} (model {self.model!r})"
        last = ""
        for attempt in range(self.retries + 1):
            if attempt:
                wait = self.backoff * 2 ** (attempt - 1)
                logger.warning("%s: %s; retrying in %.1f s", where, last, wait)
                time.sleep(wait)
            req = urllib.request.Request(self.endpoint, data=data, headers=headers, method="POST")
            try:
                with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                    raw = resp.read()
            except urllib.error.HTTPError as exc:
                detail = _error_detail(exc)
                if exc.code in RETRY_STATUS:
                    last = f"HTTP {exc.code}{detail}"
                    continue
                if exc.code == 404:
                    raise ExplainerError(
                        f"{where}: HTTP 404{detail} (is the model pulled/served? e.g. "
                        f"`ollama pull {self.model}`)"
                    ) from None
                if exc.code in (401, 403):
                    raise ExplainerError(
                        f"{where}: HTTP {exc.code}: not authorised; set the API key in "
                        f"${self.api_key_env}"
                    ) from None
                raise ExplainerError(f"{where}: HTTP {exc.code}{detail}") from None
            except TimeoutError:
                last = f"no reply within {self.timeout:g} s"
                continue
            except urllib.error.URLError as exc:
                reason = exc.reason
                if isinstance(reason, (TimeoutError, socket.timeout)):
                    last = f"no reply within {self.timeout:g} s"
                else:
                    last = f"cannot connect ({reason})"
                continue
            except ConnectionError as exc:
                last = f"connection failed ({exc})"
                continue
            return _reply_text(raw, where)
        raise ExplainerError(
            f"{where}: {last} after {self.retries + 1} attempt{'s' * (self.retries > 0)}; is the "
            "server running?"
        )


def _error_detail(exc: urllib.error.HTTPError) -> str:
    """The server's error message of an HTTP error reply (short)."""
    try:
        payload = json.loads(exc.read().decode("utf-8", "replace") or "{}")
        err = payload.get("error", payload) if isinstance(payload, dict) else payload
        message = err.get("message", "") if isinstance(err, dict) else str(err)
    except (ValueError, OSError):
        message = ""
    return f": {message[:200]}" if message else ""


def _reply_text(raw: bytes, where: str) -> str:
    try:
        payload = json.loads(raw.decode("utf-8"))
        text = payload["choices"][0]["message"]["content"]
    except (ValueError, KeyError, IndexError, TypeError) as exc:
        raise ExplainerError(
            f"{where}: malformed reply (expected JSON with choices[0].message.content; "
            f"got {raw[:80]!r})"
        ) from exc
    if isinstance(text, list):  # content parts
        text = "".join(p.get("text", "") for p in text if isinstance(p, dict))
    if not isinstance(text, str):
        raise ExplainerError(f"{where}: malformed reply (message content is not text)")
    return text.strip()
