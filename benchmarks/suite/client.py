"""The load generator's HTTP side: one aiohttp session, streamed requests, timings per chunk.

It parses only what it needs from each server-sent event (is there content? usage? an error?)
so that its own cost stays far below what it measures; `cellar bench --self-check` shows how far.
"""

from __future__ import annotations

import json
import time
from types import TracebackType
from typing import Any

import aiohttp

from cellar.benchmarks.suite.record import Api, RequestResult
from cellar.benchmarks.suite.workload import Prompt
from cellar.errors import ToolError


def api_root(base_url: str) -> str:
    """`http://host:8000` or `http://host:8000/v1` -> `http://host:8000/v1`."""
    base = base_url.rstrip("/")
    path = base.split("://", 1)[-1].partition("/")[2]
    return base if path else f"{base}/v1"


def server_root(base_url: str) -> str:
    """The server's root (where Cellar's /admin lives) for an API root ending in /v1."""
    root = api_root(base_url)
    return root[: -len("/v1")] if root.endswith("/v1") else root


def _error_code(payload: bytes) -> str | None:
    try:
        error = json.loads(payload).get("error")
    except (ValueError, AttributeError):
        return None
    if isinstance(error, dict):
        code = error.get("code") or error.get("type")
        return str(code) if code is not None else None
    return str(error) if error else None


ENDPOINTS = {"completions": "completions", "chat": "chat/completions", "embeddings": "embeddings"}


class ClientError(ToolError):
    """A probe request that did not succeed."""


class Client:
    """Sends requests to one model behind one OpenAI-compatible endpoint."""

    def __init__(
        self,
        base_url: str,
        model: str,
        api: Api,
        *,
        api_key: str | None = None,
        timeout_s: float = 600.0,
        ignore_eos: bool = False,
        temperature: float = 0.0,
    ) -> None:
        self.root = api_root(base_url)
        self.model = model
        self.api = api
        self.ignore_eos = ignore_eos
        self._url = f"{self.root}/{ENDPOINTS[api]}"
        self._headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)
        self._temperature = temperature
        self._session: aiohttp.ClientSession | None = None
        self.server_header: str | None = None

    async def __aenter__(self) -> Client:
        connector = aiohttp.TCPConnector(limit=0, ttl_dns_cache=300)
        self._session = aiohttp.ClientSession(
            connector=connector, headers=self._headers, timeout=self._timeout
        )
        return self

    async def __aexit__(
        self,
        kind: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._session is not None:
            await self._session.close()

    @property
    def session(self) -> aiohttp.ClientSession:
        assert self._session is not None, "use `async with Client(...)`"
        return self._session

    def _body(self, prompt: Prompt, stream: bool) -> dict[str, Any]:
        if self.api == "embeddings":
            return {"model": self.model, **prompt.body(self.api)}
        body: dict[str, Any] = {
            "model": self.model,
            **prompt.body(self.api),
            "max_tokens": prompt.output_len,
            "temperature": self._temperature,
            "stream": stream,
        }
        if stream:
            body["stream_options"] = {"include_usage": True}
        if self.ignore_eos:
            body["ignore_eos"] = True
        return body

    async def probe(self, prompt: Prompt, ignore_eos: bool | None = None) -> dict[str, Any]:
        """One non-streamed request; its `usage`. Raises ClientError when it fails."""
        body = self._body(prompt, stream=False)
        if ignore_eos is not None:
            body.pop("ignore_eos", None)
            if ignore_eos:
                body["ignore_eos"] = True
        try:
            async with self.session.post(self._url, json=body) as response:
                payload = await response.read()
                self.server_header = response.headers.get("Server", self.server_header)
                if response.status != 200:
                    raise ClientError(f"HTTP {response.status}: {payload[:300]!r}")
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise ClientError(f"{self._url}: {exc or type(exc).__name__}") from None
        usage = json.loads(payload).get("usage") or {}
        return dict(usage)

    async def send(self, prompt: Prompt, origin: float) -> RequestResult:
        """Stream one request; never raises for what the server or network did."""
        if self.api == "embeddings":
            return await self._embed(prompt, origin)
        body = self._body(prompt, stream=True)
        chat = self.api == "chat"
        result = RequestResult(
            start_s=0.0, requested_output_tokens=prompt.output_len, output_tokens=None
        )
        start = time.perf_counter()
        result.start_s = start - origin
        last = start
        finished = False
        try:
            async with self.session.post(self._url, json=body) as response:
                if response.status != 200:
                    await _failure(result, response)
                else:
                    async for raw in response.content:
                        if not raw.startswith(b"data:"):
                            continue
                        data = raw[5:].strip()
                        if data == b"[DONE]":
                            finished = True
                            break
                        event = json.loads(data)
                        if "error" in event:
                            code = _error_code(data)
                            result.error = f"stream:{code}" if code else "stream"
                            result.error_detail = data[:500].decode(errors="replace")
                            break
                        usage = event.get("usage")
                        if usage:
                            result.prompt_tokens = usage.get("prompt_tokens")
                            result.output_tokens = usage.get("completion_tokens")
                        choices = event.get("choices")
                        if choices and _has_content(choices[0], chat):
                            now = time.perf_counter()
                            if result.ttft_s is None:
                                result.ttft_s = now - start
                            else:
                                result.itl_s.append(now - last)
                            last = now
                            result.output_chunks += 1
                    if result.error is None and not finished:
                        result.error = "incomplete_stream"
        except (TimeoutError, aiohttp.ClientError, ValueError) as exc:
            _fault(result, exc, "bad_stream")
        result.latency_s = time.perf_counter() - start
        return result

    async def _embed(self, prompt: Prompt, origin: float) -> RequestResult:
        """One embeddings request, whole; never raises for what the server or network did."""
        body = self._body(prompt, stream=False)
        result = RequestResult(start_s=0.0, requested_output_tokens=0, output_tokens=0)
        start = time.perf_counter()
        result.start_s = start - origin
        try:
            async with self.session.post(self._url, json=body) as response:
                if response.status != 200:
                    await _failure(result, response)
                else:
                    answer = json.loads(await response.read())
                    result.inputs = len(answer["data"])
                    result.prompt_tokens = (answer.get("usage") or {}).get("prompt_tokens")
        except (TimeoutError, aiohttp.ClientError, ValueError, KeyError, TypeError) as exc:
            _fault(result, exc, "bad_answer")
        result.latency_s = time.perf_counter() - start
        return result


def _fault(result: RequestResult, exc: BaseException, malformed: str) -> None:
    """Record what the network or a malformed answer did to a request."""
    if isinstance(exc, TimeoutError):
        result.error = "timeout"
        return
    kinds = (
        (aiohttp.ClientPayloadError, "dropped"),
        (aiohttp.ClientConnectionError, "connection"),
        (aiohttp.ClientError, "client"),
    )
    kind = next((name for cls, name in kinds if isinstance(exc, cls)), malformed)
    result.error, result.error_detail = kind, str(exc) or type(exc).__name__


async def _failure(result: RequestResult, response: aiohttp.ClientResponse) -> None:
    payload = await response.read()
    code = _error_code(payload)
    result.error = f"http_{response.status}" + (f":{code}" if code else "")
    result.error_detail = payload[:500].decode(errors="replace")


def _has_content(choice: dict[str, Any], chat: bool) -> bool:
    if not chat:
        return bool(choice.get("text"))
    delta = choice.get("delta") or {}
    return bool(delta.get("content") or delta.get("reasoning_content") or delta.get("reasoning"))
