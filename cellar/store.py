"""The local model store: checksummed models, one directory and manifest per model.

Layout: `<root>/<name>/manifest.json` beside the model's artifact: a GGUF file, or a Hugging Face
checkpoint directory. A manifest records the sha256 taken while the artifact was written (for a
directory: the hash of its sorted file list with each file's own sha256); `verify` re-hashes it
and a mismatch refuses the model. A model made from another (a conversion, a quantization)
records its parent's name and sha256 in `lineage`.
"""

from __future__ import annotations

import builtins
import hashlib
import os
import shutil
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import platformdirs
from pydantic import BaseModel, ConfigDict, Field

from cellar.config import ENV_STORE, CellarConfig
from cellar.errors import IntegrityError, StoreError
from cellar.gguf import GGUFError, read_metadata

MANIFEST = "manifest.json"
STORE_PREFIX = "store:"
"""A config `source` naming a model in the store: `store:NAME`."""
GGUF_MAGIC = b"GGUF"
_CHUNK = 4 << 20

HF_CONFIG = "config.json"
HF_WEIGHTS = ("*.safetensors", "*.bin")

Format = Literal["gguf", "hf", "peft", "gguf-lora"]
"""A model (GGUF file, Hugging Face checkpoint) or a LoRA adapter (PEFT directory, GGUF file)."""
ADAPTER_FORMATS: tuple[Format, ...] = ("peft", "gguf-lora")
PEFT_CONFIG = "adapter_config.json"
Progress = Callable[[int, int], None]
"""Called with (bytes done, bytes total) while a long file operation runs."""


class Lineage(BaseModel):
    """Where a derived model came from."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    parent: str = Field(description="The parent model's name in the store.")
    parent_sha256: str
    method: str = Field(description="How it was made, e.g. gguf-to-hf.")
    parameters: dict[str, Any] = Field(default_factory=dict)
    tools: dict[str, str] = Field(default_factory=dict, description="Tool name -> version.")
    report: dict[str, Any] | None = Field(
        None, description="What was measured when it was made (e.g. perplexity before/after)."
    )


class Manifest(BaseModel):
    """What the store knows about one model."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    format: Format
    file: str = Field(description="File (GGUF) or directory (HF) inside the model's directory.")
    size: int = Field(description="Bytes, all files together.")
    sha256: str
    source: str = Field(description="Where the model was imported from, or what made it.")
    created: datetime
    lineage: Lineage | None = None


def default_store_root(env: Mapping[str, str] = os.environ) -> Path:
    """$CELLAR_STORE, else the user's data dir (~/.local/share/cellar/models on Linux)."""
    if env.get(ENV_STORE):
        return Path(env[ENV_STORE])
    return Path(platformdirs.user_data_dir("cellar")) / "models"


def sniff_format(path: Path) -> Format:
    """The format of a file (magic bytes; a GGUF says whether it is an adapter) or a directory
    (a Hugging Face checkpoint, or a PEFT adapter)."""
    if path.is_dir():
        if (path / PEFT_CONFIG).is_file():
            if not any(path.glob("adapter_model.*")):
                raise StoreError(f"{path}: a PEFT adapter without weights (adapter_model.*)")
            return "peft"
        if not (path / HF_CONFIG).is_file():
            raise StoreError(f"{path}: not a Hugging Face checkpoint (no {HF_CONFIG})")
        if not any(any(path.glob(pattern)) for pattern in HF_WEIGHTS):
            raise StoreError(f"{path}: a Hugging Face checkpoint without weights (*.safetensors)")
        return "hf"
    with path.open("rb") as handle:
        magic = handle.read(4)
    if magic != GGUF_MAGIC:
        raise StoreError(
            f"{path}: not a GGUF file (it starts with {magic!r}, expected {GGUF_MAGIC!r})"
        )
    try:
        kind = read_metadata(path)[0].get("general.type")
    except (GGUFError, OSError):
        kind = None  # a damaged header is reported when the model is loaded
    return "gguf-lora" if kind == "adapter" else "gguf"


def _files(root: Path) -> list[Path]:
    """Every regular file under a directory, in a stable order."""
    return sorted(p for p in root.rglob("*") if p.is_file())


def tree_size(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in _files(path))


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


def _copy_hashing(
    src: Path, dst: Path, progress: Progress | None, done: int = 0, total: int | None = None
) -> str:
    digest = hashlib.sha256()
    total = src.stat().st_size if total is None else total
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


class _Offset:
    """Turns per-file progress into progress over a whole tree."""

    def __init__(self, progress: Progress | None, total: int) -> None:
        self.progress, self.total, self.base = progress, total, 0

    def __call__(self, done: int, _total: int) -> None:
        if self.progress:
            self.progress(self.base + done, self.total)


def _tree_digest(entries: list[tuple[str, str]]) -> str:
    """sha256 of a directory: its relative paths and their sha256s, one line each, sorted."""
    listing = "".join(f"{rel}\0{sha}\n" for rel, sha in sorted(entries))
    return hashlib.sha256(listing.encode()).hexdigest()


def sha256_tree(path: Path, progress: Progress | None = None) -> str:
    """sha256 of a file, or of a directory (see _tree_digest)."""
    if path.is_file():
        return sha256_file(path, progress)
    offset = _Offset(progress, tree_size(path))
    entries = []
    for file in _files(path):
        entries.append((file.relative_to(path).as_posix(), sha256_file(file, offset)))
        offset.base += file.stat().st_size
    return _tree_digest(entries)


def _copy_tree_hashing(src: Path, dst: Path, progress: Progress | None) -> str:
    if src.is_file():
        return _copy_hashing(src, dst, progress)
    offset = _Offset(progress, tree_size(src))
    entries = []
    for file in _files(src):
        rel = file.relative_to(src)
        (dst / rel).parent.mkdir(parents=True, exist_ok=True)
        entries.append((rel.as_posix(), _copy_hashing(file, dst / rel, offset)))
        offset.base += file.stat().st_size
    return _tree_digest(entries)


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
        names = sorted(
            p.name
            for p in self.root.iterdir()
            if not p.name.startswith(".") and (p / MANIFEST).is_file()
        )
        return [self.get(name) for name in names]

    def verify(self, name: str, progress: Progress | None = None) -> Manifest:
        """Re-hash the stored model; IntegrityError if it changed since import."""
        manifest = self.get(name)
        path = self.file_of(manifest)
        if not path.exists():
            raise IntegrityError(f"model {name!r}: {path} is missing")
        size = tree_size(path)
        if size != manifest.size:
            raise IntegrityError(
                f"model {name!r}: {path} is {size} bytes, the manifest says {manifest.size}"
            )
        actual = sha256_tree(path, progress)
        if actual != manifest.sha256:
            raise IntegrityError(
                f"model {name!r}: sha256 of {path} is {actual}, the manifest says "
                f"{manifest.sha256}; the file changed after import (re-import it)"
            )
        return manifest

    def import_file(self, src: Path, name: str, progress: Progress | None = None) -> ImportResult:
        """Copy `src` (a GGUF file or an HF checkpoint directory) into the store under `name`,
        hashing as it copies.

        Importing the same bytes under the same name again is a no-op; different bytes under
        a name already taken are refused.
        """
        src = src.resolve()
        if not src.exists():
            raise StoreError(f"{src}: no such file or directory")
        fmt = sniff_format(src)
        target = self._dir(name)
        existing = self.get(name) if (target / MANIFEST).is_file() else None
        same_size = existing is not None and existing.size == tree_size(src)
        if existing and same_size and sha256_tree(src, progress) == existing.sha256:
            return ImportResult(existing, created=False)
        if existing:
            raise StoreError(
                f"a different model is already stored as {name!r}; choose another --name"
            )
        manifest = self.add(
            name,
            src.name,
            lambda dst: _copy_tree_hashing(src, dst, progress),
            fmt=fmt,
            source=str(src),
        )
        return ImportResult(manifest, created=True)

    def add(
        self,
        name: str,
        artifact: str,
        build: Callable[[Path], str | None],
        *,
        fmt: Format,
        source: str,
        lineage: Lineage | Callable[[Path], Lineage] | None = None,
    ) -> Manifest:
        """Store a new model whose artifact `build` writes at the path it is given.

        `build` may return the artifact's sha256 (when it hashed while writing); otherwise it
        is hashed afterwards. `build` may also write files beside the artifact (a report, a
        log); they are stored with it. `lineage` may be a function of the built artifact.
        Nothing is visible under `name` until it is complete: the model is built in a hidden
        staging directory, then renamed into place. A failure or Ctrl-C leaves nothing behind.
        """
        target = self._dir(name)
        if target.exists():
            raise StoreError(f"a model is already stored as {name!r}; choose another --name")
        self.root.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{name}.", dir=self.root))
        try:
            path = staging / artifact
            if fmt == "hf":
                path.mkdir()
            sha = build(path) or sha256_tree(path)
            if callable(lineage):
                lineage = lineage(path)
            manifest = Manifest(
                name=name,
                format=fmt,
                file=artifact,
                size=tree_size(path),
                sha256=sha,
                source=source,
                created=datetime.now(UTC),
                lineage=lineage,
            )
            (staging / MANIFEST).write_text(manifest.model_dump_json(indent=2), encoding="utf-8")
            os.rename(staging, target)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        return manifest

    def children(self, sha256: str) -> builtins.list[Manifest]:
        """Models made from the model with this sha256 (by their lineage)."""
        return [m for m in self.list() if m.lineage and m.lineage.parent_sha256 == sha256]

    def find_sha(self, sha256: str) -> Manifest | None:
        return next((m for m in self.list() if m.sha256 == sha256), None)

    def chain(self, name: str) -> builtins.list[dict[str, str]]:
        """The model and its ancestors by lineage, back to the file the first was imported
        from: [{name, sha256, made_by}, ..., {source}]."""
        manifest: Manifest | None = self.get(name)
        steps: builtins.list[dict[str, str]] = []
        seen: set[str] = set()
        while manifest is not None and manifest.sha256 not in seen:
            seen.add(manifest.sha256)
            lineage = manifest.lineage
            made_by = lineage.method if lineage else "import"
            steps.append({"name": manifest.name, "sha256": manifest.sha256, "made_by": made_by})
            if lineage is None:
                steps.append({"source": manifest.source})
                break
            manifest = self.find_sha(lineage.parent_sha256)
            if manifest is None:
                steps.append({"missing_parent": f"{lineage.parent} ({lineage.parent_sha256})"})
        return steps


def store_for(config: CellarConfig) -> ModelStore:
    return ModelStore(config.store.path or default_store_root())
