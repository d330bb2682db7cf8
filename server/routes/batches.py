"""The Files and Batches API (OpenAI's shapes). A key sees only its own files and batches; an
admin key sees all. Someone else's id answers exactly as an unknown one does (404)."""

from __future__ import annotations

import asyncio
import errno
import json
import os
from pathlib import Path
from typing import IO, Annotated, Any, Literal

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import FileResponse
from pydantic import BaseModel, ConfigDict, Field
from starlette.datastructures import UploadFile

from cellar.batchfile import (
    BATCH_ENDPOINTS,
    BatchFileError,
    BatchFileSummary,
    BatchLine,
    batch_lines,
    check_batch_file,
    read_lines,
)
from cellar.config_access import BatchSettings
from cellar.errors import (
    InvalidRequest,
    NotFound,
    QuotaExceeded,
    RequestTooLarge,
    StorageFull,
)
from cellar.server.auth import OPEN, Principal, require_admin, require_key
from cellar.server.batches import WINDOWS, Batches
from cellar.server.batchstore import FileRecord, new_id

router = APIRouter(dependencies=[Depends(require_key)])
admin_router = APIRouter(dependencies=[Depends(require_admin)])

MAX_LIST = 10_000
CHUNK = 1 << 20


def _batches(request: Request) -> Batches:
    batches: Batches | None = request.app.state.batches
    if batches is None:
        raise NotFound("The Files and Batches API is turned off on this server (batches.enabled).")
    return batches


def _caller(request: Request) -> Principal:
    principal: Principal = getattr(request.state, "principal", OPEN)
    return principal


def _owner(principal: Principal) -> str:
    return principal.key_id or "-"


def _sees(principal: Principal, owner: str) -> bool:
    return principal.role == "admin" or _owner(principal) == owner


# -- files -------------------------------------------------------------------------------------


def _keep(source: IO[bytes], path: Path, settings: BatchSettings) -> tuple[int, BatchFileSummary]:
    """Copy an upload into the store, within the size cap, and check it as a batch file; the
    copy is removed when anything is wrong."""
    size = 0
    try:
        with open(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "wb") as out:
            while chunk := source.read(CHUNK):
                size += len(chunk)
                if size > settings.max_file_size:
                    raise RequestTooLarge(
                        f"The file is larger than this server's limit of "
                        f"{settings.max_file_size} bytes (batches.max_file_size)."
                    )
                out.write(chunk)
            out.flush()
            os.fsync(out.fileno())
        with open(path, "rb") as handle:
            summary = check_batch_file(read_lines(handle), settings.max_requests)
    except OSError as exc:
        path.unlink(missing_ok=True)
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            raise StorageFull(
                "The server's disk is full; the file was not kept. Try again later."
            ) from None
        raise
    except BaseException:
        path.unlink(missing_ok=True)
        raise
    return size, summary


@router.post("/v1/files")
async def upload_file(request: Request) -> dict[str, Any]:
    """A batch input file (multipart: `file` and `purpose`=batch), streamed to disk and checked
    line by line; nothing is kept from a file with a problem."""
    batches, principal = _batches(request), _caller(request)
    owner, settings = _owner(principal), batches.settings
    used = await asyncio.to_thread(batches.store.bytes_of, owner)
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and used + int(declared) > settings.max_bytes_per_key + CHUNK:
        raise _over_bytes(used, settings)
    if not request.headers.get("content-type", "").startswith("multipart/form-data"):
        raise InvalidRequest(
            "Upload the file as multipart/form-data with the fields `file` and `purpose`.",
            param="file",
        )
    async with request.form(max_files=1, max_fields=2, max_part_size=1024) as form:
        purpose, upload = form.get("purpose"), form.get("file")
        if purpose != "batch":
            raise InvalidRequest(
                f"purpose {purpose!r} is not served here; this server keeps files for batches "
                "(purpose=batch)",
                param="purpose",
            )
        if not isinstance(upload, UploadFile):
            raise InvalidRequest("The request has no `file` part.", param="file")
        filename = Path(upload.filename or "upload.jsonl").name[:255] or "upload.jsonl"
        file_id = new_id("file-")
        path = batches.store.path_of(file_id)
        try:
            size, summary = await asyncio.to_thread(_keep, upload.file, path, settings)
        except BatchFileError as exc:
            raise InvalidRequest(f"{filename} is not a batch file: {exc}", param="file") from None
    if used + size > settings.max_bytes_per_key:
        path.unlink(missing_ok=True)
        raise _over_bytes(used, settings)
    record = await asyncio.to_thread(
        batches.store.add_file, file_id, owner, "batch", filename, size, settings.file_ttl
    )
    return {**record.describe(), "requests": summary.requests}


def _over_bytes(used: int, settings: BatchSettings) -> QuotaExceeded:
    return QuotaExceeded(
        f"This key keeps {used} bytes of files; with this one it would pass its quota of "
        f"{settings.max_bytes_per_key} bytes (batches.max_bytes_per_key). Delete files it no "
        "longer needs."
    )


async def _file(request: Request, file_id: str) -> FileRecord:
    batches, principal = _batches(request), _caller(request)
    record = await asyncio.to_thread(batches.store.get_file, file_id)
    if record is None or not _sees(principal, record.owner):
        raise NotFound(f"No such File object: {file_id}", param="file_id")
    return record


@router.get("/v1/files")
async def list_files(
    request: Request,
    purpose: str | None = None,
    limit: Annotated[int, Query(ge=1, le=MAX_LIST)] = MAX_LIST,
    after: str | None = None,
) -> dict[str, Any]:
    batches, principal = _batches(request), _caller(request)
    owner = None if principal.role == "admin" else _owner(principal)
    records = await asyncio.to_thread(batches.store.list_files, owner, purpose, limit + 1, after)
    data = [r.describe() for r in records[:limit]]
    return _page(data, len(records) > limit)


def _page(data: list[dict[str, Any]], more: bool) -> dict[str, Any]:
    return {
        "object": "list",
        "data": data,
        "first_id": data[0]["id"] if data else None,
        "last_id": data[-1]["id"] if data else None,
        "has_more": more,
    }


@router.get("/v1/files/{file_id}")
async def get_file(file_id: str, request: Request) -> dict[str, Any]:
    return (await _file(request, file_id)).describe()


@router.get("/v1/files/{file_id}/content", response_model=None)
async def file_content(file_id: str, request: Request) -> FileResponse:
    record = await _file(request, file_id)
    path = _batches(request).store.path_of(record.id)
    return FileResponse(path, media_type="application/octet-stream", filename=record.filename)


@router.delete("/v1/files/{file_id}")
async def delete_file(file_id: str, request: Request) -> dict[str, Any]:
    record = await _file(request, file_id)
    await asyncio.to_thread(_batches(request).store.delete_file, record.id)
    return {"id": record.id, "object": "file", "deleted": True}


# -- batches -----------------------------------------------------------------------------------


class BatchCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    input_file_id: str = Field(max_length=64)
    endpoint: Literal["/v1/chat/completions", "/v1/completions", "/v1/embeddings"]
    completion_window: Literal["24h"] = "24h"
    metadata: (
        Annotated[
            dict[Annotated[str, Field(max_length=64)], Annotated[str, Field(max_length=512)]],
            Field(max_length=16),
        ]
        | None
    ) = None


def describe(batch: dict[str, Any], batches: Batches) -> dict[str, Any]:
    counts = batches.store.counts(batch["id"])
    return {
        "id": batch["id"],
        "object": "batch",
        "endpoint": batch["endpoint"],
        "errors": json.loads(batch["errors"]) if batch["errors"] else None,
        "input_file_id": batch["input_file_id"],
        "completion_window": batch["completion_window"],
        "status": batch["status"],
        "output_file_id": batch["output_file_id"],
        "error_file_id": batch["error_file_id"],
        "created_at": batch["created_at"],
        "in_progress_at": batch["in_progress_at"],
        "expires_at": batch["expires_at"],
        "finalizing_at": batch["finalizing_at"],
        "completed_at": batch["completed_at"],
        "failed_at": batch["failed_at"],
        "expired_at": batch["expired_at"],
        "cancelling_at": batch["cancelling_at"],
        "cancelled_at": batch["cancelled_at"],
        "request_counts": {
            "total": batch["total"],
            "completed": counts.completed,
            "failed": counts.failed,
        },
        "metadata": json.loads(batch["metadata"]) if batch["metadata"] else None,
    }


async def _describe(batch: dict[str, Any], batches: Batches) -> dict[str, Any]:
    return await asyncio.to_thread(describe, batch, batches)


async def _batch(request: Request, batch_id: str) -> dict[str, Any]:
    batches, principal = _batches(request), _caller(request)
    batch = await asyncio.to_thread(batches.store.get_batch, batch_id)
    if batch is None or not _sees(principal, batch["owner"]):
        raise NotFound(f"No such Batch object: {batch_id}", param="batch_id")
    return batch


def _read(path: Path, max_requests: int) -> tuple[BatchFileSummary, list[BatchLine]]:
    """The checked requests of a stored input file."""
    try:
        with open(path, "rb") as handle:
            summary = check_batch_file(read_lines(handle), max_requests)
            handle.seek(0)
            return summary, list(batch_lines(read_lines(handle)))
    except FileNotFoundError:
        raise NotFound(f"No such File object: {path.name}", param="input_file_id") from None
    except BatchFileError as exc:
        raise InvalidRequest(
            f"{path.name} is not a batch file: {exc}", param="input_file_id"
        ) from None


@router.post("/v1/batches")
async def create_batch(body: BatchCreate, request: Request) -> dict[str, Any]:
    batches, principal = _batches(request), _caller(request)
    owner = _owner(principal)
    record = await asyncio.to_thread(batches.store.get_file, body.input_file_id)
    if record is None or record.owner != owner:
        raise NotFound(f"No such File object: {body.input_file_id}", param="input_file_id")
    if record.purpose != "batch":
        raise InvalidRequest(
            f"{record.id} holds {record.purpose}, not batch input", param="input_file_id"
        )
    summary, lines = await asyncio.to_thread(
        _read, batches.store.path_of(record.id), batches.settings.max_requests
    )
    if summary.url != body.endpoint:
        raise InvalidRequest(
            f"the requests of {record.id} are for {summary.url}, not {body.endpoint}",
            param="endpoint",
        )
    queued = await asyncio.to_thread(batches.store.queued_of, owner)
    if queued + summary.requests > batches.settings.max_queued_per_key:
        raise QuotaExceeded(
            f"This key has {queued} batch requests waiting; {summary.requests} more would pass "
            f"its quota of {batches.settings.max_queued_per_key} (batches.max_queued_per_key)."
        )
    batch_id = new_id("batch_")
    await asyncio.to_thread(
        batches.store.create_batch,
        batch_id,
        owner,
        body.endpoint,
        record.id,
        body.completion_window,
        WINDOWS[body.completion_window],
        body.metadata,
        lines,
    )
    batches.run(batch_id)
    batch = await asyncio.to_thread(batches.store.get_batch, batch_id)
    assert batch is not None
    return await _describe(batch, batches)


@router.get("/v1/batches")
async def list_batches(
    request: Request,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
    after: str | None = None,
) -> dict[str, Any]:
    batches, principal = _batches(request), _caller(request)
    owner = None if principal.role == "admin" else _owner(principal)
    rows = await asyncio.to_thread(batches.store.list_batches, owner, limit + 1, after)
    data = [await _describe(row, batches) for row in rows[:limit]]
    return _page(data, len(rows) > limit)


@router.get("/v1/batches/{batch_id}")
async def get_batch(batch_id: str, request: Request) -> dict[str, Any]:
    return await _describe(await _batch(request, batch_id), _batches(request))


@router.post("/v1/batches/{batch_id}/cancel")
async def cancel_batch(batch_id: str, request: Request) -> dict[str, Any]:
    batch = await _batch(request, batch_id)
    batches = _batches(request)
    if batch["status"] != "cancelling" and not await batches.cancel(batch_id):
        now = await asyncio.to_thread(batches.store.get_batch, batch_id) or batch
        raise InvalidRequest(
            f"{batch_id} is {now['status']}; only an unfinished batch can be cancelled",
            param="batch_id",
        )
    return await get_batch(batch_id, request)


@admin_router.get("/admin/batches")
async def batch_progress(request: Request) -> dict[str, Any]:
    """Every unfinished batch and the last 20 finished ones, with requests running now."""
    batches = _batches(request)
    rows = await asyncio.to_thread(batches.store.list_batches, None, 10_000, None, True)
    recent = await asyncio.to_thread(batches.store.list_batches, None, 20 + len(rows), None)
    seen = {row["id"] for row in rows}
    rows += [row for row in recent if row["id"] not in seen][:20]
    data = []
    for row in rows:
        described = await _describe(row, batches)
        described["owner"] = row["owner"]
        described["running"] = batches.running_requests(row["id"])
        data.append(described)
    return {"object": "list", "data": data, "endpoints": list(BATCH_ENDPOINTS)}
