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
from calibration.conformal import CalibrationError, calibrate
from calibration.drift_reference import (
    DriftReference,
    Proportion,
    calibrated_answers,
    references_from_outcomes,
)
from calibration.identity import TierIdentity
from calibration.policy import CascadePolicyConfig
from offline.evaluate import fit_quality_estimator
from offline.replay import EvalSplit
from offline.served import replay_served, task_types

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
    mondrian: bool = False,
    router_evidence: bool = True,
) -> CascadeArtifact:
    """The artifact for every tier below the top; `where` names the data (for the record).

    `router_evidence`: each tier's quality estimator also sees the router's P(complex) where
    the data has the router's verdicts (`offline.evaluate.fit_quality_estimator`); serving
    then passes it with every answer, and refuses to start without a router.

    `mondrian`: each tier also gets one threshold per task type (`offline.served.task_types`),
    same mode and alpha, on that type's calibration queries among those reaching the tier,
    so each type gets the guarantee rather than only their mix (`_group_thresholds`)."""
    names, top = policy.tier_names, policy.tier_names[-1]
    types = task_types(cal) if mondrian else None
    # the router's evidence only where both splits carry it: scores calibrated without it
    # would all be +inf
    router_evidence = router_evidence and fit.router is not None and cal.router is not None
    done: dict[str, CascadeCalibration] = {}
    for t, name in enumerate(names[:-1]):
        so_far = CascadeArtifact(tiers=done) if done else None
        here = replay_served(policy, so_far, cal, upto=t).reached[name]
        if not here.any():
            raise ValueError(f"no calibration query reaches tier {name!r}; more data is needed")
        scorer = fit_quality_estimator(fit, name, router_evidence=router_evidence)
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
        if types is not None:
            groups = _group_thresholds(mode, alpha, scores, wrong, strong_right, types[here])
            groups["note"] = "; ".join(n for n in (calibration.note, groups["note"]) if n)
            calibration = calibration.model_copy(update=groups)
        done[name] = calibration
    artifact = CascadeArtifact(
        tiers=done,
        population=f"calibration queries the served router (+ confidence head, threshold "
        f"{policy.router_threshold:g}) and policy send to each tier; ladder {names}"
        + ("; per task type (Mondrian) where a type has enough" if mondrian else ""),
    )
    return record_drift(policy, artifact, cal, f"{where} n={cal.n}")


def _group_thresholds(mode: str, alpha: float, scores, wrong, strong_right, types) -> dict:
    """Mondrian conformal: the mode's threshold on each task type's answers alone. A type
    too small for the mode at this alpha (below its least n, where it could only return the
    conservative answer) keeps the pooled threshold: it is counted in `group_n` but left out
    of `group_thresholds`, and the note names it."""
    thresholds, sizes, pooled = {}, {}, []
    for kind in sorted({str(k) for k in types}):
        mask = types == kind
        sizes[kind] = int(mask.sum())
        try:
            res = calibrate(
                mode,
                scores[mask],
                alpha,
                wrong=wrong[mask],
                strong_right=strong_right[mask],
                strict=True,
            )
        except CalibrationError:
            pooled.append(kind)
            continue
        thresholds[kind] = res.threshold
    note = f"mondrian: own thresholds for {sorted(thresholds)}, pooled for {pooled}"
    return {"group_thresholds": thresholds, "group_n": sizes, "note": note}


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
    if artifact.grouped:
        refs = _escalations_at_pooled(policy, refs, run.outcomes, thresholds)
    return artifact.with_drift(refs)


def _escalations_at_pooled(
    policy: CascadePolicyConfig,
    refs: dict[str, DriftReference],
    outcomes: list,
    thresholds: dict[str, float],
) -> dict[str, DriftReference]:
    """Mondrian: the drift monitor counts an answer decided at another threshold than the
    reference's (its task type's) at the reference's pooled one, score > threshold; so the
    reference counts its escalations that way too, or the two would differ by design."""
    names = policy.tier_names
    out = {}
    for name, ref in refs.items():
        t = names.index(name)
        k = sum(
            a.score > thresholds[name]
            for o in outcomes
            for a in calibrated_answers(o)
            if a.tier == t
        )
        out[name] = ref.model_copy(update={"escalation": Proportion(k=k, n=ref.escalation.n)})
    return out
