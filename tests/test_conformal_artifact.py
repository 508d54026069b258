"""calibration.artifact: the JSON file serving loads (scorer + threshold + provenance)."""

from __future__ import annotations

import copy
import dataclasses
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


# --- per-task-type (Mondrian) thresholds --------------------------------------------------------


def _typed(split, types):
    """`split` with each request's task type (the synthetic split has one, 'add')."""
    out = copy.copy(split)
    out.tasks = [dataclasses.replace(t, family=k) for t, k in zip(split.tasks, types, strict=True)]
    return out


@pytest.fixture(scope="module")
def mondrian():
    """A 2-tier served config (no router) and a synthetic calibration split whose requests
    are add / sub / max, except 5 'rev' ones: too few for risk at alpha 0.1 (n >= 9)."""
    from calibration.config import AppArgs
    from offline.ladder_calibration import calibrate_ladder

    app = AppArgs(tiers=[{"name": "cheap", "model": "m"}, {"name": "strong", "model": "m"}])
    policy = app.policy()
    fit, cal = synthetic_split(300, 1), synthetic_split(400, 2)
    cal.router = None  # every request reaches the cheap tier, as served without a router
    types = ["rev"] * 5 + [("add", "sub", "max")[i % 3] for i in range(cal.n - 5)]
    cal = _typed(cal, types)
    kwargs = {"mode": "risk", "alpha": 0.1, "models": {"cheap": MODEL}}
    pooled = calibrate_ladder(policy, fit, cal, **kwargs)
    grouped = calibrate_ladder(policy, fit, cal, **kwargs, mondrian=True)
    return app, cal, pooled, grouped


def test_mondrian_thresholds_are_each_types_own_calibration(mondrian):
    _, cal, pooled, grouped = mondrian
    p, g = pooled.tiers["cheap"], grouped.tiers["cheap"]
    assert p.group_thresholds == {} and p.group_n == {} and not pooled.grouped
    assert g.threshold == p.threshold and grouped.grouped  # the pooled one is unchanged
    assert g.group_n == {"add": 132, "sub": 132, "max": 131, "rev": 5}
    assert set(g.group_thresholds) == {"add", "sub", "max"}  # rev: too few, pooled
    assert "pooled for ['rev']" in g.note
    scores = g.build_scorer().score_many(cal.features["cheap"], cal.feature_names)
    kinds = np.array([t.family for t in cal.tasks])
    for kind, threshold in g.group_thresholds.items():
        m = kinds == kind
        own = calibrate(
            "risk",
            scores[m],
            0.1,
            wrong=~cal.correct["cheap"][m],
            strong_right=cal.correct["strong"][m],
        )
        assert threshold == own.threshold and not own.conservative
    assert len(set(g.group_thresholds.values())) > 1
    # the drift reference counts escalations at the pooled threshold, as the monitor does
    assert g.drift.escalation == p.drift.escalation and g.drift.threshold == p.threshold
    assert g.threshold_for("sub") == (g.group_thresholds["sub"], "sub")
    assert (
        g.threshold_for("rev")
        == g.threshold_for(None)
        == g.threshold_for("new")
        == (g.threshold, None)
    )


def test_mondrian_artifact_round_trips_and_old_files_load(tmp_path, mondrian):
    from calibration.artifact import load_artifact

    _, _, pooled, grouped = mondrian
    back = load_artifact(grouped.save(tmp_path / "m.json"), ["cheap", "strong"])
    # (as dumps: `==` also compares the scorer a loaded artifact builds on first use)
    assert back.model_dump() == grouped.model_dump() and back.tiers["cheap"].group_thresholds
    raw = json.loads(pooled.save(tmp_path / "p.json").read_text())
    for tier in raw["tiers"].values():  # a file from before Mondrian thresholds
        del tier["group_thresholds"], tier["group_n"]
    (tmp_path / "old.json").write_text(json.dumps(raw))
    old = load_artifact(tmp_path / "old.json", ["cheap", "strong"])
    assert old.model_dump() == pooled.model_dump() and not old.grouped
    # a user_config override holds for every type: the group thresholds go
    moved = grouped.with_thresholds({"cheap": 0.5}).tiers["cheap"]
    assert moved.group_thresholds == {} and moved.threshold_for("sub") == (0.5, None)
    with pytest.raises(ValueError, match="group thresholds must be numbers"):
        _tier(0.1).model_validate({**_tier(0.1).model_dump(), "group_thresholds": {"a": math.nan}})


def test_serving_and_the_replay_take_the_same_per_type_threshold(tmp_path, mondrian):
    """CascadeServer (its real `_drive`, tiers answering with the split's recorded answers)
    and `replay_served` decide every request alike, at its type's threshold."""
    import asyncio

    from deployments.llm import TierRequest
    from deployments.serving import CascadeServer
    from models.engine import SamplingSettings
    from offline.served import realised_guarantees, replay_served

    app, cal, pooled, grouped = mondrian
    path = grouped.save(tmp_path / "m.json")
    app = app.model_copy(
        update={"calibration": app.calibration.model_copy(update={"file": str(path)})}
    )
    policy, kinds = app.policy(), [t.family for t in cal.tasks]
    run = replay_served(policy, grouped, cal)  # a Mondrian artifact: the data's types
    assert [o.visited for o in run.outcomes] == [
        o.visited for o in replay_served(policy, grouped, cal, kinds).outcomes
    ]
    as_pooled = replay_served(policy, pooled, cal)
    assert [o.visited for o in as_pooled.outcomes] == [
        o.visited for o in replay_served(policy, grouped, cal, [None] * cal.n).outcomes
    ]
    assert run.escalation_rate != as_pooled.escalation_rate

    class Recorded:  # a tier deployment's handle: `.generate.remote(request)` -> its answer
        def __init__(self, name: str) -> None:
            self.name, self.generate = name, self

        def remote(self, request):
            async def answer():
                return cal.answers[self.name][request.meta["i"]]

            return answer()

    server = CascadeServer(
        app, tiers={"cheap": Recorded("cheap"), "strong": Recorded("strong")}, router=None
    )

    async def serve_all():
        settings = SamplingSettings(max_tokens=8)
        return [
            await server.serve(
                TierRequest(settings, prompt="q", meta={"i": i}), "cascade", "q", kinds[i]
            )
            for i in range(0, cal.n, 7)
        ]

    for i, result in zip(range(0, cal.n, 7), asyncio.run(serve_all()), strict=True):
        threshold, group = grouped.tiers["cheap"].threshold_for(kinds[i])
        assert result.routing.threshold == threshold and result.routing.threshold_group == group
        assert result.outcome.visited == run.outcomes[i].visited
    # the measured guarantee is at each request's own threshold
    sub = realised_guarantees(policy, grouped, cal, run)["cheap"]["per_task_type"]["sub"]
    assert sub["group"] == "sub" and sub["realised"] <= 0.1
