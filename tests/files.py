"""Small model-like files for tests that need a file, not a model."""

from __future__ import annotations

from pathlib import Path


def fake_gguf(path: Path, payload: bytes = b"\x00" * 64) -> Path:
    """A file with GGUF's magic bytes and `payload` after them: importable, not loadable."""
    path.write_bytes(b"GGUF" + payload)
    return path


def fake_checkpoint(path: Path, weights: bytes = b"\x00" * 32) -> Path:
    """A directory shaped like a Hugging Face checkpoint: importable, not loadable."""
    path.mkdir(parents=True)
    (path / "config.json").write_text('{"dtype": "float32", "max_position_embeddings": 2048}')
    (path / "model.safetensors").write_bytes(weights)
    (path / "tokenizer.json").write_text("{}")
    return path
