"""Entry point of a llama.cpp worker process.

    CELLAR_WORKER_SECRET=... python -m cellar.engines.llamacpp.worker \
        (--uds PATH | --port PORT) --spec '<WorkerSpec JSON>'

Loads the model first and only then listens, so a healthy worker is a ready one. A failure to
load is reported as one `cellar-worker: fatal: ...` line and exit code 3. It answers only
requests that carry the secret from its environment (engines/channel.py); the gateway gives it
a Unix socket in its private directory, and TCP (on --host, loopback by default) is there for
workers on other hosts.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import logging
import os
import signal
import sys
from collections.abc import Callable

import uvicorn
from fastapi import FastAPI

from cellar.engines.channel import SECRET_ENV, SecretGate
from cellar.engines.llamacpp.app import WorkerService, create_worker_app
from cellar.engines.llamacpp.embedapp import EmbeddingService, create_embedding_app, load_embedding
from cellar.engines.llamacpp.embedder import Embedder
from cellar.engines.llamacpp.model import ModelLoadError, load
from cellar.engines.llamacpp.scheduler import BatchScheduler
from cellar.engines.llamacpp.spec import WorkerSpec
from cellar.engines.process import FATAL_PREFIX

EXIT_USAGE = 2
EXIT_LOAD_FAILED = 3
_PR_SET_PDEATHSIG = 1


def die_with_parent(parent_pid: int) -> None:
    """Ask Linux to SIGTERM this worker when the gateway dies, so no orphan holds RAM."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() != parent_pid:
        sys.exit(0)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--uds", help="serve on this Unix socket")
    where.add_argument("--port", type=int, help="serve on this TCP port of --host")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--spec", required=True, help="WorkerSpec as JSON")
    parser.add_argument("--parent-pid", type=int, default=None)
    args = parser.parse_args(argv)
    if args.parent_pid:
        die_with_parent(args.parent_pid)
    secret = os.environ.pop(SECRET_ENV, "")
    if not secret:
        print(f"{FATAL_PREFIX}no ${SECRET_ENV}: a worker without one would answer anyone")
        return EXIT_USAGE
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    spec = WorkerSpec.model_validate_json(args.spec)
    logging.basicConfig(level=spec.log_level.upper(), format="%(levelname)s %(name)s: %(message)s")
    try:
        app, close = _serve_embeddings(spec) if spec.task == "embed" else _serve_generation(spec)
    except (ModelLoadError, ValueError) as exc:
        print(f"{FATAL_PREFIX}{exc}", flush=True)
        return EXIT_LOAD_FAILED
    config = uvicorn.Config(
        SecretGate(app, secret),
        uds=args.uds,
        host=args.host,
        port=args.port or 0,
        log_level="warning",
        access_log=False,
        timeout_graceful_shutdown=5,
    )
    try:
        uvicorn.Server(config).run()
    finally:
        close()
    return 0


def _serve_generation(spec: WorkerSpec) -> tuple[FastAPI, Callable[[], None]]:
    loaded = load(spec)
    scheduler = BatchScheduler(loaded.native, loaded.context, loaded.model.piece, loaded.adapters)

    def close() -> None:
        scheduler.close()
        loaded.close()

    return create_worker_app(WorkerService(loaded, scheduler)), close


def _serve_embeddings(spec: WorkerSpec) -> tuple[FastAPI, Callable[[], None]]:
    loaded = load_embedding(spec)
    embedder = Embedder(loaded.context)

    def close() -> None:
        embedder.close()
        loaded.close()

    return create_embedding_app(EmbeddingService(spec, loaded, embedder)), close


if __name__ == "__main__":
    sys.exit(main())
