"""Steady load for rollout tests: client threads sending short chat completions back to back,
each answer recorded with the version that made it (the X-Cellar-Model-Version header)."""

from __future__ import annotations

import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import httpx
import openai

from tests.gateway import Gateway

SETTLE_S = 3.0
"""Longer than a request waits and runs under the tests' load."""


@dataclass
class Reply:
    user: str
    version: str
    at: float
    """time.time() when the answer came."""


@dataclass
class Load:
    """`clients` threads; odd ones keep one `user` (a conversation) when `steady`, the others
    start a new conversation with every request."""

    gw: Gateway
    model: str
    clients: int = 8
    max_tokens: int = 8
    steady: bool = True
    replies: list[Reply] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)
    threads: list[threading.Thread] = field(default_factory=list)

    def _client(self, index: int) -> None:
        client = openai.OpenAI(base_url=f"{self.gw.base_url}/v1", api_key="x", max_retries=0)
        count = 0
        with client:
            while not self.stop.is_set():
                count += 1
                keeps = self.steady and index % 2
                user = f"steady-{index}" if keeps else f"fresh-{index}-{count}"
                try:
                    raw = client.chat.completions.with_raw_response.create(
                        model=self.model,
                        messages=[{"role": "user", "content": "Say something short."}],
                        max_tokens=self.max_tokens,
                        temperature=0.7,
                        user=user,
                    )
                    raw.parse()
                    version = raw.headers["x-cellar-model-version"]
                    self.replies.append(Reply(user, version, time.time()))
                except Exception as exc:  # every failure is counted, none expected
                    self.errors.append(f"client {index}: {type(exc).__name__}: {exc}")

    def __enter__(self) -> Load:
        for index in range(self.clients):
            thread = threading.Thread(target=self._client, args=(index,), daemon=True)
            thread.start()
            self.threads.append(thread)
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(timeout=120)


def start_rollout(gw: Gateway, model: str, plan: dict[str, Any]) -> dict[str, Any]:
    with gw.http() as http:
        reply = http.post(
            "/admin/rollouts", json={"model": model, "from": "staging", "to": "prod", "plan": plan}
        )
    assert reply.status_code == 202, reply.text
    answer: dict[str, Any] = reply.json()
    return answer


def rollout_state(gw: Gateway, deployment: str) -> dict[str, Any]:
    with gw.http() as http:
        answer: dict[str, Any] = http.get(f"/admin/rollouts/{deployment}").json()
    return answer


def wait_rollout(gw: Gateway, deployment: str, timeout_s: float = 300) -> dict[str, Any]:
    """Until the rollout has ended; its last state."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        state = rollout_state(gw, deployment)
        if state["state"] in ("promoted", "rolled back", "aborted", "shadowed"):
            return state
        time.sleep(0.5)
    raise AssertionError(f"the rollout did not end: {rollout_state(gw, deployment)}")


def fresh_shares(
    replies: list[Reply], served: list[dict[str, Any]], candidate: str
) -> list[tuple[float, int]]:
    """Per step: the share (percent) of the answers to new conversations that `candidate`
    gave, and how many answers that is (each a fair draw of the step's share). Answers in the
    first `SETTLE_S` of a step are left out: their requests may have been sent in the one
    before."""
    found = []
    for step in served:
        mine = [
            r.version == candidate
            for r in replies
            if r.user.startswith("fresh-") and step["began"] + SETTLE_S <= r.at <= step["ended"]
        ]
        found.append((100 * sum(mine) / max(1, len(mine)), len(mine)))
    return found


def versions_per_user(replies: list[Reply], start: float, end: float) -> dict[str, set[str]]:
    seen: dict[str, set[str]] = {}
    for reply in replies:
        if start <= reply.at <= end:
            seen.setdefault(reply.user, set()).add(reply.version)
    return seen


def count_versions(replies: list[Reply]) -> Counter[str]:
    return Counter(r.version for r in replies)


def metrics_text(gw: Gateway) -> str:
    with httpx.Client(base_url=gw.base_url) as http:
        return http.get("/metrics").text
