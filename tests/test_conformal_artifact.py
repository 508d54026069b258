"""calibration.artifact: the JSON file serving loads (scorer + threshold + provenance)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from calibration.artifact import CascadeCalibration, ModelIdentity
from calibration.conformal import calibrate
from calibration.scores import ScorerSpec
from offline.evaluate import fit_quality_estimator
from offline.synthetic import random_generation, synthetic_split

MODEL = ModelIdentity(name="zoo:cheap", path="/tmp/zoo/cheap", fingerprint="abc123")


@pytest.fixture(scope="module")
def fitted():
    fit, cal = synthetic_split(400, 1), synthetic_split(400, 2)
    qe = fit_quality_estimator(fit)
    scores = qe.score_many(cal.features["cheap"])
    res = calibrate("risk", scores, 0.05, wrong=cal.wrong, strong_right=cal.strong_right)
    return qe, res


def test_round_trip_and_same_decisions(tmp_path, fitted):
    qe, res = fitted
    art = CascadeCalibration(
        scorer=ScorerSpec.of(qe),
        mode="risk",
        alpha=0.05,
        threshold=res.threshold,
        n_calibration=res.n,
        model=MODEL,
        calibration_split="synthetic",
    )
    path = art.save(tmp_path / "sub" / "cal.json")
    back = CascadeCalibration.load(path)
    assert back == art
    rng = np.random.default_rng(0)
    for _ in range(20):
        g = random_generation(rng, int(rng.integers(1, 10)), sharpness=float(rng.uniform(0.3, 3)))
        a, b = art.signal(g), back.signal(g)
        assert (a.score, a.escalate, a.threshold) == (b.score, b.escalate, b.threshold)
        assert a.scorer == "quality_estimator"


def test_infinite_thresholds_survive_json(tmp_path):
    for t in (math.inf, -math.inf):
        art = CascadeCalibration(
            scorer=ScorerSpec(name="neg_mean_logprob"),
            mode="budget",
            alpha=0.01,
            threshold=t,
            conservative=True,
            model=MODEL,
        )
        assert CascadeCalibration.load(art.save(tmp_path / "c.json")).threshold == t


def test_heuristic_mode_is_the_seed_limits():
    art = CascadeCalibration.heuristic(MODEL)
    assert art.mode == "heuristic" and art.threshold == 1.0 and art.alpha is None
    assert art.scorer.limits.entropy == 2.5
    g = random_generation(np.random.default_rng(1), 5, sharpness=0.2)  # very unsure
    assert art.signal(g).escalate


@pytest.mark.parametrize(
    "change, match",
    [
        ({"mode": "risk", "alpha": None}, "needs alpha in \\(0, 1\\), got None"),
        ({"mode": "budget", "alpha": 1.0}, "got 1.0"),
        ({"mode": "heuristic", "alpha": None}, "needs scorer 'seed_heuristic'"),
        ({"threshold": math.nan}, "threshold must be a number"),
        ({"version": 99}, "version 99 is not supported"),
        ({"mode": "median"}, "mode"),
    ],
)
def test_invalid_artifacts_raise_naming_the_problem(tmp_path, change, match):
    good = {
        "scorer": {"name": "neg_mean_logprob"},
        "mode": "budget",
        "alpha": 0.1,
        "threshold": 1.0,
        "model": MODEL.model_dump(),
    }
    with pytest.raises(ValueError, match=match):
        CascadeCalibration.model_validate({**good, **change})
    path = tmp_path / "bad.json"
    path.write_text(json.dumps({**good, **change}, allow_nan=True))
    with pytest.raises(ValueError, match=f"invalid calibration artifact {path}"):
        CascadeCalibration.load(path)


def test_unreadable_file_names_the_path(tmp_path):
    path = tmp_path / "missing.json"
    with pytest.raises(ValueError, match=f"cannot read calibration artifact {path}"):
        CascadeCalibration.load(path)
    path.write_text("{not json")
    with pytest.raises(ValueError, match="cannot read"):
        CascadeCalibration.load(path)


def test_unknown_scorer_in_artifact():
    with pytest.raises(ValueError, match="unknown scorer 'magic'"):
        CascadeCalibration(
            scorer={"name": "magic"}, mode="budget", alpha=0.1, threshold=0, model=MODEL
        )


# --- the per-tier container --------------------------------------------------------------------


def _tier(threshold: float, name: str = "zoo:cheap") -> CascadeCalibration:
    return CascadeCalibration(
        scorer=ScorerSpec(name="neg_mean_logprob"),
        mode="risk",
        alpha=0.02,
        threshold=threshold,
        model=ModelIdentity(name=name),
    )


def test_cascade_artifact_round_trip_and_per_tier_signals(tmp_path):
    from calibration.artifact import CascadeArtifact, load_artifact

    art = CascadeArtifact(tiers={"cheap": _tier(0.5), "mid": _tier(0.1, "zoo:mid")})
    back = load_artifact(art.save(tmp_path / "a.json"), ["cheap", "mid", "strong"])
    assert back == art
    g = random_generation(np.random.default_rng(1), 6, sharpness=1.0)
    cheap, mid = back.signal("cheap", g), back.signal("mid", g)
    assert cheap.score == mid.score and (cheap.threshold, mid.threshold) == (0.5, 0.1)
    back.check_covers(["cheap", "mid", "strong"])
    with pytest.raises(ValueError, match=r"no threshold for tiers \['mid2'\]"):
        back.check_covers(["cheap", "mid2", "strong"])
    with pytest.raises(KeyError, match="no threshold for tier 'nope'"):
        back.with_thresholds({"nope": 1.0})
    moved = back.with_thresholds({"mid": 0.3})
    assert moved.for_tier("mid").threshold == 0.3 and moved.for_tier("cheap").threshold == 0.5


def test_a_single_tier_file_calibrates_the_cheapest_tier(tmp_path):
    from calibration.artifact import load_artifact

    path = _tier(0.25).save(tmp_path / "single.json")
    art = load_artifact(path, ["small", "big"])
    assert list(art.tiers) == ["small"] and art.for_tier("small").threshold == 0.25
    (tmp_path / "bad.json").write_text('{"tiers": {}}')
    with pytest.raises(ValueError, match="invalid calibration artifact"):
        load_artifact(tmp_path / "bad.json", ["small", "big"])
