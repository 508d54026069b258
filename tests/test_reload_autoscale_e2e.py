"""Hot reload and independent autoscaling, through the real graph deployed as `serve deploy`
deploys it.

`serve deploy` PUTs the config to the dashboard, whose handler calls the Serve controller
client's `deploy_apps(ServeDeploySchema)`; that same call is made here (Ray's dashboard stays
off), with serve_config.yaml's application on the transformers engine (faster to start on 2
cores) and autoscaling delays of seconds. A declarative deploy is what makes a user_config
change light: the code version is the import path and runtime_env, so Serve only calls
`reconfigure` (`serve.run` of a rebuilt app would restart every replica).

(a) a new Ingress user_config threshold changes routing decisions on fixed prompts with every
replica id unchanged; a bad one is refused, clearly, and the old one keeps serving.
(b) under load on the cheap tier it scales up and back down while strong stays at one replica;
under load on the strong tier the other way round.

Slow: Ray, the router, two engines and four replica starts.
"""

from __future__ import annotations

import asyncio
import copy
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import httpx
import pytest
import yaml

from calibration.config import SERVE_CONFIG
from deployments.local import free_port, ray_env
from models.tasks import sample

pytestmark = pytest.mark.slow

APP = "cascade"
TIERS = ("cheap", "strong")
AUTOSCALING = {
    "min_replicas": 1,
    "max_replicas": 2,
    "target_ongoing_requests": 1,
    "metrics_interval_s": 0.5,
    "look_back_period_s": 2,
    "upscale_delay_s": 1,
    "downscale_delay_s": 4,
}
MAX_REQUESTS = 1500  # per load phase, on top of its deadline


def _application(user_config: dict) -> dict:
    """serve_config.yaml's application: transformers tiers, fast autoscaling, `user_config`
    on the Ingress."""
    doc = yaml.safe_load(SERVE_CONFIG.read_text())
    app = copy.deepcopy(next(a for a in doc["applications"] if a["name"] == APP))
    for tier in app["args"]["tiers"]:
        tier["engine"] = "transformers"
    for d in app["deployments"]:
        if d["name"] == "Ingress":
            d["user_config"] = user_config
        elif d["name"] == "Router":
            d.pop("autoscaling_config", None)
            d["num_replicas"] = 1
        else:
            d["autoscaling_config"] = dict(AUTOSCALING)
    return app


@contextmanager
def _serve() -> Iterator[tuple[str, Callable[[dict], None]]]:
    """A local Ray with Serve on a free port (as deployments.local.running_app starts it), and
    `deploy(user_config)`: the application deployed declaratively with that user_config."""
    import ray
    from ray import serve
    from ray.serve.context import _get_global_client
    from ray.serve.schema import ServeDeploySchema

    ray_env()
    port = free_port()
    ray.init(
        address="local",
        num_cpus=2,
        include_dashboard=False,
        runtime_env={"env_vars": {"OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}},
        logging_level="WARNING",
    )
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": port})

        def deploy(user_config: dict) -> None:
            schema = ServeDeploySchema(applications=[_application(user_config)])
            _get_global_client().deploy_apps(schema)

        yield f"http://127.0.0.1:{port}", deploy
    finally:
        serve.shutdown()
        ray.shutdown()


def _wait(check: Callable[[], object], timeout_s: float, what: str, every_s: float = 0.5):
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        if out := check():
            return out
        time.sleep(every_s)
    raise AssertionError(f"{what}: not within {timeout_s} s")


def _ready(base: str) -> bool:
    try:
        return httpx.get(f"{base}/readyz", timeout=20).status_code == 200
    except httpx.HTTPError:
        return False


BASE_CONFIG = {"calibration": {"threshold": None}, "router": {"threshold": 0.7}}


@pytest.fixture(scope="module")
def graph(zoo):
    with _serve() as (base, deploy):
        deploy(BASE_CONFIG)
        _wait(lambda: _ready(base), 400, "the graph ready")
        yield base, deploy


def replica_ids() -> dict[str, list[str]]:
    """Deployment -> ids of its live replicas, from the GCS actor table (ray.util.state needs
    the dashboard)."""
    import ray._private.state as ray_state

    out: dict[str, list[str]] = {}
    prefix = f"ServeReplica:{APP}:"
    for a in ray_state.actors().values():
        if a["ActorClassName"].startswith(prefix) and a["State"] == "ALIVE":
            name = a["ActorClassName"][len(prefix) :]
            out.setdefault(name, []).append(a["Name"].rsplit("#", 1)[-1])
    return {k: sorted(v) for k, v in sorted(out.items())}


def replica_count(tier: str, state: str | None = None) -> int:
    """Replicas of the tier in `state` (None: any, starting and stopping ones included)."""
    from ray import serve

    states = serve.status().applications[APP].deployments[f"Tier-{tier}"].replica_states
    return sum(states.values()) if state is None else states.get(state, 0)


def _routes(base: str, prompts: list[str]) -> list[dict]:
    out = []
    with httpx.Client(timeout=120) as c:
        for p in prompts:
            r = c.post(
                f"{base}/v1/chat/completions",
                json={"model": "cascade", "messages": [{"role": "user", "content": p}]},
            )
            assert r.status_code == 200, r.text
            out.append(r.json()["routing"])
    return out


def _stats(base: str) -> dict:
    return httpx.get(f"{base}/stats", timeout=30).json()


def _cheap_threshold(base: str) -> float:
    return _stats(base)["calibration"]["tiers"]["cheap"]["threshold"]


def _deploy_and_wait(base: str, deploy, user_config: dict, applied: Callable[[dict], bool]):
    deploy(user_config)
    _wait(lambda: applied(_stats(base)), 90, f"user_config {user_config} applied")


# --- (a) hot reload ------------------------------------------------------------------------


def test_a_new_threshold_changes_routes_without_restarting_any_replica(graph):
    base, deploy = graph
    prompts = [t.prompt for t in sample("test", 10, seed=41)]
    before_ids = replica_ids()
    assert set(before_ids) == {"Ingress", "Router", "Tier-cheap", "Tier-strong"}
    at_cheap = [r["tiers_visited"][0] == "cheap" for r in _routes(base, prompts)]
    assert sum(at_cheap) >= 3, "too few prompts start at the cheap tier to see a threshold"
    served = _cheap_threshold(base)
    try:
        for threshold, expect in ((1e6, ["cheap"]), (-1e6, ["cheap", "strong"])):
            _deploy_and_wait(
                base,
                deploy,
                {**BASE_CONFIG, "calibration": {"threshold": threshold}},
                lambda s, t=threshold: s["calibration"]["tiers"]["cheap"]["threshold"] == t,
            )
            for start_cheap, r in zip(at_cheap, _routes(base, prompts), strict=True):
                if start_cheap:  # the router's own start is not the threshold's business
                    assert r["tiers_visited"] == expect, (threshold, r)
                    assert r["attempts"][0]["threshold"] == threshold
            assert replica_ids() == before_ids, "a user_config change restarted a replica"
    finally:
        _deploy_and_wait(
            base,
            deploy,
            BASE_CONFIG,
            lambda s: s["calibration"]["tiers"]["cheap"]["threshold"] == served,
        )
    assert replica_ids() == before_ids


@pytest.mark.parametrize(
    "bad, message",
    [
        ({"calibration": {"threshold": 0.5}, "bogus": 1}, "user_config key 'bogus' is not"),
        ({"router": {"threshold": 7}}, "less than or equal to 1"),
    ],
    ids=["unknown-key", "router-threshold-7"],
)
def test_a_bad_user_config_is_refused_and_the_old_one_keeps_serving(graph, bad, message):
    """Serve stops a replica whose reconfigure raises (Ray 2.60), so the Ingress refuses a bad
    user_config instead: logged, shown in /stats, the running config untouched."""
    from ray import serve

    base, deploy = graph
    prompts = [t.prompt for t in sample("test", 6, seed=43)]
    before_ids, before = replica_ids(), _routes(base, prompts)
    stats = _stats(base)
    deploy(bad)
    refused = _wait(
        lambda: _stats(base)["config_refused"], 90, "the bad user_config reaching the Ingress"
    )
    try:
        assert message in refused["error"], refused
        assert refused["user_config"] == bad
        after = _stats(base)
        assert after["calibration"] == stats["calibration"]
        assert after["router_threshold"] == stats["router_threshold"]
        assert [r["tiers_visited"] for r in _routes(base, prompts)] == [
            r["tiers_visited"] for r in before
        ]
        assert replica_ids() == before_ids
        assert serve.status().applications[APP].status == "RUNNING"
    finally:
        deploy(BASE_CONFIG)
        _wait(lambda: _stats(base)["config_refused"] is None, 90, "a good config clearing it")
    assert replica_ids() == before_ids


# --- (b) autoscaling -----------------------------------------------------------------------


def _prompts_routed(base: str, candidates: list[str], route: list[str], need: int) -> list[str]:
    """The candidates the live graph routes exactly along `route` (greedy: always the same)."""
    found = [
        p
        for p, r in zip(candidates, _routes(base, candidates), strict=True)
        if r["tiers_visited"] == route
    ]
    assert len(found) >= need, f"only {len(found)} of {len(candidates)} prompts go {route}"
    return found


async def _load(base: str, prompts: list[str], until: Callable[[], bool], timeout_s: float):
    """6 concurrent cascade clients until `until()` (checked every second) or the deadline;
    every response must be a 200. Returns (requests, reached, peak replicas per tier)."""
    stop = asyncio.Event()
    sent, statuses, peak = 0, [], dict.fromkeys(TIERS, 0)

    async def client(c: httpx.AsyncClient, k: int) -> None:
        nonlocal sent
        while not stop.is_set() and sent < MAX_REQUESTS:
            sent += 1
            body = {"model": "cascade", "messages": [{"role": "user", "content": prompts[k]}]}
            k = (k + 1) % len(prompts)
            r = await c.post(f"{base}/v1/chat/completions", json=body)
            statuses.append(r.status_code)

    async def watch() -> bool:
        deadline = time.time() + timeout_s
        try:
            while time.time() < deadline:
                for t in TIERS:
                    peak[t] = max(peak[t], await asyncio.to_thread(replica_count, t))
                if await asyncio.to_thread(until):
                    return True
                await asyncio.sleep(1)
            return False
        finally:
            stop.set()

    async with httpx.AsyncClient(timeout=120) as c:
        reached, *_ = await asyncio.gather(
            watch(), *(client(c, k % len(prompts)) for k in range(6))
        )
    assert statuses and set(statuses) == {200}, f"statuses: {sorted(set(statuses))}"
    return len(statuses), reached, peak


def _scales_alone(base: str, busy: str, prompts: list[str]) -> None:
    other = next(t for t in TIERS if t != busy)
    _wait(lambda: all(replica_count(t) == 1 for t in TIERS), 120, "both tiers at one replica")
    t0 = time.time()
    n, reached, peak = asyncio.run(
        _load(base, prompts, lambda: replica_count(busy, "RUNNING") >= 2, 240)
    )
    up = time.time() - t0
    assert reached, f"{busy} did not reach 2 replicas under {n} requests: peak {peak}"
    t1 = time.time()
    peak_other = peak[other]
    while replica_count(busy) > 1:
        peak_other = max(peak_other, replica_count(other))
        assert time.time() - t1 < 120, f"{busy} did not scale back down in 120 s"
        time.sleep(1)
    assert peak_other == 1, f"{other} scaled too ({peak_other} replicas) under load on {busy}"
    down = time.time() - t1
    print(f"\n{busy}: 2 replicas after {up:.0f} s ({n} requests), back to 1 {down:.0f} s later")


def test_the_cheap_tier_scales_up_and_down_alone_under_easy_load(graph):
    base, _ = graph
    easy = sample("test", 24, seed=7, families={"add": 1, "sub": 1, "max": 1})
    prompts = _prompts_routed(base, [t.prompt for t in easy], ["cheap"], need=4)
    _scales_alone(base, "cheap", prompts)


def test_the_strong_tier_scales_up_and_down_alone_under_hard_load(graph):
    base, _ = graph
    hard = sample("test", 24, seed=7, families={"rev": 1})
    prompts = _prompts_routed(base, [t.prompt for t in hard], ["strong"], need=4)
    _scales_alone(base, "strong", prompts)
