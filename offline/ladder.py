"""A cost-quality table for a ladder of any length (e.g. cheap -> mid -> strong).

Rows: always each tier, the served policy (`offline.served.replay_served`: the config's router
+ head and the artifact's per-tier thresholds, through `CascadeRun`), and the oracle that
sends each request straight to the cheapest tier that answers it right (the top when none
does). Costs are relative to always-top = 1.0.
"""

from __future__ import annotations

import numpy as np

from calibration.artifact import CascadeArtifact
from calibration.policy import CascadePolicyConfig, request_cost
from offline.replay import EvalSplit
from offline.served import realised_guarantees, replay_served

__all__ = ["ladder_table", "ladder_text"]


def _always(policy: CascadePolicyConfig, data: EvalSplit, t: int) -> tuple[float, float]:
    name = policy.tier_names[t]
    tokens = data.output_tokens[name]
    cost = np.mean([request_cost(policy.tiers[t], int(n)) for n in tokens])
    return float(data.correct[name].mean()), float(cost)


def _oracle(policy: CascadePolicyConfig, data: EvalSplit) -> tuple[float, float, dict]:
    names = policy.tier_names
    right = np.stack([data.correct[n] for n in names])  # (tiers, N)
    first = np.where(right.any(0), right.argmax(0), policy.top)  # cheapest right tier
    costs = [
        request_cost(policy.tiers[t], int(data.output_tokens[names[t]][i]))
        for i, t in enumerate(first)
    ]
    share = {n: float((first == t).mean()) for t, n in enumerate(names)}
    return float(right.any(0).mean()), float(np.mean(costs)), share


def ladder_table(policy: CascadePolicyConfig, artifact: CascadeArtifact, data: EvalSplit) -> dict:
    """The rows, each {name, accuracy, cost (vs always-top), cost_raw, answered_by}, and the
    served policy's realised guarantee per calibrated tier."""
    names = policy.tier_names
    _, top_cost = _always(policy, data, policy.top)
    unit = top_cost if top_cost > 0 else 1.0
    rows = []
    for t, name in enumerate(names):
        acc, cost = _always(policy, data, t)
        rows.append(_row(f"always_{name}", acc, cost, unit, {name: 1.0}))
    run = replay_served(policy, artifact, data)
    answered = {
        n: float(np.mean([o.final_tier == t for o in run.outcomes])) for t, n in enumerate(names)
    }
    rows.append(_row("served", run.accuracy, float(run.cost.mean()), unit, answered))
    acc, cost, share = _oracle(policy, data)
    rows.append(_row("oracle", acc, cost, unit, share))
    paths: dict[str, int] = {}
    for o in run.outcomes:
        key = " -> ".join(names[t] for t in o.visited)
        paths[key] = paths.get(key, 0) + 1
    return {
        "tiers": names,
        "n": data.n,
        "rows": rows,
        "served_paths": paths,
        "served_guarantee": realised_guarantees(policy, artifact, data, run),
    }


def _row(name: str, acc: float, cost: float, unit: float, answered: dict) -> dict:
    return {
        "name": name,
        "accuracy": acc,
        "cost": cost / unit,
        "cost_raw": cost,
        "answered_by": answered,
    }


def ladder_text(table: dict) -> str:
    """The table as aligned text (the CLI's non-JSON output)."""
    names = table["tiers"]
    head = f"{'strategy':16s} {'accuracy':>8s} {'cost':>6s}  " + " ".join(f"{n:>7s}" for n in names)
    lines = [f"{len(names)}-tier ladder {' -> '.join(names)}, n={table['n']}", head]
    for r in table["rows"]:
        shares = " ".join(f"{r['answered_by'].get(n, 0.0):7.3f}" for n in names)
        lines.append(f"{r['name']:16s} {r['accuracy']:8.3f} {r['cost']:6.3f}  {shares}")
    lines.append(f"served paths: {table['served_paths']}")
    for tier, g in table["served_guarantee"].items():
        lines.append(
            f"  {tier}: {g['mode']} realised {g['realised']:.4f} (target {g['target']}) "
            f"on the {g['n']} requests that reached it"
        )
    return "\n".join(lines)
