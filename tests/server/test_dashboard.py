"""The Grafana dashboard in configs/ only queries metrics the gateway exports."""

from __future__ import annotations

import json
import re

import pytest

from tests.gateway import REPO, Gateway

DASHBOARD = REPO / "configs" / "grafana-dashboard.json"
SUFFIXES = ("", "_total", "_created", "_bucket", "_sum", "_count")


def queried_metrics() -> set[str]:
    dashboard = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    exprs += [v["query"] for v in dashboard["templating"]["list"] if v["type"] == "query"]
    return {name for expr in exprs for name in re.findall(r"cellar:[A-Za-z0-9_:]+", expr)}


@pytest.mark.slow
def test_every_dashboard_metric_is_exported(llama_gateway: Gateway) -> None:
    with llama_gateway.http() as http:
        text = http.get("/metrics").text
    families = set(re.findall(r"^# TYPE (\S+) ", text, flags=re.MULTILINE))
    exported = {family + suffix for family in families for suffix in SUFFIXES}
    queried = queried_metrics()
    assert len(queried) >= 12
    assert queried <= exported, f"not exported: {sorted(queried - exported)}"
