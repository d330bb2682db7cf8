"""The audit log's writer: lines go to a bounded queue, a thread appends them to the file.

The writer never gives up. When the disk refuses a line (full, a failed open or rotation), the
line is dropped and counted, the file is closed, and the next line tries again (at most once per
RETRY_S, so a full disk does not spin). Lines that find the queue full are dropped and counted
too, so a stuck disk never grows the gateway's memory. `dropped` and `error` are shown on
/health/ready, /admin/system and in `cellar:audit_lines_dropped_total`. Files are created 0600:
with `audit.log_content` they hold prompts.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import queue
import stat
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cellar.auditlog import rotated_files
from cellar.config_access import AuditSettings

log = logging.getLogger("cellar.audit")

QUEUE_LINES = 10_000
"""Lines that may wait for the disk; beyond them, lines are dropped (and counted)."""
RETRY_S = 1.0
"""After a failure, the least time before the file is opened again."""


class AuditLog:
    """Appends lines from a background thread; rotates by size and age."""

    def __init__(self, settings: AuditSettings, path: Path, queue_lines: int = QUEUE_LINES) -> None:
        self.settings = settings
        self.path = path
        self.dropped = 0
        """Lines lost since the gateway started (disk refused them, or the queue was full)."""
        self.error: str | None = None
        """Why the last line was lost, while the writer cannot write; None when it can."""
        self._queue: queue.Queue[dict[str, Any] | None] = queue.Queue(maxsize=queue_lines)
        self._count = threading.Lock()
        self._failed_at = 0.0
        path.parent.mkdir(parents=True, exist_ok=True)
        self._opened = self._age_origin()
        self._thread = threading.Thread(target=self._run, name="audit-writer", daemon=True)
        self._thread.start()

    def _age_origin(self) -> float:
        try:
            if not self.path.is_file():  # missing, or not a file to read a first line from
                return time.time()
            with self.path.open("rb") as handle:
                first = handle.readline(1 << 16)
            return datetime.fromisoformat(json.loads(first)["time"]).timestamp()
        except (OSError, ValueError, KeyError):
            return time.time()

    def write(self, line: dict[str, Any]) -> None:
        """Never blocks: a line the queue has no room for is dropped and counted."""
        try:
            self._queue.put_nowait(line)
        except queue.Full:
            self._drop("the queue is full: the disk does not keep up or refuses writes")

    def close(self) -> None:
        try:
            self._queue.put(None, timeout=5)
        except queue.Full:
            log.error(
                "audit log %s: closing with %d lines unwritten", self.path, self._queue.qsize()
            )
            return
        self._thread.join(timeout=10)

    def _drop(self, why: str) -> None:
        with self._count:
            self.dropped += 1
            first = self.error is None
            self.error = why
        if first:
            log.error("audit log %s: %s; audit lines are being lost", self.path, why)

    def _run(self) -> None:
        fd: int | None = None
        try:
            while (line := self._queue.get()) is not None:
                if fd is None and time.monotonic() - self._failed_at < RETRY_S:
                    self._drop(self.error or "the file cannot be written")
                    continue
                try:
                    fd = self._append(fd, line)
                except OSError as exc:
                    _close(fd)
                    fd = None
                    self._failed_at = time.monotonic()
                    self._drop(f"{exc.strerror or exc}")
                    continue
                if self.error is not None:
                    log.warning(
                        "audit log %s: writing again (%d lines lost)", self.path, self.dropped
                    )
                    with self._count:
                        self.error = None
        finally:
            _close(fd)

    def _append(self, fd: int | None, line: dict[str, Any]) -> int:
        """Write one line with one unbuffered write: it reaches the file, or raises."""
        if fd is None:
            fd = self._open()
        if self._due(os.fstat(fd).st_size):
            _close(fd)
            fd = self._rotate_and_open()
        data = (json.dumps(line, ensure_ascii=False, default=str) + "\n").encode()
        while data:
            data = data[os.write(fd, data) :]
        return fd

    def _open(self) -> int:
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        if stat.S_ISREG(os.fstat(fd).st_mode):
            os.fchmod(fd, 0o600)  # a file created before Cellar made them private
        return fd

    def _due(self, size: int) -> bool:
        if size == 0:
            self._opened = time.time()
            return False
        too_old = time.time() - self._opened >= self.settings.max_age
        return size >= self.settings.max_bytes or too_old

    def _rotate_and_open(self) -> int:
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S%f")
        self.path.rename(self.path.with_name(f"{self.path.stem}-{stamp}{self.path.suffix}"))
        self._opened = time.time()
        rotated = sorted(p for p in rotated_files(self.path) if p != self.path)
        for old in rotated[: max(0, len(rotated) - self.settings.keep)]:
            old.unlink(missing_ok=True)
        return self._open()


def _close(fd: int | None) -> None:
    if fd is not None:
        with contextlib.suppress(OSError):
            os.close(fd)
