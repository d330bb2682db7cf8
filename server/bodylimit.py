"""A cap on request bodies (`limits.max_body`), enforced before anything reads them."""

from __future__ import annotations

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from cellar.errors import RequestTooLarge
from cellar.web import send_error


def _refusal(limit: int) -> RequestTooLarge:
    return RequestTooLarge(f"The request body is larger than this server's limit of {limit} bytes.")


def _counted(receive: Receive, limit: int) -> Receive:
    """`receive`, refusing (413, through the app's error handling) past `limit` bytes."""
    seen = 0

    async def counted() -> Message:
        nonlocal seen
        message = await receive()
        seen += len(message.get("body", b""))
        if seen > limit:
            raise _refusal(limit)
        return message

    return counted


class BodyLimit:
    """Refuses a declared Content-Length over the cap at once (413). A body without one
    (chunked) is read first, up to the cap, and refused the same way when it passes it; on the
    `larger` paths (uploads) it is counted as the app reads it instead, never held whole."""

    def __init__(self, app: ASGIApp, max_bytes: int, larger: dict[str, int] | None = None) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.larger = larger or {}
        """Paths that take more (file uploads): their bodies are counted as they stream, never
        held in memory."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope.get("method") in ("GET", "HEAD", "OPTIONS"):
            await self.app(scope, receive, send)
            return
        limit = self.larger.get(scope.get("path", ""), self.max_bytes)
        declared = dict(scope.get("headers", [])).get(b"content-length")
        if declared is not None:
            if declared.isdigit() and int(declared) > limit:
                await send_error(send, _refusal(limit))
                return
            await self.app(scope, receive, send)
            return
        if limit != self.max_bytes:
            await self.app(scope, _counted(receive, limit), send)
            return
        body = bytearray()
        while True:
            message = await receive()
            if message["type"] != "http.request":
                await self.app(scope, receive, send)  # the client left; let the app see it
                return
            body.extend(message.get("body", b""))
            if len(body) > self.max_bytes:
                await self._refuse(send)
                return
            if not message.get("more_body", False):
                break
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": bytes(body), "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

    async def _refuse(self, send: Send) -> None:
        await send_error(send, _refusal(self.max_bytes))
