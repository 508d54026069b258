"""Serving vs offline evaluation: the zoo test split through the running service
(serve_config.yaml as shipped: vLLM tiers, router with its head, the zoo's calibration), and
the same requests replayed offline through `calibration.expected_routes`.

    python -m benchmarks.bench_agreement [--n 300] [--seed 0] [--url http://127.0.0.1:8000]

Without --url it starts the graph itself on a local Ray instance. Prints one table (accuracy,
mean cost, escalation rate, served vs offline) and the share of requests that took the same
route; `--json` prints the comparison as JSON instead.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json

import httpx

from benchmarks.tables import table
from calibration.artifact import CascadeCalibration
from calibration.expected_routes import ANSWER_MAX_TOKENS, compare, expected_routes
from calibration.policy import policy_from_serve_config
from deployments.local import config_args, running_app
from models.tasks import Task, sample
from models.zoo import calibration_path, ensure_zoo, resolve


async def serve_all(base: str, tasks: list[Task], concurrency: int = 4) -> list[dict]:
    """Every task through POST /v1/chat/completions (model cascade), in order."""
    sem = asyncio.Semaphore(concurrency)

    async def one(client: httpx.AsyncClient, task: Task) -> dict:
        body = {
            "model": "cascade",
            "messages": [{"role": "user", "content": task.prompt}],
            "max_tokens": ANSWER_MAX_TOKENS,
        }
        async with sem:
            r = await client.post(f"{base}/v1/chat/completions", json=body, timeout=120)
        r.raise_for_status()
        out = r.json()
        return {"text": out["choices"][0]["message"]["content"], "routing": out["routing"]}

    async with httpx.AsyncClient() as client:
        return list(await asyncio.gather(*(one(client, t) for t in tasks)))


def offline(tasks: list[Task], split: str, seed: int) -> list:
    """The routes serving_config.yaml's cascade should take, without Ray."""
    args = config_args()
    if (args.get("calibration") or {}).get("file", "zoo") != "zoo":
        raise SystemExit(
            "this check replays the zoo's calibration; serve_config.yaml names another"
        )
    ensure_zoo()
    return expected_routes(
        tasks,
        policy=policy_from_serve_config(),
        calibration=CascadeCalibration.load(calibration_path()),
        tier_dirs={t["name"]: resolve(t["model"]) for t in args["tiers"]},
        router_dir=resolve(args["router"]["model"]),
        split=split,
        seed=seed,
    )


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--n", type=int, default=300, help="test prompts (default 300)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--split", default="test")
    p.add_argument("--url", default=None, help="a running service; default: start one here")
    p.add_argument("--json", action="store_true")
    a = p.parse_args(argv)
    tasks = sample(a.split, a.n, a.seed)
    expected = offline(tasks, a.split, a.seed)
    started = (
        contextlib.nullcontext((a.url, None))
        if a.url
        else running_app(config_args(), wait_s=400, quiet=True)
    )
    with started as (base, _):
        served = asyncio.run(serve_all(base, tasks))
    result = compare(expected, served, tasks)
    if a.json:
        print(json.dumps(result, indent=2))
        return result
    s, o = result["served"], result["offline"]
    print(
        table(
            f"Serving vs offline evaluation, {a.split} split seed {a.seed}, n={a.n} "
            "(serve_config.yaml)",
            ["", "accuracy", "mean cost", "escalation rate"],
            [
                [
                    "served (HTTP)",
                    f"{s['accuracy']:.3f}",
                    f"{s['cost']:.4f}",
                    f"{s['escalation_rate']:.3f}",
                ],
                [
                    "offline replay",
                    f"{o['accuracy']:.3f}",
                    f"{o['cost']:.4f}",
                    f"{o['escalation_rate']:.3f}",
                ],
            ],
        )
    )
    print(
        f"same route: {result['same_route']:.3f}; same correctness: "
        f"{result['same_correctness']:.3f}; disagreements: {len(result['disagreements'])}"
    )
    for d in result["disagreements"][:10]:
        print(f"  {d['prompt']!r}: served {d['served']}, offline {d['offline']}")
    return result


if __name__ == "__main__":
    main()
