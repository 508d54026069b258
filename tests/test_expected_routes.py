"""The offline replay of serving's decisions, on the real zoo."""

from __future__ import annotations

import pytest

from calibration.config import AppArgs
from offline.expected_routes import compare, expected_routes


@pytest.fixture(scope="module")
def routes(zoo):
    app = AppArgs.from_serve_config()
    tasks, out = expected_routes(app, "test", 11, 40, root=zoo)
    return tasks, app.policy(), out


def test_routes_follow_the_router_and_the_ladder(routes):
    tasks, policy, out = routes
    assert len(out) == len(tasks)
    for r in out:
        start = policy.start_tier(
            router_policy=r.router_policy, router_confidence=r.router_confidence
        )
        assert policy.index(r.tiers_visited[0]) == start
        assert r.final_tier in policy.tier_names and len(r.tiers_visited) <= 2
        costs = sum(policy.tiers[policy.index(t)].cost_per_request for t in r.tiers_visited)
        assert r.cost == pytest.approx(costs)
    assert {r.final_tier for r in out} == {"cheap", "strong"}  # both outcomes occur


def test_compare_counts_agreement_and_names_the_differences(routes):
    tasks, _, out = routes
    served = [
        {
            "text": t.answer if r.correct else "?",
            "routing": {
                "cost": r.cost,
                "tiers_visited": list(r.tiers_visited),
                "escalated": len(r.tiers_visited) > 1,
            },
        }
        for t, r in zip(tasks, out, strict=True)
    ]
    same = compare(out, served, tasks)
    assert same["same_route"] == 1.0 and same["same_correctness"] == 1.0
    assert same["served"] == same["offline"] and not same["disagreements"]
    served[0]["routing"]["tiers_visited"] = ["elsewhere"]
    differ = compare(out, served, tasks)
    assert differ["same_route"] == pytest.approx(1 - 1 / len(tasks))
    assert differ["disagreements"][0]["prompt"] == tasks[0].prompt


def test_compare_refuses_mismatched_inputs(routes):
    tasks, _, out = routes
    with pytest.raises(ValueError, match="equally long"):
        compare(out[:-1], [], tasks)
