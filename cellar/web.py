"""HTTP pieces the gateway and the workers share: OpenAI-shaped errors, SSE, disconnects.

SSE is written in exactly one place (`sse_response`): `data: <json>` per event, `[DONE]` at the
end, an error event then `[DONE]` on a failure after streaming began, and the `on_close`
callback on every way out, so a disconnected client aborts the work behind it.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.exceptions import HTTPException
from starlette.types import Send

from cellar.config import format_loc
from cellar.errors import ApiError, EngineFailed, InvalidRequest, NotFound

log = logging.getLogger("cellar.web")

SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
SSE_DONE = b"data: [DONE]\n\n"
DISCONNECT_POLL_S = 0.25

T = TypeVar("T")


def sse_event(payload: dict[str, Any]) -> bytes:
    """One SSE `data:` event holding compact JSON."""
    return (
        b"data: "
        + json.dumps(payload, separators=(",", ":"), ensure_ascii=False).encode()
        + (b"\n\n")
    )


async def send_error(send: Send, error: ApiError) -> None:
    """The OpenAI-shaped error as a whole ASGI response, for middleware below FastAPI."""
    body = json.dumps(error.body()).encode()
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        *((name.lower().encode(), value.encode()) for name, value in error.headers().items()),
    ]
    await send({"type": "http.response.start", "status": error.status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def error_response(error: ApiError) -> JSONResponse:
    return JSONResponse(error.body(), status_code=error.status, headers=error.headers())


def sse_response(
    events: AsyncIterator[bytes], on_close: Callable[[], Awaitable[None]] | None = None
) -> StreamingResponse:
    """Stream already-encoded SSE events, then `[DONE]`; failures become one error event."""

    async def body() -> AsyncIterator[bytes]:
        try:
            async for event in events:
                yield event
        except ApiError as exc:
            yield sse_event(exc.body())
        except Exception:
            log.exception("stream failed")
            yield sse_event(EngineFailed("the stream failed; see the server log").body())
        finally:
            if on_close is not None:
                await on_close()
        yield SSE_DONE

    return StreamingResponse(body(), media_type="text/event-stream", headers=SSE_HEADERS)


class ClientDisconnected(Exception):
    """The client went away before its non-streamed answer was ready."""


async def unless_disconnected(request: Request, work: Awaitable[T]) -> T:
    """Await `work`, cancelling it if the client disconnects first."""
    task = asyncio.ensure_future(work)
    try:
        while True:
            done, _ = await asyncio.wait({task}, timeout=DISCONNECT_POLL_S)
            if done:
                return task.result()
            if await request.is_disconnected():
                raise ClientDisconnected
    finally:
        if not task.done():
            task.cancel()


def _validation_message(exc: RequestValidationError) -> tuple[str, str | None]:
    errors = exc.errors()
    if not errors:
        return "invalid request body", None
    first = errors[0]
    if first.get("type") == "json_invalid":
        return f"the request body is not valid JSON: {first.get('ctx', {}).get('error', '')}", None
    loc = tuple(part for part in first.get("loc", ()) if part != "body")
    param = format_loc(loc) if loc else None
    reason = str(first.get("msg", "invalid value"))
    if param:
        return f"{param}: {reason}", param
    return reason, None


def install_error_handlers(app: FastAPI) -> None:
    """Render every failure in OpenAI's error shape with a string `code`."""

    @app.exception_handler(ApiError)
    async def _cellar(_: Request, exc: ApiError) -> JSONResponse:
        return error_response(exc)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        message, param = _validation_message(exc)
        return error_response(InvalidRequest(message, param=param))

    @app.exception_handler(HTTPException)
    async def _http(_: Request, exc: HTTPException) -> JSONResponse:
        if exc.status_code == 404:
            return error_response(NotFound("no such route"))
        error = InvalidRequest(str(exc.detail))
        return JSONResponse(error.body(), status_code=exc.status_code)

    @app.exception_handler(ClientDisconnected)
    async def _gone(_: Request, __: ClientDisconnected) -> JSONResponse:
        return JSONResponse({}, status_code=499)

    @app.exception_handler(Exception)
    async def _unexpected(_: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error", exc_info=exc)
        return error_response(ApiError("internal server error; see the server log"))
