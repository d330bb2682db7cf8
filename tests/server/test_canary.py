"""Canary checks on a real gateway: golden prompts on a schedule and on demand, the history
CSV, Prometheus gauges, and webhook alerts received by a real local HTTP server."""

from __future__ import annotations

import asyncio
import csv
import subprocess
import sys
import time
from pathlib import Path
from typing import cast

import pytest

from cellar.config import ModelDeployment
from cellar.config_access import CanarySettings, GoldenPrompt
from cellar.server.canary import Canary, Result, check_answer, check_vectors
from cellar.server.metrics import Metrics
from cellar.server.supervisor import Supervisor
from cellar.store import ModelStore
from tests.gateway import MODEL, default_models, start_gateway
from tests.webhook import Receiver


def history_rows(path: Path) -> list[dict[str, str]]:
    if not path.exists():
        return []
    with path.open() as handle:
        return list(csv.DictReader(handle))


@pytest.mark.slow
def test_a_failing_golden_prompt_alerts_once(
    tmp_path: Path, store: ModelStore, receiver: Receiver
) -> None:
    models = default_models()
    models[0]["canary"] = [
        {
            "name": "alive",
            "prompt": "The capital of France is",
            "max_tokens": 4,
            "expect_regex": r"\S",
        },
        {
            "name": "impossible",
            "prompt": "Say hello.",
            "max_tokens": 4,
            "expect_regex": r"^NEVER-MATCHES-\d{40}$",
        },
    ]
    history = tmp_path / "canary.csv"
    sections = {"canary": {"interval": "2s", "webhook": receiver.url, "history": str(history)}}
    with start_gateway(tmp_path, store.root, models, sections=sections) as gw:
        deadline = time.monotonic() + 120
        while len({r["time"] for r in history_rows(history)}) < 8 and time.monotonic() < deadline:
            time.sleep(0.5)
        rows = history_rows(history)
        assert len(rows) >= 8  # 4 scheduled runs of 2 prompts
        assert {r["prompt"]: r["passed"] for r in rows[:2]} == {
            "alive": "True",
            "impossible": "False",
        }
        assert float(rows[0]["latency_ms"]) > 0 and "does not match" in rows[1]["detail"]
        assert len(receiver.bodies) == 1  # alerted once, after the third failed run
        alert = receiver.bodies[0]
        assert alert["status"] == "failing" and alert["model"] == MODEL
        assert alert["consecutive_failures"] == 3 and "impossible" in alert["text"]

        done = subprocess.run(
            [sys.executable, "-m", "cellar", "canary", "--base-url", gw.base_url],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert done.returncode == 1 and "FAIL" in done.stdout and "impossible" in done.stdout
        assert len(receiver.bodies) == 1
        with gw.http() as http:
            metrics = http.get("/metrics").text
        assert f'cellar:canary_passed{{model_name="{MODEL}",prompt="alive"}} 1.0' in metrics
        assert f'cellar:canary_passed{{model_name="{MODEL}",prompt="impossible"}} 0.0' in metrics
        assert "cellar:canary_consecutive_failures" in metrics
        assert "Cellar canary" in gw.log_text()


def test_recovery_is_announced_once(tmp_path: Path, receiver: Receiver) -> None:
    """The alert state machine: fail, fail (alert), fail, pass (recovery), pass."""

    async def scenario() -> None:
        import httpx

        async with httpx.AsyncClient() as http:
            settings = CanarySettings(failures_to_alert=2, webhook=receiver.url)
            canary = Canary(settings, cast(Supervisor, None), Metrics(), tmp_path / "h.csv", http)
            bad = Result("t", "m", "p", False, 1.0, "no")
            good = Result("t", "m", "p", True, 1.0, "")
            for results in ([bad], [bad], [bad], [good], [good]):
                await canary._track("m", results)

    asyncio.run(scenario())
    assert [b["status"] for b in receiver.bodies] == ["failing", "recovered"]


def test_answers_are_checked_by_regex_or_schema() -> None:
    regex = GoldenPrompt(prompt="x", expect_regex=r"Paris")
    assert check_answer(regex, " Paris, of course") is None
    assert check_answer(regex, "Lyon") is not None
    schema = GoldenPrompt(
        prompt="x",
        expect_json_schema={
            "type": "object",
            "required": ["city"],
            "properties": {"city": {"type": "string"}},
        },
    )
    assert check_answer(schema, '{"city": "Paris"}') is None
    assert "schema" in (check_answer(schema, '{"town": "Paris"}') or "")
    assert "not JSON" in (check_answer(schema, "Paris") or "")
    with pytest.raises(ValueError, match="exactly one"):
        GoldenPrompt(prompt="x")


def test_an_embedding_golden_is_two_texts_and_cosine_bounds() -> None:
    close = GoldenPrompt(texts=["a", "b"], min_cosine=0.5)
    same = {"data": [{"embedding": [1.0, 0.0]}, {"embedding": [2.0, 0.1]}]}
    apart = {"data": [{"embedding": [1.0, 0.0]}, {"embedding": [0.0, 3.0]}]}
    assert check_vectors(close, same) is None
    assert "below 0.5" in (check_vectors(close, apart) or "")
    assert "above 0.1" in (
        check_vectors(GoldenPrompt(texts=["a", "b"], max_cosine=0.1), same) or ""
    )
    for wrong in (
        {"texts": ["a", "b"]},  # no bound
        {"texts": ["a"], "min_cosine": 0.5},
        {"texts": ["a", ""], "min_cosine": 0.5},
        {"texts": ["a", "b"], "min_cosine": 0.5, "expect_regex": "x"},
        {"prompt": "x", "expect_regex": "x", "min_cosine": 0.5},
        {"texts": ["a", "b"], "prompt": "x", "min_cosine": 0.5},
    ):
        with pytest.raises(ValueError):
            GoldenPrompt.model_validate(wrong)
    embed = {"name": "m", "source": "x.gguf", "task": "embed"}
    with pytest.raises(ValueError, match=r"canary\[0\].*needs `texts`"):
        ModelDeployment.model_validate({**embed, "canary": [{"prompt": "x", "expect_regex": "y"}]})
    generate = {"name": "m", "source": "x.gguf"}
    with pytest.raises(ValueError, match=r"canary\[0\].*needs a `prompt`"):
        ModelDeployment.model_validate({**generate, "canary": [close.model_dump()]})
