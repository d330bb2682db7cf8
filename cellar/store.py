"""The local model store: checksummed, immutable models, each name with numbered versions.

Layout: `<root>/<name>/manifest.json` (version 1; version N in `<root>/<name>@N/`) beside the
model's artifact: a GGUF file, a Hugging Face checkpoint directory or a LoRA adapter. A manifest
records the sha256 taken while the artifact was written (for a directory: the hash of its sorted
file list with each file's own sha256); `verify` re-hashes it and a mismatch refuses the model.
A model made from another (a conversion, a quantization) records its parent's name and sha256
in `lineage`. Tags and their history live in `<root>/.refs/` (see cellar.versions).
"""

from __future__ import annotations

import builtins
import glob
import os
import shutil
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import platformdirs
from pydantic import BaseModel, ConfigDict, Field, field_validator

from cellar.config import ENV_STORE, CellarConfig
from cellar.errors import IntegrityError, StoreError
from cellar.gguf import GGUFError, read_metadata
from cellar.hashing import Progress, copy_tree_hashing, sha256_tree, tree_size
from cellar.versions import LATEST, Move, RefBook, current_user, parse_ref

MANIFEST = "manifest.json"
STORE_PREFIX = "store:"
"""A config `source` naming a model in the store: `store:NAME`."""
GGUF_MAGIC = b"GGUF"

HF_CONFIG = "config.json"
HF_WEIGHTS = ("*.safetensors", "*.bin")

Format = Literal["gguf", "hf", "peft", "gguf-lora"]
"""A model (GGUF file, Hugging Face checkpoint) or a LoRA adapter (PEFT directory, GGUF file)."""
ADAPTER_FORMATS: tuple[Format, ...] = ("peft", "gguf-lora")
PEFT_CONFIG = "adapter_config.json"


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
    previous: str | None = Field(
        None,
        description="The version of the same name this one follows when it was made again "
        "(a weekly retrain, a new quantization): NAME@K.",
    )


class Manifest(BaseModel):
    """What the store knows about one model."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    version: int = Field(1, ge=1, description="Numbered from 1 per name; never reused.")
    format: Format
    file: str = Field(description="File (GGUF) or directory (HF) inside the model's directory.")

    @field_validator("file")
    @classmethod
    def _plain_file(cls, value: str) -> str:
        try:
            return plain_name(value, "artifact name")
        except StoreError as exc:
            raise ValueError(str(exc)) from None

    size: int = Field(description="Bytes, all files together.")
    sha256: str
    source: str = Field(description="Where the model was imported from, or what made it.")
    created: datetime
    lineage: Lineage | None = None

    @property
    def label(self) -> str:
        """`NAME@VERSION`."""
        return f"{self.name}@{self.version}"


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


@dataclass(frozen=True)
class ImportResult:
    manifest: Manifest
    created: bool
    """False when identical bytes were already stored under that name (as any version)."""


def plain_name(name: str, what: str) -> str:
    """`name` when it is one plain path component (no separator, not `.`/`..`, no NUL): a
    name taken from input that must stay inside the directory it is joined to."""
    if not name or name in (".", "..") or any(c in name for c in "/\\\0"):
        raise StoreError(f"invalid {what} {name!r}: it must be a single plain file name")
    return name


def check_name(name: str) -> str:
    if not name or name.startswith(".") or any(c in name for c in "/\\@"):
        raise StoreError(f"invalid model name {name!r}: use letters, digits, '.', '_', '-'")
    return name


class ModelStore:
    """A directory of models, each name with numbered versions. Safe for concurrent writers
    (a new version is numbered under a lock); readers never see a half-written model.

    Version 1 of NAME lives in `<root>/NAME/`, version N in `<root>/NAME@N/`.
    """

    def __init__(self, root: Path) -> None:
        self.root = root
        self.refs = RefBook(root)

    def _dir(self, name: str, version: int = 1) -> Path:
        check_name(name)
        return self.root / (name if version == 1 else f"{name}@{version}")

    def _read(self, path: Path) -> Manifest:
        try:
            return Manifest.model_validate_json(path.read_text(encoding="utf-8"))
        except ValueError as exc:
            raise StoreError(f"{path}: unreadable manifest: {exc}") from None

    def versions(self, name: str) -> builtins.list[Manifest]:
        """Every stored version of `name`, oldest first."""
        check_name(name)
        if not self.root.is_dir():
            return []
        dirs = [self.root / name, *self.root.glob(f"{glob.escape(name)}@*")]
        found = [self._read(d / MANIFEST) for d in dirs if (d / MANIFEST).is_file()]
        return sorted((m for m in found if m.name == name), key=lambda m: m.version)

    def get(self, ref: str) -> Manifest:
        """The manifest a reference names (see cellar.versions), or StoreError saying why."""
        parsed = parse_ref(ref)
        versions = self.versions(parsed.name)
        if not versions:
            raise StoreError(f"no model named {parsed.name!r} in the store at {self.root}")
        if parsed.tag == LATEST or (
            parsed.tag is None and parsed.version is None and parsed.sha256 is None
        ):
            return versions[-1]
        if parsed.sha256 is not None:
            matches = [m for m in versions if m.sha256.startswith(parsed.sha256)]
            if len(matches) != 1:
                what = "no version" if not matches else f"{len(matches)} versions"
                raise StoreError(f"{what} of {parsed.name!r} with sha256 {parsed.sha256}…")
            return matches[0]
        number = parsed.version
        if parsed.tag is not None:
            tags = self.refs.read(parsed.name).tags
            if parsed.tag not in tags:
                known = ", ".join(sorted(tags)) or "none"
                raise StoreError(f"model {parsed.name!r} has no tag {parsed.tag!r} (tags: {known})")
            number = tags[parsed.tag]
        for manifest in versions:
            if manifest.version == number:
                return manifest
        have = ", ".join(str(m.version) for m in versions)
        via = f" (tag {parsed.tag!r})" if parsed.tag else ""
        raise StoreError(f"model {parsed.name!r} has no version {number}{via}; it has {have}")

    def next_of(self, name: str, fmt: Format) -> Manifest | None:
        """Before a tool makes a new version of `name`: the latest version it follows (None for
        a new name), or StoreError when `name` holds another kind of model."""
        existing = self.versions(name)
        if existing and existing[-1].format != fmt:
            raise StoreError(
                f"{name!r} is stored as a {existing[-1].format} model, and this makes a {fmt} "
                "one; a new version keeps its name's kind: choose another name"
            )
        return existing[-1] if existing else None

    def file_of(self, manifest: Manifest) -> Path:
        return self._dir(manifest.name, manifest.version) / manifest.file

    def dir_of(self, manifest: Manifest) -> Path:
        """The directory holding the artifact, its manifest and what was stored beside it."""
        return self._dir(manifest.name, manifest.version)

    def list(self) -> builtins.list[Manifest]:
        """Every version of every model, by name then version."""
        if not self.root.is_dir():
            return []
        found = [
            self._read(p / MANIFEST)
            for p in self.root.iterdir()
            if not p.name.startswith(".") and (p / MANIFEST).is_file()
        ]
        return sorted(found, key=lambda m: (m.name, m.version))

    def names(self) -> builtins.list[str]:
        return sorted({m.name for m in self.list()})

    def verify(self, ref: str, progress: Progress | None = None) -> Manifest:
        """Re-hash a stored model; IntegrityError if it changed since import."""
        return self.verify_manifest(self.get(ref), progress)

    def verify_manifest(self, manifest: Manifest, progress: Progress | None = None) -> Manifest:
        label = manifest.label
        path = self.file_of(manifest)
        if not path.exists():
            raise IntegrityError(f"model {label}: {path} is missing")
        size = tree_size(path)
        if size != manifest.size:
            raise IntegrityError(
                f"model {label}: {path} is {size} bytes, the manifest says {manifest.size}"
            )
        actual = sha256_tree(path, progress)
        if actual != manifest.sha256:
            raise IntegrityError(
                f"model {label}: sha256 of {path} is {actual}, the manifest says "
                f"{manifest.sha256}; the file changed after import (re-import it)"
            )
        return manifest

    def import_file(
        self, src: Path, name: str, progress: Progress | None = None, why: str = ""
    ) -> ImportResult:
        """Copy `src` (a GGUF file or an HF checkpoint directory) into the store as the next
        version of `name`, hashing as it copies.

        Bytes identical to a version already stored under that name are not stored twice:
        that version is returned with created=False.
        """
        src = src.resolve()
        if not src.exists():
            raise StoreError(f"{src}: no such file or directory")
        fmt = sniff_format(src)
        versions = self.versions(name)
        size = tree_size(src)
        if any(m.size == size for m in versions):
            digest = sha256_tree(src, progress)
            for existing in versions:
                if existing.sha256 == digest:
                    return ImportResult(existing, created=False)
        manifest = self.add(
            name,
            src.name,
            lambda dst: copy_tree_hashing(src, dst, progress),
            fmt=fmt,
            source=str(src),
            why=why,
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
        why: str = "",
    ) -> Manifest:
        """Store a new version of `name` (version 1 for a new name) whose artifact `build`
        writes at the path it is given.

        `build` may return the artifact's sha256 (when it hashed while writing); otherwise it
        is hashed afterwards. `build` may also write files beside the artifact (a report, a
        log); they are stored with it. `lineage` may be a function of the built artifact.
        Nothing is visible until it is complete: the model is built in a hidden staging
        directory, then renamed into place. A failure or Ctrl-C leaves nothing behind.
        """
        check_name(name)
        plain_name(artifact, "artifact name")  # the last line of defence for every caller
        self.root.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{name}.", dir=self.root))
        try:
            path = staging / artifact
            if fmt == "hf":
                path.mkdir()
            sha = build(path) or sha256_tree(path)
            if callable(lineage):
                lineage = lineage(path)
            with self.refs.change(name) as refs:
                existing = self.versions(name)
                version = max([refs.last_version, *(m.version for m in existing)]) + 1
                manifest = Manifest(
                    name=name,
                    version=version,
                    format=fmt,
                    file=artifact,
                    size=tree_size(path),
                    sha256=sha,
                    source=source,
                    created=datetime.now(UTC),
                    lineage=lineage,
                )
                text = manifest.model_dump_json(indent=2)
                (staging / MANIFEST).write_text(text, encoding="utf-8")
                os.rename(staging, self._dir(name, version))
                refs.last_version = version
                refs.history.append(
                    Move(
                        time=manifest.created,
                        user=current_user(),
                        action="add",
                        to_version=version,
                        sha256=sha,
                        why=why,
                    )
                )
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        return manifest

    def remove(self, manifest: Manifest) -> None:
        """Delete one version (garbage collection): it vanishes at once, then is freed."""
        target = self.dir_of(manifest)
        for leftover in self.root.glob(".removing.*"):  # from a removal cut short
            shutil.rmtree(leftover, ignore_errors=True)
        doomed = Path(tempfile.mkdtemp(prefix=f".removing.{target.name}.", dir=self.root))
        os.rename(target, doomed / target.name)
        shutil.rmtree(doomed)

    def children(self, sha256: str) -> builtins.list[Manifest]:
        """Models made from the model with this sha256 (by their lineage)."""
        return [m for m in self.list() if m.lineage and m.lineage.parent_sha256 == sha256]

    def find_sha(self, sha256: str) -> Manifest | None:
        return next((m for m in self.list() if m.sha256 == sha256), None)

    def chain(self, ref: str) -> builtins.list[dict[str, str]]:
        """The model and its ancestors by lineage, back to the file the first was imported
        from: [{name, sha256, made_by}, ..., {source}]."""
        manifest: Manifest | None = self.get(ref)
        steps: builtins.list[dict[str, str]] = []
        seen: set[str] = set()
        while manifest is not None and manifest.sha256 not in seen:
            seen.add(manifest.sha256)
            lineage = manifest.lineage
            made_by = lineage.method if lineage else "import"
            steps.append(
                {
                    "name": manifest.name,
                    "version": str(manifest.version),
                    "sha256": manifest.sha256,
                    "made_by": made_by,
                }
            )
            if lineage is None:
                steps.append({"source": manifest.source})
                break
            manifest = self.find_sha(lineage.parent_sha256)
            if manifest is None:
                steps.append({"missing_parent": f"{lineage.parent} ({lineage.parent_sha256})"})
        return steps


def store_for(config: CellarConfig) -> ModelStore:
    return ModelStore(config.store.path or default_store_root())
