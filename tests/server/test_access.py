"""API keys, per-key limits, request limits and the audit log, on a real gateway with keys made
by the real `cellar keys` command."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from cellar.store import ModelStore
from tests.gateway import MODEL, Gateway, default_models, start_gateway

pytestmark = pytest.mark.slow

CAPPED = "gemma-capped"
SECRET_PROMPT = "The vault combination is 4-8-15-16-23-42 and"


def make_key(keys_file: Path, name: str, *args: str) -> str:
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "cellar",
            "keys",
            "create",
            "--name",
            name,
            "--keys-file",
            str(keys_file),
            *args,
        ],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    return done.stdout.strip()


@dataclass
class Secured:
    gw: Gateway
    keys: dict[str, str]
    keys_file: Path
    audit: Path

    clients: list[openai.OpenAI] = field(default_factory=list)
    """Every client handed out, closed with the gateway (an unclosed one's sockets would be
    reported, as unraisable warnings, in whichever later test the garbage collector runs)."""

    def client(self, key: str | None) -> openai.OpenAI:
        made = openai.OpenAI(
            base_url=f"{self.gw.base_url}/v1", api_key=key or "none", max_retries=0
        )
        self.clients.append(made)
        return made

    def get(self, path: str, key: str | None = None) -> httpx.Response:
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        return httpx.get(f"{self.gw.base_url}{path}", headers=headers, timeout=60)

    def post(self, path: str, key: str | None, body: object) -> httpx.Response:
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        return httpx.post(f"{self.gw.base_url}{path}", headers=headers, json=body, timeout=120)

    def audit_lines(self) -> list[dict[str, Any]]:
        time.sleep(0.3)  # the writer thread flushes when idle
        return [json.loads(line) for line in self.audit.read_text().splitlines()]


@pytest.fixture(scope="module")
def secured(tmp_path_factory: pytest.TempPathFactory, store: ModelStore) -> Iterator[Secured]:
    work = tmp_path_factory.mktemp("secured")
    keys_file = work / "keys.json"
    keys = {
        "admin": make_key(keys_file, "ops", "--role", "admin"),
        "free": make_key(keys_file, "free-app"),
        "limited": make_key(keys_file, "limited-app", "--rpm", "2"),
        "tokens": make_key(keys_file, "token-app", "--tpm", "120"),
        "other": make_key(keys_file, "other-app", "--models", "some-other-model"),
        "expired": make_key(keys_file, "old-app", "--expires", "2020-01-01"),
        "revoked": make_key(keys_file, "gone-app"),
    }
    subprocess.run(
        [
            sys.executable,
            "-m",
            "cellar",
            "keys",
            "revoke",
            "gone-app",
            "--keys-file",
            str(keys_file),
        ],
        check=True,
        capture_output=True,
        timeout=60,
    )
    models = default_models()
    capped = {**models[0], "name": CAPPED, "max_tokens": 8}
    sections = {"limits": {"max_body": "64KiB", "request_timeout": "10s"}}
    with start_gateway(
        work, store.root, [*models, capped], sections=sections, admin_key=keys["admin"]
    ) as gw:
        secured = Secured(gw, keys, keys_file, work / "audit" / "audit.jsonl")
        try:
            yield secured
        finally:
            for client in secured.clients:
                client.close()


def ask(client: openai.OpenAI, model: str = MODEL) -> str:
    answer = client.completions.create(model=model, prompt="Hello", max_tokens=4)
    return answer.choices[0].text


@pytest.mark.parametrize("who", [None, "wrong", "garbage", "expired", "revoked"])
def test_refused_keys_get_401(secured: Secured, who: str | None) -> None:
    key = {
        None: None,
        "garbage": "hello",
        "wrong": secured.keys["free"][:-6] + "AAAAAA",
    }.get(who, secured.keys.get(who or "", ""))
    with pytest.raises(openai.AuthenticationError) as caught:
        ask(secured.client(key))
    assert caught.value.code == "invalid_api_key"
    assert caught.value.response.headers["www-authenticate"] == "Bearer"


def test_a_key_answers_and_sees_only_its_models(secured: Secured) -> None:
    assert ask(secured.client(secured.keys["free"]))
    other = secured.client(secured.keys["other"])
    with pytest.raises(openai.PermissionDeniedError) as caught:
        ask(other)
    assert caught.value.code == "model_not_allowed"
    assert [m.id for m in other.models.list().data] == []
    assert {m.id for m in secured.client(secured.keys["free"]).models.list().data} == {
        MODEL,
        CAPPED,
    }


def test_admin_routes_need_the_admin_role(secured: Secured) -> None:
    assert secured.get("/admin/models").status_code == 401
    refused = secured.get("/admin/models", secured.keys["free"])
    assert refused.status_code == 403 and refused.json()["error"]["code"] == "permission_denied"
    assert secured.get("/admin/models", secured.keys["admin"]).status_code == 200


def test_health_is_open_and_metrics_need_a_key(secured: Secured) -> None:
    assert secured.get("/health/live").status_code == 200
    assert secured.get("/metrics").status_code == 401
    assert secured.get("/metrics", secured.keys["free"]).status_code == 200


def test_over_rpm_is_429_while_another_key_is_served(secured: Secured) -> None:
    limited = secured.client(secured.keys["limited"])
    ask(limited)
    ask(limited)
    results: dict[str, object] = {}

    def other() -> None:
        results["free"] = ask(secured.client(secured.keys["free"]))

    thread = threading.Thread(target=other)
    thread.start()
    with pytest.raises(openai.RateLimitError) as caught:
        ask(limited)
    thread.join(timeout=60)
    headers = caught.value.response.headers
    assert caught.value.code == "rate_limit_exceeded"
    assert 1 <= int(headers["retry-after"]) <= 30  # 2 per minute: one back within 30 s
    assert headers["x-ratelimit-limit-requests"] == "2"
    assert headers["x-ratelimit-remaining-requests"] == "0"
    assert headers["x-ratelimit-reset-requests"].endswith("s")
    assert isinstance(results.get("free"), str)  # the other key was served meanwhile


def test_over_tpm_is_429(secured: Secured) -> None:
    tokens = secured.client(secured.keys["tokens"])
    # a request holds its estimate (prompt/4 + max_tokens) until its usage is known
    held = tokens.completions.create(
        model=MODEL, prompt="Hi", max_tokens=100, stream=True, extra_body={"ignore_eos": True}
    )
    first = next(iter(held))
    assert first.choices
    with pytest.raises(openai.RateLimitError) as caught:
        tokens.completions.create(model=MODEL, prompt="Hi", max_tokens=30)
    headers = caught.value.response.headers
    assert "120 tokens per minute" in caught.value.message
    assert int(headers["retry-after"]) >= 1 and headers["x-ratelimit-limit-tokens"] == "120"
    held.close()
    with pytest.raises(openai.RateLimitError, match="more than the 120 tokens per minute") as big:
        tokens.completions.create(model=MODEL, prompt="Hi", max_tokens=500)
    assert "retry-after" not in big.value.response.headers  # waiting would not help


def test_body_size_and_max_tokens_caps(secured: Secured) -> None:
    free = secured.keys["free"]
    big = secured.post("/v1/completions", free, {"model": MODEL, "prompt": "x" * 100_000})
    assert big.status_code == 413 and big.json()["error"]["code"] == "request_too_large"
    over = secured.post("/v1/completions", free, {"model": CAPPED, "prompt": "Hi", "max_tokens": 9})
    assert over.status_code == 400 and over.json()["error"]["param"] == "max_tokens"
    chat = secured.client(free).chat.completions.create(
        model=CAPPED,
        messages=[{"role": "user", "content": "Count to fifty."}],
        extra_body={"ignore_eos": True},
    )
    assert chat.usage is not None and chat.usage.completion_tokens == 8  # the cap is the default


def test_request_timeout(secured: Secured) -> None:
    client = secured.client(secured.keys["free"])
    started = time.monotonic()
    with pytest.raises(openai.APIStatusError) as caught:
        client.completions.create(
            model=MODEL, prompt="Once", max_tokens=2000, extra_body={"ignore_eos": True}
        )
    assert caught.value.status_code == 504 and caught.value.code == "timeout"
    assert time.monotonic() - started < 30
    stream = client.completions.create(
        model=MODEL, prompt="Once", max_tokens=2000, stream=True, extra_body={"ignore_eos": True}
    )
    with pytest.raises(openai.APIError, match="took longer than allowed"):
        for _ in stream:
            pass


def test_key_file_holds_no_key(secured: Secured) -> None:
    text = secured.keys_file.read_text()
    for key in secured.keys.values():
        secret = key.rsplit("-", 1)[-1]
        assert key not in text and secret not in text
    assert secured.keys_file.stat().st_mode & 0o077 == 0


def test_audit_has_a_line_per_request_and_no_text(secured: Secured) -> None:
    before = len(secured.audit_lines())
    free, other = secured.keys["free"], secured.keys["other"]
    secured.post(
        "/v1/completions", free, {"model": MODEL, "prompt": SECRET_PROMPT, "max_tokens": 3}
    )
    secured.post("/v1/completions", None, {"model": MODEL, "prompt": SECRET_PROMPT})
    secured.post("/v1/completions", other, {"model": MODEL, "prompt": SECRET_PROMPT})
    lines = secured.audit_lines()[before:]
    assert [(line["key"], line["status"]) for line in lines] == [
        ("free-app", 200),
        (None, 401),
        ("other-app", 403),
    ]
    ok = lines[0]
    assert ok["model"] == MODEL and ok["prompt_tokens"] and ok["completion_tokens"] == 3
    assert ok["client"] == "127.0.0.1" and ok["latency_ms"] > 0 and ok["path"] == "/v1/completions"
    assert lines[2]["error"] == "model_not_allowed"
    text = secured.audit.read_text()
    assert "vault combination" not in text and "prompt" not in lines[0]
    assert all(key not in text for key in secured.keys.values())


def test_responses_and_tools_go_through_the_same_checks(secured: Secured) -> None:
    """The Responses API and tool calls are served by the chat path: a key's models, its
    limits and the audit apply, and a stored response is only its own key's."""
    free, admin = secured.client(secured.keys["free"]), secured.client(secured.keys["admin"])
    with pytest.raises(openai.PermissionDeniedError) as caught:
        secured.client(secured.keys["other"]).responses.create(model=MODEL, input="hi")
    assert caught.value.code == "model_not_allowed"
    with pytest.raises(openai.AuthenticationError):
        secured.client(None).responses.create(model=MODEL, input="hi")
    before = len(secured.audit_lines())
    kept = free.responses.create(model=MODEL, input="Hello", max_output_tokens=3)
    assert free.responses.retrieve(kept.id).id == kept.id
    with pytest.raises(openai.NotFoundError):  # another key cannot read it...
        admin.responses.retrieve(kept.id)
    with pytest.raises(openai.BadRequestError) as chained:  # ...nor continue it
        admin.responses.create(model=MODEL, input="more", previous_response_id=kept.id)
    assert chained.value.code == "previous_response_not_found"
    line = secured.audit_lines()[before]
    assert (line["key"], line["path"], line["status"]) == ("free-app", "/v1/responses", 200)
    assert line["model"] == MODEL and line["completion_tokens"] == 3
    tools: Any = [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}]
    with pytest.raises(openai.PermissionDeniedError):
        secured.client(secured.keys["other"]).chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "hi"}], tools=tools
        )
