"""One tree of typed errors, each rendered in one place.

    CellarError                  the root: a failure Cellar knows and explains in `message`
    ├── ApiError                 the HTTP side: what a client sees, with status, type and code;
    │                            cellar.web renders it as OpenAI's `{"error": {...}}`
    └── ToolError                the tool side: what an operator or a script sees from the CLI,
                                 the config, the store and the offline tools; the CLI's one
                                 handler (cellar.cli.main) prints it and exits with `exit_code`

Raise one where the failure is known. Never match on message text: match on the class (or on
an ApiError's `code`).
"""

from __future__ import annotations

from typing import Any, ClassVar


class CellarError(Exception):
    """The root of every error Cellar raises on purpose; `message` says what failed and why."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class ApiError(CellarError):
    """Base of every error a client may see (500 unless a subclass says otherwise)."""

    status: ClassVar[int] = 500
    type: ClassVar[str] = "server_error"
    code: ClassVar[str] = "internal_error"

    def __init__(self, message: str, *, param: str | None = None) -> None:
        super().__init__(message)
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


class InvalidRequest(ApiError):
    """The request body is malformed or asks for something impossible (400)."""

    status = 400
    type = "invalid_request_error"
    code = "invalid_request_error"


class PreviousResponseNotFound(InvalidRequest):
    """`previous_response_id` names no response this key may continue (400, as OpenAI's)."""

    code = "previous_response_not_found"


class UnsupportedParameter(InvalidRequest):
    """A valid OpenAI parameter that this server does not support yet (400)."""

    code = "unsupported_parameter"


class ContextLengthExceeded(InvalidRequest):
    """Prompt tokens plus requested completion tokens exceed the model's context (400)."""

    code = "context_length_exceeded"


class HostNotAllowed(InvalidRequest):
    """The request's Host header is not one this server answers to (400; DNS rebinding)."""

    code = "host_not_allowed"


class ModelNotFound(ApiError):
    """No deployment serves the requested `model` (404)."""

    status = 404
    type = "invalid_request_error"
    code = "model_not_found"


class NotFound(ApiError):
    """Unknown route (404)."""

    status = 404
    type = "invalid_request_error"
    code = "not_found"


class EngineUnavailable(ApiError):
    """The model's worker is not running: it failed to load, crashed or is starting (503)."""

    status = 503
    type = "server_error"
    code = "model_unavailable"


class EngineFailed(ApiError):
    """The worker broke off while serving this request (502)."""

    status = 502
    type = "server_error"
    code = "engine_error"


class Overloaded(ApiError):
    """Too many requests are waiting for this model (429 with Retry-After)."""

    status = 429
    type = "rate_limit_error"
    code = "rate_limit_exceeded"

    def __init__(self, message: str, *, retry_after_s: int | None = 1) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s
        """None: waiting would not help (no Retry-After is sent)."""

    def headers(self) -> dict[str, str]:
        return {} if self.retry_after_s is None else {"Retry-After": str(self.retry_after_s)}


class QuotaExceeded(ApiError):
    """The key keeps as much as it may (file bytes, queued batch requests): 429, and waiting
    does not help until something of its own is deleted or finishes."""

    status = 429
    type = "insufficient_quota"
    code = "quota_exceeded"


class StorageFull(ApiError):
    """The server's disk has no room for what the request would keep (507); nothing was kept."""

    status = 507
    type = "server_error"
    code = "storage_full"


class InvalidApiKey(ApiError):
    """No key, or one that is wrong, expired or revoked (401)."""

    status = 401
    type = "invalid_request_error"
    code = "invalid_api_key"

    def headers(self) -> dict[str, str]:
        return {"WWW-Authenticate": "Bearer"}


class ModelNotAllowed(ApiError):
    """The key may not use this model (403)."""

    status = 403
    type = "permission_error"
    code = "model_not_allowed"


class PermissionDenied(ApiError):
    """The key's role may not call this route (403)."""

    status = 403
    type = "permission_error"
    code = "permission_denied"


class RequestTooLarge(ApiError):
    """The request body is bigger than `limits.max_body` (413)."""

    status = 413
    type = "invalid_request_error"
    code = "request_too_large"


class RequestTimeout(ApiError):
    """The request took longer than `limits.request_timeout` (504)."""

    status = 504
    type = "server_error"
    code = "timeout"


class RateLimited(Overloaded):
    """The key went over its requests or tokens per minute (429 with x-ratelimit-* headers)."""

    def __init__(
        self, message: str, *, retry_after_s: int | None, limit_headers: dict[str, str]
    ) -> None:
        super().__init__(message, retry_after_s=retry_after_s)
        self.limit_headers = limit_headers

    def headers(self) -> dict[str, str]:
        return {**super().headers(), **self.limit_headers}


class ToolError(CellarError):
    """An operator-facing failure: the CLI prints `message` and exits with `exit_code`."""

    exit_code: ClassVar[int] = 2
    """2: the command could not do what was asked (bad input, config or state); 1: it ran
    and found a problem (a failed check, a quality gate)."""


class ConfigError(ToolError):
    """A configuration file is invalid; the message names the file, the key and the reason."""


class StoreError(ToolError):
    """The model store refused an operation; the message says which model and why."""


class IntegrityError(StoreError):
    """A stored model file no longer matches the sha256 recorded when it was imported."""

    exit_code = 1


class EngineChoiceError(ToolError):
    """No engine can serve a deployment as configured (the message says why); the config
    loader reports it under the deployment's `key` (`engine` unless the cause is another)."""

    def __init__(self, message: str, *, key: str = "engine") -> None:
        super().__init__(message)
        self.key = key


class ConvertError(ToolError):
    """A model could not be converted between formats (GGUF, Hugging Face checkpoint)."""
