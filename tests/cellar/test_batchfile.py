"""The batch input format, line by line (the API runs it in tests/server/test_batch_api.py)."""

from __future__ import annotations

import io
import json

import pytest

from cellar.batchfile import BatchFileError, batch_lines, check_batch_file, read_lines


def line(custom_id: str, **fields: object) -> bytes:
    item = {"custom_id": custom_id, "method": "POST", "url": "/v1/embeddings", "body": {}}
    return json.dumps({**item, **fields}).encode() + b"\n"


def test_a_good_file_is_summed_up_and_read_back_with_its_line_numbers() -> None:
    data = line("a") + b"\n" + line("b", body={"input": "x"})
    summary = check_batch_file(read_lines(io.BytesIO(data)), max_requests=10)
    assert (summary.requests, summary.url) == (2, "/v1/embeddings")
    read = list(batch_lines(read_lines(io.BytesIO(data))))
    assert [(r.line, r.custom_id, json.loads(r.body)) for r in read] == [
        (1, "a", {}),
        (3, "b", {"input": "x"}),
    ]


def test_every_bad_line_is_named_and_a_long_line_is_never_read_whole() -> None:
    bad = b"".join(line(f"x{i}", method="GET") for i in range(30))
    with pytest.raises(BatchFileError) as caught:
        check_batch_file(read_lines(io.BytesIO(bad)), max_requests=100)
    assert len(caught.value.problems) == 20 and caught.value.more == 10
    assert str(caught.value).startswith("line 1: `method` must be POST; line 2:")
    long = line("a") + b'{"custom_id": "' + b"y" * 5000 + b'"}\n'
    with pytest.raises(BatchFileError, match="line 2 is longer than 1024 bytes"):
        check_batch_file(read_lines(io.BytesIO(long), max_line=1024), max_requests=100)
    with pytest.raises(BatchFileError, match=r"`body\.stream`"):
        check_batch_file(read_lines(io.BytesIO(line("a", body={"stream": True}))), 10)
    with pytest.raises(BatchFileError, match="unknown field `extra`"):
        check_batch_file(read_lines(io.BytesIO(line("a", extra=1))), 10)
