"""`cellar bench` against the local echo endpoint: the generator's own cost, errors midway,
and Ctrl-C."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

from cellar.benchmarks.suite.record import load_run
from cellar.benchmarks.suite.selfcheck import echo_endpoint
from tests.benchmarks.cli import cellar

QUIET = ("--no-generator-check", "--warmup", "0", "--ignore-eos", "off", "--model", "echo")


def test_self_check_reports_the_generators_cost() -> None:
    done = cellar("bench", "--self-check", timeout=300)
    assert done.returncode == 0, done.stderr
    found = re.search(
        r"p50 ([\d.]+) ms, p99 ([\d.]+) ms; capacity ([\d,]+) requests/s", done.stdout
    )
    assert found, done.stdout
    p50, capacity = float(found[1]), float(found[3].replace(",", ""))
    # the bounds: under 2 ms added at concurrency 1; this machine's server does about
    # 3 requests/s, so 10x that is a floor far below what the generator drives
    assert p50 < 2.0
    assert capacity > 100


def test_errors_midway_are_counted_and_results_still_written(tmp_path: Path) -> None:
    out = tmp_path / "run"
    with echo_endpoint(fail_after=10) as url:
        done = cellar(
            "bench",
            "--base-url",
            url,
            *QUIET,
            "--dataset",
            "prompts",
            "--concurrency",
            "2",
            "-n",
            "31",
            "--output-len",
            "8",
            "-o",
            str(out),
        )
    assert done.returncode == 0, done.stderr
    run = load_run(out / "run.json")
    metrics = run.levels[0].metrics
    assert metrics is not None
    assert metrics.completed == 10 and metrics.failed == 21
    # after the first 10, the echo endpoint fails in turn: HTTP 503, an error event, a drop
    assert metrics.errors == {"http_503:overloaded": 7, "stream:worker_crashed": 7, "dropped": 7}
    assert metrics.output_throughput > 0
    report = (out / "report.md").read_text()
    assert "`http_503:overloaded` x 7" in report and "`dropped` x 7" in report
    assert "http_503:overloaded=7" in (out / "levels.csv").read_text()
    assert (out / "throughput.png").is_file()


def test_a_bad_prompt_file_names_the_line(tmp_path: Path) -> None:
    prompts = tmp_path / "mine.jsonl"
    prompts.write_text('{"prompt": "hello"}\n{"prompt": ""}\n')
    with echo_endpoint() as url:
        done = cellar(
            "bench",
            "--base-url",
            url,
            *QUIET,
            "--dataset",
            str(prompts),
            "-o",
            str(tmp_path / "out"),
        )
    assert done.returncode == 2
    assert "mine.jsonl:2" in done.stderr and "non-empty" in done.stderr


def test_ctrl_c_writes_what_was_measured(tmp_path: Path) -> None:
    out = tmp_path / "run"
    with echo_endpoint() as url:
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "cellar",
                "bench",
                "--base-url",
                url,
                *QUIET,
                "--rate",
                "20",
                "--duration",
                "120s",
                "-o",
                str(out),
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        time.sleep(6)
        process.send_signal(signal.SIGINT)
        _, stderr = process.communicate(timeout=60)
    assert process.returncode == 130, stderr
    record = json.loads((out / "run.json").read_text())
    assert record["interrupted"] is True
    level = record["levels"][0]
    assert level["interrupted"] is True
    assert len(level["results"]) >= 10  # about 20 a second once the probes are done
    assert level["metrics"]["completed"] == len(level["results"])
    assert "interrupted" in (out / "report.md").read_text()
