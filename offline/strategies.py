"""Every strategy of the offline evaluation, as operating points on the evaluated split.

Each family reduces to per-request decisions (a start tier, escalate flags per tier) replayed
by `offline.points.replay` (so through `CascadeRun`), except `served`, which is the served
policy itself replayed by `offline.served.replay_served`, and `served_hindsight`, the same with
its cheapest threshold picked on the split (`offline.hindsight`, a diagnostic).
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np

from calibration.artifact import CascadeArtifact
from calibration.conformal import ConformalResult, empirical
from calibration.policy import CascadePolicyConfig
from calibration.scores import FEATURE_SCORERS, QualityEstimator, Scorer, get_scorer
from offline.hindsight import hindsight_point
from offline.points import (
    EvalSettings,
    OperatingPoint,
    replay,
    router_start,
    score_flags,
    seed_rule_flags,
    sweep,
)
from offline.replay import EvalSplit
from offline.served import realised_guarantees, replay_served
from offline.summary import ACC_GAP

__all__ = ["served_point", "strategies"]


def strategies(
    policy: CascadePolicyConfig,
    test: EvalSplit,
    qe: QualityEstimator,
    thresholds: Mapping[tuple[str, float], ConformalResult],
    settings: EvalSettings,
    router_thresholds: Mapping[tuple[float, str, float], ConformalResult] | None = None,
    matched: frozenset = frozenset(),
    served: tuple[CascadePolicyConfig, CascadeArtifact] | None = None,
) -> list[OperatingPoint]:
    """Every operating point on `test`; `matched` holds the keys of `thresholds` and
    `router_thresholds` whose alpha was matched to the heuristic (marked in their params);
    `served` (the served ladder and its artifact) adds the `served` point."""
    point = _pricer(policy, test)
    pts = [
        point("always_cheap", "always_cheap", {}),
        point("always_strong", "always_strong", {}, np.full(test.n, policy.top)),
    ]
    pts += _random_points(point, test, settings)
    heuristic_flags = score_flags(test, get_scorer("seed_heuristic"), 1.0)
    pts.append(point("heuristic", "heuristic", heuristic_flags))
    pts.append(point("seed_rules", "seed_rules", seed_rule_flags(test)))
    pts += _swept_points(point, test, qe, settings)
    pts += _conformal_points(point, test, qe, thresholds, matched)
    if test.router is not None:
        pts += _router_points(point, policy, test, qe, settings, heuristic_flags)
        pts += _router_conformal_points(point, policy, test, qe, router_thresholds or {}, matched)
    oracle = {t: test.needs_escalation for t in test.tiers[:-1]}
    pts.append(point("oracle", "oracle", oracle))
    if served is not None:
        pts.append(served_point(*served, test, unit=pts[1].cost_raw))
        hindsight = hindsight_point(*served, test, unit=pts[1].cost_raw, max_gap=ACC_GAP)
        if hindsight is not None:
            pts.append(hindsight)
    return pts


def _pricer(policy: CascadePolicyConfig, test: EvalSplit):
    """point(name, family, escalate, start=None, **params): one replayed operating point,
    its cost normalised to always-strong's."""
    _, unit, _, _ = replay(policy, test, {}, np.full(test.n, policy.top))
    unit = unit if unit > 0 else 1.0  # a free ladder: report raw costs

    def point(name, family, escalate, start=None, **params) -> OperatingPoint:
        acc, cost, esc, strong = replay(policy, test, escalate, start)
        return OperatingPoint(name, family, acc, cost / unit, esc, strong, cost, params)

    return point


def _random_points(point, test: EvalSplit, settings: EvalSettings) -> list[OperatingPoint]:
    rng = np.random.default_rng(settings.seed)
    u = rng.random(test.n)  # one draw for all rates: the random curve is monotone
    return [
        point(f"random@{r:g}", "random", {t: u < r for t in test.tiers[:-1]}, rate=float(r))
        for r in settings.random_rates
    ]


def _swept_points(point, test: EvalSplit, qe: QualityEstimator, settings: EvalSettings):
    """Each single feature, and the quality estimator, swept over thresholds."""
    scorers: list[Scorer] = [get_scorer(name) for name in FEATURE_SCORERS]
    pts = []
    for scorer in [*scorers, qe]:
        family = scorer.name if scorer is qe else f"feature:{scorer.name}"
        for th in sweep(test, scorer, settings.sweep_points):
            flags = score_flags(test, scorer, th)
            pts.append(point(f"{family}@{th:.4g}", family, flags, threshold=float(th)))
    return pts


def _conformal_points(point, test, qe, thresholds, matched) -> list[OperatingPoint]:
    """The quality estimator at each conformal (mode, alpha) threshold, without the router."""
    qe_scores = qe.score_many(test.features[test.tiers[0]], test.feature_names)
    pts = []
    for (mode, a), res in thresholds.items():
        measured = empirical(mode, qe_scores, res.threshold, test.wrong, test.strong_right)
        pts.append(
            point(
                f"conformal:{mode}@{a:g}",
                f"conformal:{mode}",
                score_flags(test, qe, res.threshold),
                alpha=a,
                threshold=res.threshold,
                conservative=res.conservative,
                guaranteed_quantity_on_test=measured,
                **({"matched_to_heuristic": True} if (mode, a) in matched else {}),
            )
        )
    return pts


def _router_points(point, policy, test, qe, settings, heuristic_flags) -> list[OperatingPoint]:
    """Router alone (a ranking curve), router + swept cascade, router + heuristic."""
    p = test.router_p
    pts = []
    for tau in np.unique(np.quantile(p, np.linspace(0, 1, settings.sweep_points))):
        # a ranking curve of the router alone: 'complex' at every P(complex), so it also
        # covers thresholds below 0.5 that serving's argmax label never reaches
        cfg = policy.model_copy(update={"router_threshold": float(tau)})
        start = np.array([cfg.start_tier(router_policy="complex", router_confidence=x) for x in p])
        pts.append(
            point(f"router_only@{tau:.4g}", "router_only", {}, start, router_threshold=float(tau))
        )
    start = router_start(policy, test.router)
    for th in sweep(test, qe, settings.sweep_points):
        pts.append(
            point(
                f"router+cascade@{th:.4g}",
                "router+cascade",
                score_flags(test, qe, th),
                start,
                threshold=float(th),
                router_threshold=policy.router_threshold,
            )
        )
    for tau in settings.router_thresholds:
        start = router_start(policy, test.router, tau)
        pts.append(
            point(
                f"heuristic+router@router={tau:g}",
                "heuristic+router",
                heuristic_flags,
                start,
                router_threshold=float(tau),
                cheap_started_share=float((start == 0).mean()),
            )
        )
    return pts


def _router_conformal_points(point, policy, test, qe, routed, matched) -> list[OperatingPoint]:
    """Router + cascade with conformal thresholds calibrated on cheap-started requests."""
    qe_scores = qe.score_many(test.features[test.tiers[0]], test.feature_names)
    pts = []
    for (tau, mode, a), res in routed.items():
        start = router_start(policy, test.router, tau)
        cheap = start == 0
        sub = (
            empirical(
                mode, qe_scores[cheap], res.threshold, test.wrong[cheap], test.strong_right[cheap]
            )
            if cheap.any()
            else math.nan
        )
        pts.append(
            point(
                f"conformal:{mode}+router@router={tau:g},alpha={a:g}",
                f"conformal:{mode}+router",
                score_flags(test, qe, res.threshold),
                start,
                alpha=a,
                router_threshold=tau,
                threshold=res.threshold,
                conservative=res.conservative,
                n_calibration_used=res.n,
                cheap_started_share=float(cheap.mean()),
                guaranteed_quantity_on_test_cheap_started=sub,
                **({"matched_to_heuristic": True} if (tau, mode, a) in matched else {}),
            )
        )
    return pts


def served_point(
    policy: CascadePolicyConfig, artifact: CascadeArtifact, test: EvalSplit, unit: float
) -> OperatingPoint:
    """The served policy (the config's ladder, router + head, the artifact's thresholds),
    replayed by `CascadeRun`, with each calibrated tier's realised guarantee beside its
    target. `unit` is always-strong's raw mean cost, for the normalised `cost`."""
    run = replay_served(policy, artifact, test)
    strong = float(np.mean([policy.top in o.visited for o in run.outcomes]))
    raw = float(run.cost.mean())
    return OperatingPoint(
        "served",
        "served",
        run.accuracy,
        raw / (unit if unit > 0 else 1.0),
        run.escalation_rate,
        strong,
        raw,
        {
            "guarantee": realised_guarantees(policy, artifact, test, run),
            "router_threshold": policy.router_threshold,
            "confidence_source": test.router.source if test.router else None,
            "started_at_top": float(np.mean([o.start_tier == policy.top for o in run.outcomes])),
        },
    )
