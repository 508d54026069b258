"""The primitives every evaluated strategy is built from: an operating point, the sweep
settings, and `replay`, which turns per-request decisions into accuracy and cost by driving
`calibration.cascade.CascadeRun` (through `run_cascade`), the state machine serving runs.

The router rule is serving's (`router_start`): the router's label and the confidence serving
uses (the confidence head's when the zoo has one, else its max class probability) go through
`CascadePolicyConfig.start_tier`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field

import numpy as np

from calibration.cascade import run_cascade
from calibration.feedback import TierSignal
from calibration.policy import CascadePolicyConfig
from calibration.scores import Scorer
from calibration.seed_router import ExecutionFeedbackRouter
from offline.replay import EvalSplit, RouterRows

__all__ = [
    "DEFAULT_ALPHAS",
    "DEFAULT_ROUTER_THRESHOLDS",
    "EvalSettings",
    "OperatingPoint",
    "replay",
    "router_start",
    "score_flags",
    "seed_rule_flags",
    "sweep",
]

DEFAULT_ALPHAS = (0.01, 0.02, 0.05, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5)
DEFAULT_ROUTER_THRESHOLDS = (0.5, 0.6, 0.7, 0.8, 0.9)
_ESCALATE = TierSignal({}, 1.0, 0.0, True, ("replayed decision: escalate",), "replay")
_ACCEPT = TierSignal({}, 0.0, 0.0, False, ("replayed decision: accept",), "replay")


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
    policy: CascadePolicyConfig, router: RouterRows, threshold: float | None = None
) -> np.ndarray:
    """Each request's start tier under serving's rule, from the router's recorded verdicts:
    its label and the confidence serving uses (`router.source`: the confidence head, or the
    max class probability). `threshold` (default: the policy's) replaces the router
    threshold."""
    cfg = policy if threshold is None else policy.model_copy(update={"router_threshold": threshold})
    return np.array(
        [
            cfg.start_tier(router_policy=label, router_confidence=float(conf))
            for label, conf in zip(router.policy, router.confidence, strict=True)
        ],
        dtype=int,
    )


def score_flags(data: EvalSplit, scorer: Scorer, threshold: float) -> dict[str, np.ndarray]:
    """Escalate flags of a score rule at every tier but the top."""
    return {
        t: scorer.score_many(data.features[t], data.feature_names) > threshold
        for t in data.tiers[:-1]
    }


def sweep(data: EvalSplit, scorer: Scorer, points: int) -> np.ndarray:
    scores = scorer.score_many(data.features[data.tiers[0]], data.feature_names)
    finite = scores[np.isfinite(scores)]
    return np.unique(np.quantile(finite, np.linspace(0, 1, points))) if finite.size else []


def seed_rule_flags(data: EvalSplit) -> dict[str, np.ndarray]:
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
