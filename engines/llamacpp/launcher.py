"""Starts llama.cpp workers for the gateway: a WorkerProcess running engines.llamacpp.worker."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import httpx

from cellar.adapters import ResolvedAdapter
from cellar.child import python_module
from cellar.config import ModelDeployment
from cellar.engines.channel import SECRET_ENV, Channel
from cellar.engines.llamacpp.spec import WorkerAdapter, WorkerSpec
from cellar.engines.passthrough import refuse_structured_extras
from cellar.engines.pin import pinned
from cellar.engines.process import WorkerProcess
from cellar.engines.toolcalls import CallRewriter
from cellar.hardware import is_apple_silicon
from cellar.protocol import CompletionBody, EmbeddingRequest
from cellar.rundir import socket_path


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
        task=deployment.task,
    )


def worker_env() -> dict[str, str]:
    """The gateway's environment, offline: no worker may download anything."""
    return {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "PYTHONUNBUFFERED": "1",
    }


def launch_llamacpp(spec: WorkerSpec, cpus: str | None = None) -> WorkerProcess:
    """A not-yet-started worker process for `spec` on its own private socket, on `cpus`."""
    channel = Channel.unix(socket_path(), proves=True)
    argv = python_module(
        "cellar.engines.llamacpp.worker",
        "--uds",
        str(channel.uds),
        "--spec",
        spec.model_dump_json(),
        "--parent-pid",
        str(os.getpid()),
    )
    env = {**worker_env(), SECRET_ENV: channel.secret}
    argv = pinned(argv, cpus)
    return WorkerProcess(spec.name, argv, channel=channel, dialect=LlamaCppDialect(), env=env)


class LlamaCppDialect:
    """Our own worker takes every feature as OpenAI does (and no vLLM structured-output
    field, which it would not enforce), and counts its load at /stats."""

    def prepare(self, path: str, request: CompletionBody | EmbeddingRequest) -> dict[str, Any]:
        if isinstance(request, EmbeddingRequest):  # the worker checks the inputs itself
            return request.model_dump(exclude_none=True)
        refuse_structured_extras(request.model_extra or {})
        return request.model_dump(exclude_unset=True, by_alias=True)

    def rewriter(self, request: CompletionBody) -> CallRewriter | None:
        return None  # the worker reads the calls itself

    async def load(self, client: httpx.AsyncClient) -> tuple[int, int] | None:
        try:
            stats = (await client.get("/stats", timeout=1.0)).json()
            return int(stats["running"]), int(stats["waiting"])
        except (httpx.HTTPError, ValueError, KeyError, TypeError):
            return None
