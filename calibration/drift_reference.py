"""What calibration expects of a tier's live traffic: the drift monitor's reference.

Recorded per tier below the top when the artifact is made (`offline.zoo_artifacts`, `python -m
calibration conformal --out`), from the calibration queries replayed through the served router
and policy (`offline.served.replay_served`), so it describes the population the tier's threshold
was calibrated on. `calibration.drift.DriftMonitor` tests live traffic against it. Stored in the
artifact (`CascadeCalibration.drift`); an artifact without one still loads (no drift tests).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, NamedTuple

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from calibration.policy import CascadePolicyConfig

if TYPE_CHECKING:
    from calibration.cascade import CascadeOutcome

__all__ = [
    "MAX_REFERENCE_SCORES",
    "Answer",
    "DriftReference",
    "Proportion",
    "ScoreSample",
    "calibrated_answers",
    "references_from_outcomes",
]

MAX_REFERENCE_SCORES = 512  # quantiles kept: the KS CDF is then within 1/1024 of the full one
COMPLEX = "complex"  # the router verdict whose share is recorded


class Proportion(BaseModel):
    """k of n: a rate with the count it was measured on (the tests need both)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    k: int = Field(ge=0, description="Requests with the property.")
    n: int = Field(ge=0, description="Requests counted.")

    @property
    def rate(self) -> float | None:
        return self.k / self.n if self.n else None


class ScoreSample(BaseModel):
    """The tier's scores on its calibration population, as at most 512 sorted quantiles."""

    model_config = ConfigDict(frozen=True, extra="forbid", ser_json_inf_nan="constants")

    values: list[float] = Field(description="Sorted quantiles at (i + 0.5) / len.")
    n: int = Field(ge=0, description="How many scores they summarise.")

    @classmethod
    def of(cls, scores: Sequence[float], k: int = MAX_REFERENCE_SCORES) -> ScoreSample:
        s = np.sort(np.asarray(scores, dtype=float))
        if s.size > k:
            s = np.quantile(s, (np.arange(k) + 0.5) / k)
        return cls(values=[float(v) for v in s], n=len(scores))


class DriftReference(BaseModel):
    """What calibration expects of one tier's live traffic, and under which settings."""

    model_config = ConfigDict(frozen=True, extra="forbid", ser_json_inf_nan="constants")

    escalation: Proportion = Field(description="Arrivals at the tier that it escalated.")
    scores: ScoreSample = Field(description="The tier's scores on its arrivals.")
    router: Proportion | None = Field(
        default=None, description="Arrivals the router called 'complex' (None: no router)."
    )
    reach: Proportion = Field(description="Requests that reached the tier, of all requests.")
    threshold: float = Field(description="The tier's threshold the escalations were made with.")
    below: dict[str, float] = Field(
        default_factory=dict, description="Thresholds of the tiers below, which shape its arrivals."
    )
    router_threshold: float = Field(description="The router threshold, which shapes them too.")
    population: str = Field(default="", description="Where the reference was measured.")


class Answer(NamedTuple):
    """One answer a calibrated threshold decided: its tier, score, verdict and threshold."""

    tier: int
    score: float
    escalated: bool
    threshold: float


def calibrated_answers(outcome: CascadeOutcome) -> list[Answer]:
    """Each answer of `outcome` a calibrated threshold decided: what both the reference and
    the monitor count, so the two read an outcome the same way."""
    return [
        Answer(c.tier, float(c.signal.score), c.outcome == "escalated", c.signal.threshold)
        for c in outcome.calls
        if c.signal is not None and c.outcome in ("accepted", "escalated")
    ]


def references_from_outcomes(
    policy: CascadePolicyConfig,
    outcomes: Sequence[CascadeOutcome],
    router_policies: Sequence[str | None] | None,
    thresholds: dict[str, float],
    population: str = "",
) -> dict[str, DriftReference]:
    """Each tier's reference from replayed outcomes (`offline.served.replay_served`), for the
    tiers below the top that `thresholds` (the artifact's) covers."""
    names = policy.tier_names
    refs = {}
    for t, name in enumerate(names[:-1]):
        if name not in thresholds:
            continue
        scores, escalated, complex_ = [], 0, []
        reached = 0
        for i, o in enumerate(outcomes):
            reached += t in o.visited
            for a in calibrated_answers(o):
                if a.tier == t:
                    scores.append(a.score)
                    escalated += a.escalated
                    verdict = router_policies[i] if router_policies is not None else None
                    if verdict is not None:
                        complex_.append(verdict == COMPLEX)
        refs[name] = DriftReference(
            escalation=Proportion(k=escalated, n=len(scores)),
            scores=ScoreSample.of(scores),
            router=Proportion(k=sum(complex_), n=len(complex_)) if complex_ else None,
            reach=Proportion(k=reached, n=len(outcomes)),
            threshold=thresholds[name],
            below={b: thresholds[b] for b in names[:t] if b in thresholds},
            router_threshold=policy.router_threshold,
            population=population,
        )
    return refs
