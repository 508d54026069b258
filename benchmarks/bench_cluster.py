"""Past one machine: a two-node Ray cluster on this machine, the graph deployed with `serve
deploy`, tier replicas placed on both nodes, and throughput as replicas are added.

    python -m benchmarks cluster [--rounds 2] [--seconds 8] [--clients 8] [--engine transformers]
                                 [--json]

What it does, as an operator would on a real cluster:
1. `ray start --head --node-ip-address=127.0.0.1` (1 CPU, the dashboard on loopback for
   `serve deploy`), then a second node `ray start --address=... --node-ip-address=127.0.0.1`
   with its own CPU and a custom resource naming it;
2. writes serve_config.yaml's application with the cheap tier at N fixed replicas (autoscaling
   off, so the replica count is the variable) and `serve deploy`s it to the head's dashboard;
3. reads where each Tier-cheap replica runs (Ray's state API: actor -> node);
4. sends closed-loop `model=cheap` traffic from `--clients` clients for `--seconds`;
then redeploys with the other replica count, round by round (1, 2, 1, 2, ...), so the
replica counts are interleaved in one run and compared side by side; `ray stop` at the end.

Each node advertises one `cheap_slot` (a custom resource) and a cheap replica asks for one, so
a second replica can only go to the second node, as an operator pins a tier to the nodes meant
for it (GPU nodes, say): the placement read back shows the cluster is used, not assumed. On a
2-core machine the two "nodes" share the cores, so the throughput gain is bounded by what one
more core gives; on a real cluster each node brings its own. Traffic only to 127.0.0.1; every
loop bounded.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

import httpx
import yaml

from benchmarks.bench_throughput import rps_at
from benchmarks.tables import table
from deployments.local import RAY_ENV, WORKER_ENV, free_port
from models.tasks import sample

__all__ = ["cli", "main"]

ROOT = Path(__file__).resolve().parent.parent
CHEAP_CPUS = 0.3


def _ray(*args: str, env: dict[str, str]) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "ray.scripts.scripts", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )
    if out.returncode != 0:
        raise RuntimeError(f"ray {' '.join(args)} failed:\n{out.stdout}\n{out.stderr}")


@contextmanager
def two_node_cluster():
    """Yield (gcs address, dashboard URL, env) of a head and a worker node on 127.0.0.1."""
    env = {**os.environ, **RAY_ENV, **WORKER_ENV, "PYTHONPATH": str(ROOT)}
    port, dash = free_port(), free_port()
    common = ["--node-ip-address=127.0.0.1", "--num-cpus=1", "--disable-usage-stats"]
    _ray(
        "start",
        "--head",
        f"--port={port}",
        "--include-dashboard=true",
        "--dashboard-host=127.0.0.1",
        f"--dashboard-port={dash}",
        '--resources={"node_head": 1, "cheap_slot": 1}',
        *common,
        env=env,
    )
    try:
        _ray(
            "start",
            f"--address=127.0.0.1:{port}",
            '--resources={"node_second": 1, "cheap_slot": 1}',
            *common,
            env=env,
        )
        yield f"127.0.0.1:{port}", f"http://127.0.0.1:{dash}", env
    finally:
        subprocess.run(
            [sys.executable, "-m", "ray.scripts.scripts", "stop", "--force"],
            env=env,
            capture_output=True,
            timeout=120,
        )


def cluster_config(replicas: int, engine: str, http_port: int) -> dict:
    """serve_config.yaml with the cheap tier at `replicas` fixed replicas, one per node."""
    cfg = yaml.safe_load((ROOT / "serve_config.yaml").read_text())
    cfg["http_options"] = {"host": "127.0.0.1", "port": http_port}
    app = cfg["applications"][0]
    for tier in app["args"]["tiers"]:
        tier["engine"] = engine
    for dep in app["deployments"]:
        if dep["name"] == "Tier-cheap":
            dep.pop("autoscaling_config", None)
            dep["num_replicas"] = replicas
            dep["ray_actor_options"] = {"num_cpus": CHEAP_CPUS, "resources": {"cheap_slot": 1}}
    return cfg


def deploy(cfg: dict, dashboard: str, env: dict[str, str], base: str, wait_s: float) -> None:
    """`serve deploy` the config, then wait until model=cheap answers from every replica."""
    with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as f:
        yaml.safe_dump(cfg, f, sort_keys=False)
    out = subprocess.run(
        [sys.executable, "-m", "ray.serve.scripts", "deploy", f.name, "--address", dashboard],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    if out.returncode != 0:
        raise RuntimeError(f"serve deploy failed:\n{out.stdout}\n{out.stderr}")
    want = next(d for d in cfg["applications"][0]["deployments"] if d["name"] == "Tier-cheap")
    deadline = time.time() + wait_s
    while time.time() < deadline:
        if len(_cheap_replicas()) == want["num_replicas"] and _answers(base):
            return
        time.sleep(2)
    raise TimeoutError(f"the graph did not run {want['num_replicas']} cheap replicas in {wait_s}s")


def _answers(base: str) -> bool:
    body = {"model": "cheap", "messages": [{"role": "user", "content": "12+7"}], "max_tokens": 4}
    try:
        return httpx.post(f"{base}/v1/chat/completions", json=body, timeout=30).status_code == 200
    except httpx.HTTPError:
        return False


def _cheap_replicas() -> list[dict]:
    """Alive Tier-cheap replica actors with their node, from Ray's state API."""
    from ray.util.state import list_actors

    actors = list_actors(
        filters=[("state", "=", "ALIVE")], limit=1000, raise_on_missing_output=False
    )
    return [
        {"actor": a.actor_id, "node": a.node_id}
        for a in actors
        if "Tier-cheap" in (a.class_name or "")
    ]


def _node_names() -> dict[str, str]:
    import ray

    return {
        n["NodeID"]: ("head" if "node_head" in n["Resources"] else "second")
        for n in ray.nodes()
        if n["Alive"]
    }


def measure(rounds: int, seconds: float, clients: int, engine: str, wait_s: float) -> dict:
    import ray

    prompts = [t.prompt for t in sample("test", 200, seed=23)]
    per_round = []
    with two_node_cluster() as (address, dashboard, env):
        ray.init(address=address, logging_level="ERROR", log_to_driver=False)
        try:
            port = free_port()
            base = f"http://127.0.0.1:{port}"
            nodes = _node_names()
            for k in range(rounds):
                for replicas in (1, 2) if k % 2 == 0 else (2, 1):
                    deploy(cluster_config(replicas, engine, port), dashboard, env, base, wait_s)
                    placed = sorted(nodes.get(r["node"], "?") for r in _cheap_replicas())
                    rps = asyncio.run(
                        rps_at(f"{base}/v1/chat/completions", "cheap", prompts, clients, seconds)
                    )
                    per_round.append(
                        {"round": k, "replicas": replicas, "nodes": placed, "rps": round(rps, 2)}
                    )
                    print(json.dumps(per_round[-1]), file=sys.stderr, flush=True)
        finally:
            ray.shutdown()
    return _summary(per_round, clients, seconds, len(nodes))


def _summary(per_round: list[dict], clients: int, seconds: float, n_nodes: int) -> dict:
    by = {r: [x["rps"] for x in per_round if x["replicas"] == r] for r in (1, 2)}
    ratios = [
        b["rps"] / a["rps"]
        for a, b in zip(
            [x for x in per_round if x["replicas"] == 1],
            [x for x in per_round if x["replicas"] == 2],
            strict=True,
        )
        if a["rps"] > 0
    ]
    two = [x["nodes"] for x in per_round if x["replicas"] == 2]
    return {
        "nodes": n_nodes,
        "clients": clients,
        "seconds": seconds,
        "rps": {str(r): statistics.median(v) for r, v in by.items() if v},
        "two_replicas_vs_one": {"median": statistics.median(ratios), "per_round": ratios},
        "placement_two_replicas": two,
        "both_nodes_used": all(set(p) == {"head", "second"} for p in two),
        "per_round": per_round,
    }


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(prog="python -m benchmarks cluster", description=__doc__)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--seconds", type=float, default=8.0)
    p.add_argument("--clients", type=int, default=8)
    p.add_argument("--engine", default="transformers", choices=["transformers", "vllm", "auto"])
    p.add_argument("--wait-s", type=float, default=300.0)
    p.add_argument("--json", action="store_true")
    a = p.parse_args(argv)
    result = measure(a.rounds, a.seconds, a.clients, a.engine, a.wait_s)
    if a.json:
        print(json.dumps(result))
    else:
        rows = [
            [x["round"], x["replicas"], ",".join(x["nodes"]), f"{x['rps']:.1f}"]
            for x in result["per_round"]
        ]
        print(
            table(
                "model=cheap throughput on a two-node cluster",
                ["round", "cheap replicas", "on nodes", "req/s"],
                rows,
            )
        )
        gain = result["two_replicas_vs_one"]
        per = ", ".join(f"{r:.2f}" for r in gain["per_round"])
        print(
            f"2 replicas vs 1: median {gain['median']:.2f}x (per round {per}); "
            f"both nodes used: {result['both_nodes_used']}"
        )
    return result


cli = main
