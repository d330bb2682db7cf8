"""The judgment of a guarded rollout's step, its plan and its stickiness, on figures made up
here (the gateway runs them for real in tests/server/test_rollouts.py)."""

from __future__ import annotations

import random

import pytest
from pydantic import ValidationError

from cellar.config import ModelDeployment
from cellar.rollouts import Answer, ArmStats, LiveCheck, RolloutBounds, RolloutPlan, bucket, judge


def arm(seconds: list[float], status: int = 200, tokens: int = 20) -> ArmStats:
    stats = ArmStats()
    for s in seconds:
        stats.add(Answer(status, s, ttft_s=s / 4, completion_tokens=tokens, finish_reason="stop"))
    return stats


def latencies(n: int, scale: float, seed: int) -> list[float]:
    rng = random.Random(seed)
    return [scale * rng.lognormvariate(0, 0.5) for _ in range(n)]


def test_the_same_version_passes_and_a_slower_one_is_rolled_back_with_its_figures() -> None:
    bounds = RolloutBounds()
    same = judge(arm(latencies(200, 0.5, 1)), arm(latencies(30, 0.5, 2)), bounds, [])
    assert same.passed, same.reasons
    slow = judge(arm(latencies(200, 0.5, 1)), arm(latencies(30, 1.5, 2)), bounds, [])
    assert not slow.passed
    [latency, *_] = [r for r in slow.reasons if r.startswith("p90 e2e +")]
    assert "s -> " in latency and "90% bound x" in latency


def test_a_few_slow_requests_among_few_do_not_roll_back() -> None:
    """Three slow answers in 25: the p90 jumps, but the interval cannot exclude chance."""
    current = arm(latencies(300, 0.5, 3))
    candidate = arm([*latencies(22, 0.5, 4), 1.6, 1.7, 2.0])
    assert judge(current, candidate, RolloutBounds(), []).passed


def test_golden_failures_errors_and_live_checks_fail_a_step() -> None:
    good = arm(latencies(100, 0.5, 5))
    failed = judge(good, arm(latencies(100, 0.5, 6)), RolloutBounds(), ["mascot: no match"])
    assert not failed.passed and "golden prompts failed: mascot" in failed.reasons[0]
    errors = arm(latencies(90, 0.5, 7))
    for _ in range(10):
        errors.add(Answer(502, 0.1))
    broke = judge(good, errors, RolloutBounds(), [])
    assert not broke.passed and broke.reasons[0].startswith("error rate +10.0 points")
    checked = arm(latencies(100, 0.5, 8))
    for answer in checked.answers[:20]:
        answer.check_failure = "does not match"
    assert not judge(good, checked, RolloutBounds(), []).passed
    few = judge(arm([0.5] * 3), arm([5.0] * 3), RolloutBounds(), [])
    assert few.passed and "too few requests" in few.compared[0]


def test_live_checks_read_a_regex_or_a_json_schema() -> None:
    assert LiveCheck(regex=r"^\S").failure(" space first") is not None
    schema = LiveCheck(json_schema={"type": "object", "required": ["ok"]})
    assert schema.failure('{"ok": 1}') is None
    assert schema.failure("{}") is not None and schema.failure("not json") is not None
    with pytest.raises(ValidationError, match="not a regular expression"):
        LiveCheck(regex="(")


def test_plans_rise_to_100_and_callers_keep_their_version_as_the_share_grows() -> None:
    assert RolloutPlan(steps=[10, 50, 100]).steps == [10, 50, 100]
    assert RolloutPlan(steps=[], shadow=20).shadow == 20
    for steps in ([50, 10, 100], [10, 50], [0, 100], []):
        with pytest.raises(ValidationError):
            RolloutPlan(steps=steps)
    step: object
    for step in ({}, [], None, "soon"):  # a request body's durations (the fuzzer sent `{}`)
        with pytest.raises(ValidationError, match="duration"):
            RolloutPlan.model_validate({"step": step})
    callers = [f"user:{n}" for n in range(2000)]
    at10 = {c for c in callers if bucket("salt", c) < 10}
    at50 = {c for c in callers if bucket("salt", c) < 50}
    assert at10 < at50 and 150 < len(at10) < 250 and 900 < len(at50) < 1100
    assert {c for c in callers if bucket("other", c) < 10} != at10


def test_a_rollout_block_needs_a_source_that_follows_a_tag() -> None:
    base = {"name": "m", "chat_template": "gemma"}
    block = {"from": "staging", "steps": [10, 100], "step": "5m"}
    ok = ModelDeployment.model_validate({**base, "source": "store:m@prod", "rollout": block})
    assert ok.rollout is not None and ok.rollout.plan().step == 300
    for source, why in (("store:m@3", "follows a tag"), ("store:m@staging", "is the tag")):
        with pytest.raises(ValidationError, match=why):
            ModelDeployment.model_validate({**base, "source": source, "rollout": block})
