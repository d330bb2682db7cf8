"""Model versions and the tags that point at them.

A model name has versions 1, 2, 3 ... (numbers are never reused), each an immutable artifact
with its own sha256. Tags (`prod`, `staging`, any name) point at versions; `latest` is implicit
and always means the highest version. A reference is `NAME`, `NAME@3`, `NAME@prod`,
`NAME@latest` or `NAME@sha256:<prefix>`; plain `NAME` means the latest version.

Tags and their history live in `<store>/.refs/<NAME>.json`, changed under a file lock and
replaced atomically. Every move records its time, the user, the reason given and both
versions, so `cellar models history` can show who moved `prod` and why; a rollback returns a
tag to the version it held before its last move that was not itself undone.
"""

from __future__ import annotations

import contextlib
import fcntl
import getpass
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from cellar.errors import StoreError

REFS_DIR = ".refs"
LATEST = "latest"
SHA_PREFIX = "sha256:"
MIN_SHA_PREFIX = 8
_TAG = re.compile(r"[A-Za-z][A-Za-z0-9._-]{0,63}")

Action = Literal["add", "tag", "promote", "rollback", "untag", "rollout"]
"""`rollout`: a guarded rollout's decision (a step passed, a rollback); the tag does not move."""


class Move(BaseModel):
    """One change to a model's versions or tags."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    time: datetime
    user: str
    action: Action
    tag: str | None = None
    from_version: int | None = Field(None, alias="from")
    to_version: int | None = Field(None, alias="to")
    sha256: str | None = Field(None, description="The artifact the tag (or new version) is on.")
    why: str = ""

    @staticmethod
    def now() -> datetime:
        return datetime.now(UTC)


class Refs(BaseModel):
    """A model name's tags and their history."""

    model_config = ConfigDict(extra="forbid")

    tags: dict[str, int] = Field(default_factory=dict)
    last_version: int = Field(0, description="The highest version ever made (never reused).")
    history: list[Move] = Field(default_factory=list)


@dataclass(frozen=True)
class Ref:
    """A parsed model reference."""

    name: str
    version: int | None = None
    tag: str | None = None
    sha256: str | None = None

    @property
    def follows(self) -> bool:
        """Whether what it points at can move (a tag, `latest` included)."""
        return self.tag is not None

    def __str__(self) -> str:
        if self.version is not None:
            return f"{self.name}@{self.version}"
        if self.tag is not None:
            return f"{self.name}@{self.tag}"
        if self.sha256 is not None:
            return f"{self.name}@{SHA_PREFIX}{self.sha256}"
        return self.name


def check_tag(tag: str) -> str:
    if not _TAG.fullmatch(tag) or tag == LATEST:
        raise StoreError(
            f"invalid tag {tag!r}: start with a letter; letters, digits, '.', '_', '-'"
            + (" (`latest` is implicit: the highest version)" if tag == LATEST else "")
        )
    return tag


def parse_ref(text: str) -> Ref:
    """`NAME`, `NAME@3`, `NAME@prod`, `NAME@latest` or `NAME@sha256:<prefix>`."""
    name, at, selector = text.partition("@")
    if not at:
        return Ref(name)
    if not name or not selector:
        raise StoreError(f"invalid model reference {text!r}: use NAME, NAME@VERSION or NAME@TAG")
    if selector.isdigit():
        return Ref(name, version=int(selector))
    if selector.startswith(SHA_PREFIX):
        digest = selector.removeprefix(SHA_PREFIX).lower()
        if len(digest) < MIN_SHA_PREFIX or not re.fullmatch(r"[0-9a-f]+", digest):
            raise StoreError(
                f"invalid model reference {text!r}: give at least {MIN_SHA_PREFIX} hex digits "
                "of the sha256"
            )
        return Ref(name, sha256=digest)
    if selector == LATEST:
        return Ref(name, tag=LATEST)
    return Ref(name, tag=check_tag(selector))


def current_user() -> str:
    """Who runs the command (the invoking user under sudo)."""
    if os.environ.get("SUDO_USER"):
        return os.environ["SUDO_USER"]
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return f"uid {os.getuid()}"


class RefBook:
    """The refs files of one store."""

    def __init__(self, store_root: Path) -> None:
        self.dir = store_root / REFS_DIR

    def _path(self, name: str) -> Path:
        return self.dir / f"{name}.json"

    def read(self, name: str) -> Refs:
        path = self._path(name)
        if not path.is_file():
            return Refs()
        try:
            return Refs.model_validate_json(path.read_text(encoding="utf-8"))
        except ValueError as exc:
            raise StoreError(f"{path}: unreadable tags file: {exc}") from None

    @contextlib.contextmanager
    def change(self, name: str) -> Iterator[Refs]:
        """Read, let the caller change, then write atomically; one writer at a time."""
        self.dir.mkdir(parents=True, exist_ok=True)
        with (self.dir / f".{name}.lock").open("w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            refs = self.read(name)
            yield refs
            path = self._path(name)
            staging = path.with_name(f".{path.name}.tmp")
            staging.write_text(refs.model_dump_json(indent=2, by_alias=True), encoding="utf-8")
            os.replace(staging, path)

    def names(self) -> list[str]:
        if not self.dir.is_dir():
            return []
        return sorted(p.stem for p in self.dir.glob("*.json"))


def move(refs: Refs, action: Action, tag: str, to: int, sha256: str, why: str) -> Move:
    """Point `tag` at version `to`, recording the move."""
    entry = Move(
        time=Move.now(),
        user=current_user(),
        action=action,
        tag=tag,
        from_version=refs.tags.get(tag),
        to_version=to,
        sha256=sha256,
        why=why,
    )
    refs.tags[tag] = to
    refs.history.append(entry)
    return entry


def rollback_target(refs: Refs, tag: str) -> int | None:
    """The version `tag` held before its last move not undone by a rollback; None if none."""
    earlier: list[int | None] = []
    for entry in refs.history:
        if entry.tag != tag:
            continue
        if entry.action == "rollback":
            if earlier:
                earlier.pop()
        elif entry.action in ("tag", "promote"):
            earlier.append(entry.from_version)
        elif entry.action == "untag":
            earlier.clear()
    return earlier[-1] if earlier else None


def rollback_targets(refs: Refs) -> set[int]:
    """Every version some tag would roll back to (kept by garbage collection)."""
    found = {rollback_target(refs, tag) for tag in refs.tags}
    return {v for v in found if v is not None}
