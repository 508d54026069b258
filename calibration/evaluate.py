"""Offline cascade evaluation: replay every strategy on recorded answers, compare, summarise.

Answers come from `calibration.replay` (generated once per split, cached). Each strategy is
reduced to per-request decisions (a start tier, escalate flags per tier) and replayed through
`calibration.policy.run_cascade`, the loop serving runs, and priced with the policy's tier
costs (by default the serve config's: what serving charges), so accuracy and cost are what
production would see. Costs are reported normalised to always-strong = 1.0 (`cost`), and in
the policy's own units (`cost_raw`). Data roles, kept apart so the conformal guarantees apply:

- `fit` split: fits the quality estimator (P(cheap answer wrong));
- `calibration` split: sets every conformal threshold;
- the evaluated split (`test`): only measured on.

Strategies: always-cheap, always-strong, random escalation at each rate, the seed's heuristic
limits (alone and behind the router), the seed router's full rule set, each single feature
swept over thresholds, the quality estimator swept and with each conformal mode over a sweep
of alpha, router-only, router + cascade, conformal router + cascade (each mode, alpha and
router threshold; see `router_conformal_thresholds`), and the oracle. Summary: APGR /
CPT(50%) / CPT(80%) per family, the best family and the oracle, and the acceptance checks
(gap recovered at half the cost; better than the heuristic at equal cost, like with like).

The router rule is serving's (`router_start`): the router's label is its argmax, its
confidence here is its max class probability (serving's fallback when no confidence head is
loaded), and `policy.start_tier` decides; so a request starts at the top tier iff
P(complex) >= the router threshold (for thresholds >= 0.5).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field

import numpy as np

from calibration.conformal import CONFORMAL_MODES, ConformalResult, calibrate, empirical
from calibration.curves import apgr, cpt, optimal_curve, pgr
from calibration.feedback import FeedbackSignal
from calibration.policy import CascadePolicyConfig, run_cascade, start_tier
from calibration.replay import EvalSplit
from calibration.scores import FEATURE_SCORERS, QualityEstimator, Scorer, get_scorer
from calibration.seed_router import ExecutionFeedbackRouter

__all__ = [
    "DEFAULT_ALPHAS",
    "DEFAULT_ROUTER_THRESHOLDS",
    "EvalSettings",
    "OperatingPoint",
    "conformal_thresholds",
    "evaluate",
    "fit_quality_estimator",
    "replay",
    "router_conformal_thresholds",
    "router_start",
]

DEFAULT_ALPHAS = (0.01, 0.02, 0.05, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5)
DEFAULT_ROUTER_THRESHOLDS = (0.5, 0.6, 0.7, 0.8, 0.9)
_ESCALATE = FeedbackSignal({}, 1.0, 0.0, True, ("replayed decision: escalate",), "replay")
_ACCEPT = FeedbackSignal({}, 0.0, 0.0, False, ("replayed decision: accept",), "replay")


@dataclass(frozen=True)
class OperatingPoint:
    """One strategy at one setting, measured on the evaluated split."""

    name: str
    family: str
    accuracy: float
    cost: float
    escalation_rate: float
    strong_share: float  # requests that called the top tier (RouteLLM's "strong calls")
    cost_raw: float = math.nan  # mean cost in the policy's units; `cost` is / always-strong's
    params: dict = field(default_factory=dict)

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class EvalSettings:
    """What to sweep; the defaults are what the CLI runs."""

    alphas: tuple[float, ...] = DEFAULT_ALPHAS
    router_thresholds: tuple[float, ...] = DEFAULT_ROUTER_THRESHOLDS  # for the +router families
    # add a budget point whose alpha is the heuristic's escalation rate on the calibration
    # split (per router threshold behind the router): conformal at the heuristic's cost
    match_heuristic: bool = True
    sweep_points: int = 41  # thresholds per swept score, at evenly spaced score quantiles
    random_rates: tuple[float, ...] = tuple(np.round(np.linspace(0, 1, 11), 2))
    seed: int = 0


def replay(
    policy: CascadePolicyConfig,
    data: EvalSplit,
    escalate: Mapping[str, np.ndarray],
    start: np.ndarray | None = None,
) -> tuple[float, float, float, float]:
    """Accuracy, mean cost, escalation rate and strong-call share of one set of decisions.

    `escalate[tier]` says, per request, what that tier's signal decided; tiers missing from
    it never escalate. `start` gives each request's start tier index (default 0).
    """
    names = policy.tier_names
    if names != data.tiers:
        raise ValueError(f"policy tiers {names} do not match the data's tiers {data.tiers}")
    none = np.zeros(data.n, dtype=bool)
    esc = [np.asarray(escalate.get(t, none), dtype=bool) for t in names]
    tokens = [data.output_tokens[t] for t in names]
    correct = [data.correct[t] for t in names]
    start = np.zeros(data.n, dtype=int) if start is None else np.asarray(start)
    right = cost = escalated = strong = 0.0
    for i in range(data.n):
        out = run_cascade(
            policy,
            int(start[i]),
            lambda t, i=i: _ESCALATE if esc[t][i] else _ACCEPT,
            lambda t, i=i: int(tokens[t][i]),
        )
        right += correct[out.final_tier][i]
        cost += out.cost
        escalated += out.escalated
        strong += policy.top in out.visited
    n = max(data.n, 1)
    return right / n, cost / n, escalated / n, strong / n


def router_start(
    policy: CascadePolicyConfig, router_p: np.ndarray, threshold: float | None = None
) -> np.ndarray:
    """Each request's start tier under serving's rule, from the router's P(complex).

    Serving passes `start_tier` the router's argmax label and its confidence; here the label is
    'complex' iff P(complex) > 0.5 and the confidence is the max class probability (serving's
    fallback without a confidence head). With `threshold` (default: the policy's router
    threshold) >= 0.5 that starts a request at the top tier iff P(complex) >= threshold.
    """
    cfg = policy if threshold is None else policy.model_copy(update={"router_threshold": threshold})
    p = np.asarray(router_p, dtype=float)
    return np.array(
        [
            start_tier(
                cfg,
                router_policy="complex" if x > 0.5 else "standard",
                router_confidence=max(x, 1.0 - x),
            )
            for x in p
        ],
        dtype=int,
    )


def _score_flags(data: EvalSplit, scorer: Scorer, threshold: float) -> dict[str, np.ndarray]:
    """Escalate flags of a score rule at every tier but the top."""
    return {
        t: scorer.score_many(data.features[t], data.feature_names) > threshold
        for t in data.tiers[:-1]
    }


def fit_quality_estimator(fit: EvalSplit) -> QualityEstimator:
    """The quality estimator on the cheapest tier's answers of the fit split."""
    return QualityEstimator.fit(
        fit.features[fit.tiers[0]], fit.wrong, fit.feature_names, fit_split=fit.split
    )


def conformal_thresholds(
    scorer: Scorer,
    cal: EvalSplit,
    alphas: Sequence[float],
    modes: Sequence[str] = CONFORMAL_MODES,
    where: np.ndarray | None = None,
) -> dict[tuple[str, float], ConformalResult]:
    """Every (mode, alpha) threshold from the calibration split's cheapest-tier answers
    (only the requests selected by the boolean mask `where`, when given)."""
    scores = scorer.score_many(cal.features[cal.tiers[0]], cal.feature_names)
    wrong, strong_right = cal.wrong, cal.strong_right
    if where is not None:
        where = np.asarray(where, dtype=bool)
        scores, wrong, strong_right = scores[where], wrong[where], strong_right[where]
    out = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # conservative results are flagged in the result
        for mode in modes:
            for a in alphas:
                out[(mode, a)] = calibrate(mode, scores, a, wrong=wrong, strong_right=strong_right)
    return out


def router_conformal_thresholds(
    scorer: Scorer,
    cal: EvalSplit,
    policy: CascadePolicyConfig,
    router_thresholds: Sequence[float],
    alphas: Sequence[float],
    modes: Sequence[str] = CONFORMAL_MODES,
) -> dict[tuple[float, str, float], ConformalResult]:
    """Conformal thresholds for router + cascade: (router threshold, mode, alpha) -> result.

    Each is calibrated on the calibration requests the router leaves at the cheapest tier
    (`router_start(...) == 0`, the same rule applied to the calibration queries), because
    those are the only requests the cascade's threshold ever decides. For a fixed router (not
    fitted on the calibration split), calibration and new requests are exchangeable *within*
    that sub-population, so each mode's guarantee holds conditionally on being cheap-started:

    - `budget`: P(escalate | cheap-started) <= alpha; the strong-call share on the whole
      traffic is then P(router sends to strong) + alpha * P(cheap-started) at most.
    - `recall`: P(escalate | cheap answer wrong, cheap-started) >= 1 - alpha; the router's
      misses (complex queries it leaves at the cheap tier) are in this sub-population, so they
      are covered; requests the router sends to strong get the strong answer anyway.
    - `risk`: E[loss | cheap-started] <= alpha (loss: cheap answer accepted, wrong, strong
      right). On the whole traffic the loss is that times the cheap-started share, plus
      nothing from the router-to-strong branch, which cannot cause a loss against the strong
      tier since those requests get the strong answer: E[loss] <= alpha * P(cheap-started).

    Calibrating on all calibration requests instead would mix in the router's confident-complex
    queries, which never reach the threshold in production, and so miss the guarantee (for
    `risk` and `recall` it would set the threshold with losses the cascade never sees). Raises
    ValueError when `cal` has no router probabilities.
    """
    if cal.router_p is None:
        raise ValueError(f"split {cal.split!r} has no router probabilities")
    out = {}
    for tau in router_thresholds:
        cheap = router_start(policy, cal.router_p, tau) == 0
        if not cheap.any():
            continue  # the router sends every request to the top: nothing to calibrate
        for (mode, a), res in conformal_thresholds(scorer, cal, alphas, modes, cheap).items():
            out[(float(tau), mode, a)] = res
    return out


def _sweep(data: EvalSplit, scorer: Scorer, points: int) -> np.ndarray:
    scores = scorer.score_many(data.features[data.tiers[0]], data.feature_names)
    finite = scores[np.isfinite(scores)]
    return np.unique(np.quantile(finite, np.linspace(0, 1, points))) if finite.size else []


def _seed_rule_flags(data: EvalSplit) -> dict[str, np.ndarray]:
    """The seed router's five fixed rules (no conformal rule: it is uncalibrated here)."""
    router = ExecutionFeedbackRouter()
    names = data.feature_names
    return {
        t: np.array(
            [
                bool(router.rules_fired(dict(zip(names, row, strict=True))))
                for row in data.features[t]
            ]
        )
        for t in data.tiers[:-1]
    }


def _strategies(
    policy: CascadePolicyConfig,
    test: EvalSplit,
    qe: QualityEstimator,
    thresholds: Mapping[tuple[str, float], ConformalResult],
    settings: EvalSettings,
    router_thresholds: Mapping[tuple[float, str, float], ConformalResult] | None = None,
    matched: frozenset = frozenset(),
) -> list[OperatingPoint]:
    """Every operating point on `test`; `matched` holds the keys of `thresholds` and
    `router_thresholds` whose alpha was matched to the heuristic (marked in their params)."""
    top = policy.top
    _, unit, _, _ = replay(policy, test, {}, np.full(test.n, top))
    unit = unit if unit > 0 else 1.0  # a free ladder: report raw costs

    def point(name, family, escalate, start=None, **params) -> OperatingPoint:
        acc, cost, esc, strong = replay(policy, test, escalate, start)
        return OperatingPoint(name, family, acc, cost / unit, esc, strong, cost, params)

    pts = [
        point("always_cheap", "always_cheap", {}),
        point("always_strong", "always_strong", {}, np.full(test.n, top)),
    ]
    rng = np.random.default_rng(settings.seed)
    u = rng.random(test.n)  # one draw for all rates: the random curve is monotone
    for r in settings.random_rates:
        flags = {t: u < r for t in test.tiers[:-1]}
        pts.append(point(f"random@{r:g}", "random", flags, rate=float(r)))
    heuristic = get_scorer("seed_heuristic")
    heuristic_flags = _score_flags(test, heuristic, 1.0)
    pts.append(point("heuristic", "heuristic", heuristic_flags))
    pts.append(point("seed_rules", "seed_rules", _seed_rule_flags(test)))
    scorers: list[Scorer] = [get_scorer(name) for name in FEATURE_SCORERS]
    for scorer in [*scorers, qe]:
        family = scorer.name if scorer is qe else f"feature:{scorer.name}"
        for th in _sweep(test, scorer, settings.sweep_points):
            pts.append(
                point(
                    f"{family}@{th:.4g}",
                    family,
                    _score_flags(test, scorer, th),
                    threshold=float(th),
                )
            )
    qe_scores = qe.score_many(test.features[test.tiers[0]], test.feature_names)
    for (mode, a), res in thresholds.items():
        flags = _score_flags(test, qe, res.threshold)
        measured = empirical(mode, qe_scores, res.threshold, test.wrong, test.strong_right)
        pts.append(
            point(
                f"conformal:{mode}@{a:g}",
                f"conformal:{mode}",
                flags,
                alpha=a,
                threshold=res.threshold,
                conservative=res.conservative,
                guaranteed_quantity_on_test=measured,
                **({"matched_to_heuristic": True} if (mode, a) in matched else {}),
            )
        )
    if test.router_p is not None:
        p = test.router_p
        for tau in np.unique(np.quantile(p, np.linspace(0, 1, settings.sweep_points))):
            # a ranking curve of the router alone: 'complex' at every confidence, so it also
            # covers thresholds below 0.5 that serving's argmax label never reaches
            cfg = policy.model_copy(update={"router_threshold": float(tau)})
            start = np.array(
                [start_tier(cfg, router_policy="complex", router_confidence=x) for x in p]
            )
            pts.append(
                point(
                    f"router_only@{tau:.4g}",
                    "router_only",
                    {},
                    start,
                    router_threshold=float(tau),
                )
            )
        start = router_start(policy, p)
        for th in _sweep(test, qe, settings.sweep_points):
            pts.append(
                point(
                    f"router+cascade@{th:.4g}",
                    "router+cascade",
                    _score_flags(test, qe, th),
                    start,
                    threshold=float(th),
                    router_threshold=policy.router_threshold,
                )
            )
        starts = {float(t): router_start(policy, p, t) for t in settings.router_thresholds}
        for tau, start in starts.items():
            pts.append(
                point(
                    f"heuristic+router@router={tau:g}",
                    "heuristic+router",
                    heuristic_flags,
                    start,
                    router_threshold=tau,
                    cheap_started_share=float((start == 0).mean()),
                )
            )
        for (tau, mode, a), res in (router_thresholds or {}).items():
            start = starts.get(tau)
            if start is None:
                start = router_start(policy, p, tau)
            cheap = start == 0
            flags = _score_flags(test, qe, res.threshold)
            sub = (
                empirical(
                    mode,
                    qe_scores[cheap],
                    res.threshold,
                    test.wrong[cheap],
                    test.strong_right[cheap],
                )
                if cheap.any()
                else math.nan
            )
            pts.append(
                point(
                    f"conformal:{mode}+router@router={tau:g},alpha={a:g}",
                    f"conformal:{mode}+router",
                    flags,
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
    oracle = {t: test.needs_escalation for t in test.tiers[:-1]}
    pts.append(point("oracle", "oracle", oracle))
    return pts


def _family_metrics(points: list[OperatingPoint], weak: float, strong: float) -> dict:
    fams: dict[str, list[OperatingPoint]] = {}
    for p in points:
        fams.setdefault(p.family, []).append(p)
    out = {}
    for fam, ps in fams.items():
        x = np.array([p.strong_share for p in ps])
        y = np.array([p.accuracy for p in ps])
        out[fam] = {
            "points": len(ps),
            "apgr": apgr(x, y, weak, strong),
            "cpt50": cpt(x, y, weak, strong, 0.5),
            "cpt80": cpt(x, y, weak, strong, 0.8),
        }
    return out


def _interp_accuracy_at_cost(points: list[OperatingPoint], cost: float) -> float:
    """Accuracy of a swept family at a given mean cost (linear between its points; the best
    accuracy among points at that exact cost)."""
    c = np.array([p.cost for p in points])
    a = np.array([p.accuracy for p in points])
    order = np.lexsort((a, c))
    c, a = c[order], a[order]
    if cost < c[0] or cost > c[-1]:
        return math.nan
    return float(np.interp(cost, c, a))


_EPS_COST = 1e-12


def _best_within(points: list[OperatingPoint], cost: float) -> OperatingPoint | None:
    """The most accurate point costing <= `cost` (the cheaper one on ties)."""
    return max(
        (p for p in points if p.cost <= cost + _EPS_COST),
        key=lambda p: (p.accuracy, -p.cost),
        default=None,
    )


def _curve_key(p: OperatingPoint) -> tuple:
    """One calibrated curve: a conformal mode (and, behind the router, its threshold)."""
    return (p.family, p.params.get("router_threshold"))


def _mixed_accuracy_at_cost(points: list[OperatingPoint], cost: float) -> float:
    """The best accuracy at exactly `cost` of a randomised mix of two adjacent points of one
    calibrated curve (per request, threshold A with probability w, else B): its expected cost
    and accuracy interpolate linearly, and the mix keeps the mixed alpha's guarantee (the
    guaranteed quantities are expectations too). NaN if no curve spans `cost`."""
    curves: dict[tuple, list[OperatingPoint]] = {}
    for p in points:
        curves.setdefault(_curve_key(p), []).append(p)
    vals = [_interp_accuracy_at_cost(ps, cost) for ps in curves.values() if len(ps) >= 2]
    vals = [v for v in vals if not math.isnan(v)]
    return max(vals, default=math.nan)


def _versus(baseline: OperatingPoint, rivals: list[OperatingPoint], described) -> tuple[bool, dict]:
    """Do calibrated `rivals` beat `baseline` at equal cost? Either one point costing no more
    is more accurate, or a randomised mix of two points of one curve at exactly the baseline's
    cost is. Also shows the budget point calibrated to the baseline's escalation rate on the
    calibration split (the like-for-like conformal twin), when there is one."""
    at_or_below = _best_within(rivals, baseline.cost)
    mixed = _mixed_accuracy_at_cost(rivals, baseline.cost)
    beats = bool(
        (at_or_below is not None and at_or_below.accuracy > baseline.accuracy)
        or (not math.isnan(mixed) and mixed > baseline.accuracy)
    )
    matched = next((p for p in rivals if p.params.get("matched_to_heuristic")), None)
    return beats, {
        "baseline": described(baseline),
        "budget_matched_to_heuristic": described(matched),
        "best_at_or_below_cost": described(at_or_below),
        "mixed_accuracy_at_equal_cost": mixed,
        "beats": beats,
    }


def _summary(points: list[OperatingPoint], test: EvalSplit, policy: CascadePolicyConfig) -> dict:
    by_name = {p.name: p for p in points}
    weak, strong = by_name["always_cheap"].accuracy, by_name["always_strong"].accuracy
    strong_cost = by_name["always_strong"].cost  # 1.0: costs are normalised to it
    fams = _family_metrics(points, weak, strong)
    x, y = optimal_curve(test.correct[test.tiers[0]], test.strong_right)
    oracle_pt = by_name["oracle"]
    oracle = {
        "apgr": apgr(x, y, weak, strong),
        "cpt50": cpt(x, y, weak, strong, 0.5),
        "cpt80": cpt(x, y, weak, strong, 0.8),
        **{k: getattr(oracle_pt, k) for k in ("accuracy", "cost", "escalation_rate")},
    }
    curves = {f: m for f, m in fams.items() if m["points"] >= 3 and f != "oracle"}
    best_family = max(curves, key=lambda f: curves[f]["apgr"]) if curves else None

    def described(p: OperatingPoint | None) -> dict | None:
        if p is None:
            return None
        return {
            **p.as_dict(),
            "pgr": float(pgr(p.accuracy, weak, strong)),
            "cost_vs_always_strong": p.cost / strong_cost if strong_cost else math.nan,
        }

    conformal = [p for p in points if p.family.startswith("conformal:")]
    plain = [p for p in conformal if not p.family.endswith("+router")]
    routed = [p for p in conformal if p.family.endswith("+router")]
    half = 0.5 * strong_cost
    best_conf = _best_within(conformal, half)
    best_plain = _best_within(plain, half)
    best_routed = _best_within(routed, half)
    heur = by_name["heuristic"]
    qe_curve = [
        p for p in points if p.family in ("quality_estimator", "always_cheap", "always_strong")
    ]
    qe_at_heur = _interp_accuracy_at_cost(qe_curve, heur.cost)
    beats_plain, vs_heur = _versus(heur, plain, described)
    vs_heur_router = {}
    for h in (p for p in points if p.family == "heuristic+router"):
        tau = h.params["router_threshold"]
        rivals = [p for p in routed if p.params["router_threshold"] == tau]
        vs_heur_router[f"{tau:g}"] = _versus(h, rivals, described)[1]
    best_pgr = float(pgr(best_conf.accuracy, weak, strong)) if best_conf else math.nan
    criteria = {
        "recovers_90pct_gap_at_half_cost": bool(best_conf is not None and best_pgr >= 0.9),
        "beats_heuristic_at_equal_cost": beats_plain,
    }
    if vs_heur_router:
        criteria["beats_heuristic_with_router_at_equal_cost"] = all(
            v["beats"] for v in vs_heur_router.values()
        )
    return {
        "weak_accuracy": weak,
        "strong_accuracy": strong,
        "always_strong_cost": strong_cost,
        "always_strong_cost_raw": by_name["always_strong"].cost_raw,
        "cost_unit": "mean cost per request / always-strong's mean cost, tiers priced as "
        "`tiers` (raw, in those units: `cost_raw`)",
        "tiers": [t.model_dump() for t in policy.tiers],
        "router_threshold": policy.router_threshold,
        "best_family": best_family,
        "apgr": curves[best_family]["apgr"] if best_family else None,
        "cpt50": curves[best_family]["cpt50"] if best_family else None,
        "cpt80": curves[best_family]["cpt80"] if best_family else None,
        "cpt_unit": "percent of requests calling the strong (top) tier",
        "oracle": oracle,
        "families": fams,
        "best_conformal": described(best_conf),
        "best_conformal_selection": "highest accuracy among conformal points (every mode, "
        "alpha and router threshold, with and without the router) costing <= 50% of "
        "always-strong, chosen on the evaluated split (so optimistic by the choice of mode, "
        "alpha and router threshold; rerun with another --seed to see the same strategy fresh)",
        "best_conformal_without_router": described(best_plain),
        "best_conformal_with_router": described(best_routed),
        "heuristic": described(heur),
        "seed_rules": described(by_name["seed_rules"]),
        "quality_estimator_accuracy_at_heuristic_cost": qe_at_heur,
        "best_conformal_at_or_below_heuristic_cost": vs_heur["best_at_or_below_cost"],
        "conformal_vs_heuristic": vs_heur,
        "conformal_router_vs_heuristic_router": vs_heur_router,
        "criteria": criteria,
    }


def evaluate(
    policy: CascadePolicyConfig,
    test: EvalSplit,
    cal: EvalSplit,
    fit: EvalSplit,
    settings: EvalSettings | None = None,
) -> dict:
    """Fit on `fit`, calibrate on `cal`, replay every strategy on `test`; a JSON-ready dict
    with `strategies` (every operating point), `summary`, `estimator` and `thresholds`."""
    settings = settings or EvalSettings()
    qe = fit_quality_estimator(fit)
    thresholds = conformal_thresholds(qe, cal, settings.alphas)
    routed = {}
    has_router = cal.router_p is not None and test.router_p is not None
    if has_router:
        routed = router_conformal_thresholds(
            qe, cal, policy, settings.router_thresholds, settings.alphas
        )
    matched: set = set()
    if settings.match_heuristic:
        esc = get_scorer("seed_heuristic").score_many(cal.features[cal.tiers[0]], cal.feature_names)
        esc = esc > 1.0
        r = float(esc.mean())
        if 0 < r < 1:
            thresholds.update(conformal_thresholds(qe, cal, (r,), ("budget",)))
            matched.add(("budget", r))
        for tau in settings.router_thresholds if has_router else ():
            cheap = router_start(policy, cal.router_p, tau) == 0
            r = float(esc[cheap].mean()) if cheap.any() else 0.0
            if 0 < r < 1:
                res = conformal_thresholds(qe, cal, (r,), ("budget",), cheap)[("budget", r)]
                routed[(float(tau), "budget", r)] = res
                matched.add((float(tau), "budget", r))
    points = _strategies(policy, test, qe, thresholds, settings, routed, frozenset(matched))
    return {
        "split": test.split,
        "seed": test.seed,
        "n": test.n,
        "n_calibration": cal.n,
        "n_fit": fit.n,
        "strategies": [p.as_dict() for p in points],
        "summary": _summary(points, test, policy),
        "estimator": qe.params.model_dump(),
        "thresholds": [r.as_dict() for r in thresholds.values()]
        + [{**r.as_dict(), "router_threshold": tau} for (tau, _, _), r in routed.items()],
    }
