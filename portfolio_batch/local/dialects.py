"""How the local server's non-OpenAI routes authenticate and shape their errors: Anthropic's
(``/v1/messages/...``, key in ``x-api-key`` or ``Authorization: Bearer``, errors
``{"type": "error", "error": {type, message}}``) and Gemini's (``/v1beta/...`` and
``/upload/v1beta/...``, key in ``x-goog-api-key`` or ``?key=``, errors
``{"error": {code, message, status}}``). The gateway in ``app.py`` asks ``dialect_for(path)``.

    >>> dialect_for({"path": "/v1/messages/batches", "headers": []}).name
    'anthropic'
    >>> dialect_for({"path": "/v1/batches", "headers": [(b"authorization", b"Bearer k")]}) is None
    True
"""

from __future__ import annotations

import hmac
from collections.abc import MutableMapping
from typing import Any
from urllib.parse import parse_qs

from portfolio_batch.local.store import ApiError

__all__ = ["AnthropicError", "Dialect", "GeminiError", "dialect_for"]

# Anthropic's error type for each HTTP status (platform.claude.com "Errors").
_ANTHROPIC_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    529: "overloaded_error",
}
# google.rpc.Code names for each HTTP status.
_GOOGLE_STATUS = {
    400: "INVALID_ARGUMENT",
    401: "UNAUTHENTICATED",
    403: "PERMISSION_DENIED",
    404: "NOT_FOUND",
    409: "ALREADY_EXISTS",
    413: "INVALID_ARGUMENT",
    429: "RESOURCE_EXHAUSTED",
    500: "INTERNAL",
}


class AnthropicError(ApiError):
    """An error answered in Anthropic's shape (the app's ApiError handler calls ``body``)."""

    def __init__(self, status: int, message: str, *, kind: str | None = None) -> None:
        super().__init__(status, message, type=kind or _ANTHROPIC_TYPES.get(status, "api_error"))

    def body(self) -> dict[str, Any]:
        return {"type": "error", "error": {"type": self.type, "message": self.message}}


class GeminiError(ApiError):
    """An error answered in Google's shape ``{"error": {code, message, status}}``."""

    def __init__(self, status: int, message: str, *, reason: str | None = None) -> None:
        super().__init__(status, message, type=_GOOGLE_STATUS.get(status, "UNKNOWN"), code=reason)

    def body(self) -> dict[str, Any]:
        error: dict[str, Any] = {"code": self.status, "message": self.message, "status": self.type}
        if self.code:
            error["details"] = [
                {
                    "@type": "type.googleapis.com/google.rpc.ErrorInfo",
                    "reason": self.code,
                    "domain": "googleapis.com",
                }
            ]
        return {"error": error}


class Dialect:
    """One provider's key check; ``refuse`` is the error to answer, or None to go on;
    ``route`` the scope the app routes (Gemini's ``/v1/...`` to its ``/v1beta/...`` routes)."""

    name = ""
    prefixes: tuple[str, ...] = ()

    def claims(self, scope: MutableMapping[str, Any]) -> bool:
        return bool(scope["path"].startswith(self.prefixes))

    def refuse(self, scope: MutableMapping[str, Any], expected: str | None) -> ApiError | None:
        raise NotImplementedError

    def route(self, scope: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
        return scope


def _matches(token: str, expected: str | None) -> bool:
    # expected None: the server accepts any non-empty key (any_key=True)
    return expected is None or hmac.compare_digest(token.encode(), expected.encode())


class _Anthropic(Dialect):
    name = "anthropic"
    prefixes = ("/v1/messages",)

    def refuse(self, scope: MutableMapping[str, Any], expected: str | None) -> ApiError | None:
        headers = dict(scope["headers"])
        token = headers.get(b"x-api-key", b"").decode("latin-1").strip()
        if not token:
            # anthropic-python sends the api_key as a bearer token; curl users send x-api-key
            auth = headers.get(b"authorization", b"").decode("latin-1")
            token = auth[7:].strip() if auth[:7].lower() == "bearer " else ""
        if not token:
            return AnthropicError(401, "x-api-key header is required")
        if not _matches(token, expected):
            # the key itself is never echoed or logged
            return AnthropicError(
                401,
                "invalid x-api-key: use the key this local server was started with "
                "(its api_key, or --api-key).",
            )
        return None


class _Gemini(Dialect):
    name = "gemini"
    prefixes = ("/v1beta/", "/upload/v1beta/")
    # google-genai 3.x calls the Developer API at api_version "v1" by default: /v1/batches/...
    # and /v1/files/... are Gemini's when the request carries a Google key and no bearer token
    _V1 = ("/v1/models/", "/v1/batches", "/v1/files", "/upload/v1/files")

    def claims(self, scope: MutableMapping[str, Any]) -> bool:
        path = scope["path"]
        if path.startswith(self.prefixes):
            return True
        if not path.startswith(self._V1):
            return False
        headers = dict(scope["headers"])
        if b"authorization" in headers:
            return False
        if path.startswith("/upload/v1/files") or b"x-goog-api-key" in headers:
            return True
        return "key" in parse_qs(scope.get("query_string", b"").decode("latin-1"))

    def route(self, scope: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
        path = scope["path"]
        for old, new in (("/v1/", "/v1beta/"), ("/upload/v1/", "/upload/v1beta/")):
            if path.startswith(old):
                path = new + path[len(old) :]
                return {**scope, "path": path, "raw_path": path.encode()}
        return scope

    def refuse(self, scope: MutableMapping[str, Any], expected: str | None) -> ApiError | None:
        query = parse_qs(scope.get("query_string", b"").decode("latin-1"))
        if scope["path"].startswith("/upload/") and query.get("upload_id"):
            # as on Google: the unguessable upload id of a started session is the credential
            return None
        headers = dict(scope["headers"])
        token = headers.get(b"x-goog-api-key", b"").decode("latin-1").strip()
        token = token or (query.get("key") or [""])[0].strip()
        if not token:
            return GeminiError(
                403,
                "Method doesn't allow unregistered callers (callers without established "
                "identity). Please use API Key or other form of API consumer identity to call "
                "this API.",
            )
        if not _matches(token, expected):
            return GeminiError(
                400, "API key not valid. Please pass a valid API key.", reason="API_KEY_INVALID"
            )
        return None


class _Bearer(Dialect):
    """Mistral's and Together's routes under their prefix: a bearer key, OpenAI-shaped errors
    (local/mistral.py, local/together.py)."""

    name = "bearer"
    prefixes = ("/mistral/", "/together/")

    def refuse(self, scope: MutableMapping[str, Any], expected: str | None) -> ApiError | None:
        auth = dict(scope["headers"]).get(b"authorization", b"").decode("latin-1")
        token = auth[7:].strip() if auth[:7].lower() == "bearer " else ""
        if not token:
            return ApiError(401, "An Authorization: Bearer <key> header is required.")
        if not _matches(token, expected):
            return ApiError(401, "Invalid API key: use the key this local server was started with.")
        return None


_DIALECTS: tuple[Dialect, ...] = (_Anthropic(), _Gemini(), _Bearer())


def dialect_for(scope: MutableMapping[str, Any]) -> Dialect | None:
    """The provider dialect of a request (its path, for Gemini's ``/v1`` also its key header),
    None for OpenAI's routes."""
    for dialect in _DIALECTS:
        if dialect.claims(scope):
            return dialect
    return None
