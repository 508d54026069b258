"""Adaptive conformal inference (Gibbs and Candès, 2021): labels move thresholds online.

A conformal threshold (`calibration.conformal`) is a rank statistic of the calibration scores
at a level alpha, and it keeps its guarantee only while live traffic looks like the
calibration set. ACI keeps a level alpha_t per tier and, after each labelled answer the tier
decided, steps

    alpha_{t+1} = clip(alpha_t + gamma * (alpha - err_t), -gamma, max_alpha_ratio * alpha)

then serves the mode's threshold recomputed at alpha_t on the *same* calibration scores (a
bounded `CalibrationSample` kept in the artifact). err_t is what the mode bounds:

- `risk`: the tier accepted the answer and the label says it is wrong (the loss also needs the
  top tier to be right; a user's "wrong" does not say, so it counts: the safe side);
- `budget`: the tier escalated (no label needed, but it arrives with one);
- `recall` is not adapted: its guarantee conditions on the tier's answer being wrong, which a
  label on the final answer does not reveal for the answers the tier escalated.

Errors lower alpha_t (the threshold tightens: more escalation); error-free answers raise it.

Guarantee, for any sequence of answers and labels (no exchangeability), when each label
arrives before the next decision: alpha_t <= 0 serves the threshold that cannot err (risk:
-inf, escalate everything; budget: +inf, never escalate), so the lower clip never binds, the
upper clip only lowers alpha_t, and summing the recursion gives

    (1/T) sum_t err_t <= alpha + (alpha_1 + gamma) / (gamma T).

Caveats: it holds over the *labelled* answers (labels on a random share of traffic carry it
to all traffic; labels mostly on bad answers tighten more than needed); for the first
`min_feedback` labels of a tier alpha_t moves but the calibrated threshold still serves (the
bound then holds from there on, from the alpha_t reached); labels that arrive late may make
the lower clip bind, each time adding at most gamma to the error budget.

    aci = AdaptiveConformal.build(artifact.tiers, AdaptiveArgs(enabled=True))
    threshold = aci.threshold("cheap")                  # what serving compares scores with
    aci.feedback(tier_decisions(outcome, names), wrong=True)   # one labelled answer
"""

from __future__ import annotations

import math
import threading
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Literal, Protocol

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

from calibration.cascade import CascadeOutcome
from calibration.config import AdaptiveArgs

__all__ = [
    "ADAPTIVE_MODES",
    "AdaptiveConformal",
    "CalibrationSample",
    "TierDecision",
    "TierUpdate",
    "tier_decisions",
]

ADAPTIVE_MODES = ("budget", "risk")
SAMPLE_CAP = 4096  # scores kept per tier: 32 KiB of JSON, exact for the zoo's calibration sets
_EPS = 1e-9  # as in calibration.conformal: alpha * (n + 1) is compared with integers


class CalibrationSample(BaseModel):
    """The calibration scores a mode's threshold is a rank of, so the threshold can be
    recomputed at another level: all n scores (budget) or the bad answers' (risk: wrong, and
    the top tier right). Sorted; above `SAMPLE_CAP` evenly spaced order statistics are kept,
    and ranks between them round to the safe side (risk: lower threshold; budget: higher)."""

    model_config = ConfigDict(frozen=True, extra="forbid", ser_json_inf_nan="constants")

    mode: Literal["budget", "risk"] = Field(description="The conformal mode the ranks follow.")
    n: int = Field(ge=1, description="Calibration answers the threshold was computed on.")
    total: int = Field(ge=0, description="Scores the rank runs over (before any thinning).")
    scores: tuple[float, ...] = Field(description="Sorted scores, thinned to at most the cap.")

    @model_validator(mode="after")
    def _consistent(self) -> CalibrationSample:
        s = np.asarray(self.scores, dtype=float)
        if len(s) > self.total or (self.total and not len(s)):
            raise ValueError(f"{len(s)} scores kept of a total of {self.total}")
        if self.total > self.n or (self.mode == "budget" and self.total != self.n):
            raise ValueError(f"a {self.mode} sample of {self.total} scores for n={self.n}")
        if np.isnan(s).any() or (np.diff(s) < 0).any():
            raise ValueError("calibration sample scores must be sorted and not NaN")
        return self

    @classmethod
    def of(
        cls,
        mode: str,
        scores: np.ndarray,
        *,
        wrong: np.ndarray | None = None,
        strong_right: np.ndarray | None = None,
        cap: int = SAMPLE_CAP,
    ) -> CalibrationSample:
        """The sample of one calibration (the arrays `calibration.conformal.calibrate` took)."""
        s = np.asarray(scores, dtype=float).ravel()
        if mode == "risk":
            if wrong is None or strong_right is None:
                raise ValueError("a risk sample needs the `wrong` and `strong_right` labels")
            s = s[np.asarray(wrong, dtype=bool) & np.asarray(strong_right, dtype=bool)]
        elif mode != "budget":
            raise ValueError(f"mode {mode!r} cannot be adapted; adaptive modes: {ADAPTIVE_MODES}")
        s = np.sort(s)
        kept = s if len(s) <= cap else s[(np.arange(cap) * len(s)) // cap]
        return cls(mode=mode, n=int(np.asarray(scores).size), total=len(s), scores=tuple(kept))

    def _at(self, rank: int, low: bool) -> float:
        """The full set's 0-based order statistic `rank`; thinned, the nearest kept one below
        (`low`) or above it."""
        k = len(self.scores)
        if k == self.total:
            return self.scores[rank]
        j = (rank * k) // self.total if low else min(k - 1, -(-rank * k // self.total))
        return self.scores[j]

    def threshold(self, alpha: float) -> float:
        """The mode's conformal threshold at level `alpha` (any real: <= 0 cannot err); equal
        to `calibration.conformal`'s for alpha in (0, 1) on an unthinned sample."""
        j = math.floor(alpha * (self.n + 1) + _EPS)
        if self.mode == "budget":
            k = self.n + 1 - j  # escalate iff score > the k-th smallest
            if k > self.n:
                return math.inf
            return -math.inf if k < 1 else self._at(k - 1, low=False)
        c = j - 1  # bad calibration answers the threshold may accept
        if c < 0:
            return -math.inf
        if c >= self.total:
            return math.inf
        return float(np.nextafter(self._at(c, low=True), -np.inf))

    def level_of(self, threshold: float) -> float:
        """The smallest level whose threshold decides the calibration scores as `threshold`
        does: where ACI starts for a threshold set by hand (user_config)."""
        if math.isinf(threshold):
            return 0.0 if (threshold > 0) == (self.mode == "budget") else 1.0
        kept = np.asarray(self.scores)
        below = int(np.searchsorted(kept, threshold, side="right"))  # kept scores <= threshold
        count = below if len(kept) == self.total else round(below * self.total / max(len(kept), 1))
        if self.mode == "budget":
            return (self.n + 1 - count) / (self.n + 1)
        return (count + 1) / (self.n + 1)


@dataclass(frozen=True)
class TierDecision:
    """What one tier decided for an answer: the evidence a label is judged against."""

    tier: str
    accepted: bool
    score: float
    threshold: float


def tier_decisions(outcome: CascadeOutcome, names: Sequence[str]) -> tuple[TierDecision, ...]:
    """The calibrated decisions of a run (none when a tier was forced: no threshold decided)."""
    if outcome.forced:
        return ()
    return tuple(
        TierDecision(names[c.tier], c.outcome == "accepted", c.signal.score, c.signal.threshold)
        for c in outcome.calls
        if c.signal is not None and c.outcome in ("accepted", "escalated")
    )


@dataclass(frozen=True)
class TierUpdate:
    """One tier's step on one label: the error, alpha_t and the served threshold around it."""

    tier: str
    mode: str
    err: bool
    alpha: float | None
    alpha_before: float | None
    alpha_after: float | None
    threshold_before: float
    threshold_after: float
    feedback: int
    adapted: bool
    applied: bool  # the tier's state took the label (adaptive on, same calibration epoch)
    note: str

    @property
    def moved(self) -> bool:
        return self.threshold_after != self.threshold_before

    def as_dict(self) -> dict:
        return {**asdict(self), "moved": self.moved}


class _Calibration(Protocol):
    """What ACI reads of a tier's `calibration.artifact.CascadeCalibration`."""

    mode: str
    alpha: float | None
    threshold: float
    sample: CalibrationSample | None


@dataclass
class _TierState:
    tier: str
    mode: str
    alpha: float
    base: float  # the threshold served before `min_feedback` labels (artifact or override)
    sample: CalibrationSample
    alpha_t: float
    epoch: int = 0
    feedback: int = 0
    errors: int = 0
    reset: str = ""

    @property
    def key(self) -> tuple:
        return (self.mode, self.alpha, self.base, self.sample)


def _what_changed(old: _TierState, new: _TierState) -> str:
    """Why a tier's adaptation starts afresh (`serve deploy` changed its calibration)."""
    if (old.mode, old.alpha) != (new.mode, new.alpha):
        return f"recalibrated: {old.mode} alpha={old.alpha:g} -> {new.mode} alpha={new.alpha:g}"
    if old.base != new.base:
        return f"new threshold {old.base:.4g} -> {new.base:.4g}: adaptation restarts from it"
    return "new calibration sample (another artifact): adaptation restarts"


def _why_not(cal: _Calibration) -> str | None:
    """Why a tier's calibration cannot be adapted, or None."""
    if cal.mode not in ADAPTIVE_MODES or cal.alpha is None:
        return f"mode {cal.mode!r} has no level to adapt (adaptive modes: {ADAPTIVE_MODES})"
    if cal.sample is None or cal.sample.mode != cal.mode:
        return (
            "the artifact keeps no calibration sample for it (its `sample`, which artifacts "
            "written before adaptive conformal lack): recalibrate it with one, or set "
            "adaptive.enabled: false"
        )
    return None


class AdaptiveConformal:
    """Every calibrated tier's ACI state; safe to share between threads and asyncio tasks."""

    def __init__(
        self, settings: AdaptiveArgs, base: dict[str, float], states: dict[str, _TierState]
    ) -> None:
        self.settings, self._base, self._states = settings, base, states
        self.resets: dict[str, str] = {}  # set by `build`: tiers reset by it, and why
        self._lock = threading.Lock()

    @classmethod
    def build(
        cls,
        tiers: Mapping[str, _Calibration],
        settings: AdaptiveArgs,
        previous: AdaptiveConformal | None = None,
    ) -> AdaptiveConformal:
        """The state for these calibrations (`CascadeArtifact.tiers`, overrides applied). A
        tier whose mode, alpha, threshold and sample are unchanged from `previous` keeps its
        state; any other starts afresh (`reset` says why). Enabled, a tier that cannot adapt
        is an error naming it."""
        states: dict[str, _TierState] = {}
        resets: dict[str, str] = {}  # tiers whose adaptation starts afresh, and why
        for name, cal in tiers.items():
            why = _why_not(cal)
            if why is not None:
                if settings.enabled:
                    raise ValueError(f"adaptive.enabled, but tier {name!r} cannot adapt: {why}")
                continue
            assert cal.sample is not None and cal.alpha is not None
            own = cal.sample.threshold(cal.alpha) == cal.threshold
            start = cal.alpha if own else cal.sample.level_of(cal.threshold)
            fresh = _TierState(name, cal.mode, cal.alpha, cal.threshold, cal.sample, start)
            old = previous._states.get(name) if previous is not None else None
            if old is not None and old.key == fresh.key:
                states[name] = old
                continue
            if old is not None:
                fresh.epoch, fresh.reset = old.epoch + 1, _what_changed(old, fresh)
                resets[name] = fresh.reset
            states[name] = fresh
        aci = cls(settings, {n: c.threshold for n, c in tiers.items()}, states)
        aci.resets = resets
        return aci

    def epochs(self) -> dict[str, int]:
        return {n: s.epoch for n, s in self._states.items()}

    def adapted(self, tier: str) -> bool:
        """Whether the tier's served threshold follows alpha_t (enabled, past warm-up)."""
        s = self._states.get(tier)
        return bool(self.settings.enabled and s and s.feedback >= self.settings.min_feedback)

    def threshold(self, tier: str) -> float:
        """The threshold a tier's answers are compared with now."""
        s = self._states.get(tier)
        if s is None or not self.adapted(tier):
            return self._base[tier]
        return s.sample.threshold(s.alpha_t)

    def feedback(
        self,
        decisions: Sequence[TierDecision],
        *,
        wrong: bool,
        strong_right: bool | None = None,
        epochs: Mapping[str, int] | None = None,
    ) -> list[TierUpdate]:
        """One labelled answer (`wrong`: the final answer is wrong; `strong_right`: the top
        tier's answer is right, None when unknown) steps every tier that decided it. A tier
        recalibrated since the answer (`epochs` from when it was served) is left alone."""
        with self._lock:
            return [self._step(d, wrong, strong_right, epochs) for d in decisions]

    def _step(
        self,
        d: TierDecision,
        wrong: bool,
        strong_right: bool | None,
        epochs: Mapping[str, int] | None,
    ) -> TierUpdate:
        s = self._states.get(d.tier)
        before = self.threshold(d.tier)
        if s is None:
            why = "not adapted: this tier's calibration cannot adapt"
            return TierUpdate(
                d.tier, "", False, None, None, None, before, before, 0, False, False, why
            )
        if s.mode == "budget":
            err = not d.accepted  # what a budget bounds: escalation, whatever the label
        else:  # risk: a bad accept; an unknown top-tier verdict counts as right (safe side)
            err = d.accepted and wrong and strong_right is not False
        a0, applied = s.alpha_t, False
        if not self.settings.enabled:
            note = "adaptive.enabled is false: label recorded, threshold unchanged"
        elif epochs is not None and epochs.get(d.tier, s.epoch) != s.epoch:
            note = "the tier was recalibrated since this answer: threshold unchanged"
        else:
            g = self.settings.gamma
            hi = min(1.0, self.settings.max_alpha_ratio * s.alpha)
            s.alpha_t = min(hi, max(-g, a0 + g * (s.alpha - err)))
            s.feedback += 1
            s.errors += err
            applied = True
            left = self.settings.min_feedback - s.feedback
            note = f"warm-up: {left} more label(s) before the threshold moves" if left > 0 else ""
        after, adapted = self.threshold(d.tier), self.adapted(d.tier)
        return TierUpdate(
            d.tier, s.mode, err, s.alpha, a0, s.alpha_t, before, after, s.feedback, adapted,
            applied, note,
        )  # fmt: skip

    def state(self) -> dict:
        """For /stats: the settings, and per adaptable tier alpha_t and the thresholds."""
        with self._lock:
            tiers = {
                n: {
                    "mode": s.mode,
                    "alpha": s.alpha,
                    "alpha_t": s.alpha_t,
                    "base_threshold": s.base,
                    "threshold": self.threshold(n),
                    "adapted": self.adapted(n),
                    "feedback": s.feedback,
                    "errors": s.errors,
                    "error_rate": s.errors / s.feedback if s.feedback else None,
                    "epoch": s.epoch,
                    "last_reset": s.reset or None,
                }
                for n, s in self._states.items()
            }
        return {**self.settings.model_dump(include=_ACI_KEYS), "tiers": tiers}


_ACI_KEYS = {"enabled", "gamma", "min_feedback", "max_alpha_ratio"}
