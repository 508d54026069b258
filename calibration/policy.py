"""The tier ladder: costs, task floors, where a request starts, and escalate-or-accept.

These rules are what `calibration.cascade.CascadeRun` applies at each step, in serving and in
the offline replay alike. Tiers are indexed 0 (cheapest) .. len - 1 (top);
a request climbs one tier at a time and never skips one by escalation (only the router can
start it higher).

    >>> cfg = CascadePolicyConfig(tiers=[TierConfig(name="cheap", cost_per_request=0.1),
    ...                                  TierConfig(name="strong", cost_per_request=1.0)])
    >>> start_tier(cfg, router_policy="complex", router_confidence=0.9)
    1
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from calibration.feedback import TierSignal

__all__ = [
    "CascadePolicyConfig",
    "Decision",
    "TierConfig",
    "decide",
    "request_cost",
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

    def router_sends_to_top(self, router_policy: str | None, confidence: float | None) -> bool:
        """A 'complex' verdict with confidence >= the router threshold goes to the top tier."""
        return (
            router_policy == "complex"
            and confidence is not None
            and confidence >= self.router_threshold
        )

    def floor_of(self, task_type: str | None) -> int | None:
        """The tier index a task type's floor names; None for no floor (unknown types too)."""
        floor = self.task_floors.get(task_type) if task_type is not None else None
        return None if floor is None else self.index(floor)

    def start_tier(
        self,
        *,
        router_policy: str | None = None,
        router_confidence: float | None = None,
        task_type: str | None = None,
    ) -> int:
        """Where a request starts: the top tier if the router says 'complex' with confidence
        >= the router threshold, else the lowest tier its task floor allows (0 without one).

        Missing router output (router down, or no router) means "start low": the cascade
        itself still escalates whatever needs it, so a missing router costs money, never
        quality.
        """
        if self.router_sends_to_top(router_policy, router_confidence):
            return self.top
        return self.floor_of(task_type) or 0


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
    """`config.start_tier(...)` as a function (see there)."""
    return config.start_tier(
        router_policy=router_policy, router_confidence=router_confidence, task_type=task_type
    )


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


def decide(config: CascadePolicyConfig, tier: int, signal: TierSignal) -> Decision:
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
