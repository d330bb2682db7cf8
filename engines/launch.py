"""Picks and builds the engine for a deployment."""

from __future__ import annotations

from cellar.deployments import ResolvedDeployment
from engines.base import Engine
from engines.llamacpp.launcher import launch_llamacpp, worker_spec
from engines.llamacpp.memory import estimate_bytes


def engine_name(deployment: ResolvedDeployment) -> str:
    """The engine `auto` resolves to. Only llama.cpp exists yet, so every model gets it."""
    return "llamacpp" if deployment.spec.engine == "auto" else deployment.spec.engine


class ProcessLauncher:
    """A `server.supervisor.Launcher` that starts real worker processes."""

    def __init__(self, log_level: str) -> None:
        self.log_level = log_level

    def __call__(self, deployment: ResolvedDeployment) -> Engine:
        spec = worker_spec(
            deployment.spec, deployment.path, deployment.chat_template, self.log_level
        )
        return launch_llamacpp(spec)


def memory_estimate(deployment: ResolvedDeployment) -> int:
    """Estimated RAM of the deployment's worker, in bytes."""
    return estimate_bytes(deployment.path, deployment.spec.llamacpp)
