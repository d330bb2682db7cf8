"""The record of one `cellar bench` run: what was measured, on what, and every request's timings.

The JSON file is this model dumped whole; `cellar bench compare` reads it back. Times inside a
request are seconds; summaries are milliseconds (as `vllm bench serve` prints them).
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from cellar.errors import ToolError

FORMAT_VERSION = 1

Mode = Literal["concurrency", "rate"]
Api = Literal["completions", "chat", "embeddings"]
TokenSource = Literal["usage", "chunks", "mixed", "none"]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


class RequestResult(_Model):
    """One request as the generator saw it."""

    start_s: float = Field(description="Sent, seconds after the level began.")
    ttft_s: float | None = None
    latency_s: float | None = None
    itl_s: list[float] = Field(default_factory=list, description="Gaps between content chunks.")
    prompt_tokens: int | None = None
    output_tokens: int | None = Field(None, description="From the server's usage, when given.")
    output_chunks: int = 0
    inputs: int = Field(0, description="Texts embedded (embeddings requests).")
    requested_output_tokens: int
    error: str | None = Field(None, description="Error kind; None when the request succeeded.")
    error_detail: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None

    @property
    def generated(self) -> int:
        """Output tokens: the server's count, else one per content chunk."""
        return self.output_tokens if self.output_tokens is not None else self.output_chunks


class Stat(_Model):
    """One latency's distribution in milliseconds (None when nothing was measured)."""

    mean: float | None = None
    median: float | None = None
    p90: float | None = None
    p99: float | None = None
    std: float | None = None
    max: float | None = None


class LevelMetrics(_Model):
    duration_s: float
    completed: int
    failed: int
    errors: dict[str, int]
    request_throughput: float
    output_throughput: float
    total_token_throughput: float
    total_input_tokens: int
    total_output_tokens: int
    input_throughput: float = Field(0.0, description="Texts embedded per second (embeddings).")
    input_token_throughput: float = Field(0.0, description="Prompt tokens per second.")
    ttft_ms: Stat
    tpot_ms: Stat
    itl_ms: Stat
    e2el_ms: Stat
    mean_in_flight: float = Field(description="Requests in flight on average over the level.")
    goodput: float | None = Field(None, description="Requests/s that met every SLO.")
    slo_met: int | None = None
    output_tokens_source: TokenSource
    requested_output_tokens_mean: float | None = None
    output_tokens_mean: float | None = None
    short_outputs: int = Field(0, description="Completed with fewer tokens than requested.")


class Level(_Model):
    mode: Mode
    value: float = Field(description="Requests in flight (concurrency) or offered requests/s.")
    requests: int | None = Field(None, description="Requests asked for (None: by duration).")
    duration_s: float | None = Field(None, description="Seconds asked for (None: by count).")
    results: list[RequestResult] = Field(default_factory=list)
    cancelled: int = Field(0, description="In flight when the run was interrupted.")
    interrupted: bool = False
    metrics: LevelMetrics | None = None

    @property
    def label(self) -> str:
        if self.mode == "concurrency":
            return f"c={self.value:g}"
        return f"Poisson {self.value:.3g}/s"


class SelfCheck(_Model):
    """The generator's own cost, against a local endpoint that answers at once."""

    ttft_p50_ms: float
    ttft_p99_ms: float
    max_request_rate: float
    concurrency_at_max: int
    rate_accuracy: float | None = Field(
        None, description="Achieved / offered request rate in an open-loop test."
    )
    paced_rate: float | None = Field(None, description="Offered rate of that test (half capacity).")
    paced_ttft_p50_ms: float | None = Field(None, description="TTFT under that load.")
    paced_ttft_p99_ms: float | None = None


class ColdStart(_Model):
    cold_ttft_ms: list[float]
    warm_ttft_ms: list[float]


class Endpoint(_Model):
    base_url: str
    model: str
    api: Api
    server_header: str | None = None
    cellar: bool = Field(False, description="Whether it is a Cellar gateway (/admin answered).")
    engine: str | None = None
    engine_version: str | None = None
    model_sha256: str | None = None
    quantization: str | None = None
    deployment: dict[str, Any] | None = None
    started_from_config: str | None = None


class Hardware(_Model):
    server: dict[str, Any] | None = Field(None, description="The serving machine, when known.")
    server_source: Literal["cellar", "local", "unknown"]
    server_versions: dict[str, str] = Field(default_factory=dict)
    client: dict[str, Any]


class WorkloadSpec(_Model):
    dataset: str
    input_len: int | None = None
    output_len: int | None = None
    range_ratio: float = 0.0
    seed: int
    ignore_eos: bool = Field(description="Whether fixed output lengths were asked for.")
    ignore_eos_honoured: bool | None = None
    warmup_requests: int
    tokens_per_word: float | None = Field(None, description="Random prompts' calibration.")
    inputs_per_request: int = Field(1, description="Texts per embeddings request.")


class Run(_Model):
    format_version: int = FORMAT_VERSION
    label: str
    started_at: datetime
    finished_at: datetime | None = None
    interrupted: bool = False
    command: list[str] = Field(default_factory=list)
    endpoint: Endpoint
    hardware: Hardware
    workload: WorkloadSpec
    slo_ms: dict[str, float] = Field(default_factory=dict)
    generator: SelfCheck | None = None
    cold: ColdStart | None = None
    levels: list[Level] = Field(default_factory=list)


class RecordError(ToolError):
    """A file that is not a readable bench record."""


def load_run(path: Path) -> Run:
    try:
        return Run.model_validate_json(path.read_bytes())
    except OSError as exc:
        raise RecordError(f"{path}: cannot read: {exc.strerror}") from None
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first["loc"]) or "(top level)"
        raise RecordError(f"{path}: not a cellar bench record: {where}: {first['msg']}") from None
