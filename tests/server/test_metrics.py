"""/metrics exposes the gateway's Prometheus metrics, and they move with traffic."""

from __future__ import annotations

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.gateway import MODEL, Gateway

pytestmark = pytest.mark.slow


def _samples(gateway: Gateway) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    with gateway.http() as http:
        response = http.get("/metrics")
    assert response.status_code == 200
    out = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


def _value(samples: dict, name: str, **labels: str) -> float:
    return float(samples.get((name, tuple(sorted({"model_name": MODEL, **labels}.items()))), 0.0))


def test_metrics_move_after_requests(gateway: Gateway) -> None:
    before = _samples(gateway)
    client = gateway.client()
    reply = client.completions.create(model=MODEL, prompt="Hello there", max_tokens=5)
    list(client.completions.create(model=MODEL, prompt="Hello there", max_tokens=5, stream=True))
    after = _samples(gateway)

    assert reply.usage is not None
    ok = _value(after, "cellar:requests_total", status="200")
    assert ok - _value(before, "cellar:requests_total", status="200") == 2
    prompt = _value(after, "cellar:prompt_tokens_total") - _value(
        before, "cellar:prompt_tokens_total"
    )
    assert prompt == 2 * reply.usage.prompt_tokens
    generated = _value(after, "cellar:generation_tokens_total") - _value(
        before, "cellar:generation_tokens_total"
    )
    assert generated >= 2
    e2e = "cellar:e2e_request_latency_seconds_count"
    assert _value(after, e2e) - _value(before, e2e) == 2
    ttft = "cellar:time_to_first_token_seconds_count"
    assert _value(after, ttft) - _value(before, ttft) == 1
    assert ("cellar:num_requests_running", (("model_name", MODEL),)) in after
    assert ("cellar:num_requests_waiting", (("model_name", MODEL),)) in after


def test_errors_are_counted_by_status(gateway: Gateway) -> None:
    before = _samples(gateway)
    with gateway.http() as http:
        # refused by the model's checks (a body that fails validation never names a model)
        tools = [{"type": "function", "function": {"name": "f"}}]
        refused = http.post("/v1/completions", json={"model": MODEL, "prompt": "x", "tools": tools})
        assert refused.status_code == 400
    after = _samples(gateway)
    counted = "cellar:requests_total"
    assert _value(after, counted, status="400") - _value(before, counted, status="400") == 1
