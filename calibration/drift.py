"""A label-free drift monitor: is live traffic still the population the thresholds assume?

Each conformal threshold is guaranteed on the population the served router and policy send to
its tier (docs/architecture.md, Calibration). Serving never sees labels, but it does see what
calibration predicted about that population: how often the tier escalates, how its scores are
distributed, how often the router calls its arrivals 'complex', and how many requests reach it
at all. A `DriftReference` (in the artifact, one per tier below the top) records those on the
calibration split; a `DriftMonitor` keeps the same quantities over a sliding window of live
requests and tests them against it:

    escalation  Fisher exact: the tier's escalation rate (the exact binomial test, with the
                reference's own sampling noise kept; `drift_stats.fisher_exact`)
    score       Kolmogorov-Smirnov two-sample: the tier's scores vs the reference's quantiles
    router      Fisher exact: the share of the tier's arrivals the router called 'complex'
    reach       Fisher exact: the share of cascade requests that reach the tier

A tier alarms when any of its p-values is below alpha / m, m the number of tests the monitor
runs (Bonferroni), so alpha bounds the chance that one look alarms anywhere on undrifted
traffic; it clears when every p-value is back above ten times that (hysteresis, so a p-value
hovering near the line does not flap). Tests run every `test_every` requests once a window
holds `min_samples`; each look is O(window). Forced-tier requests are not the cascade's
population and are skipped. Escalations are counted at the reference's threshold (from the
score), so a threshold moved by user_config or adaptive conformal does not read as drift; a
moved router threshold or lower tier's threshold changes who arrives, so a reference recorded
under other ones is reported stale and not tested (live moves by adaptive conformal below a
tier are not detected as such: they show up as drift at the tiers above).

    monitor = DriftMonitor.from_artifact(artifact, policy, window=200, min_samples=50)
    looked = monitor.observe(outcome, router_policy="standard")  # None between looks
    monitor.statuses()   # per tier: window, observed vs expected, p-values, alarm
"""

from __future__ import annotations

import threading
from collections import deque

import numpy as np
from pydantic import BaseModel, Field

from calibration.cascade import CascadeOutcome
from calibration.drift_reference import (
    COMPLEX,
    Answer,
    DriftReference,
    Proportion,
    ScoreSample,
    calibrated_answers,
    references_from_outcomes,
)
from calibration.drift_stats import fisher_exact, ks_two_sample
from calibration.policy import CascadePolicyConfig

__all__ = [
    "DRIFT_TESTS",
    "DriftMonitor",
    "DriftReference",
    "DriftStatus",
    "DriftTest",
    "Proportion",
    "ScoreSample",
    "calibrated_answers",
    "references_from_outcomes",
]

DRIFT_TESTS = ("escalation", "score", "router", "reach")
_CLEAR_FACTOR = 10.0  # an alarm clears when every p-value is >= this times the firing level


class DriftTest(BaseModel):
    """One test at one look: what the window shows, what calibration expects, the p-value."""

    observed: float | None = None
    expected: float | None = None
    n: int = 0
    p_value: float | None = None  # None: not run (too few samples, or off for this tier)


class DriftStatus(BaseModel):
    """One tier's state at the last look."""

    tier: str
    reference: bool = Field(description="Whether the artifact has a reference for this tier.")
    note: str = Field(description="'ok', 'no reference', 'warming up', or why tests are off.")
    window: int = Field(description="Arrivals at the tier in the window.")
    requests: int = Field(description="Cascade requests the monitor has seen.")
    level: float = Field(description="The per-test significance level (alpha / m).")
    tests: dict[str, DriftTest] = Field(default_factory=dict)
    alarm: bool = False
    fired: list[str] = Field(default_factory=list, description="Tests below the level now.")
    alarm_since: int | None = Field(default=None, description="Request count it turned on at.")
    changed: bool = Field(default=False, description="The alarm turned on or off at this look.")


class _Flags:
    """A sliding window of booleans with its running count: O(1) per add."""

    def __init__(self, size: int) -> None:
        self.items: deque[bool] = deque(maxlen=size)
        self.k = 0

    def add(self, flag: bool) -> None:
        if len(self.items) == self.items.maxlen:
            self.k -= self.items[0]
        self.items.append(flag)
        self.k += flag

    @property
    def n(self) -> int:
        return len(self.items)


class _Tier:
    """One tier's windows, its reference, and which tests apply to it."""

    def __init__(
        self,
        name: str,
        index: int,
        window: int,
        ref: DriftReference | None,
        tests: tuple[str, ...],
        note: str,
    ) -> None:
        self.name, self.index, self.ref, self.tests, self.note = name, index, ref, tests, note
        self.alarm, self.since = False, None
        self.ref_scores = np.sort(ref.scores.values) if ref is not None else np.zeros(0)
        self.reset(window)

    def reset(self, window: int) -> None:
        self.escalation, self.router, self.reach = _Flags(window), _Flags(window), _Flags(window)
        self.scores = deque(maxlen=window)

    def add(self, outcome: CascadeOutcome, answers: list[Answer], router: str | None) -> None:
        self.reach.add(self.index in outcome.visited)
        for a in answers:
            if a.tier != self.index:
                continue
            # at the reference's threshold: a user_config or adaptive conformal may have
            # moved the served one, which changes the verdict but not the score
            same = self.ref is None or a.threshold == self.ref.threshold
            self.escalation.add(a.escalated if same else a.score > self.ref.threshold)
            self.scores.append(a.score)
            if router is not None:
                self.router.add(router == COMPLEX)


class DriftMonitor:
    """Per-tier sliding windows of live outcomes, tested against the artifact's references.

    Bounded memory (a few windows of `window` values per tier); `observe` is O(1) except at
    every `test_every`-th request, which runs the tests (O(window)). Thread-safe."""

    def __init__(
        self,
        policy: CascadePolicyConfig,
        tiers: dict[str, tuple[DriftReference | None, float | None]],
        *,
        window: int = 200,
        min_samples: int = 50,
        alpha: float = 0.001,
        test_every: int = 10,
    ) -> None:
        if not 1 <= min_samples <= window:
            raise ValueError(f"need 1 <= min_samples <= window, got {min_samples}, {window}")
        if not 0 < alpha < 1:
            raise ValueError(f"alpha must be in (0, 1), got {alpha}")
        if test_every < 1:
            raise ValueError(f"test_every must be >= 1, got {test_every}")
        self.window, self.min_samples = window, min_samples
        self.alpha, self.test_every = alpha, test_every
        self.names = policy.tier_names
        served = {name: thr for name, (_, thr) in tiers.items()}
        self._tiers = [
            _Tier(name, self.names.index(name), window, *_applicable(ref, name, served, policy))
            for name, (ref, _) in tiers.items()
            if name in self.names[:-1]
        ]
        self.m = max(1, sum(len(t.tests) for t in self._tiers))
        self.level = alpha / self.m
        self.requests = 0
        self._lock = threading.Lock()
        self._last = {t.name: self._status(t, {}, warming=True) for t in self._tiers}

    @classmethod
    def from_artifact(cls, artifact, policy: CascadePolicyConfig, **settings) -> DriftMonitor:
        """A monitor for `policy`'s tiers below the top, with the references (and serving
        thresholds) of `artifact` (a `calibration.artifact.CascadeArtifact`)."""
        tiers = {}
        for name in policy.tier_names[:-1]:
            cal = artifact.tiers.get(name)
            tiers[name] = (getattr(cal, "drift", None), cal.threshold if cal else None)
        return cls(policy, tiers, **settings)

    def observe(
        self, outcome: CascadeOutcome, router_policy: str | None = None
    ) -> list[DriftStatus] | None:
        """Add one finished request; at a look (every `test_every`-th cascade request) run
        the tests and return every tier's status (`changed` marks alarms turning on or off),
        else None. A forced request is not counted."""
        if outcome.forced:
            return None
        answers = calibrated_answers(outcome)
        with self._lock:
            for tier in self._tiers:
                tier.add(outcome, answers, router_policy)
            self.requests += 1
            if self.requests % self.test_every:
                return None
            self._last = {t.name: self._look(t) for t in self._tiers}
            return list(self._last.values())

    def statuses(self) -> dict[str, DriftStatus]:
        """Every tier's status at the last look (for /stats and the gauges)."""
        with self._lock:
            return dict(self._last)

    @property
    def alarm(self) -> bool:
        return any(s.alarm for s in self.statuses().values())

    def as_dict(self) -> dict:
        """The /stats section."""
        return {
            "requests": self.requests,
            "window": self.window,
            "min_samples": self.min_samples,
            "alpha": self.alpha,
            "level": self.level,
            "test_every": self.test_every,
            "alarm": self.alarm,
            "tiers": {name: s.model_dump() for name, s in self.statuses().items()},
        }

    # --- one look --------------------------------------------------------------------------

    def _look(self, tier: _Tier) -> DriftStatus:
        tests = self._tests(tier)
        ps = [r.p_value for r in tests.values() if r.p_value is not None]
        changed = False
        if not tier.alarm and ps and min(ps) < self.level:
            tier.alarm, tier.since, changed = True, self.requests, True
        elif tier.alarm and ps and min(ps) >= _CLEAR_FACTOR * self.level:
            tier.alarm, tier.since, changed = False, None, True
        status = self._status(tier, tests, warming=not ps)
        fired = [n for n, r in tests.items() if r.p_value is not None and r.p_value < self.level]
        return status.model_copy(update={"changed": changed, "fired": fired})

    def _tests(self, tier: _Tier) -> dict[str, DriftTest]:
        """Every applicable test on the current window; a p-value once it holds enough."""
        ref, out = tier.ref, {}
        for name in tier.tests if ref is not None else ():
            if name == "score":
                x = np.sort(np.fromiter(tier.scores, float, len(tier.scores)))
                ref_x = tier.ref_scores
                p = ks_two_sample(x, ref_x, ref.scores.n)[1] if x.size >= self.min_samples else None
                out[name] = DriftTest(
                    observed=_median(x), expected=_median(ref_x), n=x.size, p_value=p
                )
                continue
            flags: _Flags = getattr(tier, name)
            expected: Proportion = getattr(ref, name)
            enough = flags.n >= self.min_samples
            out[name] = DriftTest(
                observed=flags.k / flags.n if flags.n else None,
                expected=expected.rate,
                n=flags.n,
                p_value=fisher_exact(flags.k, flags.n, expected.k, expected.n) if enough else None,
            )
        return out

    def _status(self, tier: _Tier, tests: dict[str, DriftTest], warming: bool) -> DriftStatus:
        note = f"warming up: {self.min_samples} samples needed" if warming and tier.tests else ""
        note = note or tier.note
        return DriftStatus(
            tier=tier.name,
            reference=tier.ref is not None,
            note=note,
            window=tier.escalation.n if tier.escalation else 0,
            requests=self.requests,
            level=self.level,
            tests=tests,
            alarm=tier.alarm,
            alarm_since=tier.since,
        )


def _median(sorted_x: np.ndarray) -> float | None:
    """The median of a sorted array (np.median would sort it again, on every look)."""
    n = sorted_x.size
    if not n:
        return None
    return float(sorted_x[n // 2] if n % 2 else (sorted_x[n // 2 - 1] + sorted_x[n // 2]) / 2)


def _applicable(
    ref: DriftReference | None,
    name: str,
    served: dict[str, float | None],
    policy: CascadePolicyConfig,
) -> tuple[DriftReference | None, tuple[str, ...], str]:
    """The reference and the tests that still describe what serving does: a reference made
    under another router threshold, or other thresholds below, saw another population (no
    tests). This tier's own threshold may differ: escalations are counted at the reference's
    (`_Tier.add`)."""
    if ref is None:
        return None, (), "no reference"
    if ref.router_threshold != policy.router_threshold:
        why = (
            f"router threshold {policy.router_threshold:g} != reference's {ref.router_threshold:g}"
        )
        return ref, (), f"reference stale: {why}"
    moved = [b for b, thr in ref.below.items() if served.get(b) != thr]
    if moved:
        return ref, (), f"reference stale: thresholds of {moved} changed since it was recorded"
    tests = tuple(t for t in DRIFT_TESTS if t != "router" or ref.router is not None)
    if served.get(name) != ref.threshold:
        return ref, tests, f"ok; escalations counted at the reference's threshold {ref.threshold:g}"
    return ref, tests, "ok"
