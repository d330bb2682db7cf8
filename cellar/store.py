"""The local model store: checksummed model files, one directory and manifest per model.

Layout: `<root>/<name>/manifest.json` beside the model file. A manifest records the sha256 taken
while the file was imported; `verify` re-hashes the file and a mismatch refuses the model.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

import platformdirs
from pydantic import BaseModel, ConfigDict, Field

from cellar.config import ENV_STORE, CellarConfig
from cellar.errors import IntegrityError, StoreError

MANIFEST = "manifest.json"
GGUF_MAGIC = b"GGUF"
_CHUNK = 4 << 20

Progress = Callable[[int, int], None]
"""Called with (bytes done, bytes total) while a long file operation runs."""


class Manifest(BaseModel):
    """What the store knows about one model."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    format: Literal["gguf"]
    file: str = Field(description="File name inside the model's directory.")
    size: int
    sha256: str
    source: str = Field(description="Where the file was imported from.")
    created: datetime


def default_store_root(env: Mapping[str, str] = os.environ) -> Path:
    """$CELLAR_STORE, else the user's data dir (~/.local/share/cellar/models on Linux)."""
    if env.get(ENV_STORE):
        return Path(env[ENV_STORE])
    return Path(platformdirs.user_data_dir("cellar")) / "models"


def sniff_format(path: Path) -> Literal["gguf"]:
    """The model format of a file, from its magic bytes."""
    with path.open("rb") as handle:
        magic = handle.read(4)
    if magic == GGUF_MAGIC:
        return "gguf"
    raise StoreError(f"{path}: not a GGUF file (it starts with {magic!r}, expected {GGUF_MAGIC!r})")


def sha256_file(path: Path, progress: Progress | None = None) -> str:
    """Hash a file in chunks, reporting progress."""
    digest = hashlib.sha256()
    total = path.stat().st_size
    done = 0
    with path.open("rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
            done += len(chunk)
            if progress:
                progress(done, total)
    return digest.hexdigest()


def _copy_hashing(src: Path, dst: Path, progress: Progress | None) -> str:
    digest = hashlib.sha256()
    total = src.stat().st_size
    done = 0
    with src.open("rb") as reader, dst.open("wb") as writer:
        while chunk := reader.read(_CHUNK):
            digest.update(chunk)
            writer.write(chunk)
            done += len(chunk)
            if progress:
                progress(done, total)
        writer.flush()
        os.fsync(writer.fileno())
    return digest.hexdigest()


@dataclass(frozen=True)
class ImportResult:
    manifest: Manifest
    created: bool
    """False when an identical model was already stored under that name."""


class ModelStore:
    """A directory of models. Safe for one writer; readers never see a half-written model."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def _dir(self, name: str) -> Path:
        if not name or "/" in name or name.startswith(".") or "\\" in name:
            raise StoreError(f"invalid model name {name!r}: use letters, digits, '.', '_', '-'")
        return self.root / name

    def get(self, name: str) -> Manifest:
        """The manifest of `name`, or StoreError naming the store."""
        path = self._dir(name) / MANIFEST
        if not path.is_file():
            raise StoreError(f"no model named {name!r} in the store at {self.root}")
        try:
            return Manifest.model_validate_json(path.read_text(encoding="utf-8"))
        except ValueError as exc:
            raise StoreError(f"{path}: unreadable manifest: {exc}") from None

    def file_of(self, manifest: Manifest) -> Path:
        return self._dir(manifest.name) / manifest.file

    def list(self) -> list[Manifest]:
        if not self.root.is_dir():
            return []
        names = sorted(p.name for p in self.root.iterdir() if (p / MANIFEST).is_file())
        return [self.get(name) for name in names]

    def verify(self, name: str, progress: Progress | None = None) -> Manifest:
        """Re-hash the stored file; IntegrityError if it changed since import."""
        manifest = self.get(name)
        path = self.file_of(manifest)
        if not path.is_file():
            raise IntegrityError(f"model {name!r}: file {path} is missing")
        size = path.stat().st_size
        if size != manifest.size:
            raise IntegrityError(
                f"model {name!r}: {path} is {size} bytes, the manifest says {manifest.size}"
            )
        actual = sha256_file(path, progress)
        if actual != manifest.sha256:
            raise IntegrityError(
                f"model {name!r}: sha256 of {path} is {actual}, the manifest says "
                f"{manifest.sha256}; the file changed after import (re-import it)"
            )
        return manifest

    def import_file(self, src: Path, name: str, progress: Progress | None = None) -> ImportResult:
        """Copy `src` into the store under `name`, hashing as it copies.

        Importing the same bytes under the same name again is a no-op; different bytes under
        a name already taken are refused.
        """
        src = src.resolve()
        if not src.is_file():
            raise StoreError(f"{src}: no such file")
        fmt = sniff_format(src)
        target = self._dir(name)
        existing = self.get(name) if (target / MANIFEST).is_file() else None
        same_size = existing is not None and existing.size == src.stat().st_size
        if existing and same_size and sha256_file(src, progress) == existing.sha256:
            return ImportResult(existing, created=False)
        if existing:
            raise StoreError(
                f"a different model is already stored as {name!r}; choose another --name"
            )
        self.root.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{name}.", dir=self.root))
        try:
            sha = _copy_hashing(src, staging / src.name, progress)
            manifest = Manifest(
                name=name,
                format=fmt,
                file=src.name,
                size=src.stat().st_size,
                sha256=sha,
                source=str(src),
                created=datetime.now(UTC),
            )
            (staging / MANIFEST).write_text(manifest.model_dump_json(indent=2), encoding="utf-8")
            os.rename(staging, target)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        return ImportResult(manifest, created=True)


def store_for(config: CellarConfig) -> ModelStore:
    return ModelStore(config.store.path or default_store_root())
