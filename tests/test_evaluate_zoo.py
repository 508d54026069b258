"""The evaluation and the conformal check on the real zoo, with small n (< 90 s).

Not skipped: the session's `zoo` fixture returns at once when the zoo is built (CI builds it
first, `make zoo`) and builds it, once and locked, when it is not.
The answers are cached in a temporary folder, so this measures generation too.
"""

from __future__ import annotations

import json

import pytest

from calibration.config import AppArgs
from offline.cli import main


@pytest.fixture(scope="module", autouse=True)
def built_zoo(zoo):
    return zoo


N = ["--n", "200", "--n-cal", "300", "--n-fit", "300"]


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("CASCADE_CACHE_DIR", str(tmp_path / "cache"))


def test_evaluate_on_the_zoo(tmp_path, capsys):
    assert main(["evaluate", "--split", "test", *N, "--out", str(tmp_path), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    s = out["summary"]
    names = {p["name"] for p in out["strategies"]}
    assert {"always_cheap", "always_strong", "heuristic", "oracle"} <= names
    assert s["strong_accuracy"] > s["weak_accuracy"]  # the zoo's premise
    assert s["oracle"]["apgr"] >= s["apgr"] > 0.5  # better than random, below the oracle
    # priced as serving prices (serve_config.yaml), reported relative to always-strong
    serving = AppArgs.from_serve_config().policy()
    assert s["tiers"] == [t.model_dump() for t in serving.tiers]
    assert s["always_strong_cost"] == pytest.approx(1.0)
    assert s["always_strong_cost_raw"] == pytest.approx(serving.tiers[-1].cost_per_request)
    assert {"conformal:risk+router", "heuristic+router"} <= {p["family"] for p in out["strategies"]}
    assert s["best_conformal"] is None or s["best_conformal"]["cost"] <= 0.5 + 1e-12
    # the served policy (serve_config.yaml + the zoo's artifact), fixed before the test split
    served = s["served"]
    assert served["name"] == "served" and 0 < served["cost"] < 1
    assert served["accuracy"] > s["weak_accuracy"]
    guarantee = served["params"]["guarantee"]["cheap"]
    assert guarantee["mode"] == "risk" and guarantee["target"] == "<= 0.02"
    assert 0 <= guarantee["realised"] <= 0.1 and guarantee["n"] > 0
    # the same policy with its threshold picked on this split: a bound, never above served
    # where served is within the gap itself
    t = s["served_vs_targets"]
    hindsight = t["hindsight"]
    assert s["strong_accuracy"] - hindsight["accuracy"] <= 0.02 + 1e-9
    if t["accuracy_gap_to_strong"] <= 0.02:
        assert hindsight["cost"] <= served["cost"] + 1e-9
        assert hindsight["cost_vs_oracle"] <= t["cost_vs_oracle"] + 1e-9
    # the 3-tier table: every tier always, the served 3-tier policy, and the oracle
    three = out["three_tier"]
    assert three["tiers"] == ["cheap", "mid", "strong"]
    rows = {r["name"]: r for r in three["rows"]}
    assert set(rows) == {"always_cheap", "always_mid", "always_strong", "served", "oracle"}
    assert rows["always_cheap"]["accuracy"] < rows["always_mid"]["accuracy"]
    assert rows["always_strong"]["cost"] == pytest.approx(1.0)
    assert rows["oracle"]["cost"] <= rows["served"]["cost"] + 1e-9
    assert set(three["served_guarantee"]) == {"cheap", "mid"}
    # the cache makes a second run replay without generating
    cached = sorted((tmp_path / "cache").glob("answers-*.json"))
    assert len(cached) == 7  # 2 tiers x 3 splits, and the middle tier on the test split


@pytest.mark.parametrize("mode", ["budget", "recall", "risk"])
def test_conformal_check_on_the_zoo(tmp_path, capsys, mode):
    art = tmp_path / "cal.json"
    args = ["conformal", "--mode", mode, "--alpha", "0.1", "--trials", "200", *N, "--json"]
    assert main([*args, "--out", str(art)]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["check"]["holds"], out["check"]
    from calibration.artifact import load_artifact

    assert load_artifact(art, ["cheap", "strong"]).for_tier("cheap").model.name == "zoo:cheap"
