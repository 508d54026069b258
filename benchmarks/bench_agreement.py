"""Serving vs offline evaluation: the zoo test split through the running service
(serve_config.yaml as shipped: vLLM tiers, router with its head, the zoo's calibration), and
the same requests replayed offline through `offline.expected_routes`.

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
from pathlib import Path

import httpx

from benchmarks.tables import table
from calibration.config import SERVE_CONFIG, AppArgs
from deployments.local import running_app
from models.tasks import Task
from offline.expected_routes import ANSWER_MAX_TOKENS, compare, expected_routes


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


def offline(app: AppArgs, n: int, split: str, seed: int):
    """`sample(split, n, seed)` and the routes the served `app` should take, without Ray."""
    return expected_routes(app, split, seed, n)


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--n", type=int, default=300, help="test prompts (default 300)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--split", default="test")
    p.add_argument("--url", default=None, help="a running service; default: start one here")
    p.add_argument("--config", type=Path, default=SERVE_CONFIG, help="the served config")
    p.add_argument("--json", action="store_true")
    a = p.parse_args(argv)
    app = AppArgs.from_serve_config(a.config)
    tasks, expected = offline(app, a.n, a.split, a.seed)
    started = (
        contextlib.nullcontext((a.url, None)) if a.url else running_app(app, wait_s=400, quiet=True)
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
            f"({a.config.name})",
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
