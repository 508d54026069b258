"""offline.evaluate / curves / replay / the CLI, on synthetic splits (no model needed)."""

from __future__ import annotations

import json
import math
import struct

import numpy as np
import pytest

import offline.cli.conformal as conformal_cmd
import offline.cli.evaluate as evaluate_cmd
import offline.replay as replay_mod
from calibration.__main__ import main
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
from offline.replay import (
    RouterRows,
    _from_json,
    _to_json,
    model_fingerprint,
    param_count,
    zoo_tiers,
)
from offline.summary import summary
from offline.synthetic import random_generation, synthetic_split

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


def test_report_end_points_andsummary(report):
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
    qe = fit_quality_estimator(splits["fit"])
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


# --- cache helpers ---------------------------------------------------------------------------


def test_generation_json_round_trip():
    g = random_generation(np.random.default_rng(0), 7)
    assert _from_json(json.loads(json.dumps(_to_json(g)))) == g


def write_safetensors(path, shapes):
    header = {name: {"dtype": "F32", "shape": s, "data_offsets": [0, 0]} for name, s in shapes}
    header["__metadata__"] = {"format": "pt"}
    raw = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(raw)) + raw)


def test_param_count_and_zoo_tiers(tmp_path):
    (tmp_path / "cheap").mkdir()
    (tmp_path / "strong").mkdir()
    write_safetensors(tmp_path / "cheap" / "model.safetensors", [("a", [10, 10]), ("b", [5])])
    write_safetensors(tmp_path / "strong" / "model.safetensors", [("a", [20, 42])])
    assert param_count(tmp_path / "cheap") == 105
    tiers = zoo_tiers(tmp_path)
    assert [t.cost_per_request for t in tiers] == [0.125, 1.0]
    with pytest.raises(FileNotFoundError):
        param_count(tmp_path)


def test_fingerprint_follows_the_model_files_only(tmp_path):
    cheap, strong = tmp_path / "cheap", tmp_path / "strong"
    cheap.mkdir()
    strong.mkdir()
    (cheap / "config.json").write_text('{"hidden": 64}')
    (strong / "config.json").write_text('{"hidden": 64}')
    a = model_fingerprint(cheap)
    assert model_fingerprint(strong) == a  # same content, same model
    (tmp_path / "manifest.json").write_text('{"derived": {}}')  # outside the folder
    assert model_fingerprint(cheap) == a
    (cheap / "config.json").write_text('{"hidden": 128}')  # retrained
    assert model_fingerprint(cheap) != a
    with pytest.raises(FileNotFoundError, match="no model folder"):
        model_fingerprint(tmp_path / "missing")


# --- the CLI, on synthetic data ---------------------------------------------------------------


@pytest.fixture
def synthetic_cli(monkeypatch, tmp_path):
    seeds = {"validation": 11, "calibration": 12, "test": 13}

    def fake_load_split(split, n, seed=0, **_):
        return synthetic_split(n, seeds[split] + 100 * seed, split)

    monkeypatch.setattr(replay_mod, "load_split", fake_load_split)
    monkeypatch.setattr(evaluate_cmd, "zoo_root", lambda args: tmp_path)
    monkeypatch.setattr(conformal_cmd, "zoo_root", lambda args: tmp_path)
    (tmp_path / "cheap").mkdir()
    (tmp_path / "cheap" / "config.json").write_text("{}")  # the artifact fingerprints it
    policy = tmp_path / "policy.json"
    policy.write_text(POLICY.model_dump_json())
    return tmp_path, policy


def test_cli_evaluate_json(synthetic_cli, capsys):
    tmp, policy = synthetic_cli
    rc = main(
        [
            "evaluate",
            "--split",
            "test",
            "--n",
            "300",
            "--n-cal",
            "300",
            "--n-fit",
            "300",
            "--policy",
            str(policy),
            "--out",
            str(tmp / "art"),
            "--json",
        ]
    )
    assert rc == 0
    out = json.loads(capsys.readouterr().out)
    assert {"strategies", "summary"} <= set(out)
    assert {"apgr", "cpt50", "cpt80"} <= set(out["summary"])
    assert {"apgr", "cpt50", "cpt80"} <= set(out["summary"]["oracle"])
    assert (tmp / "art" / "cost_quality_test_s0.png").stat().st_size > 10_000


SMALL = ["--n", "200", "--n-cal", "200", "--n-fit", "200", "--no-plot", "--json"]


def test_cli_evaluate_prices_tiers_as_the_serve_config_does(synthetic_cli, capsys):
    rc = main(["evaluate", "--split", "test", *SMALL])
    assert rc == 0
    out = json.loads(capsys.readouterr().out)
    s = out["summary"]
    assert [t["cost_per_request"] for t in s["tiers"]] == [0.05, 0.75]  # serve_config.yaml
    assert s["router_threshold"] == 0.7
    assert s["always_strong_cost"] == pytest.approx(1.0)
    assert s["always_strong_cost_raw"] == pytest.approx(0.75)
    by = {p["name"]: p for p in out["strategies"]}
    assert by["always_cheap"]["cost"] == pytest.approx(0.05 / 0.75)
    assert out["policy_source"].startswith("serve config")


def test_cli_evaluate_policy_yaml_and_param_costs(synthetic_cli, capsys):
    tmp, _ = synthetic_cli
    path = tmp / "serve.yaml"
    path.write_text(
        "applications:\n  - name: cascade\n    args:\n      tiers:\n"
        "        - {name: cheap, model: zoo:cheap, cost_per_request: 0.2}\n"
        "        - {name: strong, model: zoo:strong, cost_per_request: 2.0}\n"
    )
    assert main(["evaluate", "--split", "test", "--policy", str(path), *SMALL]) == 0
    s = json.loads(capsys.readouterr().out)["summary"]
    assert s["always_strong_cost_raw"] == pytest.approx(2.0)
    assert s["router_threshold"] == 0.7  # serving's default when the file names none
    (tmp / "strong").mkdir()
    write_safetensors(tmp / "cheap" / "model.safetensors", [("a", [10, 10])])
    write_safetensors(tmp / "strong" / "model.safetensors", [("a", [20, 20])])
    assert main(["evaluate", "--split", "test", "--costs", "params", *SMALL]) == 0
    s = json.loads(capsys.readouterr().out)["summary"]
    assert [t["cost_per_request"] for t in s["tiers"]] == [0.25, 1.0]


def test_cli_evaluate_refuses_to_evaluate_on_its_own_calibration_data(synthetic_cli):
    _, policy = synthetic_cli
    with pytest.raises(SystemExit, match="used to fit or calibrate"):
        main(["evaluate", "--split", "calibration", "--policy", str(policy)])


@pytest.mark.parametrize("mode", ["budget", "recall", "risk"])
def test_cli_conformal_json_and_artifact(synthetic_cli, capsys, mode):
    tmp, _ = synthetic_cli
    out_path = tmp / f"{mode}.json"
    rc = main(
        [
            "conformal",
            "--mode",
            mode,
            "--alpha",
            "0.1",
            "--trials",
            "200",
            "--n",
            "300",
            "--n-cal",
            "300",
            "--n-fit",
            "300",
            "--json",
            "--out",
            str(out_path),
        ]
    )
    assert rc == 0
    out = json.loads(capsys.readouterr().out)
    assert out["mode"] == mode and out["check"]["trials"] == 200
    assert out["policy_source"].startswith("serve config")  # priced as serving prices
    assert 0.05 / 0.75 - 1e-9 <= out["on_test"]["cost_vs_always_strong"] <= 1.0 + 0.05 / 0.75
    assert {"mean", "violation_share", "holds", "bound"} <= set(out["check"])
    assert out["check"]["holds"]
    from calibration.artifact import CascadeCalibration

    art = CascadeCalibration.load(out_path)
    assert art.mode == mode and art.threshold == pytest.approx(float(out["threshold"]))


def test_cli_conformal_heuristic(synthetic_cli, capsys):
    tmp, _ = synthetic_cli
    rc = main(
        [
            "conformal",
            "--mode",
            "heuristic",
            "--n",
            "200",
            "--n-cal",
            "200",
            "--json",
            "--out",
            str(tmp / "h.json"),
        ]
    )
    assert rc == 0
    out = json.loads(capsys.readouterr().out)
    assert out["threshold"] == 1.0 and "escalation_rate" in out["check"]


def test_cli_rejects_bad_alpha(synthetic_cli):
    with pytest.raises(SystemExit, match="--alpha must be in"):
        main(["conformal", "--mode", "risk", "--alpha", "2"])
