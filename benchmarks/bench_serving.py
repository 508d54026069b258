"""Serving benchmarks on the real graph (local Ray, the embedded zoo, transformers engine):

1. overhead: the same prompts through the engine directly and through the graph over HTTP;
   overhead = graph latency - engine latency, p50 / p95 (the graph's own cost per request);
2. dynamic batching: throughput with 16 concurrent clients, max_batch_size 16 against 1, through
   the graph (HTTP) and at the cheap tier's own handle (no proxy, no ingress), beside the
   engine's own gain from a batch (16 prompts in one call against one at a time): where the
   engine is a small share of a request, that share caps what Serve's batching can win;
3. scaling: an easy workload (answers the cheap tier keeps) and a hard one (queries the router
   sends to the strong tier), each for a while, with every tier's replica count over time.

    python -m benchmarks.bench_serving [--quick]

Ratios are measured side by side in one run on one machine; absolute numbers are for 2 CPUs.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any

import httpx
import numpy as np

from benchmarks.bench_load import replica_counts, run_load
from benchmarks.tables import table
from deployments.local import running_app
from models.engine import SamplingSettings
from models.prompting import render_prompt
from models.tasks import sample

TIERS = ("cheap", "strong")
# What every request here asks of the cheap tier, over HTTP (`_chat`), at its handle and direct.
SETTINGS = SamplingSettings(max_tokens=10, top_logprobs=5)


def _args(max_batch_size: int = 16, autoscale: bool = False) -> dict[str, Any]:
    """The zoo graph on the transformers engine; with `autoscale`, both tiers autoscale as
    serve_config.yaml's `deployments:` list makes them (with faster delays for a short run)."""
    # As in serve_config.yaml: the ingress and the router must not cap concurrency (Serve's
    # default max_ongoing_requests is 5), or requests queue in the proxy and no tier ever sees
    # the load it should scale on.
    opts: dict[str, dict] = {
        "Ingress": {"ray_actor_options": {"num_cpus": 0.1}, "max_ongoing_requests": 256},
        "Router": {"ray_actor_options": {"num_cpus": 0.1}, "max_ongoing_requests": 64},
    }
    for t in TIERS:
        opts[f"Tier-{t}"] = {"ray_actor_options": {"num_cpus": 0.1}, "max_ongoing_requests": 16}
        if autoscale:
            opts[f"Tier-{t}"]["autoscaling_config"] = {
                "min_replicas": 1,
                "max_replicas": 3,
                "target_ongoing_requests": 2,
                "upscale_delay_s": 2,
                "downscale_delay_s": 10,
            }
    return {
        "tiers": [
            {
                "name": "cheap",
                "model": "zoo:cheap",
                "engine": "transformers",
                "cost_per_request": 0.05,
                "max_batch_size": max_batch_size,
            },
            {
                "name": "strong",
                "model": "zoo:strong",
                "engine": "transformers",
                "cost_per_request": 0.75,
                "max_batch_size": max_batch_size,
            },
        ],
        "limits": {"max_prompt_chars": 48, "max_prompt_tokens": 48, "max_tokens": 64},
        "deployment_options": opts,
    }


def _pct(xs: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(xs) * 1000, q))


def _chat(model: str, prompt: str) -> dict:
    return {
        "model": model,
        "messages": [{"role": "user", "content": prompt}],
        "max_tokens": SETTINGS.max_tokens,
    }


async def _timed(client: httpx.AsyncClient, base: str, body: dict) -> float:
    t0 = time.perf_counter()
    r = await client.post(f"{base}/v1/chat/completions", json=body, timeout=120)
    r.raise_for_status()
    return time.perf_counter() - t0


async def overhead(base: str, n: int) -> str:
    prompts = [t.prompt for t in sample("test", n, seed=5)]
    engine = _cheap_engine()
    direct = []
    for text in _rendered(engine, prompts):
        t0 = time.perf_counter()
        engine.generate_sync([text], SETTINGS)
        direct.append(time.perf_counter() - t0)
    rows = [
        ["engine direct (cheap)", f"{_pct(direct, 50):.1f}", f"{_pct(direct, 95):.1f}", "-", "-"]
    ]
    async with httpx.AsyncClient() as client:
        for model in ("cheap", "cascade"):
            lat = [await _timed(client, base, _chat(model, p)) for p in prompts]
            over = [a - b for a, b in zip(lat, direct, strict=True)]
            rows.append(
                [
                    f"graph, model={model}",
                    f"{_pct(lat, 50):.1f}",
                    f"{_pct(lat, 95):.1f}",
                    f"{_pct(over, 50):.1f}",
                    f"{_pct(over, 95):.1f}",
                ]
            )
    return table(
        f"Overhead, {n} sequential requests (ms)",
        ["path", "p50", "p95", "overhead p50", "overhead p95"],
        rows,
    )


def _cheap_engine():
    from models.hf_engine import HFEngine
    from models.zoo import resolve

    return HFEngine(resolve("zoo:cheap"))


def _rendered(engine, prompts: list[str]) -> list[str]:
    """Each prompt as the tier renders a one-message chat (`models.prompting`)."""
    return [
        render_prompt(engine.tokenizer, messages=({"role": "user", "content": p},)) for p in prompts
    ]


async def _closed_loop(
    send: Callable[[Any], Awaitable[Any]], items: list[Any], concurrency: int
) -> tuple[float, float]:
    """Requests/s and median latency of `items` sent by `concurrency` closed-loop workers."""
    queue, lat = deque(items), []

    async def worker() -> None:
        while queue:
            item = queue.popleft()
            t0 = time.perf_counter()
            await send(item)
            lat.append(time.perf_counter() - t0)

    t0 = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return len(items) / (time.perf_counter() - t0), statistics.median(lat)


async def throughput(base: str, n: int, concurrency: int = 16) -> tuple[float, float]:
    prompts = [t.prompt for t in sample("test", n, seed=6)]
    async with httpx.AsyncClient() as client:
        await _timed(client, base, _chat("cheap", "1+1"))  # warm
        return await _closed_loop(
            lambda p: _timed(client, base, _chat("cheap", p)), prompts, concurrency
        )


async def tier_throughput(n: int, concurrency: int = 16) -> tuple[float, float]:
    """Requests/s and median latency at the cheap tier's handle, `concurrency` calls in flight:
    the tier replica's batching without the proxy and the ingress in front of it."""
    from ray import serve

    from deployments.llm import TierRequest

    handle = serve.get_deployment_handle("Tier-cheap", app_name="cascade")
    requests = [
        TierRequest(settings=SETTINGS, messages=({"role": "user", "content": t.prompt},))
        for t in sample("test", n, seed=6)
    ]
    await handle.generate.remote(requests[-1])  # warm
    return await _closed_loop(lambda r: handle.generate.remote(r), requests, concurrency)


def engine_batch_gain(n: int, batch: int = 16) -> tuple[float, float]:
    """The cheap engine's prompts/s one at a time and `batch` per call: the most any serving
    layer's batching could win on this model. One torch thread, as in the replicas
    (`deployments.local`: OMP_NUM_THREADS=1)."""
    import torch

    torch.set_num_threads(1)
    engine = _cheap_engine()
    texts = _rendered(engine, [t.prompt for t in sample("test", n, seed=6)])
    engine.generate_sync(texts[:batch], SETTINGS)  # warm
    rates = []
    for size in (1, batch):
        t0 = time.perf_counter()
        for i in range(0, n, size):
            engine.generate_sync(texts[i : i + size], SETTINGS)
        rates.append(n / (time.perf_counter() - t0))
    return rates[0], rates[1]


async def _settle(target: dict[str, int], timeout: float = 120) -> None:
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < timeout and replica_counts(list(TIERS), None) != target:
        await asyncio.sleep(2)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--quick", action="store_true", help="fewer requests, shorter load runs")
    args = p.parse_args(argv)
    n, seconds = (30, 30) if args.quick else (100, 60)
    out: list[str] = []

    with running_app(_args(max_batch_size=16), quiet=True) as (base, _):
        out.append(asyncio.run(overhead(base, n)))
        batched = asyncio.run(throughput(base, 4 * n))
        batched_tier = asyncio.run(tier_throughput(4 * n))
    with running_app(_args(max_batch_size=1), quiet=True) as (base, _):
        single = asyncio.run(throughput(base, 4 * n))
        single_tier = asyncio.run(tier_throughput(4 * n))
    one, many = engine_batch_gain(4 * n)
    out.append(
        table(
            f"Dynamic batching, {4 * n} requests from 16 concurrent clients (tier cheap); "
            f"the engine alone: {one:.0f} prompts/s one at a time, {many:.0f} in batches of 16 "
            f"({many / one:.1f}x)",
            [
                "max_batch_size",
                "graph (HTTP) requests/s",
                "median latency ms",
                "speed-up",
                "tier handle requests/s",
                "speed-up",
            ],
            [
                [
                    "1",
                    f"{single[0]:.1f}",
                    f"{single[1] * 1000:.0f}",
                    "1.00x",
                    f"{single_tier[0]:.1f}",
                    "1.00x",
                ],
                [
                    "16",
                    f"{batched[0]:.1f}",
                    f"{batched[1] * 1000:.0f}",
                    f"{batched[0] / single[0]:.2f}x",
                    f"{batched_tier[0]:.1f}",
                    f"{batched_tier[0] / single_tier[0]:.2f}x",
                ],
            ],
        )
    )

    with running_app(_args(autoscale=True), quiet=True) as (base, _):
        easy = [
            t.prompt for t in sample("test", 200, seed=7, families={"add": 1, "sub": 1, "max": 1})
        ]
        hard = [t.prompt for t in sample("test", 200, seed=7, families={"rev": 1})]
        rows = []
        for label, prompts in (("easy (add/sub/max)", easy), ("hard (rev)", hard)):
            asyncio.run(_settle({"cheap": 1, "strong": 1}))
            r = asyncio.run(
                run_load(base, prompts, list(TIERS), 16, seconds, watch_every_s=3, count_state=None)
            )
            peak = {t: max(c[t] for _, c in r["timeline"]) for t in TIERS}
            timeline = " ".join(f"{int(s)}s:{c['cheap']}/{c['strong']}" for s, c in r["timeline"])
            errors = r["sent"] - r["ok"]
            rows.append([label, r["ok"], errors, peak["cheap"], peak["strong"], timeline])
        out.append(
            table(
                f"Independent scaling, 16 clients x {seconds} s per workload "
                "(replicas cheap/strong over time)",
                ["workload", "requests", "errors", "peak cheap", "peak strong", "timeline"],
                rows,
            )
        )
    print("\n".join(out))


if __name__ == "__main__":
    main()
