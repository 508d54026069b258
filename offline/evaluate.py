"""Offline cascade evaluation: replay every strategy on recorded answers, compare, summarise.

Answers come from `offline.replay` (generated once per split, cached). Each strategy is
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

The router rule is serving's (`router_start`): the router's label and the confidence serving
uses (its confidence head's, recorded by `models.router_model.RouterWithHead`, the Router
deployment's own code) go through `policy.start_tier`. The `served` strategy is the served
config's whole policy with the zoo's artifact, replayed by `CascadeRun` (`offline.served`).
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import numpy as np

from calibration.artifact import CascadeArtifact
from calibration.conformal import CONFORMAL_MODES, ConformalResult, calibrate
from calibration.feedback import feature_names
from calibration.policy import CascadePolicyConfig
from calibration.scores import QualityEstimator, Scorer, get_scorer
from offline.points import (
    DEFAULT_ALPHAS,
    DEFAULT_ROUTER_THRESHOLDS,
    EvalSettings,
    OperatingPoint,
    replay,
    router_start,
)
from offline.replay import EvalSplit
from offline.strategies import strategies
from offline.summary import summary

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


def fit_quality_estimator(
    fit: EvalSplit, tier: str | None = None, *, router_evidence: bool = True
) -> QualityEstimator:
    """P(`tier`'s answer is wrong) (default: the cheapest tier's), fitted on that tier's
    answers of the fit split: from the answer's logprob features and, where the split has the
    router's verdicts and `router_evidence`, the router's P(complex) too (ex-ante beside
    ex-post evidence; `calibration.feedback.ROUTER_FEATURES`). Serving then needs a router."""
    tier = tier or fit.tiers[0]
    names = fit.feature_names
    features = names if router_evidence else feature_names(fit.feedback)
    return QualityEstimator.fit(
        fit.features[tier], ~fit.correct[tier], names, features=features, fit_split=fit.split
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
        cheap = router_start(policy, cal.router, tau) == 0
        if not cheap.any():
            continue  # the router sends every request to the top: nothing to calibrate
        for (mode, a), res in conformal_thresholds(scorer, cal, alphas, modes, cheap).items():
            out[(float(tau), mode, a)] = res
    return out


def evaluate(
    policy: CascadePolicyConfig,
    test: EvalSplit,
    cal: EvalSplit,
    fit: EvalSplit,
    settings: EvalSettings | None = None,
    served: tuple[CascadePolicyConfig, CascadeArtifact] | None = None,
) -> dict:
    """Fit on `fit`, calibrate on `cal`, replay every strategy on `test`; a JSON-ready dict
    with `strategies` (every operating point), `summary`, `estimator` and `thresholds`.
    `served` (the served ladder and its artifact, fixed before `test` is seen) adds the
    `served` strategy and `summary.served`."""
    settings = settings or EvalSettings()
    has_router = cal.router_p is not None and test.router_p is not None
    qe = fit_quality_estimator(fit, router_evidence=has_router)
    thresholds = conformal_thresholds(qe, cal, settings.alphas)
    routed = {}
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
            cheap = router_start(policy, cal.router, tau) == 0
            r = float(esc[cheap].mean()) if cheap.any() else 0.0
            if 0 < r < 1:
                res = conformal_thresholds(qe, cal, (r,), ("budget",), cheap)[("budget", r)]
                routed[(float(tau), "budget", r)] = res
                matched.add((float(tau), "budget", r))
    points = strategies(policy, test, qe, thresholds, settings, routed, frozenset(matched), served)
    return {
        "split": test.split,
        "seed": test.seed,
        "n": test.n,
        "n_calibration": cal.n,
        "n_fit": fit.n,
        "strategies": [p.as_dict() for p in points],
        "summary": summary(points, test, policy),
        "estimator": qe.params.model_dump(),
        "thresholds": [r.as_dict() for r in thresholds.values()]
        + [{**r.as_dict(), "router_threshold": tau} for (tau, _, _), r in routed.items()],
    }
