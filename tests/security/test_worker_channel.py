"""A local user cannot reach a worker around the gateway, nor pose as one.

Attacks: calling the worker's address directly (to skip keys, ACLs, limits and the audit);
binding the worker's address before it does, so that the gateway sends it other users'
prompts and takes its forged answers; reading the secret from the worker's command line.
"""

from __future__ import annotations

import asyncio
import os
import stat
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest

from cellar.engines.channel import CHALLENGE_HEADER, PROOF_HEADER, Channel, proof
from cellar.engines.llamacpp.launcher import LlamaCppDialect
from cellar.engines.process import WorkerProcess, free_port
from cellar.errors import EngineUnavailable
from tests.gateway import MODEL, Gateway
from tests.worker import BareWorker, worker_argv

ROUTES = ("/health", "/stats", "/v1/models")
COMPLETION = {"model": MODEL, "prompt": "The secret plan is", "max_tokens": 4}


def _listening_inodes() -> set[str]:
    """Socket inodes of every TCP listener on the machine (IPv4 and IPv6)."""
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] == "0A":  # LISTEN
                found.add(fields[9])
    return found


def _socket_inodes(pid: int) -> set[str]:
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[len("socket:[") : -1])
    return inodes


@pytest.mark.slow
def test_the_gateway_s_worker_has_no_port_and_answers_only_its_gateway(
    llama_gateway: Gateway,
) -> None:
    found = llama_gateway.admin_models()[MODEL]
    address, pid = found["address"], found["pid"]
    assert address.startswith("unix:")
    socket_path = Path(address.removeprefix("unix:"))
    folder = socket_path.parent.lstat()
    assert stat.S_ISDIR(folder.st_mode) and folder.st_uid == os.getuid()
    assert folder.st_mode & 0o777 == 0o700  # other users cannot even reach the socket
    assert not _socket_inodes(pid) & _listening_inodes()  # no TCP port to call
    cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    assert b"SECRET" not in cmdline.upper() and b"Bearer" not in cmdline

    # A caller who finds the socket (this user, or root) still needs the launch's secret.
    transport = httpx.HTTPTransport(uds=str(socket_path))
    with httpx.Client(transport=transport, base_url="http://worker", timeout=30) as direct:
        for route in ROUTES:
            assert direct.get(route).status_code == 401, route
        refused = direct.post("/v1/completions", json=COMPLETION)
        assert refused.status_code == 401
        assert refused.json()["error"]["code"] == "invalid_api_key"
        guessed = direct.get("/v1/models", headers={"Authorization": "Bearer guess"})
        assert guessed.status_code == 401
    answer = llama_gateway.client().completions.create(  # the gateway's way in still works
        model=MODEL, prompt="The secret plan is", max_tokens=4
    )
    assert answer.choices[0].text


@pytest.mark.slow
def test_the_worker_wants_its_secret_on_every_route(worker: BareWorker) -> None:
    with httpx.Client(base_url=worker.url, timeout=60) as http:
        for route in ROUTES:
            assert http.get(route).status_code == 401, route
            wrong = {"Authorization": f"Bearer {worker.secret}x"}
            assert http.get(route, headers=wrong).status_code == 401, route
            assert http.get(route, headers=worker.headers).status_code == 200, route
        assert http.post("/v1/completions", json=COMPLETION).status_code == 401
        answered = http.post("/v1/completions", json=COMPLETION, headers=worker.headers)
        assert answered.status_code == 200
        probe = http.get("/health", headers={**worker.headers, CHALLENGE_HEADER: "abc123"})
        assert probe.headers[PROOF_HEADER] == proof(worker.secret, "abc123")


def test_a_worker_without_a_secret_refuses_to_start(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "CELLAR_WORKER_SECRET"}
    argv = worker_argv(tmp_path / "never-loaded.gguf", "--port", str(free_port()))
    done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert "CELLAR_WORKER_SECRET" in done.stdout


class _Impostor(BaseHTTPRequestHandler):
    """Took the worker's address first: says 200 to everything, records what it was sent."""

    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header(PROOF_HEADER, "0" * 64)
        self.end_headers()
        self.wfile.write(b'{"status":"ok"}')

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def impostor() -> Iterator[int]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Impostor)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()


def test_a_process_that_took_the_worker_s_address_first_is_refused(impostor: int) -> None:
    """Over TCP (the channel for remote workers) the address can be taken; readiness asks the
    answering process to prove the launch's secret, which an impostor cannot."""
    channel = Channel.tcp(impostor, proves=True)
    argv = [sys.executable, "-c", "import time; time.sleep(60)"]  # the real worker, still loading
    engine = WorkerProcess("m", argv, channel=channel, dialect=LlamaCppDialect())

    async def scenario() -> str:
        await engine.start()
        try:
            await engine.wait_ready(30)
        except EngineUnavailable as exc:
            return exc.message
        finally:
            await engine.stop()
        return "became ready"

    message = asyncio.run(scenario())
    assert "not the worker Cellar started" in message
    assert engine.pid is not None


@pytest.mark.slow
def test_every_engine_s_worker_is_behind_a_private_socket_and_its_secret(
    gateway: Gateway,
) -> None:
    """vLLM's server too: on a socket in the private directory, its API refusing callers
    without the launch's secret."""
    address = gateway.admin_models()[MODEL]["address"]
    socket_path = Path(address.removeprefix("unix:"))
    assert address.startswith("unix:") and socket_path.parent.stat().st_mode & 0o777 == 0o700
    transport = httpx.HTTPTransport(uds=str(socket_path))
    with httpx.Client(transport=transport, base_url="http://worker", timeout=60) as direct:
        assert direct.get("/v1/models").status_code == 401
        assert direct.post("/v1/completions", json=COMPLETION).status_code == 401
