"""calibration.seed_router: code written against the seed's router keeps working."""

from __future__ import annotations

import dataclasses
import inspect
import math

import numpy as np
import pytest

from calibration import CascadeResult, ExecutionFeedbackRouter, FeedbackSignal
from calibration.conformal import CalibrationError
from calibration.feedback import NO_TOKENS_REASON
from calibration.generation import Generation

LN = math.log
SURE = [LN(0.99)] * 5  # a confident answer: every rule passes
UNSURE = [LN(0.4), LN(0.3), LN(0.002)]  # fires safety, min-logprob and low-confidence ratio
SEED_ARGS = [
    "safety_threshold",
    "entropy_threshold",
    "binary_entropy_threshold",
    "min_logprob_threshold",
    "low_conf_ratio_threshold",
    "conformal_alpha",
    "tier_costs",
    "task_floors",
]


def h2(p: float) -> float:
    """Binary entropy in bits, written out."""
    return -(p * math.log2(p) + (1 - p) * math.log2(1 - p))


def generation(logprobs: list[float], top: list[list[float]] | None = None) -> Generation:
    rows = top if top is not None else [[lp] for lp in logprobs]
    return Generation(
        text="x",
        token_ids=tuple(range(len(logprobs))),
        logprobs=tuple(logprobs),
        top_logprobs=tuple(tuple((f"t{j}", lp) for j, lp in enumerate(r)) for r in rows),
        finish_reason="stop",
        prompt_tokens=3,
    )


def test_public_names_and_their_fields_are_the_seeds():
    assert [f.name for f in dataclasses.fields(FeedbackSignal)] == [
        "entropy",
        "binary_entropy",
        "mean_logprob",
        "min_logprob",
        "low_conf_ratio",
        "confidence",
        "should_escalate",
        "escalation_reason",
        "recommended_tier",
    ]
    assert [f.name for f in dataclasses.fields(CascadeResult)] == [
        "response",
        "initial_tier",
        "final_tier",
        "escalated",
        "feedback",
        "cost",
        "cost_saved",
        "reason",
    ]


def test_constructor_keeps_the_seed_order_defaults_and_positional_use():
    params = inspect.signature(ExecutionFeedbackRouter).parameters
    assert list(params)[:8] == SEED_ARGS
    assert all(p.kind is p.KEYWORD_ONLY for p in list(params.values())[8:])
    defaults = [params[name].default for name in SEED_ARGS]
    assert defaults == [0.30, 2.5, 0.85, -5.0, 0.15, 0.05, None, None]
    r = ExecutionFeedbackRouter()
    assert r.tier_costs == {1: 0.05, 2: 0.15, 3: 0.75, 4: 1.0, 5: 1.5}
    assert r.task_floors == {} and r.conformal_threshold is None
    values = [0.4, 2.0, 0.8, -4.0, 0.2, 0.1, {1: 0.1, 2: 1.0}, {"code": 2}]
    r = ExecutionFeedbackRouter(*values)
    assert [getattr(r, name) for name in SEED_ARGS] == values
    assert r.policy.tier_names == ["1", "2"]


def test_a_confident_list_is_accepted_with_the_seed_fields():
    sig = ExecutionFeedbackRouter().analyze_output(SURE, response_text="42")
    assert isinstance(sig, FeedbackSignal)
    assert sig.should_escalate is False and sig.escalation_reason == "" and sig.reasons == ()
    assert sig.recommended_tier == 2  # the seed's default current tier
    assert sig.confidence == pytest.approx(0.99)
    assert sig.mean_logprob == pytest.approx(LN(0.99)) and sig.min_logprob == pytest.approx(
        LN(0.99)
    )
    assert sig.low_conf_ratio == 0.0
    assert sig.entropy == pytest.approx(h2(0.99)) and sig.binary_entropy == pytest.approx(h2(0.99))


def test_a_low_confidence_list_escalates_naming_each_rule():
    r = ExecutionFeedbackRouter()
    sig = r.analyze_output(UNSURE, current_tier=2)
    assert sig.should_escalate and sig.recommended_tier == 3
    assert len(sig.reasons) == 3 and sig.escalation_reason == "; ".join(sig.reasons)
    assert sig.reasons[0].startswith("confidence 0.062 < safety 0.3")
    assert sig.reasons[1].startswith("min token logprob -6.215 < -5.0")
    assert sig.reasons[2] == "low-confidence ratio 1.000 > 0.15"
    assert sig.confidence == pytest.approx((0.4 * 0.3 * 0.002) ** (1 / 3))
    assert r.analyze_output(UNSURE, current_tier=5).recommended_tier == 5  # capped at the top


def test_each_threshold_argument_fires_its_own_rule():
    lp = [LN(0.8)] * 4  # accepted at the defaults
    assert not ExecutionFeedbackRouter().analyze_output(lp).should_escalate
    cases = {
        "confidence 0.800 < safety 0.85": ExecutionFeedbackRouter(safety_threshold=0.85),
        "mean token entropy 0.722 bits > 0.5": ExecutionFeedbackRouter(entropy_threshold=0.5),
        "binary entropy 0.722 > 0.5": ExecutionFeedbackRouter(binary_entropy_threshold=0.5),
        "min token logprob -0.223 < -0.1": ExecutionFeedbackRouter(min_logprob_threshold=-0.1),
        "low-confidence ratio 1.000 > 0.5": ExecutionFeedbackRouter(
            low_conf_ratio_threshold=0.5, low_confidence_logprob=LN(0.9)
        ),
    }
    for reason, router in cases.items():
        assert router.analyze_output(lp).reasons == (reason,)


def test_task_floors_bound_the_recommended_tier():
    r = ExecutionFeedbackRouter(task_floors={"code": 4})
    assert r.analyze_output(SURE, task_type="code", current_tier=2).recommended_tier == 4
    assert r.analyze_output(UNSURE, task_type="code", current_tier=4).recommended_tier == 5
    assert r.analyze_output(SURE, task_type="chat", current_tier=2).recommended_tier == 2


def test_probabilities_generations_and_top_k_give_the_same_evidence():
    r = ExecutionFeedbackRouter()
    from_logprobs = r.analyze_output(UNSURE)
    assert r.analyze_output([], token_probs=[0.4, 0.3, 0.002]) == from_logprobs
    assert r.analyze_output(generation(UNSURE)) == from_logprobs
    top = [[LN(0.25)] * 4] * 3
    assert r.analyze_output(UNSURE, top_logprobs=top).entropy == pytest.approx(2.0)
    assert r.analyze_output(generation(UNSURE, top)).entropy == pytest.approx(2.0)
    with pytest.raises(ValueError, match="token_probs must lie in"):
        r.analyze_output([], token_probs=[1.2])


def test_an_empty_answer_escalates_with_no_tokens():
    sig = ExecutionFeedbackRouter().analyze_output([], response_text="")
    assert sig.should_escalate and sig.reasons == (NO_TOKENS_REASON,)
    assert sig.confidence == 0.0 and math.isnan(sig.entropy) and sig.recommended_tier == 3


def test_compute_entropy_and_binary_entropy_match_the_formulas():
    r = ExecutionFeedbackRouter()
    ps = [0.9, 0.5, 0.2]
    assert r.compute_entropy([LN(p) for p in ps]) == pytest.approx(sum(map(h2, ps)) / 3)
    quarter = [LN(0.25)] * 4
    assert r.compute_entropy([LN(0.25)], top_logprobs=[quarter]) == pytest.approx(2.0)
    pairs = [[("a", LN(0.5)), ("b", LN(0.5))]]
    assert r.compute_entropy([LN(0.5)], top_logprobs=pairs) == pytest.approx(1.0)
    for p in (0.11, 0.5, 0.97):
        assert r.compute_binary_entropy(p) == pytest.approx(h2(p))
    assert r.compute_binary_entropy(0.0) == r.compute_binary_entropy(1.0) == 0.0
    with pytest.raises(ValueError, match="prob must be in"):
        r.compute_binary_entropy(1.5)


def test_calibrate_conformal_is_split_conformal_on_the_correct_answers():
    rng = np.random.default_rng(0)
    good = np.arange(100) / 1000  # -mean logprob of correct answers: 0.000 .. 0.099
    bad = rng.uniform(0.5, 3.0, 40)  # wrong answers: they must not move the threshold
    scores, labels = np.concatenate([good, bad]), [1] * 100 + [0] * 40
    order = rng.permutation(140)
    r = ExecutionFeedbackRouter(conformal_alpha=0.1)
    t = r.calibrate_conformal(scores[order].tolist(), [labels[i] for i in order])
    assert t == pytest.approx(good[math.ceil(101 * 0.9) - 1]) and r.conformal_threshold == t
    assert r.calibration.n == 100 and not r.calibration.conservative
    assert np.mean(good > t) <= 0.1
    assert r.calibrate_conformal(scores, np.array(labels, dtype=bool)) == t
    assert not r.analyze_output([-0.05] * 4).should_escalate
    sig = r.analyze_output([-0.2] * 4)  # only the conformal rule fires
    assert sig.reasons == ("neg_mean_logprob 0.2 > conformal threshold 0.09 (alpha 0.1)",)


def test_calibrate_conformal_refuses_bad_or_too_little_data():
    r = ExecutionFeedbackRouter()
    with pytest.warns(UserWarning, match="too few"):
        assert r.calibrate_conformal([0.1, 0.2, 0.3, 9.0], [1, 1, 1, 0]) == math.inf
    assert r.calibration.conservative
    assert not any("conformal" in x for x in r.analyze_output([-30.0]).reasons)
    with pytest.raises(ValueError, match="2 scores but 3 labels"):
        r.calibrate_conformal([0.1, 0.2], [1, 1, 0])
    with pytest.raises(ValueError, match="labels must be 0/1"):
        r.calibrate_conformal([0.1, 0.2], [1, 2])
    with pytest.raises(CalibrationError, match="no calibration"):
        r.calibrate_conformal([0.1, 0.2], [0, 0])


def test_cascade_stays_or_escalates_and_the_stats_accumulate():
    r = ExecutionFeedbackRouter()
    stats = r.escalation_stats
    assert (stats["escalated"], stats["stayed"], stats["saved_cost"]) == (0, 0, 0.0)
    stay = r.cascade("2+2?", 2, SURE, "4", "four")
    assert isinstance(stay, CascadeResult) and not stay.escalated
    assert (stay.response, stay.initial_tier, stay.final_tier) == ("4", 2, 2)
    assert stay.cost == pytest.approx(0.15) and stay.cost_saved == pytest.approx(1.35)
    assert stay.feedback == r.analyze_output(SURE) and "seed rules passed" in stay.reason
    up = r.cascade("2+2?", 2, UNSURE, "4?", "4")
    assert up.escalated and (up.response, up.final_tier) == ("4", 3)
    assert up.final_tier == up.feedback.recommended_tier and up.feedback.should_escalate
    assert up.cost == pytest.approx(0.15 + 0.75) and up.cost_saved == pytest.approx(0.6)
    assert "safety 0.3" in up.reason and "escalate 2 -> 3" in up.reason
    assert "no logprobs for the escalated tier" in up.reason
    assert r.escalation_stats is stats  # updated in place
    assert (stats["escalated"], stats["stayed"], stats["requests"]) == (1, 1, 2)
    assert stats["saved_cost"] == pytest.approx(1.35 + 0.6)
    assert stats["wasted_cost"] == pytest.approx(0.15)


def test_cascade_respects_floors_and_the_top_tier():
    r = ExecutionFeedbackRouter(task_floors={"code": 4})
    floored = r.cascade("q", 1, SURE, "a", task_floor=3)
    assert (floored.initial_tier, floored.final_tier, floored.cost) == (3, 3, 0.75)
    assert "started at 3: tier 1 is below the floor 3" in floored.reason
    climb = r.cascade("q", 2, UNSURE, "a", "b", task_type="code")
    assert (climb.initial_tier, climb.final_tier, climb.response) == (4, 5, "b")
    assert climb.cost == pytest.approx(2.5) and climb.cost_saved == pytest.approx(-1.0)
    top = r.cascade("q", 5, UNSURE, "a", "b")
    assert not top.escalated and (top.final_tier, top.response) == (5, "a")
    assert top.feedback.should_escalate and "5 is the top tier: accepted" in top.reason
    assert top.cost_saved == 0.0
    s = r.escalation_stats
    assert (s["escalated"], s["stayed"], s["wasted_cost"]) == (1, 2, pytest.approx(1.0))
    assert s["saved_cost"] == pytest.approx(0.75 - 1.0 + 0.0)
    assert s["task_floors"] == {"3": 1, "4": 1}


def test_rules_fired_on_a_feature_dict_as_the_offline_evaluation_calls_it():
    r = ExecutionFeedbackRouter()
    features = {
        "num_tokens": 3.0,
        "mean_logprob": LN(0.9),
        "mean_entropy": 2.6,
        "binary_entropy": 0.4,
        "min_logprob": -1.0,
        "low_conf_ratio": 0.0,
    }
    assert r.rules_fired(features) == ["mean token entropy 2.600 bits > 2.5"]
    assert r.rules_fired({**features, "mean_entropy": 1.0}) == []
    assert r.rules_fired({"num_tokens": 0.0}) == [NO_TOKENS_REASON]


def test_bad_arguments_raise():
    with pytest.raises(ValueError, match=r"conformal_alpha must be in \(0, 1\), got 1\.5"):
        ExecutionFeedbackRouter(conformal_alpha=1.5)
    with pytest.raises(ValueError, match=r"safety_threshold must be in \[0, 1\]"):
        ExecutionFeedbackRouter(safety_threshold=2.0)
    with pytest.raises(ValueError, match="task floor 'code' -> tier 9"):
        ExecutionFeedbackRouter(task_floors={"code": 9})
    with pytest.raises(ValueError, match="at least 2 tiers"):
        ExecutionFeedbackRouter(tier_costs={1: 0.1})
    r = ExecutionFeedbackRouter()
    with pytest.raises(ValueError, match="current_tier 9 is not a tier"):
        r.analyze_output(SURE, current_tier=9)
    with pytest.raises(ValueError, match="initial_tier 7 is not a tier"):
        r.cascade("q", 7, SURE, "a")
    with pytest.raises(ValueError, match="task floor 6 is above the top tier 5"):
        r.cascade("q", 1, SURE, "a", task_floor=6)
    assert r.escalation_stats["requests"] == 0  # a refused request is not counted
