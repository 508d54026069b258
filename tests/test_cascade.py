"""calibration.cascade.CascadeRun: the one state machine; starts, escalations, failures."""

from __future__ import annotations

import pytest

from calibration.cascade import CascadeRun, CascadeStats, NoTierAnswered, run_cascade
from calibration.feedback import TierSignal
from calibration.policy import CascadePolicyConfig, TierConfig


def ladder(**kwargs) -> CascadePolicyConfig:
    tiers = [
        TierConfig(name="cheap", cost_per_request=0.05),
        TierConfig(name="mid", cost_per_request=0.15),
        TierConfig(name="strong", cost_per_request=0.75),
    ]
    return CascadePolicyConfig(tiers=tiers, router_threshold=0.7, **kwargs)


def sig(escalate: bool) -> TierSignal:
    return TierSignal({"num_tokens": 3.0}, 1.0 if escalate else 0.0, 0.5, escalate, ("s",), "s")


def test_begin_follows_router_then_floor_then_cheapest():
    cfg = ladder(task_floors={"code": "mid"})
    run = CascadeRun.begin(cfg, router_policy="complex", router_confidence=0.9, task_type="code")
    assert run.next_tier == 2 and run.task_floor is None and "router said complex" in run.reasons[0]
    run = CascadeRun.begin(cfg, router_policy="complex", router_confidence=0.6, task_type="code")
    assert run.next_tier == 1 and run.task_floor == "mid"
    assert run.reasons == ["started at mid: task floor for 'code'"]
    run = CascadeRun.begin(cfg, router_policy="standard", router_confidence=0.99, task_type="x")
    assert run.next_tier == 0 and run.task_floor is None and run.reasons == []  # unknown type
    assert CascadeRun.begin(cfg).next_tier == 0  # no router output: start low


def test_observe_climbs_one_tier_at_a_time_and_the_top_accepts_without_a_signal():
    run = CascadeRun.begin(ladder())
    assert run.wants_signal
    assert run.observe(sig(True), 4).escalate and run.next_tier == 1
    assert run.observe(sig(True), 4).next_tier == 2
    assert not run.wants_signal
    d = run.observe(None, 4)
    assert d.action == "accept" and d.cause == "top_tier" and run.done
    out = run.outcome()
    assert out.visited == (0, 1, 2) and out.final_tier == 2
    assert out.cost == pytest.approx(0.05 + 0.15 + 0.75)
    assert out.causes == ("s_above_threshold", "s_above_threshold")
    assert [c.outcome for c in out.calls] == ["escalated", "escalated", "final"]


def test_a_tier_below_the_top_needs_a_signal():
    run = CascadeRun.begin(ladder())
    with pytest.raises(ValueError, match="needs a signal"):
        run.observe(None)


def test_failure_climbs_then_degrades_to_the_best_answer():
    run = CascadeRun.begin(ladder())
    run.observe(sig(True), 2)  # cheap answered, escalates
    d = run.fail("RuntimeError: boom", cost=0.1)  # mid failed: try strong
    assert d.escalate and d.cause == "tier_failed" and run.next_tier == 2
    assert run.fail("TimeoutError: slow") is None  # strong failed too: answer from cheap
    out = run.outcome()
    assert out.final_tier == 0 and out.visited == (0,)
    assert out.degraded == "tier 'strong' failed (TimeoutError: slow)"
    assert out.cost == pytest.approx(0.05 + 0.1)
    assert out.reasons[-1].endswith("answering from cheap")


def test_no_answer_at_all_raises_naming_every_failure():
    run = CascadeRun.begin(ladder(), router_policy="complex", router_confidence=0.8)
    with pytest.raises(NoTierAnswered, match="strong: down"):
        run.fail("down")
    run = CascadeRun.begin(ladder())
    run.fail("a")
    run.fail("b")
    with pytest.raises(NoTierAnswered) as e:
        run.fail("c")
    assert e.value.failures == ("cheap: a", "mid: b", "strong: c")


def test_forced_tier_is_called_alone():
    run = CascadeRun.forced(ladder(), "cheap")
    assert not run.wants_signal
    d = run.observe(sig(True), 1)  # a signal is recorded but never escalates a forced tier
    assert d.action == "accept" and d.cause == "forced" and run.done
    out = run.outcome()
    assert out.forced and out.signal is not None and out.visited == (0,)
    with pytest.raises(NoTierAnswered):
        CascadeRun.forced(ladder(), "mid").fail("down")
    with pytest.raises(ValueError, match="unknown tier"):
        CascadeRun.forced(ladder(), "nope")


def test_outcome_before_done_and_observe_after_done_are_errors():
    run = CascadeRun.begin(ladder())
    with pytest.raises(RuntimeError, match="not done"):
        run.outcome()
    run.observe(sig(False))
    with pytest.raises(RuntimeError, match="done"):
        run.observe(sig(False))


def test_run_cascade_drives_a_begun_run_and_stats_count_floors():
    cfg = ladder(task_floors={"code": "mid"})
    out = run_cascade(cfg, CascadeRun.begin(cfg, task_type="code"), lambda t: sig(t < 2))
    assert out.visited == (1, 2) and out.task_floor == "mid"
    stats = CascadeStats(cfg)
    stats.record_outcome(out)
    d = stats.as_dict()
    assert d["task_floors"] == {"mid": 1} and d["started_at"] == {"mid": 1}
    assert d["answered_by"] == {"strong": 1} and d["escalated"] == 1
