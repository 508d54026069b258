"""The tier ladder: costs, task floors, where a request starts, and escalate-or-accept.

The same functions decide in serving (the ingress calls `start_tier`, then `decide` after each
tier's answer) and in offline evaluation (`run_cascade` over recorded answers), so what the
evaluation measures is what production does. Tiers are indexed 0 (cheapest) .. len - 1 (top);
a request climbs one tier at a time and never skips one by escalation (only the router can
start it higher).

    >>> cfg = CascadePolicyConfig(tiers=[TierConfig(name="cheap", cost_per_request=0.1),
    ...                                  TierConfig(name="strong", cost_per_request=1.0)])
    >>> start_tier(cfg, router_policy="complex", router_confidence=0.9)
    1
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from calibration.feedback import FeedbackSignal

__all__ = [
    "SERVE_CONFIG",
    "CascadeOutcome",
    "CascadePolicyConfig",
    "CascadeStats",
    "Decision",
    "TierConfig",
    "decide",
    "policy_from_serve_config",
    "request_cost",
    "run_cascade",
    "start_tier",
]


class TierConfig(BaseModel):
    """One rung of the ladder: a model and what a request to it costs."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = Field(description="Tier name; callers can force it as the request's `model`.")
    cost_per_request: float = Field(default=0.0, ge=0, description="Fixed cost of one call.")
    cost_per_1k_output_tokens: float = Field(
        default=0.0, ge=0, description="Cost per 1000 generated tokens."
    )

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not value.strip() or value == "cascade":
            raise ValueError(f"tier name must be non-empty and not 'cascade', got {value!r}")
        return value


class CascadePolicyConfig(BaseModel):
    """The ladder and the rules for where a request may start."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    tiers: tuple[TierConfig, ...] = Field(
        description="Tiers from cheapest to strongest; at least two, names unique."
    )
    task_floors: dict[str, str] = Field(
        default_factory=dict,
        description="Task type -> the lowest tier allowed to answer it (by tier name).",
    )
    router_threshold: float = Field(
        default=0.5,
        ge=0,
        le=1,
        description="A 'complex' router decision with confidence >= this starts at the top tier.",
    )

    @field_validator("tiers")
    @classmethod
    def _tiers(cls, value: tuple[TierConfig, ...]) -> tuple[TierConfig, ...]:
        if len(value) < 2:
            raise ValueError(f"a cascade needs at least 2 tiers, got {len(value)}")
        names = [t.name for t in value]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"tier names must be unique, got duplicates {dupes}")
        return value

    @model_validator(mode="after")
    def _floors(self) -> CascadePolicyConfig:
        names = self.tier_names
        for task, tier in self.task_floors.items():
            if tier not in names:
                raise ValueError(f"task floor {task!r} -> {tier!r}: no such tier; tiers: {names}")
        return self

    @property
    def tier_names(self) -> list[str]:
        return [t.name for t in self.tiers]

    @property
    def top(self) -> int:
        return len(self.tiers) - 1

    def index(self, name: str) -> int:
        try:
            return self.tier_names.index(name)
        except ValueError as e:
            raise ValueError(f"unknown tier {name!r}; tiers: {self.tier_names}") from e


SERVE_CONFIG = Path(__file__).resolve().parents[1] / "serve_config.yaml"
"""The Ray Serve config at the repository root: the product's default application."""


def policy_from_serve_config(
    path: str | Path | None = None, application: int | str = 0
) -> CascadePolicyConfig:
    """The ladder serving runs, read from a Ray Serve config file (default: `SERVE_CONFIG`).

    From `applications[application].args` (an index, or the application's `name`): the tiers'
    names and costs (`tiers[*].{name, cost_per_request, cost_per_1k_output_tokens}`), the task
    floors, and the router threshold (`router.threshold`, overridden by the `Ingress`
    deployment's `user_config.router.threshold` as serving's `reconfigure` does; 0.7, the
    serving default, when absent). Offline evaluation prices strategies with this, so that
    the costs it reports are the costs serving charges.
    """
    import yaml

    path = Path(path) if path is not None else SERVE_CONFIG
    try:
        doc = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as e:
        raise ValueError(f"cannot read serve config {path}: {e}") from e
    apps = (doc or {}).get("applications") or []
    if isinstance(application, str):
        found = [a for a in apps if a.get("name") == application]
        if not found:
            names = [a.get("name") for a in apps]
            raise ValueError(f"{path}: no application named {application!r}; found {names}")
        app = found[0]
    elif 0 <= application < len(apps):
        app = apps[application]
    else:
        raise ValueError(f"{path}: no application #{application} ({len(apps)} found)")
    args: dict[str, Any] = app.get("args") or {}
    tiers = args.get("tiers") or []
    if not tiers:
        raise ValueError(f"{path}: application has no args.tiers")
    router_threshold = (args.get("router") or {}).get("threshold", 0.7)
    for dep in app.get("deployments") or []:
        if dep.get("name") == "Ingress":
            override = ((dep.get("user_config") or {}).get("router") or {}).get("threshold")
            router_threshold = router_threshold if override is None else override
    return CascadePolicyConfig(
        tiers=tuple(
            TierConfig(
                name=t["name"],
                cost_per_request=t.get("cost_per_request", 0.0),
                cost_per_1k_output_tokens=t.get("cost_per_1k_output_tokens", 0.0),
            )
            for t in tiers
        ),
        task_floors=args.get("task_floors") or {},
        router_threshold=router_threshold,
    )


def request_cost(tier: TierConfig, output_tokens: int) -> float:
    """What one call to `tier` costs for `output_tokens` generated tokens."""
    return tier.cost_per_request + tier.cost_per_1k_output_tokens * output_tokens / 1000.0


def start_tier(
    config: CascadePolicyConfig,
    *,
    router_policy: str | None = None,
    router_confidence: float | None = None,
    task_type: str | None = None,
) -> int:
    """Where a request starts: the top tier if the router says 'complex' with confidence >=
    the router threshold, else the lowest tier its task floor allows (0 without a floor).

    Missing router output (router down, or no router) means "start low": the cascade itself
    still escalates whatever needs it, so a missing router costs money, never quality.
    """
    if (
        router_policy == "complex"
        and router_confidence is not None
        and router_confidence >= config.router_threshold
    ):
        return config.top
    floor = config.task_floors.get(task_type) if task_type is not None else None
    return 0 if floor is None else config.index(floor)


@dataclass(frozen=True, slots=True)
class Decision:
    """Accept the answer of `tier`, or escalate to `next_tier` (= tier + 1)."""

    action: Literal["accept", "escalate"]
    tier: int
    next_tier: int | None
    reasons: tuple[str, ...]
    cause: str = ""  # categorical, for metrics: the signal's cause, or "top_tier"

    @property
    def escalate(self) -> bool:
        return self.action == "escalate"


def decide(config: CascadePolicyConfig, tier: int, signal: FeedbackSignal) -> Decision:
    """Escalate one tier if the signal says so and there is a tier above; else accept.

    The signal already holds the threshold comparison (`score > threshold`, ties accept); this
    adds the ladder: the top tier always accepts, saying when it overrides the signal.
    """
    if not 0 <= tier <= config.top:
        raise ValueError(f"tier index {tier} is outside the ladder 0..{config.top}")
    name = config.tiers[tier].name
    if not signal.escalate:
        return Decision("accept", tier, None, signal.reasons, "accepted")
    if tier == config.top:
        note = f"tier {name!r} is the top: accepted although the signal asked to escalate"
        return Decision("accept", tier, None, (*signal.reasons, note), "top_tier")
    up = config.tiers[tier + 1].name
    reasons = (*signal.reasons, f"escalate {name} -> {up}")
    return Decision("escalate", tier, tier + 1, reasons, signal.cause)


@dataclass(frozen=True)
class CascadeOutcome:
    """One request's path: the tiers visited in order, each decision, and what it cost."""

    visited: tuple[int, ...]
    decisions: tuple[Decision, ...]
    cost: float

    @property
    def final_tier(self) -> int:
        return self.visited[-1]

    @property
    def escalated(self) -> bool:
        return len(self.visited) > 1


def run_cascade(
    config: CascadePolicyConfig,
    start: int,
    signal_at: Callable[[int], FeedbackSignal],
    output_tokens_at: Callable[[int], int] = lambda tier: 0,
) -> CascadeOutcome:
    """Climb from `start`: ask each tier for its signal (generating its answer), decide, and
    stop at the first accept. Synchronous; the async ingress runs the same loop with `await`."""
    tier, visited, decisions, cost = start, [], [], 0.0
    while True:
        sig = signal_at(tier)
        visited.append(tier)
        cost += request_cost(config.tiers[tier], output_tokens_at(tier))
        d = decide(config, tier, sig)
        decisions.append(d)
        if not d.escalate:
            return CascadeOutcome(tuple(visited), tuple(decisions), cost)
        tier = d.next_tier


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

    def record_outcome(
        self, outcome: CascadeOutcome, output_tokens: Sequence[int] | None = None
    ) -> None:
        """`record` for a `run_cascade` result, with the causes of its escalations."""
        causes = [d.cause for d in outcome.decisions if d.escalate]
        self.record(outcome.visited, output_tokens, causes)

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
            }
