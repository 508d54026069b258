"""The cascade graph and its bare reference in one cluster, behind one proxy, measured
interleaved: the harness of `overhead` and `throughput`.

Why interleaved: on a shared 2-core machine the same ratio, measured in runs minutes apart,
swung from 0.2x to 1x; only arms measured round by round, side by side, compare the graph with
the engine and not with the neighbours. Every figure is reported per round, with the spread.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import httpx
import numpy as np

from benchmarks.bare_app import bare_app
from benchmarks.hop_floor import hop_apps
from calibration.config import AppArgs
from deployments.local import running_app
from models.loading import engine_kind

__all__ = ["Arms", "arms_parser", "arms_running", "chat", "percentiles", "report", "spread"]

BARE_PREFIX = "/bare"


@dataclass(frozen=True)
class Arms:
    """Where each arm answers: the graph at `base`; a reference app (`bare`, and the
    model-free `hop0` and `hop1` of `benchmarks.hop_floor`) at its own URL in `refs`."""

    base: str
    refs: dict[str, str]
    engine: str

    def url(self, arm: str) -> str:
        return f"{self.refs.get(arm, self.base)}/v1/chat/completions"


def chat(model: str, prompt: str, max_tokens: int = 10) -> dict:
    return {
        "model": model,
        "messages": [{"role": "user", "content": prompt}],
        "max_tokens": max_tokens,
    }


def _wait_answering(arms: Arms, prompt: str, wait_s: float) -> None:
    """/healthz is liveness only: wait until every arm answers a real request."""
    deadline = time.time() + wait_s
    arms_models = [(arm, arm) for arm in arms.refs] + [("graph", "cascade"), ("graph", "strong")]
    for arm, model in arms_models:
        while True:
            try:
                r = httpx.post(arms.url(arm), json=chat(model, prompt), timeout=60)
                if r.status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.time() > deadline:
                raise TimeoutError(f"arm {arm} ({model}) did not answer within {wait_s:g} s")
            time.sleep(1)


@contextmanager
def arms_running(
    engine: str = "auto", wait_s: float = 600, speculate: bool = False, autoscale: bool = True
) -> Iterator[Arms]:
    """serve_config.yaml's graph (its deployments, autoscaling included unless `autoscale` is
    False: then each deployment stays at its `min_replicas`) with every tier on `engine` (and
    `router.speculate` as given), the bare app on the cheap tier's model and engine settings,
    and the two model-free apps that price one Serve hop, side by side."""
    args = AppArgs.from_serve_config()
    kind = engine_kind(engine)
    tiers = [t.model_copy(update={"engine": kind}) for t in args.tiers]
    router = args.router.model_copy(update={"speculate": speculate})
    update = {"tiers": tiers, "router": router}
    if not autoscale:
        update["deployment_options"] = _at_min_replicas(args.deployment_options)
    args = args.model_copy(update=update)
    cheap = tiers[0]
    bare = bare_app(cheap.model, kind, cheap.engine_kwargs, args.limits.top_logprobs)
    extra = {"bare": (bare, BARE_PREFIX), **hop_apps()}
    with running_app(args, quiet=True, wait_s=wait_s, extra_apps=extra) as (base, _):
        refs = {name: f"{base}{prefix}" for name, (_, prefix) in extra.items()}
        arms = Arms(base=base, refs=refs, engine=kind)
        _wait_answering(arms, "12+7", wait_s)
        yield arms


def _at_min_replicas(options: dict[str, dict]) -> dict[str, dict]:
    """Each autoscaling deployment fixed at its `min_replicas` (the bare app has one replica
    throughout: on 2 saturated cores a new replica adds no capacity, and its start-up's CPU
    would land in whichever arm runs next)."""
    out = {}
    for name, opts in options.items():
        opts = dict(opts)
        scaling = opts.pop("autoscaling_config", None)
        if scaling is not None:
            opts["num_replicas"] = int(scaling.get("min_replicas", 1))
        out[name] = opts
    return out


def percentiles(latencies_s: list[float]) -> dict[str, float | int]:
    """p50 / p95 in ms and the count."""
    if not latencies_s:
        return {"p50_ms": float("nan"), "p95_ms": float("nan"), "n": 0}
    ms = np.asarray(latencies_s) * 1000
    return {
        "p50_ms": round(float(np.percentile(ms, 50)), 2),
        "p95_ms": round(float(np.percentile(ms, 95)), 2),
        "n": len(latencies_s),
    }


def spread(values: list[float]) -> str:
    """'median (min..max)' over rounds: the range a noisy machine allows reading."""
    if not values:
        return "n/a"
    return f"{statistics.median(values):.2f} ({min(values):.2f}..{max(values):.2f})"


def arms_parser(prog: str, doc: str, quick: str) -> argparse.ArgumentParser:
    """The options every side-by-side benchmark takes; each adds its own sizes."""
    p = argparse.ArgumentParser(prog=prog, description=doc.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--engine", default="auto", help="every tier's and the bare app's engine")
    p.add_argument("--quick", action="store_true", help=quick)
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument(
        "--speculate", action="store_true", help="router.speculate on (off as served by default)"
    )
    return p


def report(
    a: argparse.Namespace, measure: Callable[[Arms], dict], show: Callable[[dict], None]
) -> dict:
    """Start the arms as `a` says, measure, print one JSON object (`--json`) or the table."""
    autoscale = getattr(a, "autoscale", True)
    with arms_running(a.engine, speculate=a.speculate, autoscale=autoscale) as arms:
        result = {"speculate": a.speculate, "autoscale": autoscale, **measure(arms)}
    if a.json:
        print(json.dumps(result))
    else:
        show(result)
    return result
