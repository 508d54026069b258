"""CascadeRun: the one state machine that decides every request, with no I/O.

Serving drives it with real tier calls (`deployments/serving.py`), the offline replay and
evaluation with cached answers (`run_cascade`), the seed facade with the caller's logprobs.
So what is evaluated and calibrated is, line for line, what serves.

    run = CascadeRun.begin(policy, router_policy="standard", router_confidence=0.8)
    while run.next_tier is not None:
        gen = call(run.next_tier)                       # serving: a Serve handle; offline: a cache
        sig = artifact.signal(name, gen) if run.wants_signal else None
        run.observe(sig, gen.completion_tokens)         # accept, or escalate one tier
    outcome = run.outcome()                             # visited, cost, reasons, degraded, ...

A failed call is `run.fail(why, cost)`: the next tier is tried; at the top, the best answer so
far is returned degraded; with no answer at all `NoTierAnswered` is raised.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Literal

from calibration.feedback import TierSignal
from calibration.policy import CascadePolicyConfig, Decision, decide, request_cost

__all__ = [
    "CascadeOutcome",
    "CascadeRun",
    "CascadeStats",
    "NoTierAnswered",
    "TierCall",
    "run_cascade",
]

CallOutcome = Literal["accepted", "escalated", "final", "failed"]


class NoTierAnswered(RuntimeError):
    """Every tier the request could use failed; `failures` says which and how."""

    def __init__(self, failures: Sequence[str]) -> None:
        self.failures = tuple(failures)
        super().__init__(f"no tier could answer: {'; '.join(self.failures)}")


@dataclass
class TierCall:
    """One call the run made: which tier, how it ended, what it cost, and its evidence."""

    tier: int
    outcome: CallOutcome
    cost: float = 0.0
    output_tokens: int = 0
    reasons: tuple[str, ...] = ()
    signal: TierSignal | None = None


@dataclass(frozen=True)
class CascadeOutcome:
    """One request's path: the tiers that answered, in order, each decision, and the cost."""

    visited: tuple[int, ...]
    decisions: tuple[Decision, ...]
    cost: float
    final_tier: int
    start_tier: int
    reasons: tuple[str, ...] = ()
    calls: tuple[TierCall, ...] = ()
    forced: bool = False
    task_floor: str | None = None  # the tier name a task floor raised the start to
    degraded: str | None = None  # why a failing tier made the answer less than planned

    @property
    def escalated(self) -> bool:
        return len(self.visited) > 1

    @property
    def signal(self) -> TierSignal | None:
        """The last calibrated signal (the one that accepted, or the last escalation's)."""
        return next((c.signal for c in reversed(self.calls) if c.signal is not None), None)

    @property
    def causes(self) -> tuple[str, ...]:
        """Categorical causes of the escalations, in order (for metrics and stats)."""
        return tuple(d.cause for d in self.decisions if d.escalate)

    @property
    def output_tokens(self) -> tuple[int, ...]:
        return tuple(c.output_tokens for c in self.calls if c.outcome != "failed")


class CascadeRun:
    """One request's walk up the ladder; see the module docstring for how to drive it."""

    def __init__(
        self,
        policy: CascadePolicyConfig,
        start: int,
        *,
        forced: bool = False,
        reasons: Sequence[str] = (),
        task_floor: str | None = None,
    ) -> None:
        if not 0 <= start <= policy.top:
            raise ValueError(f"start tier {start} is outside the ladder 0..{policy.top}")
        self.policy = policy
        self.start = start
        self.forced = forced
        self.task_floor = task_floor
        self.next_tier: int | None = start  # None once the run is done
        self.reasons: list[str] = list(reasons)
        self.calls: list[TierCall] = []
        self.decisions: list[Decision] = []
        self.cost = 0.0
        self._answered: list[int] = []
        self._degraded: str | None = None

    @classmethod
    def begin(
        cls,
        policy: CascadePolicyConfig,
        *,
        router_policy: str | None = None,
        router_confidence: float | None = None,
        task_type: str | None = None,
    ) -> CascadeRun:
        """Start where `policy` says: the top tier for a confident 'complex' router verdict,
        else the task floor of `task_type` (an unknown task type has none), else tier 0."""
        start = policy.start_tier(
            router_policy=router_policy, router_confidence=router_confidence, task_type=task_type
        )
        floor = policy.floor_of(task_type)
        reasons = []
        if start == policy.top and policy.router_sends_to_top(router_policy, router_confidence):
            reasons.append(
                f"started at {policy.tiers[start].name}: router said {router_policy} with "
                f"confidence {router_confidence:.2f} >= {policy.router_threshold:g}"
            )
            floor = None  # the router decided; the floor did not matter
        elif floor is not None and floor > 0:
            reasons.append(f"started at {policy.tiers[start].name}: task floor for {task_type!r}")
        floor_name = policy.tiers[floor].name if floor is not None and floor > 0 else None
        return cls(policy, start, reasons=reasons, task_floor=floor_name)

    @classmethod
    def forced(cls, policy: CascadePolicyConfig, tier: str) -> CascadeRun:
        """The request named a tier: call it alone, never escalate."""
        reason = f"model {tier!r} requested: the cascade was skipped"
        return cls(policy, policy.index(tier), forced=True, reasons=[reason])

    # --- driving ------------------------------------------------------------------------

    @property
    def done(self) -> bool:
        return self.next_tier is None

    @property
    def wants_signal(self) -> bool:
        """Whether the next answer needs a calibrated signal: only below the top tier, and
        never for a forced tier (its signal may still be given, for the routing record)."""
        return self.next_tier is not None and self.next_tier < self.policy.top and not self.forced

    def observe(self, signal: TierSignal | None, output_tokens: int = 0) -> Decision:
        """The current tier answered: accept it or escalate one tier, per its signal."""
        tier = self._current()
        cost = request_cost(self.policy.tiers[tier], output_tokens)
        self.cost += cost
        self._answered.append(tier)
        call = TierCall(tier, "final", cost, output_tokens, signal=signal)
        self.calls.append(call)
        name = self.policy.tiers[tier].name
        if signal is None or self.forced:
            if not self.forced and tier < self.policy.top:
                raise ValueError(f"tier {name!r} is below the top: its answer needs a signal")
            why = "forced tier: accepted" if self.forced else f"{name} is the top tier: accepted"
            d = Decision("accept", tier, None, (why,), "forced" if self.forced else "top_tier")
        else:
            d = decide(self.policy, tier, signal)
            call.outcome = "escalated" if d.escalate else "accepted"
            call.reasons = d.reasons
        self.decisions.append(d)
        self.reasons.extend(d.reasons)
        self.next_tier = d.next_tier
        return d

    def fail(self, why: str, cost: float = 0.0) -> Decision | None:
        """The current tier's call failed (`why`, charged `cost`): try the next tier up; at
        the top (or when forced) end with the best earlier answer, degraded; with none, raise
        `NoTierAnswered`. Returns the escalation, or None when the run ends degraded."""
        tier = self._current()
        name = self.policy.tiers[tier].name
        self.cost += cost
        self.calls.append(TierCall(tier, "failed", cost, reasons=(why,)))
        self._degraded = f"tier {name!r} failed ({why})"
        if tier < self.policy.top and not self.forced:
            self.reasons.append(f"{self._degraded}; trying the next tier")
            self.next_tier = tier + 1
            return Decision("escalate", tier, tier + 1, (self._degraded,), "tier_failed")
        self.next_tier = None
        if not self._answered:
            raise NoTierAnswered(
                [f"{self.policy.tiers[c.tier].name}: {c.reasons[0]}" for c in self.calls]
            )
        best = self.policy.tiers[self._answered[-1]].name
        self.reasons.append(f"{self._degraded}; answering from {best}")
        return None

    def outcome(self) -> CascadeOutcome:
        if not self.done:
            raise RuntimeError(f"the run is not done: tier {self.next_tier} is still to call")
        return CascadeOutcome(
            visited=tuple(self._answered),
            decisions=tuple(self.decisions),
            cost=self.cost,
            final_tier=self._answered[-1],
            start_tier=self.start,
            reasons=tuple(self.reasons),
            calls=tuple(self.calls),
            forced=self.forced,
            task_floor=self.task_floor,
            degraded=self._degraded,
        )

    def _current(self) -> int:
        if self.next_tier is None:
            raise RuntimeError("the run is done: no tier is waiting for an answer")
        return self.next_tier


def run_cascade(
    policy: CascadePolicyConfig,
    start: int | CascadeRun,
    signal_at: Callable[[int], TierSignal | None],
    output_tokens_at: Callable[[int], int] = lambda tier: 0,
) -> CascadeOutcome:
    """Drive a `CascadeRun` synchronously: `signal_at(tier)` generates (or looks up) that
    tier's answer and returns its signal. `start` is a tier index or a begun run."""
    run = start if isinstance(start, CascadeRun) else CascadeRun(policy, start)
    while run.next_tier is not None:
        tier = run.next_tier
        sig = signal_at(tier)
        run.observe(sig if run.wants_signal else None, output_tokens_at(tier))
    return run.outcome()


@dataclass
class CascadeStats:
    """Running totals for GET /stats and the evaluation, safe to share between threads (and
    so between asyncio tasks, which never preempt inside `record`).

    cost_saved compares with sending every request to the top tier (at the same output
    length); cost_on_escalations is what was paid to tiers whose answer was then thrown away.
    """

    config: CascadePolicyConfig
    requests: int = 0
    escalated: int = 0
    stayed: int = 0
    cost_spent: float = 0.0
    cost_always_top: float = 0.0
    cost_on_escalations: float = 0.0
    answered_by: Counter = field(default_factory=Counter)
    escalated_from: Counter = field(default_factory=Counter)
    started_at: Counter = field(default_factory=Counter)
    reasons: Counter = field(default_factory=Counter)  # "tier: cause" -> escalations
    task_floors: Counter = field(default_factory=Counter)  # floor tier -> requests it raised
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def record(
        self,
        visited: Sequence[int],
        output_tokens: Sequence[int] | None = None,
        causes: Sequence[str] = (),
    ) -> None:
        """Add one finished request: the tiers it visited, the tokens generated at each, and
        the categorical cause of each escalation (`Decision.cause`), counted per tier."""
        if not visited:
            raise ValueError("a request visits at least one tier, got none")
        tokens = list(output_tokens) if output_tokens is not None else [0] * len(visited)
        if len(tokens) != len(visited):
            raise ValueError(f"{len(visited)} tiers visited but {len(tokens)} token counts")
        tiers = self.config.tiers
        costs = [request_cost(tiers[t], n) for t, n in zip(visited, tokens, strict=True)]
        with self._lock:
            self.requests += 1
            if len(visited) > 1:
                self.escalated += 1
            else:
                self.stayed += 1
            self.cost_spent += sum(costs)
            self.cost_on_escalations += sum(costs[:-1])
            self.cost_always_top += request_cost(tiers[-1], tokens[-1])
            self.started_at[tiers[visited[0]].name] += 1
            self.answered_by[tiers[visited[-1]].name] += 1
            for i, t in enumerate(visited[:-1]):
                self.escalated_from[tiers[t].name] += 1
                if i < len(causes):
                    self.reasons[f"{tiers[t].name}: {causes[i]}"] += 1

    def record_outcome(self, outcome: CascadeOutcome) -> None:
        """`record` for a finished run: its tiers, tokens and escalation causes."""
        self.record(outcome.visited, outcome.output_tokens, outcome.causes)
        if outcome.task_floor is not None:
            with self._lock:
                self.task_floors[outcome.task_floor] += 1

    @property
    def cost_saved(self) -> float:
        return self.cost_always_top - self.cost_spent

    def as_dict(self) -> dict:
        with self._lock:
            n = max(self.requests, 1)
            return {
                "requests": self.requests,
                "escalated": self.escalated,
                "stayed": self.stayed,
                "escalation_rate": self.escalated / n,
                "cost_spent": self.cost_spent,
                "cost_always_top": self.cost_always_top,
                "cost_saved": self.cost_saved,
                "cost_on_escalations": self.cost_on_escalations,
                "mean_cost": self.cost_spent / n,
                "started_at": dict(self.started_at),
                "answered_by": dict(self.answered_by),
                "escalated_from": dict(self.escalated_from),
                "reasons": dict(self.reasons),
                "task_floors": dict(self.task_floors),
            }
