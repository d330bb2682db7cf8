"""Reading what the gateway records: the audit log (written by server/audit.py) with its
rotated files, the per-key, per-model summary `cellar audit summary` prints, and each stored
version's live figures `cellar models history` prints; and where the canary history lives."""

from __future__ import annotations

import csv
import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from statistics import median, quantiles
from typing import Any

import platformdirs


def default_audit_path() -> Path:
    return Path(platformdirs.user_data_dir("cellar")) / "audit" / "audit.jsonl"


def default_canary_history() -> Path:
    return Path(platformdirs.user_data_dir("cellar")) / "canary.csv"


def default_batches_dir() -> Path:
    return Path(platformdirs.user_data_dir("cellar")) / "batches"


def rotated_files(path: Path) -> list[Path]:
    """The log and its rotated files, oldest first (the current file last)."""
    rotated = sorted(path.parent.glob(f"{path.stem}-*{path.suffix}"))
    return rotated + ([path] if path.exists() else [])


def read_lines(path: Path, since: datetime | None = None) -> Iterator[dict[str, Any]]:
    """Every audit line at or after `since`, oldest first; unreadable lines are skipped."""
    for file in rotated_files(path):
        with file.open(encoding="utf-8", errors="replace") as handle:
            for raw in handle:
                try:
                    line = json.loads(raw)
                    when = datetime.fromisoformat(line["time"])
                except (ValueError, KeyError, TypeError):
                    continue
                if since is None or when >= since:
                    yield line


@dataclass
class Usage:
    requests: int = 0
    errors: int = 0
    refused: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    latencies: list[float] = field(default_factory=list)
    ttfts: list[float] = field(default_factory=list)

    def add(self, line: dict[str, Any]) -> None:
        status = int(line.get("status") or 0)
        self.requests += 1
        self.errors += status >= 400
        self.refused += status in (401, 403, 413, 429)
        self.prompt_tokens += int(line.get("prompt_tokens") or 0)
        self.completion_tokens += int(line.get("completion_tokens") or 0)
        if status < 400 and line.get("latency_ms") is not None:
            self.latencies.append(float(line["latency_ms"]))
        if line.get("ttft_ms") is not None:
            self.ttfts.append(float(line["ttft_ms"]))

    def row(self) -> dict[str, str]:
        return {
            "requests": str(self.requests),
            "errors": str(self.errors),
            "refused": str(self.refused),
            "prompt tokens": str(self.prompt_tokens),
            "completion tokens": str(self.completion_tokens),
            "latency p50 ms": f"{median(self.latencies):.0f}" if self.latencies else "-",
            "TTFT p50 ms": f"{median(self.ttfts):.0f}" if self.ttfts else "-",
        }


def summarize(lines: Iterator[dict[str, Any]]) -> dict[tuple[str, str], Usage]:
    """(key name, model) -> usage; requests without a valid key count as `(no key)`."""
    table: dict[tuple[str, str], Usage] = {}
    for line in lines:
        key = (str(line.get("key") or "(no key)"), str(line.get("model") or "-"))
        table.setdefault(key, Usage()).add(line)
    return dict(sorted(table.items()))


@dataclass
class Served:
    """One stored version's record while it served: its requests in the audit log, its golden
    prompts in the canary history."""

    first: str = ""
    last: str = ""
    requests: int = 0
    errors: int = 0
    latencies: list[float] = field(default_factory=list)
    golden_runs: int = 0
    golden_passed: int = 0

    def row(self) -> dict[str, str]:
        p90 = quantiles(self.latencies, n=10)[-1] if len(self.latencies) > 1 else None
        return {
            "served": f"{self.first[:16]} - {self.last[:16]}".replace("T", " ")
            if self.requests
            else "-",
            "requests": str(self.requests),
            "error rate": f"{self.errors / self.requests:.1%}" if self.requests else "-",
            "latency p50 ms": f"{median(self.latencies):.0f}" if self.latencies else "-",
            "latency p90 ms": f"{p90:.0f}" if p90 is not None else "-",
            "canary passed": (
                f"{self.golden_passed}/{self.golden_runs}" if self.golden_runs else "-"
            ),
        }


def served_versions(
    name: str, lines: Iterable[dict[str, Any]], canary_history: Path | None
) -> dict[str, Served]:
    """`NAME@K` -> how it served: requests, server errors (5xx) and latency of its generation
    requests from the audit log; golden prompts from the canary history (rows from before it
    named versions are skipped)."""
    found: dict[str, Served] = {}
    for line in lines:
        version = line.get("version")
        if not isinstance(version, str) or version.rpartition("@")[0] != name:
            continue
        served = found.setdefault(version, Served())
        served.first = served.first or str(line.get("time", ""))
        served.last = str(line.get("time", ""))
        served.requests += 1
        status = int(line.get("status") or 0)
        served.errors += status >= 500
        if status < 400 and isinstance(line.get("latency_ms"), int | float):
            served.latencies.append(float(line["latency_ms"]))
    if canary_history is not None and canary_history.is_file():
        with canary_history.open(newline="", encoding="utf-8", errors="replace") as handle:
            for row in csv.DictReader(handle):
                version = row.get("version") or ""
                if version.rpartition("@")[0] != name:
                    continue
                served = found.setdefault(version, Served())
                served.golden_runs += 1
                served.golden_passed += row.get("passed") == "True"
    return dict(sorted(found.items(), key=lambda item: int(item[0].rpartition("@")[2] or 0)))
