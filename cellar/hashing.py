"""sha256 of files and directory trees, and copies that hash as they write.

A directory's digest is the sha256 of its sorted file list, one `path\\0sha256` line per file,
so it does not depend on the order a file system lists them in.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from pathlib import Path

_CHUNK = 4 << 20
Progress = Callable[[int, int], None]
"""Called with (bytes done, bytes total) while a long file operation runs."""


def files_under(root: Path) -> list[Path]:
    """Every regular file under a directory, in a stable order."""
    return sorted(p for p in root.rglob("*") if p.is_file())


def tree_size(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in files_under(path))


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
    total, done = src.stat().st_size, 0
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
    listing = "".join(f"{rel}\0{sha}\n" for rel, sha in sorted(entries))
    return hashlib.sha256(listing.encode()).hexdigest()


def sha256_tree(path: Path, progress: Progress | None = None) -> str:
    """sha256 of a file, or of a directory (see the module docstring)."""
    if path.is_file():
        return sha256_file(path, progress)
    offset = _Offset(progress, tree_size(path))
    entries = []
    for file in files_under(path):
        entries.append((file.relative_to(path).as_posix(), sha256_file(file, offset)))
        offset.base += file.stat().st_size
    return _tree_digest(entries)


def copy_tree_hashing(src: Path, dst: Path, progress: Progress | None = None) -> str:
    """Copy a file or a directory to `dst` (fsynced), returning its sha256_tree."""
    if src.is_file():
        return _copy_hashing(src, dst, progress)
    offset = _Offset(progress, tree_size(src))
    entries = []
    for file in files_under(src):
        rel = file.relative_to(src)
        (dst / rel).parent.mkdir(parents=True, exist_ok=True)
        entries.append((rel.as_posix(), _copy_hashing(file, dst / rel, offset)))
        offset.base += file.stat().st_size
    return _tree_digest(entries)
