"""Drift on real traffic: English requests with short answers, then Vietnamese ones with long
answers, through the real gateway and worker; `cellar drift` reads the gateway's audit log.
And the gateway's scheduled report: gauges, and one webhook message per new drift."""

from __future__ import annotations

import asyncio
import json
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
from PIL import Image

from cellar.config_access import DriftSettings
from cellar.server.drift import DriftMonitor
from cellar.server.metrics import Metrics
from tests.drift_data import audit_lines
from tests.gateway import MODEL, Gateway, run_cellar
from tests.webhook import Receiver

ENGLISH = [
    "What is the capital of France?",
    "Name a fruit that is yellow.",
    "How many legs does a spider have?",
    "What colour is the sky on a clear day?",
    "Give me a word that rhymes with cat.",
    "What do bees make?",
]
VIETNAMESE = [
    "Thủ đô của nước Pháp là gì?",
    "Hãy kể tên một loại quả màu vàng.",
    "Con nhện có bao nhiêu chân?",
    "Bầu trời có màu gì vào một ngày đẹp trời?",
    "Hãy viết một câu chuyện ngắn về một chú mèo.",
    "Ong làm ra cái gì?",
]
ROUNDS = 4  # 24 requests per window: above the 20 a feature needs


def _ask(gateway: Gateway, prompt: str, max_tokens: int) -> None:
    gateway.client().chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": prompt}],
        max_tokens=max_tokens,
        temperature=0.7,
        extra_body={"ignore_eos": True},
    )


def _traffic(gateway: Gateway, prompts: list[str], max_tokens: int) -> None:
    with ThreadPoolExecutor(4) as pool:
        list(pool.map(lambda p: _ask(gateway, p, max_tokens), prompts * ROUNDS))


@pytest.mark.slow
def test_vietnamese_traffic_with_longer_answers_drifts_in_language_and_length(
    llama_gateway: Gateway, tmp_path: Path
) -> None:
    started = datetime.now(UTC)
    _traffic(llama_gateway, ENGLISH, 6)
    time.sleep(1.0)
    split = datetime.now(UTC)
    time.sleep(1.0)
    _traffic(llama_gateway, VIETNAMESE, 40)
    until = datetime.now(UTC) + timedelta(seconds=1)
    config = llama_gateway.log.parent / "cellar.yaml"
    done = run_cellar(
        "drift", MODEL, "--config", str(config), "--until", until.isoformat(),
        "--window", f"{(until - split).total_seconds():.2f}s",
        "--baseline", f"{(split - started).total_seconds():.2f}s",
        "--out", str(tmp_path / "report"),
    )  # fmt: skip
    assert done.returncode == 0, done.stderr + done.stdout
    report = (tmp_path / "report" / "report.md").read_text()
    rows = {
        cells[1].strip(): cells[3].strip()
        for cells in (row.split("|") for row in report.splitlines() if row.startswith("| "))
    }
    assert rows["prompt_script"] == "drift", report
    assert rows["completion_tokens"] == "drift", report
    for feature in ("status", "finish_reason", "response_format", "tools"):
        assert rows[feature].startswith("stable"), (feature, report)
    assert "- Baseline: " in report and ", 24 requests" in report
    with Image.open(tmp_path / "report" / "prompt_script.png") as image:
        title = image.text["Title"]  # type: ignore[attr-defined]
    assert title.startswith(f"{MODEL}: prompt_script (PSI ") and title.endswith("drift)")


def test_the_gateway_s_scheduled_report_sets_gauges_and_alerts_once(
    tmp_path: Path, receiver: Receiver
) -> None:
    audit = tmp_path / "audit.jsonl"
    lines = audit_lines(300, datetime.now(UTC) - timedelta(days=2, minutes=-5))
    audit.write_text("\n".join(json.dumps(line) for line in lines) + "\n")
    metrics = Metrics()
    settings = DriftSettings(baseline="1d", window="1d", threshold=0.25)

    async def scenario() -> None:
        async with httpx.AsyncClient() as http:
            monitor = DriftMonitor(settings, audit, ["gemma"], metrics, http, receiver.url)
            first = await monitor.run()
            assert {r.feature for r in first["gemma"] if r.verdict == "drift"} == {
                "prompt_script",
                "answer_script",
                "completion_tokens",
            }
            await monitor.run()  # the same drift again: no second message

    asyncio.run(scenario())
    score = metrics.registry.get_sample_value(
        "cellar:drift_score", {"model_name": "gemma", "feature": "prompt_script"}
    )
    assert score is not None and score > 0.25
    stable = metrics.registry.get_sample_value(
        "cellar:drift_score", {"model_name": "gemma", "feature": "tools"}
    )
    assert stable is not None and stable < 0.1
    [message] = receiver.bodies
    assert message["model"] == "gemma" and message["status"] == "drift"
    assert set(message["features"]) == {"prompt_script", "answer_script", "completion_tokens"}
    assert "prompt_script PSI" in message["text"] and "latin-marked 100%" in message["text"]
