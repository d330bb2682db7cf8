"""llama.cpp as an engine kind: our own worker on llama-cpp-python, serving a GGUF on the CPU
or, on Apple silicon, with every layer offloaded to Metal."""

from __future__ import annotations

from cellar.config import ModelDeployment
from cellar.deployments import Artifacts, EngineChoice, EngineName, ResolvedDeployment
from cellar.engines.base import Engine
from cellar.engines.llamacpp.launcher import launch_llamacpp, worker_spec
from cellar.engines.llamacpp.memory import estimate_bytes
from cellar.errors import EngineChoiceError
from cellar.fingerprint import versions
from cellar.hardware import Hardware
from cellar.store import Format


class LlamaCppKind:
    name: EngineName = "llamacpp"
    adapter_form: Format = "gguf-lora"

    def choose(
        self, spec: ModelDeployment, artifacts: Artifacts, hardware: Hardware, why: str
    ) -> EngineChoice:
        if artifacts.gguf is None:
            raise EngineChoiceError(
                f"llama.cpp needs a GGUF file, and {artifacts.source.label} is a Hugging Face "
                "checkpoint with no GGUF made from it; serve it with `engine: vllm`, or make a "
                "GGUF with `cellar quantize`"
            )
        metal = ""
        if hardware.apple_silicon and "n_gpu_layers" not in spec.llamacpp.model_fields_set:
            metal = "; Apple silicon: every layer offloaded to Metal"
        reason = f"{why}: {artifacts.gguf.label}{metal}"
        return EngineChoice(self.name, artifacts.gguf, reason, self.adapter_form)

    def launch(self, deployment: ResolvedDeployment, log_level: str) -> Engine:
        spec = worker_spec(
            deployment.spec,
            deployment.path,
            deployment.chat_template,
            log_level,
            deployment.adapters,
        )
        return launch_llamacpp(spec, deployment.spec.cpus)

    def memory_bytes(self, deployment: ResolvedDeployment) -> int:
        return estimate_bytes(deployment.path, deployment.spec.llamacpp)

    def concurrency(self, deployment: ResolvedDeployment) -> int:
        return deployment.spec.llamacpp.n_parallel

    def context_window(self, deployment: ResolvedDeployment) -> int | None:
        return deployment.spec.llamacpp.n_ctx

    def gpu_claims(self, deployment: ResolvedDeployment) -> dict[int, float]:
        return {}  # a llama.cpp worker's offload is not accounted

    def version(self, deployment: ResolvedDeployment) -> str | None:
        return versions().get("llama-cpp-python")
