"""The bearer-token check shared by the HTTP intake and the worker's patient-level web views.

One token (``MONITOR_API_TOKEN``) guards both. :func:`check_bearer` answers 403 when no token is
configured (unset, empty or blank: the endpoints are closed), 401 unless the request's
``Authorization`` header is ``Bearer <token>`` (the scheme case-insensitive, RFC 7235), and
``None`` when it is. The comparison is constant-time; a header that is not valid text (aiohttp hands
undecodable bytes over as lone surrogates) is a wrong token, never a server error. Imports nothing of
the project, so any driver may use it.
"""

from __future__ import annotations

import hmac

from pydantic import SecretStr

FORBIDDEN = 403
UNAUTHORIZED = 401


def configured_token(secret: SecretStr | None) -> bytes | None:
    """The configured token as UTF-8, or ``None`` when it is unset, empty or blank (closed)."""
    token = secret.get_secret_value().strip() if secret is not None else ""
    return token.encode("utf-8") if token else None


def bearer_credentials(header: str) -> bytes:
    """The token of an ``Authorization: Bearer <token>`` header as UTF-8; ``b""`` for a missing or
    malformed header, another scheme, or bytes that were not UTF-8."""
    scheme, _, credentials = header.strip().partition(" ")
    if scheme.lower() != "bearer":
        return b""
    try:
        return credentials.strip().encode("utf-8")
    except UnicodeEncodeError:
        return b""


def check_bearer(header: str, token: bytes | None) -> int | None:
    """``None`` when ``header`` carries ``token``, else the status to answer: 403 (no token
    configured) or 401."""
    if token is None:
        return FORBIDDEN
    if not hmac.compare_digest(bearer_credentials(header), token):
        return UNAUTHORIZED
    return None
