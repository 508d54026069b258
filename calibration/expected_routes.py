"""What the served cascade should decide for each request, computed offline, and how the
served decisions compare with it.

Serving and the offline evaluation share `calibration.policy` and the calibration artifact,
but serving adds the router deployment (its confidence head), the tiers' engines (vLLM or
transformers) and HTTP. This module replays one request at a time through the same pieces
without Ray: the router with its head (`models.router_model.RouterWithHead`), each tier's
greedy answer (cached, transformers), the artifact's signal, and `run_cascade`. Sending the
same prompts through the running service and comparing (`compare`) shows whether serving
makes the decisions the evaluation measured; `benchmarks/bench_agreement.py` and the
end-to-end test do exactly that.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from calibration.artifact import CascadeCalibration
from calibration.policy import CascadePolicyConfig, run_cascade, start_tier
from calibration.replay import cached_answers
from models.tasks import Judgement, Task, judge
from models.zoo import ANSWER_MAX_TOKENS

# ANSWER_MAX_TOKENS: the offline answers are generated with this many new tokens at most; a
# check sends the same `max_tokens`, so a model that never stops is cut at the same place.
__all__ = ["ANSWER_MAX_TOKENS", "ExpectedRoute", "compare", "expected_routes"]


@dataclass(frozen=True)
class ExpectedRoute:
    """One request's path as serving should take it."""

    prompt: str
    router_policy: str
    router_confidence: float
    tiers_visited: tuple[str, ...]
    correct: bool
    cost: float

    @property
    def final_tier(self) -> str:
        return self.tiers_visited[-1]


def expected_routes(
    tasks: Sequence[Task],
    *,
    policy: CascadePolicyConfig,
    calibration: CascadeCalibration,
    tier_dirs: dict[str, Path],
    router_dir: Path | None,
    split: str,
    seed: int,
) -> list[ExpectedRoute]:
    """Each task's route under `policy` and `calibration`, as serving decides it.

    `tasks` must be `sample(split, len(tasks), seed)` (the answers cache is keyed by that);
    `tier_dirs` maps each tier name of the policy to its model folder.
    """
    tasks = list(tasks)
    if not tasks:
        raise ValueError("no tasks to route")
    missing = [n for n in policy.tier_names if n not in tier_dirs]
    if missing:
        raise ValueError(f"no model folder for tiers {missing}")
    answers = {n: cached_answers(tier_dirs[n], tasks, split, seed) for n in policy.tier_names}
    if router_dir is not None:
        from models.router_model import RouterWithHead

        rows = RouterWithHead(router_dir)([t.prompt for t in tasks]).to_dicts()
    else:
        rows = [{"policy": None, "confidence": None}] * len(tasks)
    names = policy.tier_names
    out = []
    for i, task in enumerate(tasks):
        start = start_tier(
            policy, router_policy=rows[i]["policy"], router_confidence=rows[i]["confidence"]
        )
        path = run_cascade(
            policy,
            start,
            lambda t, i=i: calibration.signal(answers[names[t]][i]),
            lambda t, i=i: answers[names[t]][i].completion_tokens,
        )
        final = answers[names[path.final_tier]][i]
        out.append(
            ExpectedRoute(
                prompt=task.prompt,
                router_policy=rows[i]["policy"],
                router_confidence=rows[i]["confidence"],
                tiers_visited=tuple(names[t] for t in path.visited),
                correct=judge(final.text, task.answer) == Judgement.correct,
                cost=path.cost,
            )
        )
    return out


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
