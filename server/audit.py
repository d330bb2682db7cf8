"""The audit log: one JSON line per API request, refused ones included.

An ASGI middleware wraps every /v1 and /admin request. Handlers fill in what only they know
(the key's name, the model, token counts, TTFT, the finish reason, the scripts of the prompt
and the answer; the text only with `audit.log_content`) on an
`AuditEntry` in the request's state; the middleware adds the time, client address, status and
error code, and hands the line to a writer thread, so the event loop never waits on the disk.
Files rotate by size and age; the oldest rotated files beyond `keep` are deleted.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from cellar.server.auditwriter import AuditLog

AUDITED = ("/v1/", "/admin/")
_ERROR_BODY_MAX = 8192


@dataclass
class AuditEntry:
    key: str | None = None
    key_id: str | None = None
    batch: str | None = None
    """The batch a request belongs to (server/batches.py)."""
    priority: int | None = None
    model: str | None = None
    version: str | None = None
    """The stored version that answered (NAME@K), when the model comes from the store."""
    adapter: str | None = None
    stream: bool | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    ttft_ms: float | None = None
    outcome: int | None = None
    """Set when a stream fails after its 200 was sent (the status the client could not see)."""
    error: str | None = None
    finish_reason: str | None = None
    """The first choice's."""
    response_format: str | None = None
    """The type asked for (`json_schema`, `json_object`, ...), None when none was."""
    tools: bool | None = None
    prompt_script: dict[str, float] | None = None
    """Share of each writing system among the prompt's letters (cellar.features): what the
    drift report compares, kept instead of the text."""
    answer_script: dict[str, float] | None = None
    prompt: Any = None
    response: str | None = None


def _error_code(body: bytes) -> str | None:
    try:
        error = json.loads(body).get("error")
    except (ValueError, AttributeError):
        return None
    return str(error.get("code")) if isinstance(error, dict) and error.get("code") else None


class AuditMiddleware:
    """Pure ASGI, so streamed answers pass through untouched."""

    def __init__(self, app: ASGIApp, audit: AuditLog | None) -> None:
        self.app = app
        self.audit = audit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "")
        if self.audit is None or scope["type"] != "http" or not path.startswith(AUDITED):
            await self.app(scope, receive, send)
            return
        entry = AuditEntry()
        scope.setdefault("state", {})["audit"] = entry
        started = time.time()
        status = {"code": 500}
        error_body = bytearray()

        async def capture(message: Message) -> None:
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            elif message["type"] == "http.response.body" and status["code"] >= 400:
                error_body.extend(message.get("body", b"")[: _ERROR_BODY_MAX - len(error_body)])
            await send(message)

        try:
            await self.app(scope, receive, capture)
        finally:
            self.audit.write(self._line(scope, entry, started, status["code"], bytes(error_body)))

    def _line(
        self, scope: Scope, entry: AuditEntry, started: float, status: int, error: bytes
    ) -> dict[str, Any]:
        client = scope.get("client")
        fields = asdict(entry)
        outcome, failure = fields.pop("outcome"), fields.pop("error")
        prompt, response = fields.pop("prompt"), fields.pop("response")
        line = {
            "time": datetime.fromtimestamp(started, UTC).isoformat(),
            "client": client[0] if client else None,
            "method": scope.get("method"),
            "path": scope.get("path"),
            "status": outcome or status,
            "error": failure or (_error_code(error) if error else None),
            **fields,
            "latency_ms": round((time.time() - started) * 1000, 2),
        }
        if self.audit is not None and self.audit.settings.log_content:
            line["prompt"], line["response"] = prompt, response
        return line
