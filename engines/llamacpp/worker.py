"""Entry point of a llama.cpp worker process.

    python -m cellar.engines.llamacpp.worker --port PORT --spec '<WorkerSpec JSON>'

Loads the model first and only then listens, so a healthy worker is a ready one. A failure to
load is reported as one `cellar-worker: fatal: ...` line and exit code 3.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import logging
import os
import signal
import sys

import uvicorn

from cellar.engines.llamacpp.app import WorkerService, create_worker_app
from cellar.engines.llamacpp.model import ModelLoadError, load
from cellar.engines.llamacpp.scheduler import BatchScheduler
from cellar.engines.llamacpp.spec import WorkerSpec
from cellar.engines.process import FATAL_PREFIX

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
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--spec", required=True, help="WorkerSpec as JSON")
    parser.add_argument("--parent-pid", type=int, default=None)
    args = parser.parse_args(argv)
    if args.parent_pid:
        die_with_parent(args.parent_pid)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    spec = WorkerSpec.model_validate_json(args.spec)
    logging.basicConfig(level=spec.log_level.upper(), format="%(levelname)s %(name)s: %(message)s")
    try:
        loaded = load(spec)
    except (ModelLoadError, ValueError) as exc:
        print(f"{FATAL_PREFIX}{exc}", flush=True)
        return EXIT_LOAD_FAILED
    scheduler = BatchScheduler(loaded.native, loaded.context, loaded.model.piece, loaded.adapters)
    app = create_worker_app(WorkerService(loaded, scheduler))
    config = uvicorn.Config(
        app,
        host=args.host,
        port=args.port,
        log_level="warning",
        access_log=False,
        timeout_graceful_shutdown=5,
    )
    try:
        uvicorn.Server(config).run()
    finally:
        scheduler.close()
        loaded.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
