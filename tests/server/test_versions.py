"""Moving a tag while 8 clients stream: the gateway switches versions and no request fails.

Version 1 of `bot` is the bundled GGUF; version 2 is the same file with
`tokenizer.ggml.add_bos_token` switched off, so every answer shows which version made it: its
prompt has one token fewer (and the version header names it).
"""

from __future__ import annotations

import shutil
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
from cellar.tags import set_tag
from tests.gateway import Gateway, process_alive, run_cellar, start_gateway

pytestmark = pytest.mark.slow

NAME = "bot"
ADD_BOS = b"tokenizer.ggml.add_bos_token"
PROMPT = "The cellar door creaked open and"
CLIENTS = 8


def _without_bos(bundled: Path, out: Path) -> Path:
    data = bytearray(bundled.read_bytes())
    at = data.find(ADD_BOS) + len(ADD_BOS) + 4  # after the key: u32 type (bool), then the value
    assert data[at] == 1
    data[at] = 0
    out.write_bytes(data)
    return out


@pytest.fixture(scope="module")
def versions(tmp_path_factory: pytest.TempPathFactory, bundled_gguf: Path) -> ModelStore:
    """`bot` versions 1 (bundled) and 2 (no BOS), with prod on 1."""
    work = tmp_path_factory.mktemp("versions")
    store = ModelStore(work / "store")
    store.import_file(bundled_gguf, NAME, why="first release")
    store.import_file(_without_bos(bundled_gguf, work / "nobos.gguf"), NAME, why="no BOS")
    set_tag(store, NAME, "1", "prod", "first release")
    return store


def _models(**extra: Any) -> list[dict[str, Any]]:
    return [
        {
            "name": NAME,
            "source": f"store:{NAME}@prod",
            "preload": True,
            "llamacpp": {"n_ctx": 2048, "n_parallel": CLIENTS},
            **extra,
        }
    ]


@dataclass
class Answer:
    version: str
    prompt_tokens: int
    text: str


@dataclass
class Traffic:
    """CLIENTS threads streaming completions back to back until stopped."""

    gw: Gateway
    answers: list[list[Answer]] = field(default_factory=lambda: [[] for _ in range(CLIENTS)])
    errors: list[str] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)
    threads: list[threading.Thread] = field(default_factory=list)

    def _client(self, index: int) -> None:
        client = openai.OpenAI(base_url=f"{self.gw.base_url}/v1", api_key="x", max_retries=0)
        with client:
            while not self.stop.is_set():
                try:
                    raw = client.completions.with_raw_response.create(
                        model=NAME,
                        prompt=PROMPT,
                        max_tokens=12,
                        temperature=0,
                        stream=True,
                        stream_options={"include_usage": True},
                    )
                    text, usage = "", None
                    for chunk in raw.parse():
                        if chunk.choices:
                            text += chunk.choices[0].text
                        if chunk.usage is not None:
                            usage = chunk.usage
                    assert usage is not None, "no usage in the stream"
                    version = raw.headers["x-cellar-model-version"]
                    self.answers[index].append(Answer(version, usage.prompt_tokens, text))
                except Exception as exc:
                    self.errors.append(f"client {index}: {type(exc).__name__}: {exc}")

    def __enter__(self) -> Traffic:
        for index in range(CLIENTS):
            thread = threading.Thread(target=self._client, args=(index,), daemon=True)
            thread.start()
            self.threads.append(thread)
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(timeout=60)

    def wait_for(self, version: str, each: int, timeout_s: float = 120) -> None:
        """Until every client has `each` answers from `version`."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if all(sum(a.version == version for a in mine) >= each for mine in self.answers):
                return
            time.sleep(0.1)
        raise AssertionError(f"not every client got {each} answers from {version}: {self.errors}")


def _deployment(gw: Gateway) -> dict[str, Any]:
    return gw.admin_models()[NAME]


def _wait_switched(gw: Gateway, version: str, timeout_s: float = 180) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        model = _deployment(gw)
        switch = model["last_switch"] or {}
        if model["version"] == version and switch.get("outcome") == "done":
            return model
        assert switch.get("outcome") != "failed", switch
        time.sleep(0.2)
    raise AssertionError(f"no switch to {version}:\n{gw.log_text()[-3000:]}")


def _switch_under_load(gw: Gateway, move: list[str], old: str, new: str) -> dict[str, Any]:
    """Run `cellar models ...move` while the clients stream; check nothing failed."""
    before = _deployment(gw)
    assert before["version"] == old and before["state"] == "ready"
    with Traffic(gw) as traffic:
        traffic.wait_for(old, each=2)
        moved = run_cellar("models", *move)
        assert moved.returncode == 0, moved.stderr
        after = _wait_switched(gw, new)
        traffic.wait_for(new, each=2)
    assert traffic.errors == []
    tokens = {a.version: a.prompt_tokens for mine in traffic.answers for a in mine}
    assert set(tokens) == {old, new}
    assert abs(tokens[old] - tokens[new]) == 1  # one of them adds BOS: the answer shows which
    for mine in traffic.answers:
        seen = [a.version for a in mine]
        first_new = seen.index(new)
        assert set(seen[:first_new]) == {old} and set(seen[first_new:]) == {new}, seen
        assert all(a.prompt_tokens == tokens[a.version] for a in mine)
    assert after["pid"] != before["pid"]
    assert not process_alive(before["pid"]), "the old version's worker still runs"
    return after


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory, versions: ModelStore) -> Iterator[Gateway]:
    with start_gateway(tmp_path_factory.mktemp("gw"), versions.root, _models()) as gw:
        yield gw


def test_promoting_switches_versions_under_load(gateway: Gateway, versions: ModelStore) -> None:
    where = ["--store", str(versions.root)]
    assert run_cellar("models", "tag", NAME, "2", "staging", *where).returncode == 0
    promote = ["promote", NAME, "--from", "staging", "--to", "prod", "--why", "evals pass"]
    after = _switch_under_load(gateway, [*promote, *where], f"{NAME}@1", f"{NAME}@2")
    assert after["last_switch"]["mode"] == "side by side"
    assert after["last_switch"]["why"] == f"{NAME}@prod moved to version 2"


def test_rolling_back_switches_back_under_load(gateway: Gateway, versions: ModelStore) -> None:
    where = ["--store", str(versions.root)]
    if _deployment(gateway)["version"] != f"{NAME}@2":  # run alone: get to version 2 first
        set_tag(versions, NAME, "2", "prod", "set-up")
        _wait_switched(gateway, f"{NAME}@2")
    rollback = ["rollback", NAME, "--tag", "prod", "--why", "answers got worse"]
    _switch_under_load(gateway, [*rollback, *where], f"{NAME}@2", f"{NAME}@1")
    history = run_cellar("models", "history", NAME, *where)
    assert history.returncode == 0
    for why in ("first release", "no BOS", "evals pass", "answers got worse"):
        assert why in history.stdout
    assert "rollback" in history.stdout and "promote" in history.stdout


def test_a_version_that_cannot_load_leaves_the_old_one_serving(
    gateway: Gateway, versions: ModelStore, tmp_path: Path
) -> None:
    broken = tmp_path / "broken.gguf"
    shutil.copyfile(versions.file_of(versions.get(f"{NAME}@1")), broken)
    manifest = versions.import_file(_without_bos(broken, broken), NAME, why="to be damaged")
    stored = versions.file_of(manifest.manifest)
    with stored.open("r+b") as handle:  # damaged after import: its sha256 no longer matches
        handle.seek(stored.stat().st_size // 2)
        handle.write(b"\xff\xfe")
    before = _deployment(gateway)
    with Traffic(gateway) as traffic:
        traffic.wait_for(before["version"], each=1)
        set_tag(versions, NAME, str(manifest.manifest.version), "prod", "bad build")
        deadline = time.monotonic() + 60
        while (_deployment(gateway)["last_switch"] or {}).get("outcome") != "failed":
            assert time.monotonic() < deadline, gateway.log_text()[-3000:]
            time.sleep(0.2)
        traffic.wait_for(before["version"], each=3)
    assert traffic.errors == []
    model = _deployment(gateway)
    assert model["version"] == before["version"] and model["pid"] == before["pid"]
    assert "sha256" in model["last_switch"]["error"]
    set_tag(versions, NAME, before["version"].split("@")[1], "prod", "undo the bad build")


def test_reload_with_no_room_for_both_queues_requests(tmp_path: Path, versions: ModelStore) -> None:
    """A budget that holds one worker: the switch queues requests instead of failing them."""
    models = _models(memory_estimate="1GiB")
    with start_gateway(tmp_path, versions.root, models, {"memory_budget": "1.5GiB"}) as gw:
        before = _deployment(gw)
        with Traffic(gw) as traffic:
            traffic.wait_for(before["version"], each=2)
            with gw.http(timeout=300) as http:
                reloaded = http.post(f"/admin/models/{NAME}/reload")
            assert reloaded.status_code == 200, reloaded.text
            for answers in traffic.answers:
                answers.clear()
            traffic.wait_for(before["version"], each=2)
        assert traffic.errors == []
        after = reloaded.json()
        assert after["last_switch"]["mode"] == "queued (no room for both versions)"
        assert after["pid"] != before["pid"] and not process_alive(before["pid"])
        assert "new requests queue in the gateway" in gw.log_text()
        with gw.http() as http:
            missing = http.post("/admin/models/nobody/reload")
        assert missing.status_code == 404


def test_requests_name_the_version_that_answered(gateway: Gateway) -> None:
    with httpx.Client(base_url=gateway.base_url, timeout=60) as http:
        reply = http.post(
            "/v1/completions", json={"model": NAME, "prompt": PROMPT, "max_tokens": 2}
        )
    assert reply.status_code == 200
    assert reply.headers["x-cellar-model-version"] == _deployment(gateway)["version"]
    assert len(reply.headers["x-cellar-model-sha256"]) == 64
