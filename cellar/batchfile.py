"""The Batch API's files: the input format (one request per JSONL line) checked line by line,
and the output and error lines, in OpenAI's shapes."""

from __future__ import annotations

import json
import secrets
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import IO, Any

BATCH_ENDPOINTS = ("/v1/chat/completions", "/v1/completions", "/v1/embeddings")
MAX_CUSTOM_ID = 512
MAX_LINE = 4 * 2**20
"""Bytes of one line: a request as large as the gateway takes (limits.max_body's default)."""
MAX_PROBLEMS = 20
"""Problems named in one refusal; the rest are counted."""


@dataclass(frozen=True)
class BatchLine:
    """One request of a batch file."""

    line: int
    custom_id: str
    url: str
    body: str
    """The request's JSON body, as text."""


class BatchFileError(Exception):
    """The file is not a batch file; `problems` name their lines."""

    def __init__(self, problems: list[str], more: int = 0) -> None:
        self.problems = problems
        self.more = more
        tail = f"; and {more} more" if more else ""
        super().__init__("; ".join(problems) + tail)


def _check(number: int, raw: bytes, seen: dict[str, int]) -> BatchLine | str:
    """The line's request, or what is wrong with it."""
    try:
        item = json.loads(raw)
    except (UnicodeDecodeError, ValueError) as exc:
        return f"line {number}: not JSON ({exc})"
    if not isinstance(item, dict):
        return f"line {number}: not a JSON object"
    unknown = sorted(set(item) - {"custom_id", "method", "url", "body"})
    if unknown:
        return f"line {number}: unknown field `{unknown[0]}`"
    custom_id = item.get("custom_id")
    if not isinstance(custom_id, str) or not custom_id:
        return f"line {number}: `custom_id` must be a non-empty string"
    if len(custom_id) > MAX_CUSTOM_ID:
        return f"line {number}: `custom_id` is longer than {MAX_CUSTOM_ID} characters"
    if custom_id in seen:
        return f"line {number}: `custom_id` {custom_id!r} repeats line {seen[custom_id]}"
    if item.get("method") != "POST":
        return f"line {number}: `method` must be POST"
    url = item.get("url")
    if url not in BATCH_ENDPOINTS:
        return f"line {number}: `url` must be one of {', '.join(BATCH_ENDPOINTS)}"
    body = item.get("body")
    if not isinstance(body, dict):
        return f"line {number}: `body` must be a JSON object"
    if body.get("stream"):
        return f"line {number}: `body.stream` is not available in a batch"
    seen[custom_id] = number
    return BatchLine(number, custom_id, url, json.dumps(body, ensure_ascii=False))


@dataclass(frozen=True)
class BatchFileSummary:
    requests: int
    url: str


def check_batch_file(lines: Iterable[bytes], max_requests: int) -> BatchFileSummary:
    """Check every line of a batch file (bodies are not kept); BatchFileError names each bad
    line. Blank lines are skipped."""
    seen: dict[str, int] = {}
    problems: list[str] = []
    url: str | None = None
    count = 0
    for number, raw in enumerate(lines, start=1):
        if not raw.strip():
            continue
        count += 1
        if count > max_requests:
            problems.append(f"the file holds more than {max_requests} requests")
            break
        checked = _check(number, raw, seen)
        if isinstance(checked, str):
            problems.append(checked)
        elif url is not None and checked.url != url:
            problems.append(f"line {number}: `url` {checked.url} differs from the lines before")
        else:
            url = checked.url
    if url is None and not problems:
        problems.append("the file holds no requests")
    if problems or url is None:
        raise BatchFileError(problems[:MAX_PROBLEMS], max(0, len(problems) - MAX_PROBLEMS))
    return BatchFileSummary(count, url)


def batch_lines(lines: Iterable[bytes]) -> Iterator[BatchLine]:
    """The requests of a file check_batch_file passed."""
    seen: dict[str, int] = {}
    for number, raw in enumerate(lines, start=1):
        if raw.strip():
            checked = _check(number, raw, seen)
            if isinstance(checked, str):  # the file changed under us
                raise BatchFileError([checked])
            yield checked


def read_lines(handle: IO[bytes], max_line: int = MAX_LINE) -> Iterator[bytes]:
    """The lines of a file; BatchFileError at a line longer than `max_line` bytes (never read
    whole)."""
    number = 0
    while line := handle.readline(max_line + 1):
        number += 1
        if len(line) > max_line:
            raise BatchFileError([f"line {number} is longer than {max_line} bytes"])
        yield line


def request_id() -> str:
    return f"batch_req_{secrets.token_hex(12)}"


def result_line(custom_id: str, status: int, body: Any) -> str:
    """One line of an output file (a 2xx answer) or an error file (any other)."""
    return json.dumps(
        {
            "id": request_id(),
            "custom_id": custom_id,
            "response": {"status_code": status, "request_id": request_id(), "body": body},
            "error": None,
        },
        ensure_ascii=False,
    )


def failure_line(custom_id: str, code: str, message: str) -> str:
    """One line of an error file for a request that got no answer (expired, cancelled)."""
    return json.dumps(
        {
            "id": request_id(),
            "custom_id": custom_id,
            "response": None,
            "error": {"code": code, "message": message},
        },
        ensure_ascii=False,
    )
