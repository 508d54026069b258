"""offline.evaluate / curves / strategies / summary, on synthetic splits (no model needed)."""

from __future__ import annotations

import copy
import dataclasses
import math

import numpy as np
import pytest

from calibration.artifact import ModelIdentity
from calibration.conformal import calibrate
from calibration.policy import CascadePolicyConfig, TierConfig
from offline.curves import apgr, close_curve, cpt, optimal_curve, pgr
from offline.evaluate import (
    EvalSettings,
    OperatingPoint,
    evaluate,
    fit_quality_estimator,
    replay,
    router_conformal_thresholds,
    router_start,
)
from offline.head_value import HeadValueSettings, head_value, verdict_alone
from offline.hindsight import hindsight_point, one_threshold_for_all
from offline.ladder_calibration import calibrate_ladder
from offline.replay import (
    RouterRows,
)
from offline.served import replay_served, task_types
from offline.summary import summary
from offline.synthetic import synthetic_split

POLICY = CascadePolicyConfig(
    tiers=[
        TierConfig(name="cheap", cost_per_request=0.125),
        TierConfig(name="strong", cost_per_request=1.0),
    ]
)


# --- curves ----------------------------------------------------------------------------------


def test_random_routing_has_apgr_one_half_and_linear_cpt():
    x = np.linspace(0, 1, 11)
    acc = 0.6 + 0.3 * x
    assert apgr(x, acc, 0.6, 0.9) == pytest.approx(0.5)
    assert cpt(x, acc, 0.6, 0.9, 0.5) == pytest.approx(50.0)
    assert cpt(x, acc, 0.6, 0.9, 0.8) == pytest.approx(80.0)


def test_perfect_curve_and_never_reaching():
    assert apgr(np.array([0.2]), np.array([0.9]), 0.6, 0.9) == pytest.approx(0.9)
    assert cpt(np.array([0.2]), np.array([0.9]), 0.6, 0.9, 0.5) == pytest.approx(10.0)
    # a curve that dips below the strong end point still closes at (1, strong)
    assert cpt(np.array([0.5]), np.array([0.6]), 0.6, 0.9, 1.01) is None
    assert pgr(0.75, 0.6, 0.9) == pytest.approx(0.5)
    assert math.isnan(float(pgr(0.75, 0.6, 0.6)))


def test_close_curve_sorts_and_adds_end_points():
    x, y = close_curve([0.5, 0.2], [0.8, 0.7], 0.6, 0.9)
    assert x.tolist() == [0.0, 0.2, 0.5, 1.0] and y.tolist() == [0.6, 0.7, 0.8, 0.9]


def test_optimal_curve():
    cheap = np.array([1, 1, 0, 0, 1], bool)
    strong = np.array([1, 0, 1, 0, 1], bool)  # one only-strong, one only-cheap
    _, acc = optimal_curve(cheap, strong, points=6)
    assert acc[0] == pytest.approx(0.6)
    assert acc[1] == pytest.approx(0.8)  # 1 strong call fixes the only-strong request
    assert acc[-1] == pytest.approx(0.6)  # all to strong = strong accuracy


# --- replay ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def splits():
    return {
        "fit": synthetic_split(500, 1, "validation"),
        "cal": synthetic_split(500, 2, "calibration"),
        "test": synthetic_split(500, 3, "test"),
    }


def test_replay_matches_a_direct_computation(splits):
    test = splits["test"]
    rng = np.random.default_rng(0)
    esc = rng.random(test.n) < 0.3
    start = (rng.random(test.n) < 0.2).astype(int)
    acc, cost, rate, strong = replay(POLICY, test, {"cheap": esc}, start)
    final_strong = esc | (start == 1)
    expected_acc = np.where(final_strong, test.correct["strong"], test.correct["cheap"]).mean()
    assert acc == pytest.approx(expected_acc)
    assert cost == pytest.approx((0.125 * (start == 0) + 1.0 * final_strong).mean())
    assert rate == pytest.approx((esc & (start == 0)).mean())
    assert strong == pytest.approx(final_strong.mean())


def test_replay_rejects_mismatched_tiers(splits):
    other = CascadePolicyConfig(tiers=[TierConfig(name="a"), TierConfig(name="b")])
    with pytest.raises(ValueError, match="do not match the data's tiers"):
        replay(other, splits["test"], {})


# --- the whole evaluation --------------------------------------------------------------------


@pytest.fixture(scope="module")
def report(splits):
    settings = EvalSettings(alphas=(0.05, 0.2), sweep_points=11)
    return evaluate(POLICY, splits["test"], splits["cal"], splits["fit"], settings)


def test_report_has_every_strategy_family(report):
    fams = {p["family"] for p in report["strategies"]}
    expected = {
        "always_cheap",
        "always_strong",
        "random",
        "heuristic",
        "seed_rules",
        "quality_estimator",
        "conformal:budget",
        "conformal:recall",
        "conformal:risk",
        "router_only",
        "router+cascade",
        "heuristic+router",
        "conformal:budget+router",
        "conformal:recall+router",
        "conformal:risk+router",
        "oracle",
        "feature:neg_mean_logprob",
        "feature:neg_q10_logprob",
        "feature:mean_entropy",
    }
    assert expected <= fams
    for p in report["strategies"]:
        assert set(p) >= {"name", "accuracy", "cost", "escalation_rate"}
        assert 0 <= p["accuracy"] <= 1 and 0 <= p["escalation_rate"] <= 1


def test_report_end_points_and_summary(report):
    by = {p["name"]: p for p in report["strategies"]}
    s = report["summary"]
    assert by["always_cheap"]["cost"] == pytest.approx(0.125)
    assert by["always_strong"]["cost"] == pytest.approx(1.0)
    assert by["always_strong"]["escalation_rate"] == 0  # started at the top, never escalated
    assert s["weak_accuracy"] == by["always_cheap"]["accuracy"]
    for key in ("apgr", "cpt50", "cpt80"):
        assert s[key] is not None and s["oracle"][key] is not None
    assert s["oracle"]["apgr"] >= s["apgr"]
    assert s["families"]["random"]["apgr"] == pytest.approx(0.5, abs=0.08)
    assert s["families"]["quality_estimator"]["apgr"] > 0.6
    assert set(s["criteria"]) == {
        "recovers_90pct_gap_at_half_cost",
        "beats_heuristic_at_equal_cost",
        "beats_heuristic_with_router_at_equal_cost",
    }
    # the best conformal point is chosen among every conformal family, router ones included
    pair = [s["best_conformal_without_router"], s["best_conformal_with_router"]]
    best = max((p for p in pair if p), key=lambda p: (p["accuracy"], -p["cost"]))
    assert s["best_conformal"]["name"] == best["name"]
    assert s["best_conformal_with_router"]["family"].endswith("+router")
    assert s["best_conformal"]["cost"] <= 0.5 * s["always_strong_cost"] + 1e-12


def test_conformal_points_keep_their_guarantee_on_test(report):
    for p in report["strategies"]:
        if p["family"] == "conformal:budget":
            # 500 test answers: allow 3 binomial standard errors
            a = p["params"]["alpha"]
            assert p["escalation_rate"] <= a + 3 * math.sqrt(a * (1 - a) / 500)


# --- conformal behind the router -------------------------------------------------------------


def test_router_start_is_servings_rule():
    p = np.array([0.1, 0.49, 0.5, 0.65, 0.7, 0.95])
    rows = RouterRows(
        ["complex" if x > 0.5 else "standard" for x in p], p, np.maximum(p, 1 - p), "test"
    )
    assert router_start(POLICY, rows, 0.7).tolist() == [0, 0, 0, 0, 1, 1]
    assert router_start(POLICY, rows, 0.5).tolist() == [0, 0, 0, 1, 1, 1]  # argmax: 0.5 is a tie
    assert router_start(POLICY, rows).tolist() == [0, 0, 0, 1, 1, 1]  # the policy's 0.5
    # the confidence serving uses (a head's) decides, not the probability
    head = RouterRows(rows.policy, p, np.full(6, 0.69), "confidence_head")
    assert router_start(POLICY, head, 0.7).tolist() == [0] * 6


@pytest.mark.parametrize("mode", ["budget", "recall", "risk"])
def test_conformal_router_calibrates_on_cheap_started_requests_only(splits, mode):
    cal = splits["cal"]
    # (the logprobs alone: what is tested is the population, and with the router's evidence
    # the two risk thresholds happen to fall on the same score of this small split)
    qe = fit_quality_estimator(splits["fit"], router_evidence=False)
    scores = qe.score_many(cal.features["cheap"], cal.feature_names)
    tau, alpha = 0.6, 0.2
    cheap = router_start(POLICY, cal.router, tau) == 0
    assert 0.2 < cheap.mean() < 0.9  # the router takes a real share of the hard requests
    res = router_conformal_thresholds(qe, cal, POLICY, (tau,), (alpha,), (mode,))[
        (tau, mode, alpha)
    ]
    sub = calibrate(
        mode, scores[cheap], alpha, wrong=cal.wrong[cheap], strong_right=cal.strong_right[cheap]
    )
    everything = calibrate(mode, scores, alpha, wrong=cal.wrong, strong_right=cal.strong_right)
    assert res.threshold == sub.threshold
    assert res.threshold != everything.threshold  # calibrating on all would be caught here
    expected_n = int(cheap.sum()) if mode != "recall" else int((cal.wrong & cheap).sum())
    assert res.n == expected_n


def test_conformal_router_points_replay_their_sub_population_threshold(splits, report):
    cal = splits["cal"]
    qe = fit_quality_estimator(splits["fit"])
    ths = router_conformal_thresholds(qe, cal, POLICY, (0.7,), (0.2,), ("budget",))
    by = {p["name"]: p for p in report["strategies"]}
    pt = by["conformal:budget+router@router=0.7,alpha=0.2"]
    assert pt["params"]["threshold"] == ths[(0.7, "budget", 0.2)].threshold
    assert pt["params"]["router_threshold"] == 0.7
    # budget's guarantee is on the cheap-started requests: <= alpha of them escalate
    a, n_sub = 0.2, pt["params"]["cheap_started_share"] * report["n"]
    assert pt["params"]["guaranteed_quantity_on_test_cheap_started"] <= a + 3 * math.sqrt(
        a * (1 - a) / n_sub
    )
    # every router threshold of the sweep shows up, for each mode
    for mode in ("budget", "recall", "risk"):
        taus = {
            p["params"]["router_threshold"]
            for p in report["strategies"]
            if p["family"] == f"conformal:{mode}+router"
        }
        assert taus == {0.5, 0.6, 0.7, 0.8, 0.9}


def _pt(name, family, acc, cost, **params):
    return OperatingPoint(name, family, acc, cost, 0.0, cost, cost, params)


def _toy_points(*extra):
    return [
        _pt("always_cheap", "always_cheap", 0.6, 0.1),
        _pt("always_strong", "always_strong", 1.0, 1.0),
        _pt("oracle", "oracle", 1.0, 0.5),
        _pt("heuristic", "heuristic", 0.80, 0.40),
        _pt("seed_rules", "seed_rules", 0.79, 0.41),
        _pt("heuristic+router@router=0.7", "heuristic+router", 0.85, 0.40, router_threshold=0.7),
        _pt("conformal:risk@0.2", "conformal:risk", 0.70, 0.30, alpha=0.2),
        _pt("conformal:risk@0.1", "conformal:risk", 0.90, 0.60, alpha=0.1),
        *extra,
    ]


def test_criteria_use_the_router_variants_and_compare_like_with_like(splits):
    test = splits["test"]
    # without router variants: 90% of the gap (0.96) is out of reach at half the cost
    s = summary(_toy_points(), test, POLICY)
    assert s["best_conformal"]["name"] == "conformal:risk@0.2"
    assert not s["criteria"]["recovers_90pct_gap_at_half_cost"]
    assert not s["criteria"]["beats_heuristic_at_equal_cost"]
    assert "beats_heuristic_with_router_at_equal_cost" in s["criteria"]
    assert not s["criteria"]["beats_heuristic_with_router_at_equal_cost"]  # no rival at all
    # a conformal router + cascade point that recovers 92.5% at 45% of the cost
    routed = [
        _pt(
            "conformal:risk+router@router=0.7,alpha=0.05",
            "conformal:risk+router",
            0.97,
            0.45,
            alpha=0.05,
            router_threshold=0.7,
        ),
        _pt(
            "conformal:risk+router@router=0.7,alpha=0.2",
            "conformal:risk+router",
            0.86,
            0.38,
            alpha=0.2,
            router_threshold=0.7,
        ),
    ]
    s = summary(_toy_points(*routed), test, POLICY)
    assert s["best_conformal"]["name"] == "conformal:risk+router@router=0.7,alpha=0.05"
    assert s["best_conformal"]["pgr"] == pytest.approx(0.925)
    assert s["criteria"]["recovers_90pct_gap_at_half_cost"]
    # heuristic+router is compared with conformal+router at the same router threshold
    assert s["criteria"]["beats_heuristic_with_router_at_equal_cost"]
    vs = s["conformal_router_vs_heuristic_router"]["0.7"]
    assert vs["best_at_or_below_cost"]["name"] == "conformal:risk+router@router=0.7,alpha=0.2"
    # the plain heuristic only meets plain conformal points: a mix of risk@0.2 and risk@0.1
    # at its cost 0.40 reaches 0.70 + 0.20 / 3 < 0.80, so the router points (which would
    # beat it) must not count
    assert s["conformal_vs_heuristic"]["mixed_accuracy_at_equal_cost"] == pytest.approx(
        0.70 + 0.20 / 3
    )
    assert not s["criteria"]["beats_heuristic_at_equal_cost"]


# --- the cost model: what serving charges ------------------------------------------------------


def test_evaluation_costs_are_normalised_to_always_strong(splits):
    policy = CascadePolicyConfig(
        tiers=[
            TierConfig(name="cheap", cost_per_request=0.05),
            TierConfig(name="strong", cost_per_request=0.75),
        ]
    )
    settings = EvalSettings(alphas=(0.2,), sweep_points=3, router_thresholds=(0.7,))
    out = evaluate(policy, splits["test"], splits["cal"], splits["fit"], settings)
    by = {p["name"]: p for p in out["strategies"]}
    assert by["always_strong"]["cost"] == pytest.approx(1.0)
    assert by["always_strong"]["cost_raw"] == pytest.approx(0.75)
    assert by["always_cheap"]["cost"] == pytest.approx(0.05 / 0.75)
    esc = by["conformal:budget@0.2"]
    assert esc["cost"] == pytest.approx(esc["cost_raw"] / 0.75)
    assert out["summary"]["always_strong_cost_raw"] == pytest.approx(0.75)


# --- the served policy: guarantee per task type, and the head's value ---------------------------


def _typed(split, kinds=("add", "sub", "max", "rev")):
    """`split` with its requests spread over task types (the synthetic split has one)."""
    out = copy.copy(split)
    out.tasks = [
        dataclasses.replace(t, family=kinds[i % len(kinds)]) for i, t in enumerate(split.tasks)
    ]
    return out


@pytest.fixture(scope="module")
def served(splits):
    """A 2-tier served policy (router threshold 0.7) and its artifact, calibrated like the
    zoo's (risk, on the calibration requests the served router leaves at the cheap tier)."""
    policy = POLICY.model_copy(update={"router_threshold": 0.7})
    artifact = calibrate_ladder(
        policy,
        splits["fit"],
        splits["cal"],
        mode="risk",
        alpha=0.1,
        models={"cheap": ModelIdentity(name="cheap")},
    )
    return policy, artifact


def test_served_guarantee_per_task_type_is_the_tier_guarantee_split_by_type(splits, served):
    policy, artifact = served
    test = _typed(splits["test"])
    settings = EvalSettings(alphas=(0.2,), sweep_points=3, router_thresholds=(0.7,))
    s = evaluate(policy, test, splits["cal"], splits["fit"], settings, served)["summary"]
    tier = s["served"]["params"]["guarantee"]["cheap"]
    by_type = s["served"]["per_task_type"]
    assert set(by_type) == {"add", "sub", "max", "rev"}
    # the types partition the tier's population: counts and the mean loss add up
    assert sum(g["cheap"]["n"] for g in by_type.values()) == tier["n"]
    pooled = sum(g["cheap"]["n"] * g["cheap"]["realised"] for g in by_type.values()) / tier["n"]
    assert pooled == pytest.approx(tier["realised"])
    assert all(g["cheap"]["target"] == tier["target"] == "<= 0.1" for g in by_type.values())
    # and each type's figure is the risk measured directly on its requests
    run = replay_served(policy, artifact, test)
    cal = artifact.tiers["cheap"]
    scores = cal.build_scorer().score_many(test.features["cheap"], test.feature_names)
    mask = run.reached["cheap"] & (task_types(test) == "sub")
    bad = (scores <= cal.threshold) & ~test.correct["cheap"] & test.correct["strong"]
    assert by_type["sub"]["cheap"]["realised"] == pytest.approx(bad[mask].mean())
    t = s["served_vs_targets"]
    assert t["cost_vs_oracle"] == pytest.approx(s["served"]["cost"] / s["oracle"]["cost"])
    assert t["apgr_vs_oracle"] == pytest.approx(
        s["families"]["served"]["apgr"] / s["oracle"]["apgr"]
    )
    assert isinstance(t["accuracy_and_cost_met"], bool) and isinstance(t["apgr_met"], bool)


@pytest.mark.parametrize("max_gap", [0.0, 0.02, 0.05])
def test_hindsight_is_the_cheapest_served_threshold_within_the_gap(splits, served, max_gap):
    policy, artifact = served
    test = splits["test"]
    unit = 2.0  # always-strong's raw cost in the evaluation; any positive unit here
    h = hindsight_point(policy, artifact, test, unit, max_gap)
    assert h is not None
    strong = test.correct["strong"].mean()
    assert strong - h.accuracy <= max_gap + 1e-12
    # the picked threshold, served through the one replay path, is exactly that point
    again = replay_served(policy, artifact.with_thresholds({"cheap": h.params["threshold"]}), test)
    assert again.accuracy == pytest.approx(h.accuracy)
    assert again.cost.mean() == pytest.approx(h.cost_raw)
    assert h.cost == pytest.approx(h.cost_raw / unit)
    # no threshold within the gap is cheaper: the served one included, when it qualifies
    for t in (artifact.tiers["cheap"].threshold, 0.0, 0.25, 0.5, 0.75, 1.0):
        run = replay_served(policy, artifact.with_thresholds({"cheap": t}), test)
        if strong - run.accuracy <= max_gap:
            assert h.cost_raw <= run.cost.mean() + 1e-12, t


def test_one_threshold_for_all_splits_is_bounded_by_each_splits_own(splits, served):
    policy, artifact = served
    tests = [splits["test"], splits["cal"]]
    r = one_threshold_for_all(policy, artifact, tests, max_gap=0.05)
    assert r["bar_reachable"] and r["best"] is not None
    best, own = r["best"], r["each_split_own"]
    for k, data in enumerate(tests):
        oracle = replay(policy, data, {"cheap": data.needs_escalation})[1]
        # the served row is the served policy's own replay
        run = replay_served(policy, artifact, data)
        assert r["served"]["splits"][k]["cost_vs_oracle"] == pytest.approx(run.cost.mean() / oracle)
        # the common threshold keeps every split within the gap, and no split's own
        # hindsight threshold (hindsight_point's) costs more there
        assert best["splits"][k]["accuracy_gap"] <= 0.05 + 1e-12
        h = hindsight_point(policy, artifact, data, unit=oracle, max_gap=0.05)
        assert own[k]["cost_vs_oracle"] == pytest.approx(h.cost)
        assert own[k]["cost_vs_oracle"] <= best["splits"][k]["cost_vs_oracle"] + 1e-12
    assert best["worst_cost_vs_oracle"] == max(x["cost_vs_oracle"] for x in best["splits"])
    # no gap can be kept: nothing is picked
    none = one_threshold_for_all(policy, artifact, tests, max_gap=-1.0)
    assert not none["bar_reachable"] and none["best"] is None


def test_head_value_matches_accuracy_on_calibration_and_compares_on_test(splits, served):
    policy, artifact = served
    settings = HeadValueSettings(alphas=(0.02, 0.05, 0.1, 0.2))
    r = head_value(policy, artifact, splits["fit"], splits["cal"], [splits["test"]], settings)
    assert verdict_alone(policy).router_threshold == 0.0
    sweep = {row["alpha"]: row for row in r["sweep"]}
    assert set(sweep) == {0.02, 0.05, 0.1, 0.2}
    # the choice is made on calibration: the cheapest alpha at least as accurate as served
    ok = [row for row in r["sweep"] if row["accuracy"] >= r["served_on_calibration"]["accuracy"]]
    assert r["matched"] == bool(ok)
    if ok:
        assert r["verdict_alone_on_calibration"]["cost_raw"] == min(x["cost_raw"] for x in ok)
    # every "complex" label starts at the top without the confidence gate
    started = np.mean([p == "complex" for p in splits["cal"].router.policy])
    assert r["verdict_alone_on_calibration"]["started_at_top"] == pytest.approx(started)
    row = r["tests"][0]
    served_test = replay_served(policy, artifact, splits["test"])
    assert row["served"]["accuracy"] == pytest.approx(served_test.accuracy)
    assert row["served"]["cost_raw"] == pytest.approx(served_test.cost.mean())
    expected = 1 - row["served"]["cost_raw"] / row["verdict_alone"]["cost_raw"]
    assert row["cost_reduction"] == pytest.approx(expected)
    assert r["mean_cost_reduction"] == pytest.approx(expected)


def test_the_fitted_gate_is_the_cheapest_matched_gate_on_calibration(splits, served):
    """The head's gate with threshold and alpha chosen on calibration, like verdict-alone:
    no other (gate, alpha) of the grid that matches the served accuracy there is cheaper."""
    from offline.head_value import _matched

    policy, artifact = served
    settings = HeadValueSettings(alphas=(0.05, 0.2), router_thresholds=(0.5, 0.9))
    r = head_value(policy, artifact, splits["fit"], splits["cal"], [splits["test"]], settings)
    g = r["fitted_gate_on_calibration"]
    assert g["router_threshold"] in (0.5, 0.9) and g["alpha"] in (0.05, 0.2)
    target = r["served_on_calibration"]["accuracy"]
    costs = {}
    for gate in (0.5, 0.9):
        gated = policy.model_copy(update={"router_threshold": gate})
        sweep = _matched(gated, artifact, splits["fit"], splits["cal"], settings, target)[4]
        costs[gate] = min(
            (m["cost_raw"] for _, _, m in sweep if m["accuracy"] >= target), default=None
        )
    matched = [c for c in costs.values() if c is not None]
    assert g["matched"] == bool(matched)
    if matched:
        assert g["cost_raw"] == pytest.approx(min(matched))
    row = r["tests"][0]
    expected = 1 - row["fitted_gate"]["cost_raw"] / row["verdict_alone"]["cost_raw"]
    assert row["fitted_gate_cost_reduction"] == pytest.approx(expected)
