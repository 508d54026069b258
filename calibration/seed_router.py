"""`ExecutionFeedbackRouter`: the seed design's interface, rebuilt on the request-time core.

Seed code keeps working unchanged; the work is done by `calibration.feedback` (features),
`calibration.conformal` (the threshold) and `calibration.cascade` (every decision). The
interface (names and argument order are the seed's; options after `*` are the project's):

- `ExecutionFeedbackRouter(safety_threshold=0.30, entropy_threshold=2.5,
  binary_entropy_threshold=0.85, min_logprob_threshold=-5.0, low_conf_ratio_threshold=0.15,
  conformal_alpha=0.05, tier_costs=None, task_floors=None, *, low_confidence_logprob=log 0.5,
  score="neg_mean_logprob", router_threshold=0.5)`. `tier_costs` maps the seed's integer
  tiers (1 = cheapest) to a per-request cost, default `SEED_TIER_COSTS`; `task_floors` maps a
  task type to its lowest tier (the seed's table is not in this repository: default none).
- `compute_entropy(logprobs, *, top_logprobs=None)`, `compute_binary_entropy(prob)`: bits.
- `analyze_output(token_logprobs, token_probs=None, response_text="", task_type="unknown",
  current_tier=2, *, top_logprobs=None) -> FeedbackSignal` (the seed's 9 fields).
- `calibrate_conformal(scores, labels, *, alpha=None) -> float` (labels: 1 = cheap was right).
- `cascade(request, initial_tier, cheap_logprobs, cheap_response, strong_response="",
  task_type="unknown", task_floor=1) -> CascadeResult` (the seed's 8 fields).
- `escalation_stats`: a dict attribute, updated in place by every `cascade`: `escalated`,
  `stayed`, `saved_cost`, `wasted_cost`, plus the keys of `CascadeStats.as_dict()`.
- Beside it, the project's API: `rules_fired(features)` (the fixed rules on a feature dict, as
  `offline/evaluate.py` uses it), `scorer`, `policy`, `stats` and `calibration`.

Corrections of the seed's behaviour (its source is not in this repository; its design is
known from the project's issue):

1. Entropy is a real one: the mean per-token entropy in bits of the top-k distribution plus
   the leftover mass (`feedback.token_entropy`); the seed's, from the sampled tokens' own
   logprobs, was none. With chosen-token logprobs only, a token's distribution is (p, 1 - p),
   at most 1 bit, so the 2.5-bit limit fires only given top-k rows (max log2 6 = 2.58 for k=5).
2. Conformal: split-conformal on the *correct* calibration answers with the finite-sample
   quantile s_(ceil((m+1)(1-alpha))) (`budget_threshold`): a new correct answer escalates on
   the conformal rule with probability <= alpha, which the seed's plain (1 - alpha) quantile
   breaks on small sets. Too few (m + 1 < 1/alpha): +inf (never fires) with a warning.
3. Empty generations escalate with `NO_TOKENS_REASON` instead of dividing by zero (token
   statistics NaN, confidence 0).
4. Binary entropy is in bits (in nats the maximum, 0.69, is below the 0.85 limit); being
   symmetric it cannot flag p near 0, which the safety rule (exp(mean logprob) < limit) does.
5. Costs count every tier visited (an escalated request also paid for the tier it left);
   `cost_saved` is against going straight to the top tier (negative when climbing cost more);
   `wasted_cost` is what was paid to tiers whose answer was thrown away.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from operator import gt, lt
from typing import Any

import numpy as np

from calibration.cascade import CascadeRun, CascadeStats, run_cascade
from calibration.conformal import ConformalResult, budget_threshold
from calibration.feedback import (
    DEFAULT_LOW_CONFIDENCE_LOGPROB,
    NO_TOKENS_REASON,
    FeedbackConfig,
    TierSignal,
    binary_entropy,
    extract_features,
    features_from_arrays,
)
from calibration.generation import Generation
from calibration.policy import CascadePolicyConfig, TierConfig
from calibration.scores import get_scorer

__all__ = ["SEED_TIER_COSTS", "CascadeResult", "ExecutionFeedbackRouter", "FeedbackSignal"]

SEED_TIER_COSTS: dict[int, float] = {1: 0.05, 2: 0.15, 3: 0.75, 4: 1.0, 5: 1.5}
REASON_SEPARATOR = "; "  # no rule's reason contains it, so `FeedbackSignal.reasons` splits on it
ACCEPT_REASON = "seed rules passed: accept"
NO_STRONG_LOGPROBS = "no logprobs for the escalated tier's response: accepted as given"
_RULE_SET = "seed_rules"  # the TierSignal "scorer": the verdict is a rule set, not one score
# The seed's five fixed rules: (feature, fires when `op(feature, limit)`, limit attribute,
# reason). "confidence" is exp(mean logprob), the geometric-mean token probability.
_SEED_RULES: tuple[tuple[str, Callable[[float, float], bool], str, str], ...] = (
    ("confidence", lt, "safety_threshold", "confidence {v:.3f} < safety {t}"),
    ("mean_entropy", gt, "entropy_threshold", "mean token entropy {v:.3f} bits > {t}"),
    ("binary_entropy", gt, "binary_entropy_threshold", "binary entropy {v:.3f} > {t}"),
    ("min_logprob", lt, "min_logprob_threshold", "min token logprob {v:.3f} < {t}"),
    ("low_conf_ratio", gt, "low_conf_ratio_threshold", "low-confidence ratio {v:.3f} > {t}"),
)


@dataclass(frozen=True)
class FeedbackSignal:
    """The seed's verdict on one answer: its evidence, the decision and where to go next.

    `entropy` is the mean token entropy in bits, `confidence` exp(mean logprob);
    `escalation_reason` joins the fired rules' reasons with "; " ("" when none fired);
    `recommended_tier` is the next tier up when escalating (capped at the top), else the
    current tier, and never below the task type's floor.
    """

    entropy: float
    binary_entropy: float
    mean_logprob: float
    min_logprob: float
    low_conf_ratio: float
    confidence: float
    should_escalate: bool
    escalation_reason: str
    recommended_tier: int

    @property
    def reasons(self) -> tuple[str, ...]:
        """The fired rules' reasons one by one (for code that counts or matches them)."""
        text = self.escalation_reason
        return tuple(text.split(REASON_SEPARATOR)) if text else ()


@dataclass(frozen=True)
class CascadeResult:
    """One `cascade` call's outcome (see `ExecutionFeedbackRouter.cascade`).

    `initial_tier` is the tier actually started at (the caller's, raised to any floor);
    `cost` counts every tier visited; `cost_saved` = top tier's cost - `cost` (negative when
    climbing cost more than going to the top); `reason` joins the run's reasons with "; ".
    An escalated result with an empty `response` means the caller gave no `strong_response`
    and must still call `final_tier` itself.
    """

    response: str
    initial_tier: int
    final_tier: int
    escalated: bool
    feedback: FeedbackSignal
    cost: float
    cost_saved: float
    reason: str


def _as_arrays(logprobs: Any, top_logprobs: Any = None) -> tuple[np.ndarray, np.ndarray | None]:
    """Seed callers pass bare logprobs and maybe top-k rows of floats or of (token, logprob)
    pairs; bring both to the (T,) vector and -inf-padded (T, k) matrix of the core."""
    lp = np.asarray(logprobs, dtype=np.float64).reshape(-1)
    if top_logprobs is None:
        return lp, None
    rows = [[x[1] if isinstance(x, tuple | list) else x for x in row] for row in top_logprobs]
    k = max((len(r) for r in rows), default=0)
    top = np.full((len(rows), k), -np.inf)
    for i, r in enumerate(rows):
        top[i, : len(r)] = r
    return lp, top


def _logprobs_from_probs(token_probs: Sequence[float]) -> np.ndarray:
    """log p per token; a probability outside [0, 1] is a caller's bug, so it raises rather
    than being clipped into a confident-looking answer."""
    p = np.asarray(token_probs, dtype=np.float64).reshape(-1)
    if np.isnan(p).any() or (p < 0).any() or (p > 1).any():
        raise ValueError(f"token_probs must lie in [0, 1], got {p.tolist()}")
    with np.errstate(divide="ignore"):  # p = 0 -> -inf, which the features clip
        return np.log(p)


class ExecutionFeedbackRouter:
    """The seed's router: analyse an answer, calibrate, cascade, report. See module doc."""

    def __init__(
        self,
        safety_threshold: float = 0.30,
        entropy_threshold: float = 2.5,
        binary_entropy_threshold: float = 0.85,
        min_logprob_threshold: float = -5.0,
        low_conf_ratio_threshold: float = 0.15,
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
        self.low_conf_ratio_threshold = low_conf_ratio_threshold
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
        self.escalation_stats: dict[str, Any] = {}
        self._stats_lock = threading.Lock()
        self._publish_stats()
        self.conformal_threshold: float | None = None
        self.calibration: ConformalResult | None = None

    def _features(
        self, token_logprobs: Any, token_probs: Any = None, top_logprobs: Any = None
    ) -> dict[str, float]:
        """The core's named features from whatever a seed caller holds."""
        if isinstance(token_logprobs, Generation):
            return extract_features(token_logprobs, self.feedback)
        lp, top = _as_arrays(token_logprobs, top_logprobs)
        if lp.size == 0 and token_probs is not None:
            lp = _logprobs_from_probs(token_probs)
        if top is not None and top.shape[0] != lp.size:
            raise ValueError(f"{lp.size} token logprobs but {top.shape[0]} top-logprob rows")
        return features_from_arrays(lp, top, self.feedback)

    def compute_entropy(self, logprobs: Any, *, top_logprobs: Any = None) -> float:
        """Mean per-token entropy in bits (correction 1); NaN for no tokens. Without top-k
        rows each token's distribution is (p, 1 - p) of its chosen logprob."""
        return self._features(logprobs, top_logprobs=top_logprobs)["mean_entropy"]

    def compute_binary_entropy(self, prob: float) -> float:
        """H(p) in bits (correction 4): 1 at p = 0.5, 0 at p in {0, 1}."""
        if not 0 <= prob <= 1:  # also rejects NaN
            raise ValueError(f"prob must be in [0, 1], got {prob}")
        return float(binary_entropy(float(prob)))

    def _tier_index(self, tier: int, what: str) -> int:
        if tier not in self.tier_costs:
            raise ValueError(f"{what} {tier} is not a tier; tiers: {self._tiers}")
        return self._tiers.index(tier)

    def _assess(
        self, logprobs: Any, probs: Any, task_type: str, tier: int, top: Any = None
    ) -> tuple[dict[str, float], list[str], FeedbackSignal]:
        """Features, fired rules and the seed's verdict: `analyze_output` returns the verdict,
        `cascade` also needs the features and reasons to build the cascade's TierSignal."""
        f = self._features(logprobs, probs, top)
        reasons = self.rules_fired(f)
        here = self._tier_index(tier, "current_tier")
        up = min(here + 1, self.policy.top) if reasons else here
        recommended = self._tiers[max(up, self.policy.floor_of(task_type) or 0)]
        empty = f["num_tokens"] == 0
        sig = FeedbackSignal(
            entropy=f["mean_entropy"],
            binary_entropy=f["binary_entropy"],
            mean_logprob=f["mean_logprob"],
            min_logprob=f["min_logprob"],
            low_conf_ratio=f["low_conf_ratio"],
            confidence=0.0 if empty else math.exp(f["mean_logprob"]),
            should_escalate=bool(reasons),
            escalation_reason=REASON_SEPARATOR.join(reasons),
            recommended_tier=recommended,
        )
        return f, reasons, sig

    def analyze_output(
        self,
        token_logprobs: Sequence[float] | Generation,
        token_probs: Sequence[float] | None = None,
        response_text: str = "",
        task_type: str = "unknown",
        current_tier: int = 2,
        *,
        top_logprobs: Any = None,
    ) -> FeedbackSignal:
        """The seed's rules (and, once calibrated, the conformal rule) on one answer.

        `token_logprobs` is a list of chosen-token logprobs or a `Generation` (then its top-k
        rows count too); `token_probs` stands in only when `token_logprobs` is empty;
        `top_logprobs` optionally gives top-k rows for a list. `response_text` is accepted
        for the seed's signature but not scored: the text carries no calibrated evidence.
        """
        del response_text
        return self._assess(token_logprobs, token_probs, task_type, current_tier, top_logprobs)[2]

    def rules_fired(self, f: Mapping[str, float]) -> list[str]:
        """The reasons of every rule that fires on a feature dict (empty list: accept)."""
        if f["num_tokens"] == 0:
            return [NO_TOKENS_REASON]
        values = {**f, "confidence": math.exp(f["mean_logprob"])}
        reasons = []
        for feature, fires, limit_name, template in _SEED_RULES:
            v, limit = values[feature], getattr(self, limit_name)
            if fires(v, limit):
                reasons.append(template.format(v=v, t=limit))
        if self.conformal_threshold is not None:
            score, t = self.scorer.score(f), self.conformal_threshold
            if score > t:
                reasons.append(
                    f"{self.scorer.name} {score:.4g} > conformal threshold {t:.4g} "
                    f"(alpha {self.conformal_alpha})"
                )
        return reasons

    def calibrate_conformal(
        self, scores: Sequence[float], labels: Sequence[int | bool], *, alpha: float | None = None
    ) -> float:
        """Set and return the conformal threshold (correction 2).

        `scores` are the calibration answers' nonconformity scores (`self.scorer`'s, e.g.
        -mean logprob), `labels` 1/True where the cheap answer was correct. Split-conformal on
        the correct answers: afterwards a new correct answer escalates on this rule with
        probability <= alpha. Too few correct answers: +inf with a warning; none at all (or
        NaN scores) raise `CalibrationError`.
        """
        alpha = self.conformal_alpha if alpha is None else alpha
        s = np.asarray(scores, dtype=np.float64).reshape(-1)
        y = np.asarray(labels).reshape(-1)
        if s.shape != y.shape:
            raise ValueError(f"{s.size} scores but {y.size} labels; one label per score")
        if not np.isin(y, (0, 1)).all():
            raise ValueError(f"labels must be 0/1 or booleans, got {sorted(set(y.tolist()))}")
        self.calibration = budget_threshold(s[y.astype(bool)], alpha)
        self.conformal_threshold = self.calibration.threshold
        return self.conformal_threshold

    def _start(
        self, initial_tier: int, task_floor: int, task_type: str
    ) -> tuple[int, list[str], str | None]:
        """Start index, its reason and the floor tier's name when a floor raised it: the
        lowest tier at or above the caller's tier, `task_floor` and the task type's floor."""
        here = self._tier_index(initial_tier, "initial_tier")
        typed = self.policy.floor_of(task_type)
        floor = max(task_floor, self._tiers[typed] if typed is not None else task_floor)
        above = [i for i, t in enumerate(self._tiers) if t >= floor]
        if not above:
            raise ValueError(f"task floor {floor} is above the top tier {self._tiers[-1]}")
        if above[0] <= here:
            return here, [], None
        name = str(self._tiers[above[0]])
        why = f"started at {name}: tier {initial_tier} is below the floor {floor} for {task_type!r}"
        return above[0], [why], name

    def _tier_signal(self, features: Mapping[str, float], reasons: Sequence[str]) -> TierSignal:
        """The seed's verdict as the core's TierSignal; its threshold is NaN because the
        verdict is a rule set, not one score against one threshold."""
        score = math.inf if features["num_tokens"] == 0 else self.scorer.score(features)
        why = tuple(reasons) or (ACCEPT_REASON,)
        return TierSignal(features, score, math.nan, bool(reasons), why, _RULE_SET)

    def cascade(
        self,
        request: Any,
        initial_tier: int,
        cheap_logprobs: Sequence[float] | Generation,
        cheap_response: str,
        strong_response: str = "",
        task_type: str = "unknown",
        task_floor: int = 1,
    ) -> CascadeResult:
        """Decide between the caller's cheap answer and the next tier's, via `CascadeRun`.

        Starts at the lowest tier >= max(initial_tier, task_floor, task type's floor), whose
        answer is judged by `analyze_output(cheap_logprobs)`; `decide` accepts it or escalates
        one tier. The escalated-to tier's answer is `strong_response`; the caller gives no
        logprobs for it, so it is accepted as given even below the top (the reason says so).
        `request` is accepted for the seed's signature; it is not scored.
        """
        del request
        start, why, floor_name = self._start(initial_tier, task_floor, task_type)
        features, reasons, feedback = self._assess(
            cheap_logprobs, None, task_type, self._tiers[start]
        )
        cheap = self._tier_signal(features, reasons)
        strong = TierSignal({}, math.nan, math.nan, False, (NO_STRONG_LOGPROBS,), _RULE_SET)
        signals, tokens = {start: cheap}, {start: int(features["num_tokens"])}
        run = CascadeRun(self.policy, start, reasons=why, task_floor=floor_name)
        outcome = run_cascade(
            self.policy, run, lambda i: signals.get(i, strong), lambda i: tokens.get(i, 0)
        )
        with self._stats_lock:
            self.stats.record_outcome(outcome)
            self._publish_stats()
        top_cost = self.tier_costs[self._tiers[-1]]
        return CascadeResult(
            response=cheap_response if outcome.final_tier == start else strong_response,
            initial_tier=self._tiers[start],
            final_tier=self._tiers[outcome.final_tier],
            escalated=outcome.escalated,
            feedback=feedback,
            cost=outcome.cost,
            cost_saved=top_cost - outcome.cost,
            reason=REASON_SEPARATOR.join(outcome.reasons),
        )

    def _publish_stats(self) -> None:
        """Refresh `escalation_stats` in place (correction 5), so a reference a caller holds
        stays current: the core's `CascadeStats` totals under the seed's names and its own."""
        s = self.stats.as_dict()
        self.escalation_stats.update(
            s, saved_cost=s["cost_saved"], wasted_cost=s["cost_on_escalations"]
        )
