"""Builds the engine for a deployment, for the engine its resolution chose."""

from __future__ import annotations

from cellar.deployments import ResolvedDeployment
from cellar.engines.base import Engine
from cellar.engines.llamacpp.launcher import launch_llamacpp, worker_spec
from cellar.engines.llamacpp.memory import estimate_bytes as llamacpp_bytes
from cellar.engines.vllm.launcher import launch_vllm
from cellar.engines.vllm.memory import checkpoint_context
from cellar.engines.vllm.memory import estimate_bytes as vllm_bytes
from cellar.engines.vllm.runtime import find_runtime

VLLM_DEFAULT_CONCURRENCY = 256
"""vLLM's own default for max_num_seqs."""


def engine_name(deployment: ResolvedDeployment) -> str:
    return deployment.engine


def default_concurrency(deployment: ResolvedDeployment) -> int:
    """Requests the engine serves at once (beyond them, the gateway queues)."""
    spec = deployment.spec
    if deployment.engine == "vllm":
        return spec.vllm.max_num_seqs or VLLM_DEFAULT_CONCURRENCY
    return spec.llamacpp.n_parallel


def context_window(deployment: ResolvedDeployment) -> int | None:
    """Tokens of prompt + completion one request may use; None when unknown."""
    if deployment.engine == "vllm":
        return deployment.spec.vllm.max_model_len or checkpoint_context(deployment.path)
    return deployment.spec.llamacpp.n_ctx


def gpu_claims(deployment: ResolvedDeployment) -> dict[int, float]:
    """Share of each NVIDIA GPU the worker reserves while loaded: vLLM takes
    `gpu_memory_utilization` of every GPU it runs on (`vllm.gpus`, else the first
    tensor x pipeline parallel ones). A llama.cpp worker's offload is not accounted."""
    if deployment.engine != "vllm":
        return {}
    runtime = find_runtime(deployment.spec.vllm)
    if isinstance(runtime, str) or runtime.cpu_build:
        return {}
    settings = deployment.spec.vllm
    devices = settings.gpus
    if devices is None:
        devices = list(range(settings.tensor_parallel_size * settings.pipeline_parallel_size))
    return dict.fromkeys(devices, settings.gpu_memory_utilization)


class ProcessLauncher:
    """A `server.supervisor.Launcher` that starts real worker processes."""

    def __init__(self, log_level: str) -> None:
        self.log_level = log_level

    def __call__(self, deployment: ResolvedDeployment) -> Engine:
        if deployment.engine == "vllm":
            return launch_vllm(deployment, self.log_level)
        spec = worker_spec(
            deployment.spec,
            deployment.path,
            deployment.chat_template,
            self.log_level,
            deployment.adapters,
        )
        return launch_llamacpp(spec)


def memory_estimate(deployment: ResolvedDeployment) -> int:
    """Estimated RAM of the deployment's worker, in bytes."""
    if deployment.engine == "vllm":
        runtime = find_runtime(deployment.spec.vllm)
        on_cpu = isinstance(runtime, str) or runtime.cpu_build
        return vllm_bytes(deployment.path, deployment.spec.vllm, on_cpu)
    return llamacpp_bytes(deployment.path, deployment.spec.llamacpp)
