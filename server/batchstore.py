"""Files and batches, kept in SQLite (WAL): a batch's requests are rows, and each answer is
written in the same transaction that marks its request done, so a gateway killed at any moment
resumes with every request answered exactly once. File contents live beside the database."""

from __future__ import annotations

import json
import secrets
import sqlite3
import threading
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cellar.batchfile import BatchLine
from cellar.errors import ConfigError

SCHEMA = """
CREATE TABLE IF NOT EXISTS files (
    id TEXT PRIMARY KEY,
    owner TEXT NOT NULL,
    purpose TEXT NOT NULL,
    filename TEXT NOT NULL,
    bytes INTEGER NOT NULL,
    created_at INTEGER NOT NULL,
    expires_at INTEGER
);
CREATE INDEX IF NOT EXISTS files_owner ON files(owner);
CREATE TABLE IF NOT EXISTS batches (
    id TEXT PRIMARY KEY,
    owner TEXT NOT NULL,
    endpoint TEXT NOT NULL,
    input_file_id TEXT NOT NULL,
    completion_window TEXT NOT NULL,
    metadata TEXT,
    status TEXT NOT NULL,
    total INTEGER NOT NULL,
    created_at INTEGER NOT NULL,
    expires_at INTEGER NOT NULL,
    in_progress_at INTEGER,
    finalizing_at INTEGER,
    completed_at INTEGER,
    failed_at INTEGER,
    expired_at INTEGER,
    cancelling_at INTEGER,
    cancelled_at INTEGER,
    output_file_id TEXT,
    error_file_id TEXT,
    errors TEXT
);
CREATE INDEX IF NOT EXISTS batches_owner ON batches(owner);
CREATE TABLE IF NOT EXISTS requests (
    batch_id TEXT NOT NULL,
    line INTEGER NOT NULL,
    custom_id TEXT NOT NULL,
    body TEXT NOT NULL,
    state TEXT NOT NULL DEFAULT 'queued',
    result TEXT,
    PRIMARY KEY (batch_id, line)
);
CREATE INDEX IF NOT EXISTS requests_state ON requests(batch_id, state);
"""

UNFINISHED = ("validating", "in_progress", "finalizing", "cancelling")
TIMES = (
    "in_progress_at",
    "finalizing_at",
    "completed_at",
    "failed_at",
    "expired_at",
    "cancelling_at",
    "cancelled_at",
)


def new_id(prefix: str) -> str:
    return f"{prefix}{secrets.token_hex(12)}"


@dataclass(frozen=True)
class FileRecord:
    id: str
    owner: str
    purpose: str
    filename: str
    bytes: int
    created_at: int
    expires_at: int | None

    def describe(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "object": "file",
            "bytes": self.bytes,
            "created_at": self.created_at,
            "expires_at": self.expires_at,
            "filename": self.filename,
            "purpose": self.purpose,
            "status": "processed",
            "status_details": None,
        }


@dataclass(frozen=True)
class Counts:
    total: int
    completed: int
    failed: int

    @property
    def queued(self) -> int:
        return self.total - self.completed - self.failed


class BatchStore:
    """The database; every method is blocking (call it off the event loop)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.files_dir = root / "files"
        self.files_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        root.chmod(0o700)
        self.files_dir.chmod(0o700)
        path = root / "batches.sqlite3"
        self._db = sqlite3.connect(path, check_same_thread=False)
        self._db.row_factory = sqlite3.Row
        self._lock = threading.Lock()
        try:
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.executescript(SCHEMA)
        except sqlite3.DatabaseError as exc:
            self._db.close()
            raise ConfigError(
                f"{path}: not a usable batches database ({exc}); move it aside to start with "
                "none (batches.dir)"
            ) from None

    def close(self) -> None:
        with self._lock:
            self._db.close()

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        with self._lock, self._db:
            yield self._db

    def _one(self, sql: str, *args: Any) -> sqlite3.Row | None:
        with self._lock:
            row: sqlite3.Row | None = self._db.execute(sql, args).fetchone()
            return row

    def _all(self, sql: str, *args: Any) -> list[sqlite3.Row]:
        with self._lock:
            return self._db.execute(sql, args).fetchall()

    # -- files -------------------------------------------------------------------------------

    def path_of(self, file_id: str) -> Path:
        return self.files_dir / file_id  # ids are made here (new_id), never taken from input

    def add_file(
        self, file_id: str, owner: str, purpose: str, filename: str, size: int, ttl_s: float
    ) -> FileRecord:
        now = int(time.time())
        record = FileRecord(file_id, owner, purpose, filename, size, now, int(now + ttl_s))
        with self._tx() as db:
            db.execute(
                "INSERT INTO files VALUES (?, ?, ?, ?, ?, ?, ?)",
                (file_id, owner, purpose, filename, size, now, record.expires_at),
            )
        return record

    def get_file(self, file_id: str) -> FileRecord | None:
        row = self._one("SELECT * FROM files WHERE id = ?", file_id)
        return FileRecord(**dict(row)) if row is not None else None

    def list_files(
        self, owner: str | None, purpose: str | None, limit: int, after: str | None
    ) -> list[FileRecord]:
        sql, args = "SELECT * FROM files WHERE 1", list[Any]()
        if owner is not None:
            sql, args = sql + " AND owner = ?", [*args, owner]
        if purpose is not None:
            sql, args = sql + " AND purpose = ?", [*args, purpose]
        if after is not None:
            sql += " AND rowid < (SELECT rowid FROM files WHERE id = ?)"
            args.append(after)
        rows = self._all(sql + " ORDER BY rowid DESC LIMIT ?", *args, limit)
        return [FileRecord(**dict(row)) for row in rows]

    def delete_file(self, file_id: str) -> None:
        with self._tx() as db:
            db.execute("DELETE FROM files WHERE id = ?", (file_id,))
        self.path_of(file_id).unlink(missing_ok=True)

    def bytes_of(self, owner: str) -> int:
        row = self._one("SELECT COALESCE(SUM(bytes), 0) FROM files WHERE owner = ?", owner)
        return int(row[0]) if row is not None else 0

    def expired_files(self, now: float) -> list[str]:
        rows = self._all("SELECT id FROM files WHERE expires_at <= ?", int(now))
        return [row[0] for row in rows]

    def strays(self) -> list[Path]:
        """Files on disk the database does not know (an upload cut short by a crash)."""
        known = {row[0] for row in self._all("SELECT id FROM files")}
        return [p for p in self.files_dir.iterdir() if p.name not in known]

    # -- batches ------------------------------------------------------------------------------

    def create_batch(
        self,
        batch_id: str,
        owner: str,
        endpoint: str,
        input_file_id: str,
        window: str,
        window_s: float,
        metadata: dict[str, str] | None,
        lines: Iterable[BatchLine],
    ) -> None:
        now = int(time.time())
        with self._tx() as db:
            db.execute(
                "INSERT INTO batches (id, owner, endpoint, input_file_id, completion_window, "
                "metadata, status, total, created_at, expires_at) "
                "VALUES (?, ?, ?, ?, ?, ?, 'validating', 0, ?, ?)",
                (
                    batch_id,
                    owner,
                    endpoint,
                    input_file_id,
                    window,
                    json.dumps(metadata) if metadata is not None else None,
                    now,
                    now + int(window_s),
                ),
            )
            total = 0
            for item in lines:
                db.execute(
                    "INSERT INTO requests (batch_id, line, custom_id, body) VALUES (?, ?, ?, ?)",
                    (batch_id, item.line, item.custom_id, item.body),
                )
                total += 1
            db.execute(
                "UPDATE batches SET total = ?, status = 'in_progress', in_progress_at = ? "
                "WHERE id = ?",
                (total, now, batch_id),
            )

    def get_batch(self, batch_id: str) -> dict[str, Any] | None:
        row = self._one("SELECT * FROM batches WHERE id = ?", batch_id)
        return dict(row) if row is not None else None

    def list_batches(
        self, owner: str | None, limit: int, after: str | None, unfinished: bool = False
    ) -> list[dict[str, Any]]:
        sql, args = "SELECT * FROM batches WHERE 1", list[Any]()
        if owner is not None:
            sql, args = sql + " AND owner = ?", [owner]
        if unfinished:
            sql += f" AND status IN ({', '.join('?' * len(UNFINISHED))})"
            args += list(UNFINISHED)
        if after is not None:
            sql += " AND rowid < (SELECT rowid FROM batches WHERE id = ?)"
            args.append(after)
        return [dict(r) for r in self._all(sql + " ORDER BY rowid DESC LIMIT ?", *args, limit)]

    def set_status(self, batch_id: str, status: str, **fields: Any) -> None:
        now = int(time.time())
        stamp = f"{status}_at" if f"{status}_at" in TIMES else None
        columns = {"status": status, **fields}
        if stamp is not None:
            columns[stamp] = now
        assignments = ", ".join(f"{name} = ?" for name in columns)  # names from this module
        with self._tx() as db:
            db.execute(
                f"UPDATE batches SET {assignments} WHERE id = ?", (*columns.values(), batch_id)
            )

    def mark_cancelling(self, batch_id: str) -> bool:
        """Whether the batch was unfinished (and is now `cancelling`)."""
        with self._tx() as db:
            cursor = db.execute(
                "UPDATE batches SET status = 'cancelling', cancelling_at = ? "
                "WHERE id = ? AND status IN ('validating', 'in_progress')",
                (int(time.time()), batch_id),
            )
            return cursor.rowcount == 1

    def counts(self, batch_id: str) -> Counts:
        rows = self._all(
            "SELECT state, COUNT(*) FROM requests WHERE batch_id = ? GROUP BY state", batch_id
        )
        by_state = {row[0]: row[1] for row in rows}
        total = sum(by_state.values())
        return Counts(total, by_state.get("done", 0), by_state.get("failed", 0))

    def queued_of(self, owner: str) -> int:
        row = self._one(
            "SELECT COUNT(*) FROM requests r JOIN batches b ON r.batch_id = b.id "
            "WHERE b.owner = ? AND r.state = 'queued'",
            owner,
        )
        return int(row[0]) if row is not None else 0

    def queued(self, batch_id: str, after_line: int, limit: int) -> list[sqlite3.Row]:
        return self._all(
            "SELECT line, custom_id, body FROM requests WHERE batch_id = ? AND state = 'queued' "
            "AND line > ? ORDER BY line LIMIT ?",
            batch_id,
            after_line,
            limit,
        )

    def record(
        self, batch_id: str, line: int, ok: bool, result: str, state: str | None = None
    ) -> bool:
        """Keep one request's answer; False when it was answered already (never twice)."""
        with self._tx() as db:
            cursor = db.execute(
                "UPDATE requests SET state = ?, result = ? "
                "WHERE batch_id = ? AND line = ? AND state = 'queued'",
                (state or ("done" if ok else "failed"), result, batch_id, line),
            )
            return cursor.rowcount == 1

    def unanswered(self, batch_id: str) -> list[sqlite3.Row]:
        return self._all(
            "SELECT line, custom_id FROM requests WHERE batch_id = ? AND state = 'queued'",
            batch_id,
        )

    def results(self, batch_id: str, states: tuple[str, ...]) -> Iterator[str]:
        """The answers in the order of the input file."""
        last = 0
        marks = ", ".join("?" * len(states))
        while True:
            rows = self._all(
                f"SELECT line, result FROM requests WHERE batch_id = ? AND state IN ({marks}) "
                "AND line > ? ORDER BY line LIMIT 1000",
                batch_id,
                *states,
                last,
            )
            if not rows:
                return
            for row in rows:
                yield row[1]
            last = rows[-1][0]

    def finish(
        self,
        batch: dict[str, Any],
        status: str,
        files: dict[str, tuple[str, int]],
        ttl_s: float,
    ) -> None:
        """End a batch: its result files are registered, its status set and its requests'
        texts dropped (the files hold them now), in one transaction."""
        now = int(time.time())
        batch_id = batch["id"]
        with self._tx() as db:
            for kind, (file_id, size) in files.items():
                db.execute(
                    "INSERT INTO files VALUES (?, ?, 'batch_output', ?, ?, ?, ?)",
                    (
                        file_id,
                        batch["owner"],
                        f"{batch_id}_{kind}.jsonl",
                        size,
                        now,
                        int(now + ttl_s),
                    ),
                )
            db.execute(
                f"UPDATE batches SET status = ?, {status}_at = ?, output_file_id = ?, "
                "error_file_id = ? WHERE id = ?",
                (
                    status,
                    now,
                    files.get("output", (None,))[0],
                    files.get("error", (None,))[0],
                    batch_id,
                ),
            )
            db.execute(
                "UPDATE requests SET body = '', result = NULL WHERE batch_id = ?", (batch_id,)
            )
