"""What the gateway's supervisor is given to start engines and size them: each call goes to
the deployment's engine kind (engines/kinds.py)."""

from __future__ import annotations

from cellar.deployments import ResolvedDeployment
from cellar.engines.base import Engine
from cellar.engines.kinds import kind_of


class ProcessLauncher:
    """A `server.supervisor.Launcher` that starts real worker processes."""

    def __init__(self, log_level: str) -> None:
        self.log_level = log_level

    def __call__(self, deployment: ResolvedDeployment) -> Engine:
        return kind_of(deployment).launch(deployment, self.log_level)


def memory_estimate(deployment: ResolvedDeployment) -> int:
    """A `server.supervisor.Estimator`: estimated RAM of the deployment's worker, in bytes."""
    return kind_of(deployment).memory_bytes(deployment)
