"""The served policy, replayed offline: what serving decides for each recorded request.

Serving (`deployments/serving.py`) drives `calibration.cascade.CascadeRun` with live tier calls
and the Router deployment's verdict; this module drives the same run with each tier's recorded
answer (`offline.replay.EvalSplit`) and the same router + confidence head output
(`RouterRows`, from `models.router_model.RouterWithHead`), through the artifact's per-tier
signal. So the `served` strategy of the evaluation, the router-conditional calibration of the
zoo's artifact and the serving-vs-offline check (`offline.expected_routes`) are one code path.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from calibration.artifact import CascadeArtifact, CascadeCalibration
from calibration.cascade import CascadeOutcome, CascadeRun, run_cascade
from calibration.conformal import empirical
from calibration.feedback import TierSignal
from calibration.policy import CascadePolicyConfig
from offline.replay import EvalSplit

__all__ = [
    "ServedReplay",
    "begin_run",
    "realised_guarantees",
    "replay_served",
    "task_types",
]

# A tier above the one being calibrated accepts: only who reaches that tier matters then.
_ACCEPT_FOR_NOW = TierSignal({}, -math.inf, math.inf, False, ("not calibrated yet",), "replay")


@dataclass(frozen=True)
class ServedReplay:
    """Every request's outcome under the served policy, with per-request arrays."""

    outcomes: list[CascadeOutcome]
    correct: np.ndarray  # (N,) the final answer is right
    cost: np.ndarray  # (N,) in the policy's units
    reached: dict[str, np.ndarray]  # tier -> (N,) the request got an answer from that tier

    @property
    def accuracy(self) -> float:
        return float(self.correct.mean())

    @property
    def escalation_rate(self) -> float:
        return float(np.mean([o.escalated for o in self.outcomes]))


def begin_run(
    policy: CascadePolicyConfig, data: EvalSplit, i: int, task_type: str | None = None
) -> CascadeRun:
    """Request i's run, started as serving starts it (router verdict, head confidence)."""
    rows = data.router
    if rows is None:
        return CascadeRun.begin(policy, task_type=task_type)
    return CascadeRun.begin(
        policy,
        router_policy=rows.policy[i],
        router_confidence=float(rows.confidence[i]),
        task_type=task_type,
    )


def replay_served(
    policy: CascadePolicyConfig,
    artifact: CascadeArtifact | None,
    data: EvalSplit,
    task_types: Sequence[str | None] | None = None,
    *,
    upto: int | None = None,
) -> ServedReplay:
    """Replay every request of `data` through `CascadeRun` with `artifact`'s signals.

    `upto` (a tier index) calibrates one tier at a time: tiers at or above it accept, so the
    requests that reach tier `upto` are known before its own threshold is (see
    `offline.zoo_artifacts`); `artifact` may then be None or hold the tiers below `upto`.

    Each request's task type goes where serving sends the request's: to its task floor and
    to the artifact's threshold lookup (`CascadeCalibration.threshold_for`). Without
    `task_types`, an artifact with per-task-type (Mondrian) thresholds is replayed with the
    data's own (`task_types(data)`), any other with none, as before."""
    names = policy.tier_names
    if names != data.tiers:
        raise ValueError(f"policy tiers {names} do not match the data's tiers {data.tiers}")
    if task_types is None and artifact is not None and artifact.grouped:
        task_types = _families(data).tolist()
    outcomes = []
    for i in range(data.n):
        kind = task_types[i] if task_types else None
        run = begin_run(policy, data, i, kind)

        def signal_at(t: int, i: int = i, kind: str | None = kind):
            if t >= policy.top or (upto is not None and t >= upto):
                return _ACCEPT_FOR_NOW if t < policy.top else None
            assert artifact is not None, "an artifact is needed below `upto`"
            return artifact.signal(
                names[t], data.answers[names[t]][i], task_type=kind, context=data.context(i)
            )

        outcomes.append(
            run_cascade(policy, run, signal_at, lambda t, i=i: int(data.output_tokens[names[t]][i]))
        )
    correct = np.array([data.correct[names[o.final_tier]][i] for i, o in enumerate(outcomes)])
    reached = {name: np.array([t in o.visited for o in outcomes]) for t, name in enumerate(names)}
    return ServedReplay(outcomes, correct, np.array([o.cost for o in outcomes]), reached)


def realised_guarantees(
    policy: CascadePolicyConfig, artifact: CascadeArtifact, data: EvalSplit, run: ServedReplay
) -> dict[str, dict]:
    """Per calibrated tier: its mode, alpha (the target) and the guaranteed quantity measured
    on the requests of `data` that reached it (the population it was calibrated on), with
    the loss counted against the top tier's answer; and the same quantity per task type
    (`per_task_type`: type -> n, realised; None where no request of the type reached the
    tier), from this same replay. The guarantee is marginal over the traffic, so one type
    may exceed the target while the whole stays within it: the split shows which types
    carry the loss."""
    names, top = policy.tier_names, policy.tier_names[-1]
    types = task_types(data)
    out = {}
    for name in names[:-1]:
        cal = artifact.tiers.get(name)
        here = run.reached[name]
        if cal is None or cal.mode == "heuristic" or not here.any():
            continue
        scores = cal.build_scorer().score_many(data.features[name], data.feature_names)
        # each request at the threshold the replay decided it at (its type's, if Mondrian)
        at = np.array([cal.threshold_for(kind)[0] for kind in types])
        labels = (~data.correct[name], data.correct[top], at)
        per_type = {}
        for kind in sorted(set(types.tolist())):  # a type that never reaches the tier: n 0
            mask = here & (types == kind)
            realised = _measured(cal, scores, labels, mask) if mask.any() else None
            per_type[kind] = {"n": int(mask.sum()), "realised": realised}
            if cal.group_thresholds:  # which threshold the type was decided at
                per_type[kind]["threshold"], per_type[kind]["group"] = cal.threshold_for(kind)
        out[name] = {
            "mode": cal.mode,
            "alpha": cal.alpha,
            "target": _target(cal.mode, cal.alpha),
            "realised": _measured(cal, scores, labels, here),
            "n": int(here.sum()),
            "threshold": cal.threshold,
            "per_task_type": per_type,
        }
    return out


def _measured(
    cal: CascadeCalibration, scores: np.ndarray, labels: tuple, mask: np.ndarray
) -> float:
    """`cal`'s guaranteed quantity on the requests in `mask` (labels: wrong, strong right,
    and each request's threshold)."""
    wrong, strong_right, at = labels
    return empirical(cal.mode, scores[mask], at[mask], wrong[mask], strong_right[mask])


def task_types(data: EvalSplit) -> np.ndarray:
    """Each request's task type: the zoo's task family (add, sub, max, rev), or the user's
    `task_type` on traces (`offline.trace_split` stores it as the family)."""
    return _families(data)


def _families(data: EvalSplit) -> np.ndarray:
    # replay_served's `task_types` argument hides the public name there
    return np.array([t.family for t in data.tasks], dtype=object)


def _target(mode: str, alpha: float | None) -> str:
    """The guaranteed bound in words: what `realised` is compared against."""
    if alpha is None:
        return "none"
    if mode == "recall":
        return f">= {1 - alpha:g}"
    return f"<= {alpha:g}"
