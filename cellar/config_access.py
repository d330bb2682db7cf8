"""Config sections for running Cellar where others can reach it: API keys, limits, the audit log,
TLS, canary checks (golden prompts run on a schedule), the drift report, batches and priorities."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, field_validator, model_validator

from cellar.config_types import Duration, Size, Strict


class AuthSettings(Strict):
    """Who may call the gateway."""

    mode: Literal["auto", "keys", "none"] = Field(
        "auto",
        description="`auto`: API keys are required as soon as the key file holds any key (a "
        "revoked one included), and the gateway refuses to listen beyond loopback without keys; "
        "`keys`: always required; `none`: never (an explicit choice for a closed network).",
    )
    keys_file: Path | None = Field(
        None,
        description="Key file (`cellar keys` writes it). Default: $CELLAR_KEYS, else "
        "<user data dir>/cellar/keys.json.",
    )
    health: Literal["open", "key"] = Field(
        "open", description="Whether /health/* needs a key (load balancers usually have none)."
    )
    metrics: Literal["open", "key", "admin"] = Field(
        "key", description="What /metrics needs once keys are in use (Prometheus can send one)."
    )


class LimitSettings(Strict):
    """Limits every request meets, whoever sends it (per-key rates are set on the key)."""

    max_body: Size = Field(4 * 2**20, ge=1024, description="Largest request body (413 beyond).")
    request_timeout: Duration = Field(
        600, gt=0, description="Longest a request may take, queueing included (504 beyond)."
    )


class AuditSettings(Strict):
    """One JSON line per request: who, which model, outcome, tokens, timings."""

    enabled: bool = Field(True, description="Write the audit log.")
    path: Path | None = Field(
        None, description="Log file. Default: <user data dir>/cellar/audit/audit.jsonl."
    )
    log_content: bool = Field(
        False, description="Also log prompt and response text (off: never written anywhere)."
    )
    max_bytes: Size = Field(100 * 2**20, ge=1024, description="Rotate when the file is this big.")
    max_age: Duration = Field(86400, gt=0, description="Rotate when the file is this old.")
    keep: int = Field(30, ge=1, description="Rotated files kept; older ones are deleted.")


class TlsSettings(Strict):
    """HTTPS for the gateway."""

    certfile: Path = Field(..., description="PEM certificate (chain).")
    keyfile: Path = Field(..., description="PEM private key.")


class CanarySettings(Strict):
    """Golden prompts (each model's `canary:`) run on a schedule; alerts after failures."""

    interval: Duration | None = Field(
        None, description="How often the gateway runs them (e.g. 24h); unset: only on demand."
    )
    failures_to_alert: int = Field(3, ge=1, description="Consecutive failures before an alert.")
    webhook: str | None = Field(
        None,
        pattern=r"^https?://",
        description="URL that receives a JSON POST on alert and on recovery (Slack-style `text`).",
    )
    history: Path | None = Field(
        None, description="CSV of every run. Default: <user data dir>/cellar/canary.csv."
    )
    timeout: Duration = Field(120, gt=0, description="Longest one golden prompt may take.")


class DriftSettings(Strict):
    """The drift report (`cellar drift`), run by the gateway on a schedule: each model's recent
    window against its baseline, from the audit log; the `cellar:drift_score` gauges, and the
    canary webhook when a feature's score passes the threshold."""

    interval: Duration | None = Field(
        None, description="How often the gateway runs it (e.g. 1h); unset: only by hand."
    )
    baseline: Duration = Field(
        7 * 86400, gt=0, description="The baseline's length, before the window."
    )
    window: Duration = Field(86400, gt=0, description="The recent window's length, up to now.")
    threshold: float = Field(
        0.25, gt=0, description="PSI above which a feature is reported to the webhook."
    )


class GoldenPrompt(Strict):
    """A prompt whose answer must match: the model still behaves. For an embedding model, two
    texts whose vectors' cosine similarity must stay within bounds."""

    name: str | None = Field(None, description="Shown in history and alerts (default: #index).")
    prompt: str | None = Field(None, description="A completion prompt.")
    messages: list[dict[str, Any]] | None = Field(None, description="Or chat messages.")
    texts: list[Annotated[str, Field(min_length=1)]] | None = Field(
        None,
        min_length=2,
        max_length=2,
        description="Or, for an embedding model (`task: embed`), two texts to embed.",
    )
    min_cosine: float | None = Field(
        None, ge=-1, le=1, description="`texts`: their cosine similarity must be at least this."
    )
    max_cosine: float | None = Field(
        None, ge=-1, le=1, description="`texts`: ... and at most this (texts that must differ)."
    )
    max_tokens: int = Field(32, ge=1)
    expect_regex: str | None = Field(None, description="The answer must match (re.search).")
    expect_json_schema: dict[str, Any] | None = Field(
        None, description="Or: the answer must be JSON valid against this schema."
    )

    @field_validator("expect_regex")
    @classmethod
    def _compiles(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                re.compile(value)
            except re.error as exc:
                raise ValueError(f"not a regular expression: {exc}") from None
        return value

    @property
    def embeds(self) -> bool:
        """An embedding model's golden (`texts`), not a prompt's."""
        return self.texts is not None

    @model_validator(mode="after")
    def _one_each(self) -> GoldenPrompt:
        given = [self.prompt is not None, self.messages is not None, self.embeds]
        if sum(given) != 1:
            raise ValueError("give exactly one of `prompt`, `messages` or `texts`")
        bounds = self.min_cosine is not None or self.max_cosine is not None
        expects = self.expect_regex is not None or self.expect_json_schema is not None
        if self.embeds:
            if expects or not bounds:
                raise ValueError("`texts` are checked with `min_cosine` and/or `max_cosine`")
        elif bounds:
            raise ValueError("`min_cosine` and `max_cosine` go with `texts`")
        elif (self.expect_regex is None) == (self.expect_json_schema is None):
            raise ValueError("give exactly one of `expect_regex` or `expect_json_schema`")
        return self


class BatchSettings(Strict):
    """The Files and Batches API: request files run in the background at a low priority, kept in
    a SQLite database so a restart resumes them; and how background work shares the slots."""

    enabled: bool = Field(True, description="Serve /v1/files and /v1/batches.")
    dir: Path | None = Field(
        None, description="Files and the database. Default: <user data dir>/cellar/batches."
    )
    max_file_size: Size = Field(
        200 * 2**20, ge=1024, description="Largest uploaded file (413 beyond)."
    )
    max_requests: int = Field(
        50_000, ge=1, le=1_000_000, description="Most requests (lines) in one batch file."
    )
    file_ttl: Duration = Field(
        30 * 86400,
        gt=0,
        description="Files are deleted this long after they are made (results: after their "
        "batch ends).",
    )
    max_bytes_per_key: Size = Field(
        2 * 2**30, ge=1024, description="Bytes of files one key may keep (429 beyond)."
    )
    max_queued_per_key: int = Field(
        200_000, ge=1, description="Requests one key may have waiting in its unfinished batches."
    )
    in_flight: int = Field(
        8, ge=1, le=256, description="Requests of one batch sent to its model at a time."
    )
    priority: int = Field(
        10,
        ge=1,
        le=1000,
        description="Priority of batch requests (above 0: background work; higher waits more).",
    )
    background_share: float = Field(
        0.125,
        ge=0,
        le=1,
        description="Share of a model's slots background work (batches, requests with priority "
        "above 0) may hold while interactive requests are about (rounded down, at least one "
        "unless 0); when none are, it takes them all. Running requests are never stopped.",
    )
    interactive_grace: Duration = Field(
        5,
        ge=0,
        description="Interactive requests count as about for this long after the last one ends.",
    )
