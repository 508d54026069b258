"""Requests per second of the cascade graph against the bare reference, in the same run:

    python -m benchmarks throughput [--rounds 3] [--seconds 8] [--engine auto] [--quick]
                                    [--autoscale] [--json]

Closed-loop clients (each sends its next request when the last is answered) at 1 and at 16
concurrent clients, every deployment of the graph at its `min_replicas` (one, as the bare app)
unless `--autoscale`; per round every arm runs once at each concurrency, the arms' order rotated
round by round. Arms: `bare` (the cheap model in a one-deployment app), `graph` (model=cascade,
the served policy), `forced` (model=cheap through the graph), and the model-free `hop0` / `hop1`
(`benchmarks.hop_floor`: what one Serve hop costs when nothing else does). `--json` prints each
arm's `rps_1` and `rps_16` (medians over rounds), per round each arm's ratio to `bare`, and
`cpu_ms_per_request_16`: at 16 clients, the CPU milliseconds one answered request cost each
process role (`benchmarks.cpu_meter`: proxy, ingress, router, each tier and its engine, the
bare app, Ray's own processes, the clients), medians over rounds, with `cores_busy` and the
live replicas per role at the end of each window (`replicas_16`: a tier the graph's window
scaled up is still up, or still starting, in the next arm's). On a
machine the arms saturate, rps is about the cores over that total, so the split says what a
ratio to `bare` is made of.
"""

from __future__ import annotations

import asyncio
import statistics
import time

import httpx

from benchmarks.cpu_meter import CpuMeter
from benchmarks.side_by_side import Arms, arms_parser, chat, report, spread
from benchmarks.tables import table
from models.tasks import sample

__all__ = ["cli", "main", "rps_at"]

SENT = {"bare": "bare", "graph": "cascade", "forced": "cheap", "hop0": "hop0", "hop1": "hop1"}
CLIENTS = (1, 16)
GRAPH_ROLES = ("router", "tier-cheap", "tier-mid", "tier-strong")


async def rps_at(url: str, model: str, prompts: list[str], clients: int, seconds: float) -> float:
    """Answered requests per second at `url` over `seconds` from `clients` closed-loop clients
    (every status but 200 is an error); shared with `benchmarks cluster`."""
    done, elapsed = await answered_at(url, model, prompts, clients, seconds)
    return done / elapsed


async def answered_at(
    url: str, model: str, prompts: list[str], clients: int, seconds: float
) -> tuple[int, float]:
    """(answered requests, seconds they took) from `clients` closed-loop clients."""
    done = 0
    stop = time.perf_counter() + seconds

    async def client(c: httpx.AsyncClient, k: int) -> None:
        nonlocal done
        i = k
        while time.perf_counter() < stop:
            r = await c.post(url, json=chat(model, prompts[i % len(prompts)]))
            r.raise_for_status()
            done += 1
            i += clients

    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(timeout=120, limits=limits) as c:
        t0 = time.perf_counter()
        await asyncio.gather(*(client(c, k) for k in range(clients)))
        return done, time.perf_counter() - t0


def measure(arms: Arms, rounds: int, seconds: float) -> dict:
    prompts = [t.prompt for t in sample("test", 200, seed=22)]
    per_round = []
    order = list(SENT)
    meter = CpuMeter()
    for k in range(rounds):
        row: dict = {"round": k, "cpu_ms_per_request_16": {}}
        for clients in CLIENTS:
            for arm in order[k % len(order) :] + order[: k % len(order)]:
                before = meter.snapshot()
                done, elapsed = asyncio.run(
                    answered_at(arms.url(arm), SENT[arm], prompts, clients, seconds)
                )
                row.setdefault(arm, {})[f"rps_{clients}"] = round(done / elapsed, 2)
                if clients == CLIENTS[-1]:
                    after = meter.snapshot()
                    spent = meter.since(before, after)
                    row["cpu_ms_per_request_16"][arm] = _per_request(spent, done)
                    row[arm]["cores_busy_16"] = round(sum(spent.values()) / elapsed, 2)
                    row[arm]["replicas_16"] = meter.replicas(after)
        row["vs_bare"] = {
            arm: {
                f"rps_{c}": round(row[arm][f"rps_{c}"] / row["bare"][f"rps_{c}"], 3)
                for c in CLIENTS
            }
            for arm in SENT
            if arm != "bare"
        }
        per_round.append(row)
    out: dict = {"engine": arms.engine, "rounds": rounds, "seconds": seconds}
    for arm in SENT:
        out[arm] = {
            f"rps_{c}": round(statistics.median(r[arm][f"rps_{c}"] for r in per_round), 2)
            for c in CLIENTS
        }
    out["cpu_ms_per_request_16"] = {
        arm: _median_split([r["cpu_ms_per_request_16"][arm] for r in per_round]) for arm in SENT
    }
    out["per_round"] = per_round
    return out


def _per_request(spent: dict[str, float], done: int) -> dict[str, float]:
    """CPU ms per answered request, by role, and their `total` (roles under 0.05 ms dropped)."""
    ms = {role: 1000 * sec / max(done, 1) for role, sec in spent.items()}
    out = {role: round(v, 2) for role, v in sorted(ms.items()) if v >= 0.05}
    out["total"] = round(sum(ms.values()), 2)
    return out


def _median_split(rows: list[dict[str, float]]) -> dict[str, float]:
    """Per role, the median over rounds (a role absent in a round counts 0 there)."""
    roles = sorted({r for row in rows for r in row})
    return {r: round(statistics.median(row.get(r, 0.0) for row in rows), 2) for r in roles}


def _print(result: dict) -> None:
    rows = []
    for arm in SENT:
        ratios = [
            [r["vs_bare"][arm][f"rps_{c}"] for r in result["per_round"]] if arm != "bare" else []
            for c in CLIENTS
        ]
        rows.append(
            [
                arm,
                result[arm]["rps_1"],
                result[arm]["rps_16"],
                *(spread(x) if x else "1" for x in ratios),
            ]
        )
    title = (
        f"throughput: engine {result['engine']}, {result['rounds']} interleaved rounds of "
        f"{result['seconds']:g} s per arm and concurrency"
    )
    header = [
        "arm",
        "rps, 1 client",
        "rps, 16 clients",
        "vs bare, 1",
        "vs bare, 16 (median, range)",
    ]
    print(table(title, header, rows))
    split = result["cpu_ms_per_request_16"]
    roles = sorted({r for row in split.values() for r in row} - {"total"})
    print(
        table(
            "CPU ms per answered request at 16 clients, by process role (median over rounds)",
            ["arm", "total", *roles],
            [[arm, split[arm]["total"], *(split[arm].get(r, 0.0) for r in roles)] for arm in split],
        )
    )
    for r in result["per_round"]:  # the graph's own deployments: what autoscaling did
        live = "; ".join(
            f"{arm} "
            + " ".join(f"{k} {v}" for k, v in r[arm]["replicas_16"].items() if k in GRAPH_ROLES)
            for arm in SENT
        )
        print(f"round {r['round']}, graph replicas after each 16-client window: {live}")


def main(argv: list[str] | None = None) -> dict:
    p = arms_parser("python -m benchmarks throughput", __doc__, "2 rounds of 4 s")
    p.add_argument("--seconds", type=float, default=8.0, help="per arm and concurrency")
    p.add_argument(
        "--autoscale",
        action="store_true",
        help="keep serve_config.yaml's autoscaling (default: every deployment at its "
        "min_replicas, like the one-replica bare app; a replica started by one arm's load "
        "would spend its start-up CPU in the next arms' windows)",
    )
    a = p.parse_args(argv)
    rounds, seconds = (2, 4.0) if a.quick else (a.rounds, a.seconds)
    return report(a, lambda arms: measure(arms, rounds, seconds), _print)


def cli(argv: list[str]) -> None:
    main(argv)
