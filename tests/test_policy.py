"""calibration.policy: the ladder, start tier, decide, run_cascade, stats, bad configs."""

from __future__ import annotations

import threading

import pytest
from pydantic import ValidationError

from calibration.cascade import CascadeStats, run_cascade
from calibration.feedback import TierSignal
from calibration.policy import (
    CascadePolicyConfig,
    TierConfig,
    decide,
    request_cost,
    start_tier,
)


def ladder(n: int = 3, **kwargs) -> CascadePolicyConfig:
    names = ["small", "medium", "large", "xl", "xxl"][:n]
    tiers = [
        TierConfig(name=name, cost_per_request=0.1 * 10**i, cost_per_1k_output_tokens=1.0)
        for i, name in enumerate(names)
    ]
    return CascadePolicyConfig(tiers=tiers, **kwargs)


def sig(escalate: bool, score: float = 0.5, threshold: float = 0.5) -> TierSignal:
    return TierSignal({"num_tokens": 3}, score, threshold, escalate, ("why",), "s")


# --- start tier ------------------------------------------------------------------------------


def test_complex_with_enough_confidence_starts_at_the_top():
    cfg = ladder(4, router_threshold=0.7)
    assert start_tier(cfg, router_policy="complex", router_confidence=0.9) == 3
    assert start_tier(cfg, router_policy="complex", router_confidence=0.7) == 3  # tie: >=
    assert start_tier(cfg, router_policy="complex", router_confidence=0.69) == 0
    assert start_tier(cfg, router_policy="standard", router_confidence=0.99) == 0
    assert start_tier(cfg, router_policy="complex", router_confidence=None) == 0
    assert start_tier(cfg) == 0


def test_task_floors():
    cfg = ladder(3, task_floors={"code": "medium", "proof": "large"})
    assert start_tier(cfg, task_type="code") == 1
    assert start_tier(cfg, task_type="proof") == 2
    assert start_tier(cfg, task_type="chat") == 0
    # the router can still lift a floored request to the top, never below its floor
    assert start_tier(cfg, task_type="code", router_policy="complex", router_confidence=1.0) == 2
    assert start_tier(cfg, task_type="code", router_policy="complex", router_confidence=0.1) == 1


# --- decide ----------------------------------------------------------------------------------


def test_decide_escalates_one_tier_at_a_time():
    cfg = ladder(3)
    d = decide(cfg, 0, sig(True))
    assert d.escalate and d.next_tier == 1 and d.reasons[-1] == "escalate small -> medium"
    assert d.cause == "s_above_threshold"
    d = decide(cfg, 1, sig(True))
    assert d.next_tier == 2


def test_decide_accepts_when_signal_accepts_including_ties():
    cfg = ladder(2)
    tie = TierSignal({"num_tokens": 1}, 0.5, 0.5, 0.5 > 0.5, ("tie",), "s")
    d = decide(cfg, 0, tie)
    assert d.action == "accept" and d.next_tier is None and d.cause == "accepted"


def test_top_tier_always_accepts_and_says_so():
    cfg = ladder(2)
    d = decide(cfg, 1, sig(True))
    assert d.action == "accept" and d.next_tier is None and d.cause == "top_tier"
    assert "is the top" in d.reasons[-1]


def test_decide_rejects_a_tier_outside_the_ladder():
    with pytest.raises(ValueError, match=r"tier index 5 is outside the ladder 0\.\.1"):
        decide(ladder(2), 5, sig(False))


# --- run_cascade and costs -------------------------------------------------------------------


def test_run_cascade_climbs_until_accepted_and_adds_costs():
    cfg = ladder(3)
    plan = {0: True, 1: True, 2: False}
    out = run_cascade(cfg, 0, lambda t: sig(plan[t]), lambda t: 100)
    assert out.visited == (0, 1, 2) and out.final_tier == 2 and out.escalated
    assert out.cost == pytest.approx(sum(0.1 * 10**i + 0.1 for i in range(3)))
    out = run_cascade(cfg, 1, lambda t: sig(False))
    assert out.visited == (1,) and not out.escalated and out.cost == pytest.approx(1.0)


def test_run_cascade_stops_at_the_top_even_if_every_signal_escalates():
    out = run_cascade(ladder(5), 0, lambda t: sig(True))
    assert out.visited == (0, 1, 2, 3, 4)
    assert [d.action for d in out.decisions] == ["escalate"] * 4 + ["accept"]


def test_request_cost():
    t = TierConfig(name="a", cost_per_request=0.5, cost_per_1k_output_tokens=2.0)
    assert request_cost(t, 250) == pytest.approx(1.0)


# --- stats -----------------------------------------------------------------------------------


def test_stats_totals():
    cfg = ladder(2)  # small 0.1, medium 1.0, +1.0 per 1k tokens
    stats = CascadeStats(cfg)
    stats.record([0], [100])
    stats.record([0, 1], [100, 200], causes=["quality_estimator_above_threshold"])
    stats.record([1], [0])
    d = stats.as_dict()
    assert (d["requests"], d["escalated"], d["stayed"]) == (3, 1, 2)
    assert d["cost_spent"] == pytest.approx(0.2 + (0.2 + 1.2) + 1.0)
    assert d["cost_on_escalations"] == pytest.approx(0.2)
    assert d["cost_always_top"] == pytest.approx(1.1 + 1.2 + 1.0)
    assert d["cost_saved"] == pytest.approx(d["cost_always_top"] - d["cost_spent"])
    assert d["answered_by"] == {"small": 1, "medium": 2}
    assert d["started_at"] == {"small": 2, "medium": 1}
    assert d["escalated_from"] == {"small": 1}
    assert d["reasons"] == {"small: quality_estimator_above_threshold": 1}
    assert d["escalation_rate"] == pytest.approx(1 / 3)


def test_stats_record_outcome_and_errors():
    cfg = ladder(3)
    stats = CascadeStats(cfg)
    stats.record_outcome(run_cascade(cfg, 0, lambda t: sig(t < 2)))
    assert stats.as_dict()["reasons"] == {
        "small: s_above_threshold": 1,
        "medium: s_above_threshold": 1,
    }
    with pytest.raises(ValueError, match="at least one tier"):
        stats.record([])
    with pytest.raises(ValueError, match="2 tiers visited but 1 token counts"):
        stats.record([0, 1], [5])


def test_stats_are_thread_safe():
    stats = CascadeStats(ladder(2))

    def work():
        for _ in range(2000):
            stats.record([0, 1], [1, 1])

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert stats.as_dict()["requests"] == 8000
    assert stats.escalated == 8000


# --- bad configs -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"tiers": [TierConfig(name="only")]}, "at least 2 tiers, got 1"),
        ({"tiers": [TierConfig(name="a"), TierConfig(name="a")]}, "duplicates \\['a'\\]"),
        (
            {"tiers": [TierConfig(name="a"), TierConfig(name="b")], "task_floors": {"x": "c"}},
            "task floor 'x' -> 'c': no such tier",
        ),
        (
            {"tiers": [TierConfig(name="a"), TierConfig(name="b")], "router_threshold": 1.5},
            "less than or equal to 1",
        ),
    ],
)
def test_bad_config_raises_a_clear_error(kwargs, match):
    with pytest.raises(ValidationError, match=match):
        CascadePolicyConfig(**kwargs)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"name": "", "cost_per_request": 1}, "tier name must be non-empty"),
        ({"name": "cascade"}, "not 'cascade'"),
        ({"name": "a", "cost_per_request": -1}, "greater than or equal to 0"),
    ],
)
def test_bad_tier_raises(kwargs, match):
    with pytest.raises(ValidationError, match=match):
        TierConfig(**kwargs)


def test_config_round_trips_through_json():
    cfg = ladder(3, task_floors={"code": "medium"}, router_threshold=0.8)
    assert CascadePolicyConfig.model_validate_json(cfg.model_dump_json()) == cfg
    assert cfg.index("large") == 2
    with pytest.raises(ValueError, match="unknown tier 'huge'"):
        cfg.index("huge")
