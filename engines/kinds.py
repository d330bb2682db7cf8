"""Every engine kind Cellar has, and the one for a deployment. Adding an engine is a module
implementing engines.base.EngineKind, listed here."""

from __future__ import annotations

from cellar.deployments import EngineName, ResolvedDeployment
from cellar.engines.base import EngineKind
from cellar.engines.llamacpp.kind import LlamaCppKind
from cellar.engines.vllm.kind import RuntimeFinder, VllmKind
from cellar.engines.vllm.runtime import find_runtime


def engine_kinds(runtimes: RuntimeFinder = find_runtime) -> dict[EngineName, EngineKind]:
    """Every kind by name (`runtimes` finds vLLM; tests pass a stand-in)."""
    kinds: list[EngineKind] = [LlamaCppKind(), VllmKind(runtimes)]
    return {kind.name: kind for kind in kinds}


KINDS = engine_kinds()


def kind_of(deployment: ResolvedDeployment) -> EngineKind:
    return KINDS[deployment.engine]
