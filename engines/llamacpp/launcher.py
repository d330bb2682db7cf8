"""Starts llama.cpp workers for the gateway: a WorkerProcess running engines.llamacpp.worker."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import httpx

from cellar.adapters import ResolvedAdapter
from cellar.child import python_module
from cellar.config import ModelDeployment
from cellar.engines.llamacpp.spec import WorkerAdapter, WorkerSpec
from cellar.engines.process import WorkerProcess, free_port
from cellar.hardware import is_apple_silicon
from cellar.protocol import CompletionBody


def worker_spec(
    deployment: ModelDeployment,
    model_path: Path,
    chat_template: str | None,
    log_level: str,
    adapters: tuple[ResolvedAdapter, ...] = (),
) -> WorkerSpec:
    settings = deployment.llamacpp
    n_gpu_layers = settings.n_gpu_layers
    if is_apple_silicon() and "n_gpu_layers" not in settings.model_fields_set:
        n_gpu_layers = -1  # Metal: the whole model on the GPU unless the config says otherwise
    return WorkerSpec(
        name=deployment.name,
        model_path=model_path,
        n_ctx=settings.n_ctx,
        n_parallel=settings.n_parallel,
        n_threads=None if settings.n_threads == "auto" else settings.n_threads,
        n_batch=settings.n_batch,
        n_gpu_layers=n_gpu_layers,
        chat_template=chat_template,
        log_level=log_level,
        adapters=tuple(WorkerAdapter(name=a.name, path=a.path, scale=a.scale) for a in adapters),
    )


def worker_env() -> dict[str, str]:
    """The gateway's environment, offline: no worker may download anything."""
    return {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "PYTHONUNBUFFERED": "1",
    }


def launch_llamacpp(spec: WorkerSpec) -> WorkerProcess:
    """A not-yet-started worker process for `spec` on a free loopback port."""
    port = free_port()
    argv = python_module(
        "cellar.engines.llamacpp.worker",
        "--port",
        str(port),
        "--spec",
        spec.model_dump_json(),
        "--parent-pid",
        str(os.getpid()),
    )
    return WorkerProcess(spec.name, argv, port=port, dialect=LlamaCppDialect(), env=worker_env())


class LlamaCppDialect:
    """Our own worker takes every feature as OpenAI does, and counts its load at /stats."""

    def prepare(self, path: str, request: CompletionBody) -> dict[str, Any]:
        return request.model_dump(exclude_unset=True, by_alias=True)

    async def load(self, client: httpx.AsyncClient, base_url: str) -> tuple[int, int] | None:
        try:
            stats = (await client.get(base_url + "/stats", timeout=1.0)).json()
            return int(stats["running"]), int(stats["waiting"])
        except (httpx.HTTPError, ValueError, KeyError, TypeError):
            return None
