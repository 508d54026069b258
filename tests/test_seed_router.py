"""calibration.seed_router: the seed design's ExecutionFeedbackRouter keeps working."""

from __future__ import annotations

import inspect
import math

import numpy as np
import pytest

from calibration import ExecutionFeedbackRouter
from calibration.feedback import NO_TOKENS_REASON
from calibration.synthetic import make_generation
from models.engine import Generation

LN = math.log
SURE = make_generation([LN(0.99)] * 4, [[LN(0.99), LN(0.005)]] * 4, text="42")
UNSURE = make_generation([LN(0.4), LN(0.3), LN(0.002)], [[LN(0.4), LN(0.3), LN(0.2)]] * 3, "4?")


def test_constructor_keeps_the_seed_arguments_and_defaults():
    params = inspect.signature(ExecutionFeedbackRouter).parameters
    defaults = {k: p.default for k, p in params.items()}
    assert list(params)[:8] == [
        "safety_threshold",
        "entropy_threshold",
        "binary_entropy_threshold",
        "min_logprob_threshold",
        "low_confidence_ratio",
        "conformal_alpha",
        "tier_costs",
        "task_floors",
    ]
    assert defaults["safety_threshold"] == 0.30
    assert defaults["entropy_threshold"] == 2.5
    assert defaults["binary_entropy_threshold"] == 0.85
    assert defaults["min_logprob_threshold"] == -5.0
    assert defaults["low_confidence_ratio"] == 0.15
    assert defaults["conformal_alpha"] == 0.05
    r = ExecutionFeedbackRouter()
    assert r.tier_costs == {1: 0.05, 2: 0.15, 3: 0.75, 4: 1.0, 5: 1.5}
    assert r.policy.tier_names == ["1", "2", "3", "4", "5"]
    for method in ("analyze_output", "calibrate_conformal", "cascade", "escalation_stats"):
        assert callable(getattr(r, method))


def test_analyze_output_accepts_a_confident_answer():
    a = ExecutionFeedbackRouter().analyze_output(SURE)
    assert a["escalate"] is False and a["should_escalate"] is False and a["reasons"] == []
    assert a["confidence"] == pytest.approx(0.99)
    assert a["threshold"] is None  # not calibrated yet


def test_analyze_output_escalates_with_one_reason_per_rule():
    a = ExecutionFeedbackRouter().analyze_output(UNSURE)
    assert a["escalate"]
    text = " | ".join(a["reasons"])
    assert "confidence" in text and "< safety 0.3" in text
    assert "min token logprob" in text and "< -5.0" in text
    assert "low-confidence token ratio" in text
    assert a["min_logprob"] == pytest.approx(LN(0.002))


def test_analyze_output_takes_bare_logprobs_like_seed_callers():
    r = ExecutionFeedbackRouter()
    from_list = r.analyze_output([LN(0.99)] * 4, [[LN(0.99), LN(0.005)]] * 4)
    from_gen = r.analyze_output(SURE)
    assert from_list["features"] == pytest.approx(from_gen["features"])
    pairs = r.analyze_output([LN(0.99)], [[("a", LN(0.99)), ("b", LN(0.005))]])
    assert pairs["entropy"] == pytest.approx(from_gen["entropy"])


def test_empty_output_escalates_with_no_tokens():
    a = ExecutionFeedbackRouter().analyze_output(Generation("", (), (), (), "stop", 3))
    assert a["escalate"] and a["reasons"] == [NO_TOKENS_REASON] and a["score"] == math.inf


def test_compute_entropy_is_a_real_entropy_in_bits():
    r = ExecutionFeedbackRouter()
    g = make_generation([LN(0.5)], [[LN(0.5), LN(0.5)]])
    assert r.compute_entropy(g) == pytest.approx(1.0)
    assert r.compute_entropy([LN(0.25)], [[LN(0.25)] * 4]) == pytest.approx(2.0)


def test_each_threshold_argument_is_honoured():
    g = make_generation([LN(0.8)] * 4, [[LN(0.8), LN(0.1), LN(0.05)]] * 4)
    assert not ExecutionFeedbackRouter().analyze_output(g)["escalate"]
    assert ExecutionFeedbackRouter(safety_threshold=0.85).analyze_output(g)["escalate"]
    assert ExecutionFeedbackRouter(entropy_threshold=0.5).analyze_output(g)["escalate"]
    assert ExecutionFeedbackRouter(binary_entropy_threshold=0.5).analyze_output(g)["escalate"]
    assert ExecutionFeedbackRouter(min_logprob_threshold=-0.1).analyze_output(g)["escalate"]
    lowc = ExecutionFeedbackRouter(low_confidence_logprob=LN(0.9), low_confidence_ratio=0.5)
    assert lowc.analyze_output(g)["escalate"]


def test_calibrate_conformal_is_the_finite_sample_budget_rule():
    r = ExecutionFeedbackRouter(conformal_alpha=0.1)
    t = r.calibrate_conformal([float(x) for x in range(100)])
    assert t == 90.0 and r.conformal_threshold == 90.0 and not r.calibration.conservative
    # from generations: the facade's score is -mean logprob
    rng = np.random.default_rng(0)
    gens = [make_generation([LN(p)] * 3) for p in rng.uniform(0.05, 1, 200)]
    t = r.calibrate_conformal(gens)
    scores = sorted(-g.logprobs[0] for g in gens)
    assert t == pytest.approx(scores[math.ceil(201 * 0.9) - 1])
    esc = [r.analyze_output(g)["escalate"] for g in gens]
    assert any("conformal threshold" in " ".join(r.analyze_output(g)["reasons"]) for g in gens)
    assert sum(esc) >= 1


def test_calibrate_conformal_on_too_few_is_conservative_not_wrong():
    r = ExecutionFeedbackRouter()
    with pytest.warns(UserWarning, match="too few"):
        t = r.calibrate_conformal([0.1, 0.2, 0.3])
    assert t == math.inf and r.calibration.conservative


def tiers_answering(answers: dict[int, Generation]):
    calls = []

    def generate(tier: int, prompt: str) -> Generation:
        calls.append(tier)
        return answers[tier]

    return generate, calls


def test_cascade_escalates_one_tier_at_a_time_until_confident():
    r = ExecutionFeedbackRouter()
    generate, calls = tiers_answering({1: UNSURE, 2: UNSURE, 3: SURE, 4: SURE, 5: SURE})
    out = r.cascade("2+2", generate)
    assert calls == [1, 2, 3] and out["path"] == [1, 2, 3] and out["tier"] == 3
    assert out["output"] == "42" and out["escalated"]
    assert out["cost"] == pytest.approx(0.05 + 0.15 + 0.75)
    assert any("escalate 1 -> 2" in x for x in out["reasons"])
    s = r.escalation_stats()
    assert s["requests"] == 1 and s["escalated"] == 1
    assert s["cost_spent"] == pytest.approx(0.95) and s["cost_always_top"] == pytest.approx(1.5)
    assert s["cost_saved"] == pytest.approx(0.55)
    assert s["cost_on_escalations"] == pytest.approx(0.2)
    assert s["escalated_from"] == {"1": 1, "2": 1}


def test_cascade_with_a_mapping_floors_router_and_top():
    r = ExecutionFeedbackRouter(task_floors={"code": 3})
    answers = {t: (lambda p, t=t: UNSURE) for t in range(1, 6)}
    out = r.cascade("x", answers, task_type="code")
    assert out["path"] == [3, 4, 5] and out["tier"] == 5  # the top accepts whatever it says
    out = r.cascade("x", answers, router_policy="complex", router_confidence=0.9)
    assert out["path"] == [5] and not out["escalated"]
    out = r.cascade("x", answers, start_tier=2, task_type="code")
    assert out["path"][0] == 3  # an explicit start never goes below the floor
    assert r.escalation_stats()["requests"] == 3


def test_bad_arguments_raise():
    with pytest.raises(ValueError, match=r"conformal_alpha must be in \(0, 1\), got 1\.5"):
        ExecutionFeedbackRouter(conformal_alpha=1.5)
    with pytest.raises(ValueError, match="task floor 'code' -> tier 9"):
        ExecutionFeedbackRouter(task_floors={"code": 9})
    with pytest.raises(ValueError, match="at least 2 tiers"):
        ExecutionFeedbackRouter(tier_costs={1: 0.1})
    with pytest.raises(ValueError, match="start_tier 7 is not a tier"):
        ExecutionFeedbackRouter().cascade("x", lambda t, p: SURE, start_tier=7)
