"""`cellar bench` against the real model: through the gateway on both engines, straight at the
llama.cpp worker's own server, and against a gateway it starts itself from a config (with cold
start)."""

from __future__ import annotations

from pathlib import Path

import pytest

from cellar.benchmarks.suite.record import Run, load_run
from cellar.store import ModelStore
from tests.benchmarks.cli import cellar
from tests.gateway import BUNDLED_NAME, MODEL, Gateway, default_models, write_config
from tests.worker import BareWorker

pytestmark = pytest.mark.slow

PNGS = ("throughput.png", "latency.png", "latency_throughput.png")
SMALL = ("--input-len", "32", "--output-len", "16", "--no-generator-check")


def check_outputs(out: Path, levels: int) -> Run:
    run = load_run(out / "run.json")
    assert len(run.levels) == levels
    assert len((out / "levels.csv").read_text().strip().splitlines()) == levels + 1
    for name in PNGS:
        assert (out / name).read_bytes().startswith(b"\x89PNG"), name
    report = (out / "report.md").read_text()
    assert "## Results" in report and all(f"]({name})" in report for name in PNGS)
    for level in run.levels:
        m = level.metrics
        assert m is not None and m.failed == 0 and m.completed == 4
        assert m.ttft_ms.median is not None and m.tpot_ms.median is not None
        assert m.output_tokens_source == "usage" and m.short_outputs == 0
        assert all(r.generated == 16 for r in level.results)  # ignore_eos: fixed lengths
        assert all(r.prompt_tokens and abs(r.prompt_tokens - 32) <= 4 for r in level.results)
    assert run.workload.ignore_eos and run.workload.ignore_eos_honoured
    return run


def test_bench_through_the_gateway(gateway: Gateway, tmp_path: Path) -> None:
    out = tmp_path / "gateway"
    done = cellar(
        "bench",
        "--base-url",
        gateway.base_url,
        *SMALL,
        "--concurrency",
        "1,2",
        "--rate",
        "1",
        "-n",
        "4",
        "--slo",
        "ttft=10s,tpot=2s",
        "-o",
        str(out),
    )
    assert done.returncode == 0, done.stderr
    run = check_outputs(out, levels=3)
    assert [lv.label for lv in run.levels] == ["c=1", "c=2", "Poisson 1/s"]
    assert all(lv.metrics and lv.metrics.slo_met == 4 for lv in run.levels)
    # a Cellar gateway describes what it serves and where
    assert run.endpoint.cellar and run.hardware.server_source == "cellar"
    assert run.endpoint.engine in ("llamacpp", "vllm")
    assert run.endpoint.model_sha256 is not None and len(run.endpoint.model_sha256) == 64
    assert run.hardware.server is not None and run.hardware.server["cpu_cores_logical"] >= 1
    assert run.endpoint.deployment is not None and run.endpoint.deployment["name"] == MODEL


def test_bench_at_the_engine_s_own_server(worker: BareWorker, tmp_path: Path) -> None:
    """The llama.cpp worker's own OpenAI API, measured the same way (with its secret as the
    key, as any OpenAI server with a key)."""
    direct = tmp_path / "direct"
    done = cellar(
        "bench",
        "--base-url",
        worker.url,
        "--api-key",
        worker.secret,
        "--model",
        MODEL,
        *SMALL,
        "--concurrency",
        "2",
        "-n",
        "4",
        "-o",
        str(direct),
    )
    assert done.returncode == 0, done.stderr
    run = check_outputs(direct, levels=1)
    assert not run.endpoint.cellar and run.hardware.server_source == "local"


def test_bench_starts_a_gateway_from_a_config_and_times_cold_start(
    store: ModelStore, tmp_path: Path
) -> None:
    models = default_models()
    models[0]["preload"] = False
    config = write_config(tmp_path / "cellar.yaml", store.root, 0, models)
    out = tmp_path / "run"
    done = cellar(
        "bench",
        "--config",
        str(config),
        "--input-len",
        "32",
        "--output-len",
        "16",
        "--concurrency",
        "2",
        "-n",
        "4",
        "--cold",
        "--cold-runs",
        "1",
        "-o",
        str(out),
    )
    assert done.returncode == 0, done.stderr
    run = check_outputs(out, levels=1)
    assert run.endpoint.started_from_config == str(config.resolve())
    assert run.endpoint.quantization == "q4_k_m"
    assert run.endpoint.model_sha256 == store.get(BUNDLED_NAME).sha256
    assert run.cold is not None
    cold, warm = run.cold.cold_ttft_ms[0], min(run.cold.warm_ttft_ms)
    assert cold > 5 * warm  # loading the model is in the cold figure
    assert run.generator is not None and run.generator.max_request_rate > 100
    report = (out / "report.md").read_text()
    assert "## Cold start" in report and "## The generator's own cost" in report
    assert (out / "gateway.log").is_file()
