"""A trivial OpenAI-compatible endpoint that answers at once, for measuring the load generator.

It streams `max_tokens` one-word chunks, the usage and `[DONE]` in a single write, so whatever
time a client measures against it is the client's own (plus loopback). With `--fail-after N`
every request after the first N fails, in turn: HTTP 503, an error event after two chunks, and
a connection dropped mid-stream; tests use it to check how errors are counted.

    python -m cellar.benchmarks.suite.echo --port 8099 [--fail-after N]
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json

_CHUNK = b'data: {"object":"text_completion","choices":[{"index":0,"text":" tok"}]}\n\n'
_CHAT_CHUNK = (
    b'data: {"object":"chat.completion.chunk",'
    b'"choices":[{"index":0,"delta":{"content":" tok"}}]}\n\n'
)
_DONE = b"data: [DONE]\n\n"
_MAX_TOKENS = 4096


def _response(status: str, content_type: str, body: bytes) -> bytes:
    head = (
        f"HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\n"
        f"Content-Length: {len(body)}\r\nServer: cellar-echo\r\n\r\n"
    )
    return head.encode() + body


def _usage(tokens: int) -> dict[str, int]:
    return {"prompt_tokens": 8, "completion_tokens": tokens, "total_tokens": 8 + tokens}


def _answer(path: str, request: dict[str, object]) -> bytes:
    raw = request.get("max_tokens")
    tokens = min(raw, _MAX_TOKENS) if isinstance(raw, int) and raw > 0 else 16
    chat = path.endswith("/chat/completions")
    if not request.get("stream"):
        body = {
            "object": "text_completion",
            "choices": [{"index": 0, "text": " tok" * tokens}],
            "usage": _usage(tokens),
        }
        return _response("200 OK", "application/json", json.dumps(body).encode())
    usage = json.dumps({"choices": [], "usage": _usage(tokens)}).encode()
    stream = (_CHAT_CHUNK if chat else _CHUNK) * tokens + b"data: " + usage + b"\n\n" + _DONE
    return _response("200 OK", "text/event-stream", stream)


def _vectors(request: dict[str, object]) -> bytes:
    """An embeddings answer: one fixed vector per input, 2 tokens per input counted."""
    given = request.get("input")
    count = len(given) if isinstance(given, list) and not isinstance(given[0], int) else 1
    data = [{"object": "embedding", "index": i, "embedding": [1.0, 0.0]} for i in range(count)]
    usage = {"prompt_tokens": 2 * count, "total_tokens": 2 * count}
    body = {"object": "list", "data": data, "model": request.get("model"), "usage": usage}
    return _response("200 OK", "application/json", json.dumps(body).encode())


def _failure(kind: int, path: str) -> tuple[bytes, bool]:
    """(bytes to send, whether to drop the connection after them)."""
    if kind == 0:
        error = {"error": {"message": "overloaded", "type": "server_error", "code": "overloaded"}}
        return _response(
            "503 Service Unavailable", "application/json", json.dumps(error).encode()
        ), False
    chunk = _CHAT_CHUNK if path.endswith("/chat/completions") else _CHUNK
    if kind == 1:
        event = {
            "error": {
                "message": "the worker crashed",
                "type": "server_error",
                "code": "worker_crashed",
            }
        }
        body = chunk * 2 + b"data: " + json.dumps(event).encode() + b"\n\n" + _DONE
        return _response("200 OK", "text/event-stream", body), False
    # announce a long body, send part of it, hang up
    head = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nContent-Length: 100000\r\n\r\n"
    return head + chunk * 2, True


class Echo:
    """The endpoint's handler. `delay_s` holds each completion that long before answering (the
    gateway's in-process tests use it as a stand-in worker with requests in flight)."""

    def __init__(self, fail_after: int | None, delay_s: float = 0.0) -> None:
        self._fail_after = fail_after
        self._delay_s = delay_s
        self._served = 0
        self.completions = 0
        """Completion requests received."""
        self._kinds = itertools.cycle(range(3))

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                request_line, *lines = head.decode("latin-1").split("\r\n")
                length = 0
                for line in lines:
                    name, _, value = line.partition(":")
                    if name.strip().lower() == "content-length":
                        length = int(value)
                body = await reader.readexactly(length) if length else b"{}"
                method, path, *_ = [*request_line.split(" "), "", ""]
                if method == "POST" and path.endswith("/completions"):
                    self._served += 1
                    self.completions += 1
                    if self._delay_s:
                        await asyncio.sleep(self._delay_s)
                    if self._fail_after is not None and self._served > self._fail_after:
                        out, drop = _failure(next(self._kinds), path)
                        writer.write(out)
                        await writer.drain()
                        if drop:
                            break
                        continue
                    writer.write(_answer(path, json.loads(body or b"{}")))
                elif method == "POST" and path.endswith("/embeddings"):
                    if self._delay_s:
                        await asyncio.sleep(self._delay_s)
                    writer.write(_vectors(json.loads(body or b"{}")))
                elif method == "GET" and path.endswith("/models"):
                    models = {"object": "list", "data": [{"id": "echo", "object": "model"}]}
                    writer.write(
                        _response("200 OK", "application/json", json.dumps(models).encode())
                    )
                else:
                    error = {"error": {"message": "not found", "type": "invalid_request_error"}}
                    writer.write(
                        _response("404 Not Found", "application/json", json.dumps(error).encode())
                    )
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError, ValueError):
            pass
        finally:
            writer.close()


async def serve(host: str, port: int, fail_after: int | None) -> None:
    echo = Echo(fail_after)
    server = await asyncio.start_server(echo.handle, host, port, backlog=1024)
    async with server:
        await server.serve_forever()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--fail-after", type=int, default=None)
    args = parser.parse_args()
    try:
        import uvloop

        runner = asyncio.Runner(loop_factory=uvloop.new_event_loop)
    except ImportError:
        runner = asyncio.Runner()
    with runner:
        runner.run(serve(args.host, args.port, args.fail_after))


if __name__ == "__main__":
    main()
