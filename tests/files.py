"""Small model-like files for tests that need a file, not a model."""

from __future__ import annotations

from pathlib import Path


def fake_gguf(path: Path, payload: bytes = b"\x00" * 64) -> Path:
    """A file with GGUF's magic bytes and `payload` after them: importable, not loadable."""
    path.write_bytes(b"GGUF" + payload)
    return path
