"""Runs batches in the gateway: each request goes through the gateway's own app, in-process, as
its owner's key and at the batch priority, so keys, models, limits, audit and metrics apply as
to any request, and the admission queue gives it only the slots interactive callers leave.

A request's answer is kept in the database as it arrives (server/batchstore.py); a batch killed
at any point resumes on the next start with only its unanswered requests. When every request is
answered (or the batch is cancelled or expires), the answers become its output and error files.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx
from starlette.types import ASGIApp, Receive, Scope, Send

from cellar.batchfile import failure_line, result_line
from cellar.config_access import BatchSettings
from cellar.server.auth import BATCH_SCOPE, Authenticator, OnBehalf
from cellar.server.batchstore import BatchStore, new_id
from cellar.server.metrics import Metrics

log = logging.getLogger("cellar.batches")

WINDOWS = {"24h": 86400}
"""The completion windows a batch may ask for (OpenAI's)."""
RETRIES = 3
"""Times a request is sent again after its model was unavailable (5xx other than a timeout)."""
SWEEP_S = 60.0


class Batches:
    def __init__(
        self,
        settings: BatchSettings,
        root: Path,
        auth: Authenticator,
        metrics: Metrics,
        audit: Callable[[dict[str, Any]], None] | None = None,
    ) -> None:
        self.settings = settings
        self.store = BatchStore(root)
        self._auth = auth
        self._metrics = metrics
        self._audit = audit
        self._app: ASGIApp | None = None
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._cancelled: set[str] = set()
        self._running: dict[str, int] = {}
        self._sweeper: asyncio.Task[None] | None = None

    # -- life --------------------------------------------------------------------------------

    async def start(self, app: ASGIApp) -> None:
        """Resume the batches a previous run left unfinished; delete expired files."""
        self._app = app
        for stray in await asyncio.to_thread(self.store.strays):
            stray.unlink(missing_ok=True)  # an upload or result file a crash cut short
        for batch in await asyncio.to_thread(self.store.list_batches, None, 1_000_000, None, True):
            log.info("batch %s: resuming (%s)", batch["id"], batch["status"])
            if batch["status"] == "cancelling":
                self._cancelled.add(batch["id"])
            self.run(batch["id"])
        self._sweeper = asyncio.create_task(self._sweep())

    async def stop(self) -> None:
        """Stop sending; requests in flight are cancelled and stay unanswered, for the next
        start."""
        tasks = [*self._tasks.values(), *([self._sweeper] if self._sweeper else [])]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self.store.close()

    async def _sweep(self) -> None:
        while True:
            for file_id in await asyncio.to_thread(self.store.expired_files, time.time()):
                await asyncio.to_thread(self.store.delete_file, file_id)
                log.info("file %s expired and was deleted", file_id)
            await self.refresh_metrics()
            await asyncio.sleep(min(SWEEP_S, self.settings.file_ttl / 2))

    async def refresh_metrics(self) -> None:
        unfinished = await asyncio.to_thread(self.store.list_batches, None, 1_000_000, None, True)
        queued = 0
        oldest: float | None = None
        for batch in unfinished:
            counts = await asyncio.to_thread(self.store.counts, batch["id"])
            waiting = counts.queued - self._running.get(batch["id"], 0)
            queued += max(0, waiting)
            if waiting > 0:
                oldest = min(oldest or batch["created_at"], batch["created_at"])
        priority = str(self.settings.priority)
        self._metrics.batch_requests.labels(priority, "queued").set(queued)
        self._metrics.batch_requests.labels(priority, "running").set(sum(self._running.values()))
        age = time.time() - oldest if oldest is not None else 0.0
        self._metrics.batch_oldest_age.set(age)

    # -- control -------------------------------------------------------------------------------

    def run(self, batch_id: str) -> None:
        if batch_id not in self._tasks:
            self._tasks[batch_id] = asyncio.create_task(self._run(batch_id))

    async def cancel(self, batch_id: str) -> bool:
        """No new request of the batch starts; it ends as cancelled once those in flight end.
        False when it had ended already."""
        if not await asyncio.to_thread(self.store.mark_cancelling, batch_id):
            return False
        self._cancelled.add(batch_id)
        return True

    def running_requests(self, batch_id: str) -> int:
        return self._running.get(batch_id, 0)

    # -- running -----------------------------------------------------------------------------

    async def _run(self, batch_id: str) -> None:
        try:
            await self._send_all(batch_id)
            await self._finish(batch_id)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("batch %s failed", batch_id)
            await asyncio.to_thread(
                self.store.set_status,
                batch_id,
                "failed",
                errors=json.dumps({"object": "list", "data": [_error("server_error")]}),
            )
        finally:
            self._tasks.pop(batch_id, None)
            self._running.pop(batch_id, None)

    async def _send_all(self, batch_id: str) -> None:
        batch = await asyncio.to_thread(self.store.get_batch, batch_id)
        assert batch is not None
        slots = asyncio.Semaphore(self.settings.in_flight)
        pending: set[asyncio.Task[None]] = set()
        last = 0
        async with self._client(batch) as client:
            while not self._stopping(batch):
                rows = await asyncio.to_thread(self.store.queued, batch_id, last, 256)
                if not rows:
                    break
                for row in rows:
                    await slots.acquire()
                    if self._stopping(batch):
                        slots.release()
                        break
                    last = row["line"]
                    task = asyncio.create_task(self._one(client, batch, row, slots))
                    pending.add(task)
                    task.add_done_callback(pending.discard)
            await asyncio.gather(*pending)

    def _stopping(self, batch: dict[str, Any]) -> bool:
        return batch["id"] in self._cancelled or time.time() >= batch["expires_at"]

    @contextlib.asynccontextmanager
    async def _client(self, batch: dict[str, Any]) -> AsyncIterator[httpx.AsyncClient]:
        app = self._app
        assert app is not None
        owner, batch_id, priority = batch["owner"], batch["id"], self.settings.priority
        auth = self._auth

        async def as_owner(scope: Scope, receive: Receive, send: Send) -> None:
            principal = auth.principal_of(None if owner == "-" else owner)
            if principal is None:  # revoked or expired since: refused like its own requests
                await app(scope, receive, send)
                return
            await app(
                {**scope, BATCH_SCOPE: OnBehalf(principal, batch_id, priority)}, receive, send
            )

        # an error inside the app is its 500 answer, filed for that line, not the batch's end
        transport = httpx.ASGITransport(
            app=as_owner, raise_app_exceptions=False, client=("127.0.0.1", 0)
        )
        async with httpx.AsyncClient(
            transport=transport, base_url="http://127.0.0.1", timeout=None
        ) as client:
            yield client

    async def _one(
        self,
        client: httpx.AsyncClient,
        batch: dict[str, Any],
        row: Any,
        slots: asyncio.Semaphore,
    ) -> None:
        batch_id = batch["id"]
        self._running[batch_id] = self._running.get(batch_id, 0) + 1
        try:
            status, body = await self._send(client, batch, row["body"])
            line = result_line(row["custom_id"], status, body)
            ok = 200 <= status < 300
            if await asyncio.to_thread(self.store.record, batch_id, row["line"], ok, line):
                outcome = "completed" if ok else "failed"
                self._metrics.batch_done.labels(str(self.settings.priority), outcome).inc()
        finally:
            self._running[batch_id] = self._running.get(batch_id, 1) - 1
            slots.release()

    async def _send(
        self, client: httpx.AsyncClient, batch: dict[str, Any], body: str
    ) -> tuple[int, Any]:
        """The answer: a rate limit is waited out, an unavailable model retried a few times."""
        failures = 0
        while True:
            response = await client.post(
                batch["endpoint"], content=body, headers={"content-type": "application/json"}
            )
            try:
                answer: Any = response.json()
            except ValueError:
                answer = {"error": {"message": response.text[:1000], "type": "server_error"}}
            if response.status_code == 429 and _retryable_429(answer, response):
                await asyncio.sleep(_retry_after(response))
                continue
            if response.status_code in (502, 503) and failures < RETRIES:
                failures += 1
                await asyncio.sleep(2.0**failures)
                continue
            return response.status_code, answer

    async def _finish(self, batch_id: str) -> None:
        """Write the output and error files and end the batch (completed, cancelled or
        expired)."""
        batch = await asyncio.to_thread(self.store.get_batch, batch_id)
        assert batch is not None
        if batch_id in self._cancelled:
            status, code, why = "cancelled", "batch_cancelled", "the batch was cancelled"
        elif time.time() >= batch["expires_at"]:
            status, code = "expired", "batch_expired"
            why = "the batch did not finish within its completion window"
        else:
            status, code, why = "completed", "", ""
        if status != "cancelled":  # (a cancelled one stays `cancelling` until it ends)
            await asyncio.to_thread(self.store.set_status, batch_id, "finalizing")
        files = await asyncio.to_thread(self._write_results, batch, code, why)
        await asyncio.to_thread(self.store.finish, batch, status, files, self.settings.file_ttl)
        counts = await asyncio.to_thread(self.store.counts, batch_id)
        self._cancelled.discard(batch_id)
        if self._audit is not None:
            self._audit(
                {
                    "event": f"batch_{status}",
                    "batch": batch_id,
                    "key_id": None if batch["owner"] == "-" else batch["owner"],
                    "endpoint": batch["endpoint"],
                    "total": counts.total,
                    "completed": counts.completed,
                    "failed": counts.failed,
                }
            )
        log.info(
            "batch %s %s: %d completed, %d failed of %d",
            batch_id,
            status,
            counts.completed,
            counts.failed,
            counts.total,
        )

    def _write_results(
        self, batch: dict[str, Any], code: str, why: str
    ) -> dict[str, tuple[str, int]]:
        """Unanswered requests get an error line (when the batch stopped early); then each
        file is written whole and synced: {"output"|"error": (file id, bytes)}."""
        batch_id = batch["id"]
        if code:
            for row in self.store.unanswered(batch_id):
                line = failure_line(row["custom_id"], code, why)
                self.store.record(batch_id, row["line"], False, line, state="skipped")
        written: dict[str, tuple[str, int]] = {}
        for kind, states in (("output", ("done",)), ("error", ("failed", "skipped"))):
            file_id = new_id("file-")
            path = self.store.path_of(file_id)
            size = 0
            with open(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "wb") as out:
                for line in self.store.results(batch_id, states):
                    data = (line + "\n").encode()
                    out.write(data)
                    size += len(data)
                out.flush()
                os.fsync(out.fileno())
            if size:
                written[kind] = (file_id, size)
            else:
                path.unlink()
        return written


def _error(code: str) -> dict[str, Any]:
    return {"code": code, "message": "the batch stopped on an internal error; see the server log"}


def _retryable_429(answer: Any, response: httpx.Response) -> bool:
    """A rate limit or a full queue, which pass; not a quota, nor a request bigger than its
    key's whole minute (no Retry-After), which waiting does not clear."""
    error = answer.get("error") if isinstance(answer, dict) else None
    return (
        isinstance(error, dict)
        and error.get("type") == "rate_limit_error"
        and "retry-after" in response.headers
    )


def _retry_after(response: httpx.Response) -> float:
    try:
        return min(60.0, max(0.5, float(response.headers.get("retry-after", "1"))))
    except ValueError:
        return 1.0
