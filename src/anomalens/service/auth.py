"""Bearer tokens: where they come from, when they are required, how they are compared."""

from __future__ import annotations

import hmac
import ipaddress
import os
from pathlib import Path

from anomalens.errors import ServiceError

#: Environment variable holding the token when no ``--token-file`` is given.
TOKEN_ENV = "ANOMALENS_TOKEN"


def is_loopback(host: str) -> bool:
    """True for ``localhost`` and loopback addresses (127.0.0.0/8, ::1)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def load_token(token_file: str | os.PathLike | None = None) -> str | None:
    """The token from ``token_file`` (stripped), else from ``$ANOMALENS_TOKEN``, else None.

    ServiceError when the file cannot be read or is empty.
    """
    if token_file is not None:
        path = Path(token_file)
        try:
            token = path.read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise ServiceError(f"{path}: cannot read the token file ({exc.strerror})") from exc
        if not token:
            raise ServiceError(f"{path}: the token file is empty")
        return token
    token = os.environ.get(TOKEN_ENV, "").strip()
    return token or None


def require_token_for(host: str, token: str | None) -> None:
    """ServiceError unless a token is set whenever ``host`` is not loopback."""
    if token is None and not is_loopback(host):
        raise ServiceError(
            f"refusing to listen on {host} without a token: pass --token-file FILE or set "
            f"{TOKEN_ENV} (only loopback addresses may run without one)"
        )


def token_matches(header: str | None, token: str) -> bool:
    """True when ``header`` is ``Bearer <token>`` (constant-time comparison)."""
    if not header or not header.startswith("Bearer "):
        return False
    given = header[len("Bearer ") :].strip().encode("utf-8")
    return hmac.compare_digest(given, token.encode("utf-8"))
