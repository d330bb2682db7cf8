"""Setting access up: HTTPS, refusing an open gateway beyond loopback, logging text only when
asked, and `cellar audit summary`."""

from __future__ import annotations

import json
import os
import ssl
import subprocess
import sys
import time
from pathlib import Path

import httpx
import openai
import pytest
import trustme

from cellar.auditlog import read_lines, summarize
from cellar.config_access import AuditSettings
from cellar.server.audit import AuditLog
from cellar.store import ModelStore
from tests.gateway import MODEL, default_models, start_gateway, write_config

pytestmark = pytest.mark.slow


def test_https_with_a_configured_certificate(tmp_path: Path, store: ModelStore) -> None:
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1", "localhost")
    certfile, keyfile, cafile = tmp_path / "cert.pem", tmp_path / "key.pem", tmp_path / "ca.pem"
    cert.cert_chain_pems[0].write_to_path(str(certfile))
    cert.private_key_pem.write_to_path(str(keyfile))
    ca.cert_pem.write_to_path(str(cafile))
    server = {"tls": {"certfile": "cert.pem", "keyfile": "key.pem"}}  # beside the config
    with start_gateway(tmp_path, store.root, server=server, ca=cafile) as gw:
        assert gw.base_url.startswith("https://")
        client = openai.OpenAI(
            base_url=f"{gw.base_url}/v1",
            api_key="x",
            http_client=openai.DefaultHttpxClient(
                verify=ssl.create_default_context(cafile=str(cafile))
            ),
        )
        answer = client.completions.create(model=MODEL, prompt="Hello", max_tokens=3)
        assert answer.usage is not None and answer.usage.completion_tokens == 3
        client.close()
        with pytest.raises(httpx.ConnectError):
            httpx.get(f"{gw.base_url}/health/live")  # not trusted without the CA
        assert "https://" in gw.log_text()


def serve_once(config: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "COLUMNS": "250"}
    return subprocess.run(
        [sys.executable, "-m", "cellar", "serve", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )


def test_refuses_to_listen_beyond_loopback_without_keys(tmp_path: Path, store: ModelStore) -> None:
    config = write_config(
        tmp_path / "open.yaml", store.root, 0, default_models(), server={"host": "0.0.0.0"}
    )
    done = serve_once(config)
    assert done.returncode == 2
    message = " ".join(done.stderr.split())
    assert "refusing to listen on 0.0.0.0 with no API keys" in message
    assert "cellar keys create" in message and "auth: {mode: none}" in message
    assert "open.yaml" in message


def test_a_missing_certificate_is_named(tmp_path: Path, store: ModelStore) -> None:
    server = {"tls": {"certfile": "nope.pem", "keyfile": "nope.key"}}
    config = write_config(tmp_path / "tls.yaml", store.root, 0, default_models(), server=server)
    done = serve_once(config)
    assert done.returncode == 2
    assert "server.tls.certfile" in done.stderr and "nope.pem" in done.stderr


def test_content_is_logged_only_when_asked(tmp_path: Path, store: ModelStore) -> None:
    sections = {"audit": {"log_content": True}}
    with start_gateway(tmp_path, store.root, sections=sections) as gw:
        client = gw.client()
        client.completions.create(model=MODEL, prompt="The red fox", max_tokens=3)
        stream = client.chat.completions.create(
            model=MODEL,
            messages=[{"role": "user", "content": "Name a colour."}],
            max_tokens=4,
            stream=True,
        )
        streamed = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    lines = [json.loads(x) for x in (tmp_path / "audit" / "audit.jsonl").read_text().splitlines()]
    unary, chat = [line for line in lines if line["path"].startswith("/v1/")]
    assert unary["prompt"] == "The red fox" and unary["response"]
    assert chat["prompt"] == [{"role": "user", "content": "Name a colour."}]
    assert chat["response"] == streamed and chat["stream"] is True and chat["ttft_ms"] > 0


def test_rotation_by_size_and_the_summary(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    log = AuditLog(AuditSettings(max_bytes=2048, keep=3), path)
    now = time.time()
    for i in range(60):
        log.write(
            {
                "time": time.strftime("%Y-%m-%dT%H:%M:%S+00:00", time.gmtime(now - 60 + i)),
                "key": "app-a" if i % 3 else "app-b",
                "model": MODEL,
                "status": 429 if i % 10 == 0 else 200,
                "prompt_tokens": 5,
                "completion_tokens": 7,
                "latency_ms": 100.0 + i,
                "ttft_ms": 10.0,
            }
        )
    log.close()
    rotated = sorted(tmp_path.glob("audit-*.jsonl"))
    assert len(rotated) == 3  # the oldest beyond `keep` were deleted
    assert all(p.stat().st_size < 2048 + 400 for p in rotated)
    kept = list(read_lines(path))
    assert 0 < len(kept) < 60 and kept[-1]["latency_ms"] == 159.0
    table = summarize(iter(kept))
    assert set(table) <= {("app-a", MODEL), ("app-b", MODEL)}
    total = sum(u.requests for u in table.values())
    assert total == len(kept)
    done = subprocess.run(
        [sys.executable, "-m", "cellar", "audit", "summary", "--since", "1h", "--file", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "COLUMNS": "250"},
    )
    assert done.returncode == 0 and "app-a" in done.stdout and "app-b" in done.stdout
