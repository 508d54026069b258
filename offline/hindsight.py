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

import numpy as np

from calibration.artifact import CascadeArtifact
from calibration.policy import CascadePolicyConfig
from offline.points import OperatingPoint
from offline.replay import EvalSplit
from offline.served import replay_served

__all__ = ["hindsight_point"]


def hindsight_point(
    policy: CascadePolicyConfig,
    artifact: CascadeArtifact,
    test: EvalSplit,
    unit: float,
    max_gap: float,
) -> OperatingPoint | None:
    """The cheapest served-policy point on `test` whose accuracy is within `max_gap` of
    always-strong's, over every threshold of the cheapest tier (the other tiers keep the
    artifact's; a per-task-type artifact is swept with one pooled threshold). `unit`:
    always-strong's raw mean cost. None when the artifact does not calibrate the cheapest
    tier (nothing to sweep)."""
    cheap = policy.tier_names[0]
    if cheap not in artifact.tiers:
        return None
    escalate_all = replay_served(policy, artifact.with_thresholds({cheap: -math.inf}), test)
    scores = np.array([_cheap_score(o) for o in escalate_all.outcomes])
    finite = scores[np.isfinite(scores)]
    if not finite.size:
        return None
    accept_all = replay_served(policy, artifact.with_thresholds({cheap: float(finite.max())}), test)
    strong = float(np.mean(test.correct[test.tiers[-1]]))
    runs = (escalate_all, accept_all)
    flags = [np.array([o.escalated for o in r.outcomes]) for r in runs]
    tops = [np.array([policy.top in o.visited for o in r.outcomes]) for r in runs]
    best = None
    for t in np.unique(np.concatenate([[-math.inf], finite])):
        up = scores > t  # NaN (never scored at the cheapest tier): the runs agree there
        correct = np.where(up, escalate_all.correct, accept_all.correct)
        cost = float(np.where(up, escalate_all.cost, accept_all.cost).mean())
        if strong - correct.mean() <= max_gap + 1e-12 and (best is None or cost < best[1]):
            rates = float(np.where(up, *flags).mean()), float(np.where(up, *tops).mean())
            best = (float(t), cost, float(correct.mean()), *rates)
    if best is None:
        return None
    t, raw, accuracy, escalation, strong_share = best
    return OperatingPoint(
        "served_hindsight",
        "served_hindsight",
        accuracy,
        raw / (unit if unit > 0 else 1.0),
        escalation,
        strong_share,
        raw,
        {"threshold": t, "tier": cheap, "max_gap": max_gap, "picked_on": test.split},
    )


def _cheap_score(outcome) -> float:
    """The cheapest tier's score for a request that reached it (NaN for one that did not)."""
    for call in outcome.calls:
        if call.tier == 0 and call.signal is not None:
            return float(call.signal.score)
    return math.nan
