"""The memory budget: whether a model fits beside what is loaded (RAM, and each GPU's share),
and which idle models to evict, least recently used first, until it does."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from cellar.errors import EngineUnavailable
from cellar.server.deployment import Deployment, State

Unload = Callable[[Deployment, str], Awaitable[None]]
"""Stops a deployment's worker, saying why."""


def _gib(n: int) -> str:
    return f"{n / 2**30:.2f} GiB"


async def make_room(
    budget: int,
    deployments: list[Deployment],
    deployment: Deployment,
    unload: Unload,
    need: int | None = None,
    claims: dict[int, float] | None = None,
) -> None:
    """Evict idle models, least recently used first, until `deployment` fits the memory
    budget and every GPU it claims has room for its share. With `need` and `claims`: room
    for another version of it beside the one it runs (server.rollout)."""
    beside = need is not None
    need = deployment.estimate_bytes if need is None else need
    claims = deployment.gpu_claims if claims is None else claims
    if need > budget:
        raise EngineUnavailable(
            f"model {deployment.name!r} needs about {_gib(need)}, more than the whole "
            f"memory budget of {_gib(budget)} (server.memory_budget)"
        )
    others = [d for d in deployments if beside or d is not deployment]
    while (shortage := _shortage(budget, need, claims, others)) is not None:
        what, relieves = shortage
        idle = [
            d
            for d in others
            if d.state is State.READY
            and not d.busy
            and not d.switching
            and d.candidate is None
            and d is not deployment
            and relieves(d)
        ]
        if not idle:
            holders = ", ".join(d.name for d in others if d.held_bytes and relieves(d))
            raise EngineUnavailable(
                f"model {deployment.name!r} needs {what}, and the models holding the rest "
                f"are busy ({holders}); retry later"
            )
        victim = min(idle, key=lambda d: d.last_used)
        await unload(victim, f"evicted to make room for {deployment.name!r}")


def _shortage(
    budget: int, need: int, claims: dict[int, float], others: list[Deployment]
) -> tuple[str, Callable[[Deployment], bool]] | None:
    """What a model needing `need` bytes and `claims` lacks to load now, and which loaded
    models would free it."""
    used = sum(d.held_bytes for d in others)
    if used + need > budget:
        free = _gib(max(budget - used, 0))
        return (
            f"about {_gib(need)} but only {free} of the {_gib(budget)} memory budget is free",
            lambda d: True,
        )
    for device, share in sorted(claims.items()):
        taken = sum(d.held_share(device) for d in others)
        if taken + share > 1.0 + 1e-9:
            return (
                f"{share:.0%} of GPU {device} (vllm.gpu_memory_utilization) but "
                f"{taken:.0%} of it is taken",
                lambda d, device=device: device in d.gpu_claims,
            )
    return None
