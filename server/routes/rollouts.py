"""The admin API of guarded rollouts (server/guarded.py): start, watch, pause, resume, abort."""

from __future__ import annotations

from typing import Any, Literal

from fastapi import APIRouter, Depends, Request
from pydantic import Field

from cellar.config_types import Strict
from cellar.rollouts import RolloutPlan
from cellar.server.auth import require_admin
from cellar.server.guarded import GuardedRollouts

router = APIRouter(dependencies=[Depends(require_admin)])


class RolloutRequest(Strict):
    model: str = Field(description="The model's name in the store.")
    from_tag: str = Field("staging", alias="from", description="The tag holding the candidate.")
    to_tag: str = Field(
        "prod", alias="to", description="The tag rolled out (a deployment follows it)."
    )
    plan: RolloutPlan = Field(default_factory=RolloutPlan)


def _rollouts(request: Request) -> GuardedRollouts:
    rollouts: GuardedRollouts = request.app.state.rollouts
    return rollouts


@router.post("/admin/rollouts", status_code=202)
async def start_rollout(body: RolloutRequest, request: Request) -> dict[str, Any]:
    """Begin a guarded rollout; it runs in the gateway (poll GET /admin/rollouts/{model})."""
    rollout = await _rollouts(request).start(body.model, body.from_tag, body.to_tag, body.plan)
    return rollout.describe()


@router.get("/admin/rollouts")
async def list_rollouts(request: Request) -> dict[str, Any]:
    """The running rollouts, and the last one of each deployment."""
    return {"rollouts": _rollouts(request).describe()}


@router.get("/admin/rollouts/{model}")
async def show_rollout(model: str, request: Request) -> dict[str, Any]:
    return _rollouts(request).get(model).describe()


@router.post("/admin/rollouts/{model}/{action}")
async def steer_rollout(
    model: str, action: Literal["pause", "resume", "abort"], request: Request
) -> dict[str, Any]:
    """Pause (the shares stay, the step's clock stops), resume, or abort (a rollback)."""
    rollouts = _rollouts(request)
    if action == "abort":
        return rollouts.abort(model, "by an operator").describe()
    return rollouts.pause(model, action == "pause").describe()
