"""`ExecutionFeedbackRouter`: the seed design's interface, rebuilt on the new modules.

Code written against the seed keeps its constructor (same arguments, same defaults) and its
four methods, but the work is done by `calibration.feedback`, `calibration.conformal` and
`calibration.policy`. Where the seed's behaviour was wrong it is corrected, and each
correction is listed here (the seed's source is not in this repository; its design is known
from the project's issue and ARCHITECTURE.md):

1. Entropy. The seed's `compute_entropy` was not an entropy (it used the sampled tokens' own
   logprobs); `compute_entropy` and the `entropy` rule now use the mean per-token entropy of
   the top-k distribution plus leftover mass, in bits. With k = 5 that is at most
   log2(6) = 2.58 bits, so the seed's limit of 2.5 fires only on near-uniform top-5s.
2. Conformal threshold. `calibrate_conformal` uses the finite-sample quantile
   s_(ceil((n+1)(1-alpha))), which guarantees P(escalate) <= alpha; the plain (1 - alpha)
   sample quantile does not on small sets. Too few calibration answers (n + 1 < 1/alpha)
   give +inf (never escalate on the conformal rule) with a warning, not a made-up threshold.
3. Empty generations escalate with the reason "no tokens" instead of dividing by zero.
4. Binary entropy is in bits (the 0.85 limit only makes sense there: the nat maximum is
   0.69), and being symmetric it cannot flag p near 0; the `safety` rule (confidence =
   exp(mean logprob) < safety_threshold) covers that side.
5. Costs. The cascade's cost counts every tier visited (an escalated request paid for the
   tier it left), and `escalation_stats` reports savings against always using the top tier.

`tier_costs` keys are the seed's integer tiers (1 = cheapest); `task_floors` maps a task type
to the lowest integer tier allowed. The seed's default floor table is not in this
repository, so the default is no floors; pass yours.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from calibration.conformal import ConformalResult, budget_threshold
from calibration.feedback import (
    DEFAULT_LOW_CONFIDENCE_LOGPROB,
    NO_TOKENS_REASON,
    FeedbackConfig,
    FeedbackSignal,
    extract_features,
    features_from_arrays,
)
from calibration.policy import CascadePolicyConfig, CascadeStats, TierConfig, run_cascade
from calibration.policy import start_tier as _start_tier
from calibration.scores import get_scorer

__all__ = ["SEED_TIER_COSTS", "ExecutionFeedbackRouter"]

SEED_TIER_COSTS: dict[int, float] = {1: 0.05, 2: 0.15, 3: 0.75, 4: 1.0, 5: 1.5}


def _as_arrays(output: Any, top_logprobs: Any = None) -> tuple[np.ndarray, np.ndarray | None]:
    """Seed callers pass a Generation or bare logprobs (and maybe top-k rows of floats or of
    (token, logprob) pairs); bring both to the (T,) and (T, k) arrays of the new code."""
    lp = np.asarray(output, dtype=np.float64).reshape(-1)
    if top_logprobs is None:
        return lp, None
    rows = [[x[1] if isinstance(x, tuple | list) else x for x in row] for row in top_logprobs]
    k = max((len(r) for r in rows), default=0)
    top = np.full((len(rows), k), -np.inf)
    for i, r in enumerate(rows):
        top[i, : len(r)] = r
    return lp, top


class ExecutionFeedbackRouter:
    """The seed's router: analyse an answer, calibrate, cascade, report. See module doc."""

    def __init__(
        self,
        safety_threshold: float = 0.30,
        entropy_threshold: float = 2.5,
        binary_entropy_threshold: float = 0.85,
        min_logprob_threshold: float = -5.0,
        low_confidence_ratio: float = 0.15,
        conformal_alpha: float = 0.05,
        tier_costs: Mapping[int, float] | None = None,
        task_floors: Mapping[str, int] | None = None,
        *,
        low_confidence_logprob: float = DEFAULT_LOW_CONFIDENCE_LOGPROB,
        score: str = "neg_mean_logprob",
        router_threshold: float = 0.5,
    ) -> None:
        if not 0 <= safety_threshold <= 1:
            raise ValueError(f"safety_threshold must be in [0, 1], got {safety_threshold}")
        if not 0 < conformal_alpha < 1:
            raise ValueError(f"conformal_alpha must be in (0, 1), got {conformal_alpha}")
        self.safety_threshold = safety_threshold
        self.entropy_threshold = entropy_threshold
        self.binary_entropy_threshold = binary_entropy_threshold
        self.min_logprob_threshold = min_logprob_threshold
        self.low_confidence_ratio = low_confidence_ratio
        self.conformal_alpha = conformal_alpha
        self.tier_costs = dict(SEED_TIER_COSTS if tier_costs is None else tier_costs)
        self.task_floors = dict(task_floors or {})
        self.feedback = FeedbackConfig(low_confidence_logprob=low_confidence_logprob)
        self.scorer = get_scorer(score)
        self._tiers = sorted(self.tier_costs)
        for task, tier in self.task_floors.items():
            if tier not in self.tier_costs:
                raise ValueError(f"task floor {task!r} -> tier {tier}: no such tier {self._tiers}")
        self.policy = CascadePolicyConfig(
            tiers=[
                TierConfig(name=str(t), cost_per_request=self.tier_costs[t]) for t in self._tiers
            ],
            task_floors={task: str(tier) for task, tier in self.task_floors.items()},
            router_threshold=router_threshold,
        )
        self.stats = CascadeStats(self.policy)
        self.conformal_threshold: float | None = None
        self.calibration: ConformalResult | None = None

    # --- analysis -------------------------------------------------------------------------

    def _features(self, output: Any, top_logprobs: Any = None) -> dict[str, float]:
        if hasattr(output, "logprobs") and hasattr(output, "top_logprobs"):
            return extract_features(output, self.feedback)
        return features_from_arrays(*_as_arrays(output, top_logprobs), self.feedback)

    def compute_entropy(self, output: Any, top_logprobs: Any = None) -> float:
        """Mean per-token entropy in bits (correction 1: the seed's was not an entropy)."""
        return self._features(output, top_logprobs)["mean_entropy"]

    def analyze_output(self, output: Any, top_logprobs: Any = None) -> dict[str, Any]:
        """Features, the seed's rules and (once calibrated) the conformal rule for one answer.

        `output` is a `Generation` or a sequence of token logprobs (then `top_logprobs` may
        give the top-k rows). Returns a dict: `escalate` (alias `should_escalate`),
        `reasons`, `confidence` (= exp(mean logprob)), `entropy`, `binary_entropy`,
        `min_logprob`, `low_confidence_ratio`, `score`, `threshold`, `features`.
        """
        f = self._features(output, top_logprobs)
        reasons = self.rules_fired(f)
        empty = f["num_tokens"] == 0
        conf = 0.0 if empty else math.exp(f["mean_logprob"])
        score = math.inf if empty else self.scorer.score(f)
        return {
            "escalate": bool(reasons),
            "should_escalate": bool(reasons),
            "reasons": reasons,
            "confidence": conf,
            "entropy": f["mean_entropy"],
            "binary_entropy": f["binary_entropy"],
            "min_logprob": f["min_logprob"],
            "low_confidence_ratio": f["low_conf_ratio"],
            "score": score,
            "threshold": self.conformal_threshold,
            "features": f,
        }

    def rules_fired(self, f: Mapping[str, float]) -> list[str]:
        """The reasons of every rule that fires on a feature dict (empty list: accept)."""
        if f["num_tokens"] == 0:
            return [NO_TOKENS_REASON]
        conf = math.exp(f["mean_logprob"])
        score = self.scorer.score(f)
        rules = [
            (
                conf < self.safety_threshold,
                f"confidence {conf:.3f} < safety {self.safety_threshold}",
            ),
            (
                f["mean_entropy"] > self.entropy_threshold,
                f"mean token entropy {f['mean_entropy']:.3f} bits > {self.entropy_threshold}",
            ),
            (
                f["binary_entropy"] > self.binary_entropy_threshold,
                f"binary entropy {f['binary_entropy']:.3f} > {self.binary_entropy_threshold}",
            ),
            (
                f["min_logprob"] < self.min_logprob_threshold,
                f"min token logprob {f['min_logprob']:.3f} < {self.min_logprob_threshold}",
            ),
            (
                f["low_conf_ratio"] > self.low_confidence_ratio,
                f"low-confidence token ratio {f['low_conf_ratio']:.3f} "
                f"> {self.low_confidence_ratio}",
            ),
        ]
        if self.conformal_threshold is not None:
            rules.append(
                (
                    score > self.conformal_threshold,
                    f"{self.scorer.name} {score:.4g} > conformal threshold "
                    f"{self.conformal_threshold:.4g} (alpha {self.conformal_alpha})",
                )
            )
        return [reason for fired, reason in rules if fired]

    # --- calibration ----------------------------------------------------------------------

    def calibrate_conformal(self, calibration: Sequence[Any], alpha: float | None = None) -> float:
        """Set the conformal threshold from calibration answers (Generations or logprob
        sequences) or their precomputed scores (floats), in the seed's `budget` sense: at most
        alpha of traffic escalates on the conformal rule. Returns the threshold
        (correction 2: finite-sample quantile; +inf with a warning when too few)."""
        alpha = self.conformal_alpha if alpha is None else alpha
        if len(calibration) and all(isinstance(x, int | float) for x in calibration):
            scores = np.asarray(calibration, dtype=np.float64)
        else:
            scores = np.asarray([self.analyze_output(x)["score"] for x in calibration])
        self.calibration = budget_threshold(scores, alpha)
        self.conformal_threshold = self.calibration.threshold
        return self.conformal_threshold

    # --- serving --------------------------------------------------------------------------

    def cascade(
        self,
        prompt: str,
        generate: Callable[[int, str], Any] | Mapping[int, Callable[[str], Any]],
        *,
        task_type: str | None = None,
        start_tier: int | None = None,
        router_policy: str | None = None,
        router_confidence: float | None = None,
    ) -> dict[str, Any]:
        """Answer `prompt` from the lowest allowed tier up, escalating one tier at a time.

        `generate(tier, prompt)` (or `generate[tier](prompt)`) returns a Generation. The start
        is `start_tier` if given (raised to the task floor), else `policy.start_tier` from the
        router output and task floor. Returns `output` (text), `generation`, `tier`, `path`,
        `escalated`, `cost` and `reasons` (those of every escalation, in order).
        """
        call = generate.__getitem__ if isinstance(generate, Mapping) else None
        start = _start_tier(
            self.policy,
            router_policy=router_policy,
            router_confidence=router_confidence,
            task_type=task_type,
        )
        if start_tier is not None:
            if start_tier not in self.tier_costs:
                raise ValueError(f"start_tier {start_tier} is not a tier; tiers: {self._tiers}")
            start = max(start, self._tiers.index(start_tier))
        answers: dict[int, Any] = {}

        def signal_at(idx: int) -> FeedbackSignal:
            tier = self._tiers[idx]
            gen = call(tier)(prompt) if call else generate(tier, prompt)
            answers[idx] = gen
            a = self.analyze_output(gen)
            return FeedbackSignal(
                a["features"],
                a["score"],
                math.nan,
                a["escalate"],
                tuple(a["reasons"]),
                "seed_rules",
            )

        def tokens_at(idx: int) -> int:
            return len(getattr(answers[idx], "token_ids", ()))

        outcome = run_cascade(self.policy, start, signal_at, tokens_at)
        self.stats.record_outcome(outcome, [tokens_at(i) for i in outcome.visited])
        final = answers[outcome.final_tier]
        return {
            "output": getattr(final, "text", final),
            "generation": final,
            "tier": self._tiers[outcome.final_tier],
            "path": [self._tiers[i] for i in outcome.visited],
            "escalated": outcome.escalated,
            "cost": outcome.cost,
            "reasons": [r for d in outcome.decisions if d.escalate for r in d.reasons],
        }

    def escalation_stats(self) -> dict[str, Any]:
        """Running totals (correction 5): requests, escalated, stayed, escalation_rate,
        cost_spent / cost_always_top / cost_saved / cost_on_escalations, per-tier counts
        keyed by the tier number as a string, and escalation causes per tier."""
        return self.stats.as_dict()
