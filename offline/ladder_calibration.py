"""Calibrate a ladder: each tier below the top gets a quality estimator and a conformal
threshold, on the queries the served router and policy send it, with what serving needs to
watch and adapt it (a drift reference, a bounded calibration sample) and what it was made for
(each tier's `TierIdentity`).

One function for every data source: the zoo's build (`offline.zoo_artifacts`) and the user's
traces (`python -m calibration calibrate`) both hand it `EvalSplit`s.

The population matters: calibrating a tier on all queries would mix in the ones the router
sends straight past it, which never meet its threshold in production. So the tiers are done
from the cheapest up, each on the calibration queries that `offline.served.replay_served`
(the `CascadeRun` serving drives) brings to it under the thresholds already set below.
"""

from __future__ import annotations

from calibration.adaptive import CalibrationSample
from calibration.artifact import CascadeArtifact, CascadeCalibration, ModelIdentity
from calibration.conformal import calibrate
from calibration.drift_reference import references_from_outcomes
from calibration.identity import TierIdentity
from calibration.policy import CascadePolicyConfig
from offline.evaluate import fit_quality_estimator
from offline.replay import EvalSplit
from offline.served import replay_served

__all__ = ["calibrate_ladder", "record_drift"]


def calibrate_ladder(
    policy: CascadePolicyConfig,
    fit: EvalSplit,
    cal: EvalSplit,
    *,
    mode: str,
    alpha: float,
    models: dict[str, ModelIdentity],
    identities: dict[str, TierIdentity] | None = None,
    where: str = "",
) -> CascadeArtifact:
    """The artifact for every tier below the top; `where` names the data (for the record)."""
    names, top = policy.tier_names, policy.tier_names[-1]
    done: dict[str, CascadeCalibration] = {}
    for t, name in enumerate(names[:-1]):
        so_far = CascadeArtifact(tiers=done) if done else None
        here = replay_served(policy, so_far, cal, upto=t).reached[name]
        if not here.any():
            raise ValueError(f"no calibration query reaches tier {name!r}; more data is needed")
        scorer = fit_quality_estimator(fit, name)
        scores = scorer.score_many(cal.features[name][here], cal.feature_names)
        wrong, strong_right = ~cal.correct[name][here], cal.correct[top][here]
        res = calibrate(mode, scores, alpha, wrong=wrong, strong_right=strong_right)
        sample = (
            CalibrationSample.of(mode, scores, wrong=wrong, strong_right=strong_right)
            if mode in ("budget", "risk")
            else None
        )
        note = f"{where}: {int(here.sum())} of {cal.n} calibration queries reach {name}"
        calibration = CascadeCalibration.from_result(
            res, scorer, cal.feedback, models[name], f"{note}; fit n={fit.n}", sample=sample
        )
        if identities and name in identities:
            calibration = calibration.model_copy(update={"identity": identities[name]})
        done[name] = calibration
    artifact = CascadeArtifact(
        tiers=done,
        population=f"calibration queries the served router (+ confidence head, threshold "
        f"{policy.router_threshold:g}) and policy send to each tier; ladder {names}",
    )
    return record_drift(policy, artifact, cal, f"{where} n={cal.n}")


def record_drift(
    policy: CascadePolicyConfig, artifact: CascadeArtifact, data: EvalSplit, where: str
) -> CascadeArtifact:
    """`artifact` with a drift reference (`calibration.drift_reference`) at each tier it
    calibrates from the cheapest up: what `data` (the calibration split, with the router's
    verdicts) looks like at that tier when replayed through the served policy, the same
    `replay_served` that set the thresholds, so the monitor expects what calibration saw."""
    names = policy.tier_names
    covered = next((t for t, n in enumerate(names[:-1]) if n not in artifact.tiers), policy.top)
    if covered == 0:
        return artifact
    run = replay_served(policy, artifact, data, upto=covered if covered < policy.top else None)
    thresholds = {n: artifact.tiers[n].threshold for n in names[:covered]}
    verdicts = data.router.policy if data.router is not None else None
    refs = references_from_outcomes(policy, run.outcomes, verdicts, thresholds, where)
    return artifact.with_drift(refs)
