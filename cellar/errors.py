"""Typed errors, rendered in one place in OpenAI's shape.

Raise one of these where the failure is known; the gateway's and the workers' single exception
handler turns it into `{"error": {"message", "type", "param", "code"}}` with the class's HTTP
status. Never match on message text: match on the class or on `code`.
"""

from __future__ import annotations

from typing import Any, ClassVar


class CellarError(Exception):
    """Base of every error a client may see."""

    status: ClassVar[int] = 500
    type: ClassVar[str] = "server_error"
    code: ClassVar[str] = "internal_error"

    def __init__(self, message: str, *, param: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param

    def body(self) -> dict[str, Any]:
        """The OpenAI-shaped error object."""
        return {
            "error": {
                "message": self.message,
                "type": self.type,
                "param": self.param,
                "code": self.code,
            }
        }

    def headers(self) -> dict[str, str]:
        """Extra response headers (e.g. Retry-After)."""
        return {}


class InvalidRequest(CellarError):
    """The request body is malformed or asks for something impossible (400)."""

    status = 400
    type = "invalid_request_error"
    code = "invalid_request_error"


class UnsupportedParameter(InvalidRequest):
    """A valid OpenAI parameter that this server does not support yet (400)."""

    code = "unsupported_parameter"


class ContextLengthExceeded(InvalidRequest):
    """Prompt tokens plus requested completion tokens exceed the model's context (400)."""

    code = "context_length_exceeded"


class ModelNotFound(CellarError):
    """No deployment serves the requested `model` (404)."""

    status = 404
    type = "invalid_request_error"
    code = "model_not_found"


class NotFound(CellarError):
    """Unknown route (404)."""

    status = 404
    type = "invalid_request_error"
    code = "not_found"


class EngineUnavailable(CellarError):
    """The model's worker is not running: it failed to load, crashed or is starting (503)."""

    status = 503
    type = "server_error"
    code = "model_unavailable"


class EngineFailed(CellarError):
    """The worker broke off while serving this request (502)."""

    status = 502
    type = "server_error"
    code = "engine_error"


class Overloaded(CellarError):
    """Too many requests are waiting for this model (429 with Retry-After)."""

    status = 429
    type = "rate_limit_error"
    code = "rate_limit_exceeded"

    def __init__(self, message: str, *, retry_after_s: int = 1) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s

    def headers(self) -> dict[str, str]:
        return {"Retry-After": str(self.retry_after_s)}


class InvalidApiKey(CellarError):
    """No key, or one that is wrong, expired or revoked (401)."""

    status = 401
    type = "invalid_request_error"
    code = "invalid_api_key"

    def headers(self) -> dict[str, str]:
        return {"WWW-Authenticate": "Bearer"}


class ModelNotAllowed(CellarError):
    """The key may not use this model (403)."""

    status = 403
    type = "permission_error"
    code = "model_not_allowed"


class PermissionDenied(CellarError):
    """The key's role may not call this route (403)."""

    status = 403
    type = "permission_error"
    code = "permission_denied"


class RequestTooLarge(CellarError):
    """The request body is bigger than `limits.max_body` (413)."""

    status = 413
    type = "invalid_request_error"
    code = "request_too_large"


class RequestTimeout(CellarError):
    """The request took longer than `limits.request_timeout` (504)."""

    status = 504
    type = "server_error"
    code = "timeout"


class RateLimited(Overloaded):
    """The key went over its requests or tokens per minute (429 with x-ratelimit-* headers)."""

    def __init__(self, message: str, *, retry_after_s: int, limit_headers: dict[str, str]) -> None:
        super().__init__(message, retry_after_s=retry_after_s)
        self.limit_headers = limit_headers

    def headers(self) -> dict[str, str]:
        return {**super().headers(), **self.limit_headers}


class ConfigError(Exception):
    """A configuration file is invalid; the message names the file, the key and the reason."""


class StoreError(Exception):
    """The model store refused an operation; the message says which model and why."""


class IntegrityError(StoreError):
    """A stored model file no longer matches the sha256 recorded when it was imported."""
