"""Soak: a long mixed load on the real graph while replicas are killed, on loopback only.

    python -m benchmarks.bench_soak --minutes 30 --clients 16 --kill-every 300 [--json [PATH]]
    python -m benchmarks soak ...                       (the same)

Starts the graph of serve_config.yaml (vLLM tiers, the router, per-tier autoscaling) on a local
Ray instance; `--clients` async clients send the mix of `soak_workload` (cascade chat and text
completions, streams, streams cut midway and requests abandoned on purpose, forced tiers, bad
input) until the deadline. Every `--kill-every` seconds one replica is killed for good
(`ray.kill`), rotating over the tiers and the router, and Serve must replace it. Memory (RSS of
each replica's process and its children, e.g. vLLM's EngineCore) is sampled throughout.

Reports requests by kind, responses by status, errors, lost requests (which of them overlap a
kill), p50 / p99 latency per kind, each kill and how long its replacement took, RSS per replica
at its first and last sample and the growth, and processes killed replicas left behind. Nothing
is retried by the clients: what the server lets through is what the report shows. Bounded by
time (`--minutes`, the per-request timeout, `--replace-timeout`) and count (`--max-requests`).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import random
import sys
import time
from pathlib import Path

import httpx

from benchmarks import replicas
from benchmarks.soak_report import render, summarize
from benchmarks.soak_workload import Outcome, Workload
from calibration.config import ROUTER, AppArgs, tier_deployment_name
from deployments.local import REPO, running_app
from models.tasks import sample

__all__ = ["Soak", "cli", "main"]


class Soak:
    """One soak run against a running graph: clients, the killer and the memory sampler."""

    def __init__(self, base: str, app: AppArgs, a: argparse.Namespace) -> None:
        self.base, self.a = base, a
        prompts = [t.prompt for t in sample("test", 500, seed=11)]
        self.workload = Workload(app.tier_names, prompts, app.limits, a.timeout)
        self.targets = a.targets or [tier_deployment_name(t) for t in app.tier_names] + (
            [ROUTER] if app.router.enabled else []
        )
        self.outcomes: list[Outcome] = []
        self.kills: list[dict] = []
        self.memory: dict[str, dict] = {}  # RUNNING actors: first / last / peak memory
        self.seen: dict[str, dict] = {}  # every actor in any state: when first / last seen
        self.done = asyncio.Event()  # the clients and the kill watchers have finished
        self.sent = 0
        self.t0 = self.stop = 0.0

    async def run(self) -> dict:
        self.t0 = time.perf_counter()
        self.stop = self.t0 + self.a.minutes * 60
        await self._sample()
        sampler = asyncio.create_task(self._sampler())
        limits = httpx.Limits(max_connections=self.a.clients + 4)
        async with httpx.AsyncClient(limits=limits) as c:
            clients = [self._client(c, k) for k in range(self.a.clients)]
            watchers = (await asyncio.gather(self._chaos(), *clients))[0]
            await asyncio.gather(*watchers)  # replacements still being waited for
        self.done.set()
        await sampler
        await asyncio.sleep(2)  # let replicas finish the last requests' bookkeeping
        await self._sample()
        wall = time.perf_counter() - self.t0
        return summarize(
            self.outcomes, self.kills, self.memory, self.seen, self.t0, wall, vars(self.a)
        )

    async def _client(self, c: httpx.AsyncClient, k: int) -> None:
        rng = random.Random(self.a.seed * 1000 + k)
        while time.perf_counter() < self.stop and self.sent < self.a.max_requests:
            self.sent += 1
            kind = self.workload.pick(rng)
            self.outcomes.append(await self.workload.send(c, self.base, kind, rng))

    async def _sampler(self) -> None:
        """Every `sample_every` s until the last request and kill watcher are done."""
        while not self.done.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.done.wait(), timeout=self.a.sample_every)
            await self._sample()

    def _observe(self, actors: list[replicas.ServeActor]) -> None:
        now, first = time.perf_counter() - self.t0, not self.seen
        for x in actors:
            rec = self.seen.setdefault(
                x.name, {"deployment": x.deployment, "at_start": first, "first_s": now}
            )
            rec["last_s"] = now
            if x.running:
                rec.setdefault("running_s", now)

    async def _sample(self) -> None:
        """RSS of every Serve actor now; the first and last sample of each are kept."""
        actors = await asyncio.to_thread(replicas.serve_actors)
        self._observe(actors)
        now = time.perf_counter()
        for actor in actors:
            if not actor.running:  # a starting replica's memory is its start, not a leak
                continue
            mem = await asyncio.to_thread(replicas.memory, actor.pid, now)
            if mem is None:
                continue
            rec = self.memory.setdefault(
                actor.name,
                {"actor": actor, "first": mem, "peak": mem.total_mib, "killed_at": None},
            )
            rec["last"], rec["peak"] = mem, max(rec["peak"], mem.total_mib)

    async def _chaos(self) -> list[asyncio.Task]:
        """Kill one replica every `kill_every` s (never at the very end), rotating over the
        targets; each kill gets a task that waits for its replacement."""
        rng, watchers = random.Random(self.a.seed), []
        k = 1
        while self.a.kill_every > 0 and self.t0 + k * self.a.kill_every < self.stop:
            await asyncio.sleep(max(0.0, self.t0 + k * self.a.kill_every - time.perf_counter()))
            deployment = self.targets[(k - 1) % len(self.targets)]
            k += 1
            event = await self._kill_one(deployment, rng)
            if event is not None:
                watchers.append(asyncio.create_task(self._replaced(event)))
        return watchers

    async def _kill_one(self, deployment: str, rng: random.Random) -> dict | None:
        actors = await asyncio.to_thread(replicas.serve_actors)
        mine = [x for x in actors if x.deployment == deployment and x.running]
        now = time.perf_counter() - self.t0
        if not mine:
            self.kills.append({"t": now, "deployment": deployment, "skipped": "none running"})
            return None
        await self._sample()  # the victim's last memory sample, just before it dies
        victim = rng.choice(mine)
        t_kill = time.perf_counter()
        await asyncio.to_thread(replicas.kill, victim)
        if victim.name in self.memory:
            self.memory[victim.name]["killed_at"] = t_kill - self.t0
        event = {
            "t": t_kill - self.t0,
            "deployment": deployment,
            "replica": victim.short,
            "name": victim.name,
            "running_names": [x.name for x in mine],
            "running_before": len(mine),
            "replaced_after_s": None,
            "new_replica": None,
        }
        self.kills.append(event)
        return event

    async def _replaced(self, event: dict) -> None:
        """Wait (bounded) until as many replicas of the deployment are RUNNING (engine
        started) as before the kill, one of them not running then; record how long it took."""
        dep, t_kill = event["deployment"], self.t0 + event["t"]
        while time.perf_counter() < t_kill + self.a.replace_timeout:
            await asyncio.sleep(1.0)
            actors = await asyncio.to_thread(replicas.serve_actors)
            self._observe(actors)
            mine = [x for x in actors if x.deployment == dep and x.running]
            new = [x for x in mine if x.name not in event["running_names"]]
            if new and len(mine) >= event["running_before"]:
                event["replaced_after_s"] = time.perf_counter() - t_kill
                event["new_replica"] = new[0].short
                return


def warm(base: str, tiers: list[str]) -> None:
    """One request per tier, so replicas are up and first-call costs are paid before t=0."""
    for t in tiers:
        body = {"model": t, "messages": [{"role": "user", "content": "1+1"}], "max_tokens": 4}
        httpx.post(f"{base}/v1/chat/completions", json=body, timeout=120).raise_for_status()


def after_run(base: str) -> dict:
    """Does the graph still serve after the soak? /readyz and one cascade request."""
    ready = httpx.get(f"{base}/readyz", timeout=30)
    body = {"model": "cascade", "messages": [{"role": "user", "content": "2+2"}]}
    answer = httpx.post(f"{base}/v1/chat/completions", json=body, timeout=120)
    return {"readyz": ready.status_code, "ready": ready.json(), "cascade": answer.status_code}


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--minutes", type=float, default=30.0)
    p.add_argument("--clients", type=int, default=16)
    p.add_argument("--kill-every", type=float, default=300.0, help="s between kills; 0: none")
    p.add_argument("--targets", nargs="*", default=None, help="deployments to kill in turn")
    p.add_argument("--config", type=Path, default=REPO / "serve_config.yaml")
    p.add_argument("--timeout", type=float, default=120.0, help="per request, s")
    p.add_argument("--replace-timeout", type=float, default=240.0, help="s to wait per kill")
    p.add_argument("--max-requests", type=int, default=1_000_000)
    p.add_argument("--sample-every", type=float, default=15.0, help="memory, s")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", nargs="?", const="-", default=None, help="JSON to PATH (- stdout)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> dict:
    a = parse(argv)
    app = AppArgs.from_serve_config(a.config)
    with running_app(app, wait_s=400, quiet=True) as (base, _):
        warm(base, app.tier_names)
        report = asyncio.run(Soak(base, app, a).run())
        report["after"] = after_run(base)
    print(render(report), flush=True)
    if a.json == "-":
        print(json.dumps(report, indent=2))
    elif a.json:
        Path(a.json).write_text(json.dumps(report, indent=2) + "\n")
        print(f"JSON report: {a.json}")
    return report


def cli(argv: list[str]) -> None:
    main(argv)


if __name__ == "__main__":
    cli(sys.argv[1:])
