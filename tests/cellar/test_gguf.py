from __future__ import annotations

import os
from pathlib import Path

import pytest

from cellar.gguf import GGUFError, read_metadata
from tests.files import fake_gguf


def test_reads_the_bundled_model_header(bundled_gguf: Path) -> None:
    scalars, arrays = read_metadata(bundled_gguf)
    assert scalars["general.architecture"] == "gemma3"
    assert scalars["gemma3.block_count"] == 18
    assert arrays["tokenizer.ggml.tokens"] == 262144


@pytest.mark.parametrize("payload", [os.urandom(4096), b"\x03\x00\x00\x00" + b"\xff" * 64, b""])
def test_corrupt_headers_are_a_clear_error(tmp_path: Path, payload: bytes) -> None:
    with pytest.raises(GGUFError):
        read_metadata(fake_gguf(tmp_path / "bad.gguf", payload))
