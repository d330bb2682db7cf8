"""The one config loader: YAML files validated by pydantic, used by the server, the CLI and tests.

A bad config never gets past `load_config`: the ConfigError it raises names the file, the key
(e.g. `models[0].llamacpp.n_ctx`) and the reason.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import Field, ValidationError, field_validator, model_validator

from cellar.config_access import (
    AuditSettings,
    AuthSettings,
    BatchSettings,
    CanarySettings,
    DriftSettings,
    GoldenPrompt,
    LimitSettings,
    TlsSettings,
)
from cellar.config_types import Duration, Size, Strict
from cellar.cpus import format_cpu_list, parse_cpu_list
from cellar.errors import ConfigError, StoreError
from cellar.rollouts import RolloutSettings
from cellar.versions import check_tag

ENV_CONFIG = "CELLAR_CONFIG"
ENV_HOST = "CELLAR_HOST"
ENV_PORT = "CELLAR_PORT"
ENV_STORE = "CELLAR_STORE"
DEFAULT_CONFIG = Path("configs/default.yaml")


class ServerSettings(Strict):
    """Where the gateway listens and how it logs."""

    host: str = Field("127.0.0.1", description="Address to bind. Loopback unless told otherwise.")
    port: int = Field(8000, ge=0, le=65535, description="TCP port of the gateway (0 = any free).")
    log_level: Literal["debug", "info", "warning", "error"] = Field(
        "info", description="Log level of the gateway and its workers."
    )
    memory_budget: Size | Literal["auto"] = Field(
        "auto",
        description="RAM all loaded models may use together (e.g. 12GiB); `auto`: 80% of this "
        "machine's RAM. Loading past it evicts idle models, least recently used first.",
    )
    keep_alive: Duration = Field(
        -1, description="Default idle time before a model is unloaded (30s, 15m; -1: never)."
    )
    load_timeout_s: float = Field(
        600, gt=0, description="How long a request waits for its model to load."
    )
    drain_timeout: Duration = Field(
        600.0,
        description="When a model switches versions, how long requests still running on the "
        "old version may take before its worker is stopped anyway.",
    )
    tls: TlsSettings | None = Field(None, description="Serve HTTPS with this certificate.")
    trusted_proxies: list[str] = Field(
        default_factory=list,
        description="Addresses of reverse proxies whose X-Forwarded-For / X-Forwarded-Proto "
        "are believed (the audit log's `client` then names the real caller). Empty: those "
        "headers are ignored from everyone, loopback included.",
    )
    allowed_hosts: list[str] = Field(
        default_factory=list,
        description="Host names (no port) the gateway answers to besides localhost, 127.0.0.1, "
        "::1 and `host`; `*` answers any (behind a proxy that checks Host itself). Others get "
        "400: a web page in a browser on this machine cannot reach the gateway under its own "
        "domain (DNS rebinding).",
    )


class StoreSettings(Strict):
    """The local model store."""

    path: Path | None = Field(
        None,
        description="Store directory. Default: $CELLAR_STORE, else <user data dir>/cellar/models.",
    )


class LlamaCppSettings(Strict):
    """Settings of a llama.cpp worker (llama-cpp-python)."""

    n_ctx: int = Field(
        4096, ge=16, description="Context window of each request in tokens (prompt + completion)."
    )
    n_parallel: int = Field(
        4,
        ge=1,
        le=256,
        description="Requests decoded together (sequence slots); more wait in a queue. "
        "KV memory grows with n_ctx x n_parallel.",
    )
    n_threads: int | Literal["auto"] = Field(
        "auto", description="CPU threads for decoding; `auto` uses every core the process may use."
    )
    n_batch: int = Field(512, ge=1, description="Largest number of prompt tokens per decode call.")
    n_gpu_layers: int = Field(0, ge=-1, description="Layers offloaded to a GPU/Metal (-1 = all).")

    @field_validator("n_threads")
    @classmethod
    def _positive_threads(cls, value: int | str) -> int | str:
        if isinstance(value, int) and value < 1:
            raise ValueError("must be `auto` or a positive integer")
        return value


class VllmSettings(Strict):
    """Settings of a vLLM worker (vLLM's own OpenAI server, started by the gateway)."""

    python: Path | None = Field(
        None,
        description="Python interpreter of the environment vLLM is installed in (vLLM pins its "
        "own torch and transformers); default: $CELLAR_VLLM_PYTHON, else the gateway's own.",
    )
    dtype: Literal["auto", "bfloat16", "float16", "float32"] = Field(
        "auto", description="Weight and activation dtype (`auto`: from the checkpoint)."
    )
    max_model_len: int | None = Field(
        None, ge=16, description="Context window in tokens; default: the checkpoint's."
    )
    max_num_seqs: int | None = Field(
        None, ge=1, description="Sequences vLLM batches at once; default: vLLM's."
    )
    gpu_memory_utilization: float = Field(
        0.9, gt=0, le=1, description="Share of each GPU's memory vLLM may use (weights + KV)."
    )
    tensor_parallel_size: int = Field(1, ge=1, description="GPUs each layer is split across.")
    pipeline_parallel_size: int = Field(
        1, ge=1, description="Pipeline stages (GPUs or hosts) the layers are spread over."
    )
    quantization: str | None = Field(
        None, description="vLLM quantization method, e.g. awq, gptq, fp8, bitsandbytes."
    )
    enforce_eager: bool = Field(
        False,
        description="Skip torch.compile and CUDA graphs: less memory and a faster start, slower "
        "decoding (on the CPU: ready in ~65 s instead of ~170 s, 6-9% fewer tokens/s).",
    )
    distributed_executor_backend: Literal["auto", "mp", "ray"] = Field(
        "auto",
        description="How a model spread over several GPUs runs: `mp` (processes on this host), "
        "`ray` (a Ray cluster, for several hosts); `auto`: vLLM decides.",
    )
    ray_address: str | None = Field(
        None, description="Address of the Ray cluster's head (e.g. 10.0.0.5:6379) for `ray`."
    )
    gpus: list[int] | None = Field(
        None, description="GPU indices this worker may use (CUDA_VISIBLE_DEVICES); default: all."
    )
    lora_modules: dict[str, str] = Field(
        default_factory=dict,
        description="LoRA adapters served beside the base model: name -> PEFT adapter directory.",
    )
    max_lora_rank: int = Field(16, ge=1, description="Largest LoRA rank among the adapters.")
    cpu_kv_cache_space: Size | None = Field(
        None, description="KV cache size on a CPU build of vLLM (e.g. 2GiB); default: vLLM's."
    )
    extra_args: list[str] = Field(
        default_factory=list, description="More command-line arguments for vLLM's server."
    )
    env: dict[str, str] = Field(
        default_factory=dict, description="More environment variables for the vLLM worker."
    )


DEFAULT_WARMUP_PROMPTS = (
    "Hello",
    "The weather today is",
    "Write a short note to the team about the meeting tomorrow morning, the agenda, and who "
    "should bring the quarterly figures.",
)


class WarmupSettings(Strict):
    """Requests run before a model counts as ready, so the first real one is not the slow one."""

    enabled: bool = Field(True, description="Run warm-up prompts after loading.")
    prompts: list[str] = Field(
        default_factory=lambda: list(DEFAULT_WARMUP_PROMPTS),
        description="Raw completion prompts to run (prompts of several lengths warm more paths).",
    )
    max_tokens: int = Field(16, ge=1, description="Tokens generated per warm-up prompt.")


class AdapterDeployment(Strict):
    """A LoRA adapter served on top of its deployment's model."""

    name: str = Field(
        ...,
        min_length=1,
        pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$",
        description="Clients ask for `MODEL:NAME` (MODEL: the deployment's name).",
    )
    source: str = Field(
        ...,
        description="`store:NAME` for an adapter made by `cellar finetune` (its PEFT form serves "
        "vLLM, its GGUF form llama.cpp), or a path to a PEFT directory or an adapter .gguf.",
    )
    aliases: list[str] = Field(
        default_factory=list, description="More names clients may ask for to get this adapter."
    )
    scale: float = Field(1.0, gt=0, description="Strength of the adapter (llama.cpp).")


class ModelDeployment(Strict):
    """One model served by the gateway under `name`."""

    name: str = Field(
        ...,
        min_length=1,
        pattern=r"^[A-Za-z0-9][A-Za-z0-9._:/-]*$",
        description="The `model` clients ask for.",
    )
    source: str = Field(
        ...,
        description="`store:NAME` for a model in the store, or a path to a .gguf file or a "
        "Hugging Face checkpoint directory (relative paths are relative to the config file).",
    )
    task: Literal["generate", "embed"] = Field(
        "generate",
        description="`generate`: chat and completions; `embed`: an embedding model answering "
        "/v1/embeddings (llama.cpp: `n_parallel` inputs of at most `n_ctx` tokens, `n_batch` "
        "tokens in all, per encode).",
    )
    engine: Literal["auto", "llamacpp", "vllm"] = Field(
        "auto",
        description="Engine that serves the model; `auto`: vLLM on an NVIDIA GPU when a Hugging "
        "Face checkpoint exists, llama.cpp otherwise (`cellar models explain` says why).",
    )
    llamacpp: LlamaCppSettings = Field(
        default_factory=LlamaCppSettings, description="llama.cpp worker settings."
    )
    vllm: VllmSettings = Field(default_factory=VllmSettings, description="vLLM worker settings.")
    chat_template: str | None = Field(
        None,
        description="Chat template when the GGUF carries none: a built-in name (gemma, chatml), "
        "a path to a .jinja file, or the template text itself.",
    )
    tool_format: Literal["hermes", "none"] = Field(
        "hermes",
        description="How the model is told of `tools` and writes its calls when its chat "
        "template does not render tools itself: `hermes` (<tool_call>{json}</tool_call>), or "
        "`none` (requests with tools are refused).",
    )
    startup_timeout_s: float = Field(
        300, gt=0, description="How long the worker may take to load before it counts as failed."
    )
    preload: bool = Field(False, description="Load when the gateway starts, not on first use.")
    cpus: str | None = Field(
        None,
        description="CPU cores the worker may run on, as Linux lists them (`0-3,8`); default: "
        "every core the gateway may use. Workers that share cores slow each other (a vLLM CPU "
        "worker's OpenMP threads and llama.cpp's decode threads wait on each other's cores): "
        "give each its own. llama.cpp's `n_threads: auto` becomes the number of these cores; "
        "vLLM's OpenMP threads are bound to them.",
    )
    keep_alive: Duration | None = Field(
        None, description="Idle time before unloading (30s, 15m; -1: never); default: server's."
    )
    warmup: WarmupSettings = Field(default_factory=WarmupSettings, description="Warm-up.")
    max_concurrency: int | None = Field(
        None,
        ge=1,
        description="Requests served at once; default: llamacpp.n_parallel, or vllm.max_num_seqs "
        "(256 when unset) for vLLM.",
    )
    max_queue: int = Field(
        64, ge=0, description="Requests that may wait for a turn; beyond that, 429."
    )
    memory_estimate: Size | None = Field(
        None, description="Override the estimated RAM of this model (e.g. 2GiB)."
    )
    max_tokens: int | None = Field(
        None,
        ge=1,
        description="Most completion tokens one request may ask for (more: 400); also the "
        "default when a request sets none.",
    )
    canary: list[GoldenPrompt] = Field(
        default_factory=list, description="Golden prompts the canary checks (see `canary:`)."
    )
    rollout: RolloutSettings | None = Field(
        None,
        description="Guarded rollouts of this deployment's tag (its `source` must follow one): "
        "`from` names the tag whose new versions are rolled out, with the plan's steps, "
        "bounds and live checks.",
    )
    adapters: list[AdapterDeployment] = Field(
        default_factory=list,
        description="LoRA adapters served on this model, each under `MODEL:NAME` and its aliases.",
    )

    @field_validator("cpus")
    @classmethod
    def _cores(cls, value: str | None) -> str | None:
        return None if value is None else format_cpu_list(parse_cpu_list(value))

    @model_validator(mode="after")
    def _goldens_fit_the_task(self) -> ModelDeployment:
        embeds = self.task == "embed"
        for index, golden in enumerate(self.canary):
            if golden.embeds != embeds:
                need = "`texts` with cosine bounds" if embeds else "a `prompt` or `messages`"
                raise ValueError(f"canary[{index}]: a model with `task: {self.task}` needs {need}")
        return self

    @model_validator(mode="after")
    def _rollout_follows_a_tag(self) -> ModelDeployment:
        if self.rollout is None:
            return self
        prefix = "store:"  # cellar.store.STORE_PREFIX (the store imports this module)
        _, at, tag = self.source.removeprefix(prefix).partition("@")
        if not self.source.startswith(prefix) or not at or tag.isdigit() or not tag:
            raise ValueError(
                "rollout: needs a source that follows a tag, e.g. `source: store:NAME@prod`"
            )
        if tag == self.rollout.from_tag:
            raise ValueError(f"rollout.from: {tag!r} is the tag this deployment follows")
        try:
            check_tag(self.rollout.from_tag)
        except StoreError as exc:
            raise ValueError(f"rollout.from: {exc.message}") from None
        return self

    def served_names(self) -> dict[str, AdapterDeployment | None]:
        """Every name clients may ask for -> the adapter it means (None: the model itself)."""
        names: dict[str, AdapterDeployment | None] = {self.name: None}
        for adapter in self.adapters:
            for name in (f"{self.name}:{adapter.name}", *adapter.aliases):
                if name in names:
                    raise ValueError(f"model name {name!r} is used twice")
                names[name] = adapter
        return names


class CellarConfig(Strict):
    """A whole Cellar configuration file."""

    server: ServerSettings = Field(default_factory=ServerSettings, description="Gateway.")
    store: StoreSettings = Field(default_factory=StoreSettings, description="Model store.")
    models: list[ModelDeployment] = Field(
        default_factory=list, description="The model deployments this gateway serves."
    )
    auth: AuthSettings = Field(default_factory=AuthSettings, description="API keys.")
    limits: LimitSettings = Field(default_factory=LimitSettings, description="Request limits.")
    audit: AuditSettings = Field(default_factory=AuditSettings, description="Audit log.")
    canary: CanarySettings = Field(default_factory=CanarySettings, description="Canary checks.")
    drift: DriftSettings = Field(default_factory=DriftSettings, description="The drift report.")
    batches: BatchSettings = Field(
        default_factory=BatchSettings, description="Files, batches and background priority."
    )

    @field_validator("models")
    @classmethod
    def _unique_names(cls, models: list[ModelDeployment]) -> list[ModelDeployment]:
        seen: set[str] = set()
        for deployment in models:
            for name in deployment.served_names():
                if name in seen:
                    raise ValueError(f"model name {name!r} is used twice")
                seen.add(name)
        return models


def format_loc(loc: tuple[str | int, ...]) -> str:
    """('models', 0, 'llamacpp', 'n_ctx') -> 'models[0].llamacpp.n_ctx'."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out or "<top level>"


def _describe(error: Mapping[str, Any]) -> str:
    reason = str(error["msg"])
    if error["type"] == "extra_forbidden":
        reason = "unknown key"
    elif "input" in error and error["type"] != "missing":
        reason += f" (got {error['input']!r})"
    return reason


def parse_config(data: object, origin: str) -> CellarConfig:
    """Validate already-parsed YAML; errors name `origin` (the file) and each bad key."""
    if data is None:
        data = {}
    try:
        return CellarConfig.model_validate(data)
    except ValidationError as exc:
        lines = [f"{origin}: {format_loc(tuple(e['loc']))}: {_describe(e)}" for e in exc.errors()]
        raise ConfigError("invalid configuration\n  " + "\n  ".join(lines)) from None


def _apply_env(data: dict[str, Any], env: Mapping[str, str]) -> None:
    server = data.setdefault("server", {}) if isinstance(data.get("server", {}), dict) else None
    if server is None:
        return
    if env.get(ENV_HOST):
        server["host"] = env[ENV_HOST]
    if env.get(ENV_PORT):
        server["port"] = env[ENV_PORT]
    store = data.setdefault("store", {})
    if env.get(ENV_STORE) and isinstance(store, dict):
        store["path"] = env[ENV_STORE]


def beside(config_file: Path, path: Path | None) -> Path | None:
    """A path from a config file, relative to that file's directory."""
    if path is None:
        return None
    return path if path.is_absolute() else config_file.parent / path


def config_path(explicit: Path | None, env: Mapping[str, str] = os.environ) -> Path:
    """The file to load: the explicit one, else $CELLAR_CONFIG, else configs/default.yaml."""
    if explicit is not None:
        return explicit
    return Path(env[ENV_CONFIG]) if env.get(ENV_CONFIG) else DEFAULT_CONFIG


def load_config(path: Path, env: Mapping[str, str] = os.environ) -> CellarConfig:
    """Read, apply env overrides (host, port, store) and validate one YAML config file."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read config file: {exc.strerror}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    if data is not None and not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping, not {type(data).__name__}")
    data = dict(data or {})
    _apply_env(data, env)
    return parse_config(data, str(path))


def config_json_schema() -> dict[str, Any]:
    """JSON schema of the config file (kept in configs/schema.json, checked by a test)."""
    return CellarConfig.model_json_schema()
