"""What the served cascade should decide for each request, computed offline, and how the
served decisions compare with it.

`expected_routes` replays requests through `offline.served.replay_served`: the served config's
policy, the router + confidence head (`models.router_model.RouterWithHead`, the Router
deployment's code), each tier's recorded greedy answer, the artifact's per-tier signal, and
`calibration.cascade.CascadeRun`, the state machine serving drives. Sending the same prompts
through the running service and comparing (`compare`) shows whether serving makes the
decisions the evaluation measured; `benchmarks/bench_agreement.py` and the end-to-end tests
do exactly that.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from calibration.config import AppArgs
from models.served_calibration import served_artifact
from models.tasks import Judgement, Task, judge
from models.zoo import ANSWER_MAX_TOKENS
from offline.replay import load_split
from offline.served import replay_served

# ANSWER_MAX_TOKENS: the offline answers are generated with this many new tokens at most; a
# check sends the same `max_tokens`, so a model that never stops is cut at the same place.
__all__ = ["ANSWER_MAX_TOKENS", "ExpectedRoute", "compare", "expected_routes"]


@dataclass(frozen=True)
class ExpectedRoute:
    """One request's path as serving should take it."""

    prompt: str
    router_policy: str | None
    router_confidence: float | None
    tiers_visited: tuple[str, ...]
    correct: bool
    cost: float

    @property
    def final_tier(self) -> str:
        return self.tiers_visited[-1]


def expected_routes(
    app: AppArgs, split: str, seed: int, n: int, root: Path | None = None
) -> tuple[list[Task], list[ExpectedRoute]]:
    """`sample(split, n, seed)` and each request's route under the served `app` (its ladder,
    router and artifact), on the zoo at `root` (default: the built zoo)."""
    if n < 1:
        raise ValueError(f"no tasks to route (n={n})")
    router = "router" if app.router.enabled else None
    data = load_split(
        split,
        n,
        seed,
        root=root,
        tiers=app.tier_names,
        router=router,
        router_device=app.router.device,
        router_dtype=app.router.dtype,
    )
    artifact = served_artifact(app, root)
    run = replay_served(app.policy(), artifact, data)
    names, rows = app.tier_names, data.router
    out = [
        ExpectedRoute(
            prompt=task.prompt,
            router_policy=rows.policy[i] if rows else None,
            router_confidence=float(rows.confidence[i]) if rows else None,
            tiers_visited=tuple(names[t] for t in o.visited),
            correct=bool(run.correct[i]),
            cost=o.cost,
        )
        for i, (task, o) in enumerate(zip(data.tasks, run.outcomes, strict=True))
    ]
    return data.tasks, out


def compare(
    expected: Sequence[ExpectedRoute], served: Sequence[dict], tasks: Sequence[Task]
) -> dict:
    """Offline vs served: accuracy, mean cost, escalation rate, and per-request agreement.

    `served[i]` is request i's response as {"text": ..., "routing": {...}}.
    """
    if not (len(expected) == len(served) == len(tasks)) or not tasks:
        raise ValueError(
            f"expected {len(expected)}, served {len(served)} and tasks {len(tasks)} must be "
            "equally long and non-empty"
        )
    s_right = np.array(
        [
            judge(s["text"], t.answer) == Judgement.correct
            for s, t in zip(served, tasks, strict=True)
        ]
    )
    s_cost = np.array([s["routing"]["cost"] for s in served])
    s_path = [tuple(s["routing"]["tiers_visited"]) for s in served]
    s_esc = np.array([s["routing"]["escalated"] for s in served])
    e_right = np.array([e.correct for e in expected])
    e_cost = np.array([e.cost for e in expected])
    e_path = [e.tiers_visited for e in expected]
    e_esc = np.array([len(p) > 1 for p in e_path])
    same_path = np.array([a == b for a, b in zip(s_path, e_path, strict=True)])
    return {
        "n": len(tasks),
        "served": {
            "accuracy": float(s_right.mean()),
            "cost": float(s_cost.mean()),
            "escalation_rate": float(s_esc.mean()),
        },
        "offline": {
            "accuracy": float(e_right.mean()),
            "cost": float(e_cost.mean()),
            "escalation_rate": float(e_esc.mean()),
        },
        "same_route": float(same_path.mean()),
        "same_correctness": float((s_right == e_right).mean()),
        "disagreements": [
            {"prompt": t.prompt, "served": list(a), "offline": list(b)}
            for t, a, b, same in zip(tasks, s_path, e_path, same_path, strict=True)
            if not same
        ],
    }
