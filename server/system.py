"""What `/admin/system` reports: this machine, the serving software, and each model's artifact
(sha256, quantization, deployment settings), so benchmark records name what they measured."""

from __future__ import annotations

from typing import Any

from cellar.deployments import ResolvedDeployment
from cellar.engines.kinds import kind_of
from cellar.fingerprint import artifact_quantization, machine, versions


def model_facts(resolved: ResolvedDeployment) -> dict[str, Any]:
    manifest = resolved.manifest
    return {
        "name": resolved.spec.name,
        "task": resolved.spec.task,
        "engine": resolved.engine,
        "engine_version": kind_of(resolved).version(resolved),
        "source": resolved.spec.source,
        "path": str(resolved.path),
        "format": resolved.artifact.format,
        "sha256": manifest.sha256 if manifest else None,
        "quantization": artifact_quantization(resolved.path, resolved.artifact.format),
        "deployment": resolved.spec.model_dump(mode="json"),
    }


def system_report(deployments: list[ResolvedDeployment]) -> dict[str, Any]:
    """Blocking (it may run nvidia-smi): call it in a thread."""
    return {
        "machine": machine(),
        "versions": versions(),
        "models": [model_facts(d) for d in deployments],
    }
