"""Load: N concurrent clients for a set time against the graph of a Serve config (default
serve_config.yaml as shipped: vLLM tiers, per-tier autoscaling), on loopback only.

    python -m benchmarks.bench_load [--clients 16] [--seconds 60] [--config serve_config.yaml]

Records throughput, latency percentiles, errors by status, and every tier's replica count
over time; prints them as tables. The run is bounded: clients stop at the deadline.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from collections import Counter
from pathlib import Path

import httpx
import numpy as np

from benchmarks.tables import table
from calibration.config import AppArgs
from deployments.local import REPO, running_app
from models.tasks import sample


def replica_counts(tiers: list[str], state: str | None = "RUNNING") -> dict[str, int]:
    """Replicas per tier deployment in `state` (None: in any state, starting and stopping
    included), from Serve's own status."""
    from ray import serve

    deps = serve.status().applications["cascade"].deployments
    counts = {}
    for t in tiers:
        states = deps[f"Tier-{t}"].replica_states if f"Tier-{t}" in deps else {}
        counts[t] = sum(states.values()) if state is None else states.get(state, 0)
    return counts


async def run_load(
    base: str,
    prompts: list[str],
    tiers: list[str],
    clients: int,
    seconds: float,
    watch_every_s: float = 5.0,
    count_state: str | None = "RUNNING",
) -> dict:
    """`clients` concurrent clients sending `prompts` (model cascade) until the deadline,
    while every tier's replica count is sampled every `watch_every_s`."""
    latencies: list[float] = []
    statuses: Counter[str] = Counter()
    final: Counter[str] = Counter()
    timeline: list[tuple[float, dict[str, int]]] = []
    t_start = time.perf_counter()
    stop = t_start + seconds
    sent = 0

    async def client(c: httpx.AsyncClient, k: int) -> None:
        nonlocal sent
        i = k
        while time.perf_counter() < stop:
            body = {
                "model": "cascade",
                "messages": [{"role": "user", "content": prompts[i % len(prompts)]}],
                "max_tokens": 10,
            }
            i += clients
            sent += 1
            t0 = time.perf_counter()
            try:
                r = await c.post(f"{base}/v1/chat/completions", json=body, timeout=120)
            except httpx.HTTPError as e:
                statuses[type(e).__name__] += 1
                continue
            statuses[str(r.status_code)] += 1
            if r.status_code == 200:
                latencies.append(time.perf_counter() - t0)
                final[r.json()["routing"]["final_tier"]] += 1

    async def watch() -> None:
        while time.perf_counter() < stop:
            counts = await asyncio.to_thread(replica_counts, tiers, count_state)
            timeline.append((time.perf_counter() - t_start, counts))
            await asyncio.sleep(watch_every_s)

    async with httpx.AsyncClient(limits=httpx.Limits(max_connections=clients + 4)) as c:
        await asyncio.gather(watch(), *(client(c, k) for k in range(clients)))
    wall = time.perf_counter() - t_start
    return {
        "sent": sent,
        "ok": len(latencies),
        "wall_s": wall,
        "statuses": dict(statuses),
        "final_tier": dict(final),
        "latencies": latencies,
        "timeline": timeline,
    }


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--clients", type=int, default=16)
    p.add_argument("--seconds", type=float, default=60)
    p.add_argument("--config", type=Path, default=REPO / "serve_config.yaml")
    a = p.parse_args(argv)
    args = AppArgs.from_serve_config(a.config)
    tiers = args.tier_names
    prompts = [t.prompt for t in sample("test", 500, seed=9)]
    with running_app(args, wait_s=400, quiet=True) as (base, _):
        # one request per tier first: replicas are up, first-call costs are paid
        for t in tiers:
            httpx.post(
                f"{base}/v1/chat/completions",
                json={"model": t, "messages": [{"role": "user", "content": "1+1"}]},
                timeout=120,
            )
        r = asyncio.run(run_load(base, prompts, tiers, a.clients, a.seconds))
    lat = np.asarray(r["latencies"]) * 1000 if r["latencies"] else np.zeros(1)
    errors = {k: v for k, v in r["statuses"].items() if k != "200"}
    print(
        table(
            f"Load: {a.clients} clients x {a.seconds:g} s, model=cascade, {a.config.name}",
            ["requests", "ok", "errors", "req/s", "p50 ms", "p95 ms", "p99 ms", "answered by"],
            [
                [
                    r["sent"],
                    r["ok"],
                    sum(errors.values()) if errors else 0,
                    f"{r['ok'] / r['wall_s']:.1f}",
                    f"{np.percentile(lat, 50):.0f}",
                    f"{np.percentile(lat, 95):.0f}",
                    f"{np.percentile(lat, 99):.0f}",
                    ", ".join(f"{k} {v}" for k, v in sorted(r["final_tier"].items())),
                ]
            ],
        )
    )
    if errors:
        print(f"errors by kind: {errors}")
    print(
        table(
            "Replicas per tier over time (running)",
            ["t (s)", *tiers],
            [[f"{s:.0f}", *(c.get(t, 0) for t in tiers)] for s, c in r["timeline"]],
        )
    )
    return r


if __name__ == "__main__":
    main()
