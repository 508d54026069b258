"""The served policy with its cheapest tier's threshold picked in hindsight, on the evaluated
split itself: the least cost any threshold could have bought there at the accuracy bar.

Never served and never a result: it is optimistic by construction. It splits what the served
policy pays above the oracle in two: served - hindsight is the price of choosing the threshold
before seeing the data (the conformal guarantee's margin, and the calibration draw's luck);
hindsight - oracle is the price of the evidence itself (the router and the quality estimator
cannot tell every wrong cheap answer from a right one). Only the second shrinks with better
evidence; only the first with more calibration data or a looser alpha.

Both branches of every request come from the one replay code path (`replay_served`, so
`CascadeRun`): once with the cheapest tier escalating every answer it scores, once accepting
every finite score. A threshold t then keeps a request's accepted branch where its score is
<= t (`decide`: a tie accepts), which sweeps every threshold from two replays.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from calibration.artifact import CascadeArtifact
from calibration.policy import CascadePolicyConfig
from offline.points import OperatingPoint, replay
from offline.replay import EvalSplit
from offline.served import replay_served

__all__ = [
    "Branches",
    "ThresholdSweep",
    "branches",
    "hindsight_point",
    "one_threshold_for_all",
    "threshold_sweep",
]


@dataclass(frozen=True)
class ThresholdSweep:
    """The served policy on one split at each of `thresholds` for its cheapest tier: per
    threshold, accuracy, mean raw cost, escalation rate and share of requests at the top."""

    thresholds: np.ndarray
    accuracy: np.ndarray
    cost_raw: np.ndarray
    escalation: np.ndarray
    strong_share: np.ndarray
    scores: np.ndarray  # each request's cheapest-tier score (NaN: never scored there)


@dataclass(frozen=True)
class Branches:
    """Each request of one split replayed both ways at the cheapest tier: row 0 escalating
    every answer it scores there, row 1 accepting every finite score. Any threshold's outcome
    is a per-request choice between the rows, so one pair of replays serves every sweep."""

    scores: np.ndarray  # (N,) the cheapest tier's score (NaN: never scored there)
    correct: np.ndarray  # (2, N)
    cost: np.ndarray  # (2, N)
    escalated: np.ndarray  # (2, N)
    at_top: np.ndarray  # (2, N) the request reached the top tier

    @property
    def finite_scores(self) -> np.ndarray:
        return self.scores[np.isfinite(self.scores)]

    def sweep(self, thresholds: np.ndarray | None = None) -> ThresholdSweep:
        """The policy at each threshold (default: every distinct finite score, and -inf)."""
        if thresholds is None:
            thresholds = np.unique(np.concatenate([[-math.inf], self.finite_scores]))
        thresholds = np.asarray(thresholds, dtype=float)
        # (T, N): request i escalates at threshold t; NaN (never scored there): rows agree
        up = self.scores[None, :] > thresholds[:, None]

        def mean(rows: np.ndarray) -> np.ndarray:
            return np.where(up, rows[0], rows[1]).mean(axis=1)

        return ThresholdSweep(
            thresholds=thresholds,
            accuracy=mean(self.correct),
            cost_raw=mean(self.cost),
            escalation=mean(self.escalated),
            strong_share=mean(self.at_top),
            scores=self.scores,
        )


def branches(
    policy: CascadePolicyConfig, artifact: CascadeArtifact, data: EvalSplit
) -> Branches | None:
    """Both rows through the one replay path (`replay_served`); the other tiers keep the
    artifact's thresholds, a per-task-type artifact is swept with one pooled threshold. None
    when the artifact does not calibrate the cheapest tier or no request gets a finite score
    there (nothing to sweep)."""
    cheap = policy.tier_names[0]
    if cheap not in artifact.tiers:
        return None
    escalate_all = replay_served(policy, artifact.with_thresholds({cheap: -math.inf}), data)
    scores = np.array([_cheap_score(o) for o in escalate_all.outcomes])
    finite = scores[np.isfinite(scores)]
    if not finite.size:
        return None
    accept_all = replay_served(policy, artifact.with_thresholds({cheap: float(finite.max())}), data)
    runs = (escalate_all, accept_all)
    return Branches(
        scores=scores,
        correct=np.stack([r.correct for r in runs]),
        cost=np.stack([r.cost for r in runs]),
        escalated=np.array([[o.escalated for o in r.outcomes] for r in runs]),
        at_top=np.array([[policy.top in o.visited for o in r.outcomes] for r in runs]),
    )


def threshold_sweep(
    policy: CascadePolicyConfig,
    artifact: CascadeArtifact,
    data: EvalSplit,
    thresholds: np.ndarray | None = None,
) -> ThresholdSweep | None:
    """Sweep the cheapest tier's threshold on `data` (`Branches.sweep`); None when there is
    nothing to sweep (`branches`)."""
    both = branches(policy, artifact, data)
    return None if both is None else both.sweep(thresholds)


def _cheapest_within(gap: np.ndarray, cost: np.ndarray, max_gap: float) -> int | None:
    """The index of the least `cost` among those with `gap` <= `max_gap`, or None."""
    fine = gap <= max_gap + 1e-12
    return int(np.flatnonzero(fine)[np.argmin(cost[fine])]) if fine.any() else None


def hindsight_point(
    policy: CascadePolicyConfig,
    artifact: CascadeArtifact,
    test: EvalSplit,
    unit: float,
    max_gap: float,
) -> OperatingPoint | None:
    """The cheapest served-policy point on `test` whose accuracy is within `max_gap` of
    always-strong's, over every threshold of the cheapest tier (`threshold_sweep`). `unit`:
    always-strong's raw mean cost. None when there is nothing to sweep or no threshold is
    within the gap."""
    sweep = threshold_sweep(policy, artifact, test)
    if sweep is None:
        return None
    strong = float(np.mean(test.correct[test.tiers[-1]]))
    i = _cheapest_within(strong - sweep.accuracy, sweep.cost_raw, max_gap)
    if i is None:
        return None
    raw = float(sweep.cost_raw[i])
    return OperatingPoint(
        "served_hindsight",
        "served_hindsight",
        float(sweep.accuracy[i]),
        raw / (unit if unit > 0 else 1.0),
        float(sweep.escalation[i]),
        float(sweep.strong_share[i]),
        raw,
        {
            "threshold": float(sweep.thresholds[i]),
            "tier": policy.tier_names[0],
            "max_gap": max_gap,
            "picked_on": test.split,
        },
    )


def _cheap_score(outcome) -> float:
    """The cheapest tier's score for a request that reached it (NaN for one that did not)."""
    for call in outcome.calls:
        if call.tier == 0 and call.signal is not None:
            return float(call.signal.score)
    return math.nan


def one_threshold_for_all(
    policy: CascadePolicyConfig,
    artifact: CascadeArtifact,
    tests: list[EvalSplit],
    max_gap: float,
) -> dict:
    """The best a single cheapest-tier threshold can do on every split at once, picked on
    all of them (so, like `hindsight_point`, optimistic, and a diagnostic): among the
    thresholds whose accuracy is within `max_gap` of always-strong on every split, the one
    with the least worst-case cost against the oracle's. Per split: accuracy gap and cost /
    oracle there, beside the artifact's own threshold and each split's own best one
    (`each_split_own`, as `hindsight_point` picks it there). `bar_reachable` says whether any
    threshold keeps every split within `max_gap` at all; when none does, `best` is None.

    If this best is above a cost bar, no threshold calibrated before the splits were seen
    can meet it on all of them: the evidence (router and quality estimator) is the limit."""
    cheap = policy.tier_names[0]
    both = [branches(policy, artifact, t) for t in tests]
    if any(b is None for b in both):
        raise ValueError(f"nothing to sweep: the artifact does not score tier {cheap!r}")
    served_t = artifact.tiers[cheap].threshold
    grid = np.unique(np.concatenate([[-math.inf, served_t], *(b.finite_scores for b in both)]))
    sweeps = [b.sweep(grid) for b in both]
    oracle = np.array([_oracle_cost(policy, t) for t in tests])
    strong = np.array([np.mean(t.correct[t.tiers[-1]]) for t in tests])
    gaps = np.stack([g - s.accuracy for g, s in zip(strong, sweeps, strict=True)])  # (S, T)
    ratios = np.stack([s.cost_raw / o for s, o in zip(sweeps, oracle, strict=True)])
    ok = (gaps <= max_gap + 1e-12).all(axis=0)
    at_served = int(np.flatnonzero(grid == served_t)[0])

    def per_split(i: int) -> list[dict]:
        return [
            {"accuracy_gap": float(gaps[k, i]), "cost_vs_oracle": float(ratios[k, i])}
            for k in range(len(tests))
        ]

    best = None
    if ok.any():
        i = int(np.flatnonzero(ok)[np.argmin(ratios.max(axis=0)[ok])])
        best = {
            "threshold": float(grid[i]),
            "worst_cost_vs_oracle": float(ratios[:, i].max()),
            "splits": per_split(i),
        }
    each = []  # each split's own hindsight threshold (`hindsight_point` on that split)
    for k in range(len(tests)):
        j = _cheapest_within(gaps[k], ratios[k], max_gap)
        each.append(None if j is None else {"threshold": float(grid[j]), **per_split(j)[k]})
    return {
        "tier": cheap,
        "max_gap": max_gap,
        "bar_reachable": bool(ok.any()),
        "best": best,
        "served": {"threshold": float(served_t), "splits": per_split(at_served)},
        "each_split_own": each,
    }


def _oracle_cost(policy: CascadePolicyConfig, data: EvalSplit) -> float:
    """The oracle's mean raw cost, as the evaluation prices it (`offline.strategies`: each
    tier escalates exactly when the cheapest is wrong and the top right)."""
    oracle = {t: data.needs_escalation for t in data.tiers[:-1]}
    return replay(policy, data, oracle)[1]
