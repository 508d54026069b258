"""Health that means something: the cheap tier's vLLM engine dies, or wedges, under load.

The real graph of serve_config.yaml (cheap on vLLM, strong on transformers to start faster),
fixed replica counts, short health-check periods. Clients send cascade requests the whole
time; the test kills (SIGKILL) or stops (SIGSTOP) the EngineCore child process of the cheap
replica and requires: /readyz reports the cheap tier, Serve replaces the replica (a new replica
id, /readyz green again), every request sent is answered 200 (the ones the dead tier could not
answer come from the strong tier with `routing.degraded` naming cheap) and none is lost.

Slow (Ray, the router and two engines, two engine restarts) and needs vLLM. The first tests
are fast: `LLMTier.check_health` itself on a tiny transformers engine, wedged for real by
holding its forward-pass lock the way a stuck batch holds it.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time

import httpx
import psutil
import pytest

from calibration.config import AppArgs
from deployments.local import running_app
from models.tasks import sample
from models.vllm_engine import vllm_available

needs_vllm = pytest.mark.skipif(not vllm_available(), reason="vLLM is not installed")

CHEAP = "Tier-cheap"


# --- check_health itself, fast ---------------------------------------------------------------


@pytest.fixture(scope="module")
def run():
    """One event loop for the module: asyncio.run would, on leaving, wait for the probe's
    thread, which a held lock keeps blocked."""
    loop = asyncio.new_event_loop()
    yield loop.run_until_complete
    loop.close()


@pytest.fixture(scope="module")
def tier(tiny_zoo, one_thread):
    """The tier class itself (no Serve), on a tiny transformers model: probes at most every
    2 s, each allowed 1 s."""
    from deployments.llm import LLMTier

    return LLMTier.func_or_class(
        name="cheap",
        model=str(tiny_zoo / "cheap"),
        engine="transformers",
        health_probe_interval_s=2.0,
        health_probe_timeout_s=1.0,
    )


def test_a_healthy_tier_probes_at_most_once_per_interval(tier, run):
    run(tier.check_health())  # no answer yet: a probe, which answers
    probed = tier.health.last_ok
    assert probed > float("-inf")
    with tier.engine._lock:  # wedged now, but an answer within the interval vouches: no probe
        run(tier.check_health())
    assert tier.health.last_ok == probed and tier.info()["health"] == "ok"


def test_a_wedged_engine_fails_the_probe_until_it_answers_again(tier, run):
    time.sleep(2.1)  # past the interval: the next check probes
    with tier.engine._lock:  # a forward pass that never ends
        t0 = time.perf_counter()
        with pytest.raises(RuntimeError, match="gave no token in 1 s"):
            run(tier.check_health())
        assert 1.0 <= time.perf_counter() - t0 < 10
        assert "gave no token" in tier.info()["health"]
        with pytest.raises(RuntimeError, match="wedged"):  # failing: every check probes
            run(tier.check_health())
    run(tier.check_health())  # unwedged: the probe answers, the record clears
    assert tier.info()["health"] == "ok" and tier.health.failures == 0


def test_an_engine_not_yet_answering_passes_as_starting_until_the_grace_runs_out(tiny_zoo, run):
    """As a ray_llm tier's is while its LLMServer loads: no token, and no failed check, for
    `health_startup_grace_s`; after that the same silence fails."""
    from deployments.llm import LLMTier

    tier = LLMTier.func_or_class(
        name="strong",
        model=str(tiny_zoo / "cheap"),
        engine="transformers",
        health_probe_timeout_s=0.5,
        health_startup_grace_s=2.0,
    )
    with tier.engine._lock:  # the engine gives no token yet
        run(tier.check_health())  # within the grace: passes
        assert tier.health.failures == 0 and tier.info()["health"].startswith("starting")
        time.sleep(max(0.0, 2.1 - (time.monotonic() - tier.health.started)))
        with pytest.raises(RuntimeError, match="wedged"):
            run(tier.check_health())
    run(tier.check_health())
    assert tier.info()["health"] == "ok"


# --- the graph, slow --------------------------------------------------------------------------
MAX_REQUESTS = 600  # per scenario, on top of its deadline


def _args() -> AppArgs:
    """serve_config.yaml with one replica per deployment and health checks every second."""
    raw = AppArgs.from_serve_config().model_dump()
    cheap, strong = raw["tiers"]
    # a short timeout, so calls to a cheap tier without a replica climb to strong quickly
    cheap.update(engine="vllm", timeout_s=8, health_probe_interval_s=4, health_probe_timeout_s=3)
    strong.update(engine="transformers")
    opts = raw["deployment_options"]
    for name in ("Router", CHEAP, "Tier-strong"):
        opts[name].pop("autoscaling_config", None)
        opts[name]["num_replicas"] = 1
    opts[CHEAP].update(
        health_check_period_s=1, health_check_timeout_s=10, graceful_shutdown_timeout_s=5
    )
    return AppArgs.model_validate(raw)


@pytest.fixture(scope="module")
def base(zoo):
    with running_app(_args(), wait_s=400) as (url, _):
        _wait_ready(url, 400)
        yield url


def _wait_ready(base: str, timeout_s: float) -> None:
    deadline, last = time.time() + timeout_s, None
    while time.time() < deadline:
        try:
            last = httpx.get(f"{base}/readyz", timeout=15)
            if last.status_code == 200:
                return
        except httpx.HTTPError as e:
            last = e
        time.sleep(1)
    raise AssertionError(f"not ready in {timeout_s} s: {getattr(last, 'text', last)}")


def cheap_replica() -> tuple[str, int] | None:
    """(replica id, pid) of the live cheap replica, from the GCS actor table (ray.util.state
    needs the dashboard, which running_app leaves off); None while there is none."""
    import ray._private.state as ray_state

    alive = [
        a
        for a in ray_state.actors().values()
        if a["ActorClassName"] == f"ServeReplica:cascade:{CHEAP}" and a["State"] == "ALIVE"
    ]
    if len(alive) != 1:
        return None
    return alive[0]["Name"].rsplit("#", 1)[-1], alive[0]["Pid"]


def engine_core(pid: int) -> psutil.Process:
    """The replica's vLLM EngineCore: a child process named VLLM::EngineCore."""
    cores = [p for p in psutil.Process(pid).children() if p.name() == "VLLM::EngineCore"]
    assert len(cores) == 1, f"replica {pid}: children {psutil.Process(pid).children()}"
    return cores[0]


class Load:
    """`clients` concurrent cascade requests until stopped (or MAX_REQUESTS): 127.0.0.1 only."""

    def __init__(self, base: str, clients: int = 4) -> None:
        self.base, self.clients = base, clients
        self.results: list[tuple[float, int | str, dict | None]] = []  # (end, status, routing)
        self.stop = asyncio.Event()
        self.prompts = [t.prompt for t in sample("test", 64, seed=31)]

    async def run(self) -> None:
        async with httpx.AsyncClient(timeout=150) as client:
            await asyncio.gather(*(self._client(client, k) for k in range(self.clients)))

    async def _client(self, client: httpx.AsyncClient, k: int) -> None:
        i = k
        while not self.stop.is_set() and len(self.results) < MAX_REQUESTS:
            messages = [{"role": "user", "content": self.prompts[i % len(self.prompts)]}]
            i += self.clients
            try:
                r = await client.post(
                    f"{self.base}/v1/chat/completions",
                    json={"model": "cascade", "messages": messages, "max_tokens": 8},
                )
            except httpx.HTTPError as e:
                self.results.append((time.time(), type(e).__name__, None))
                continue
            routing = r.json().get("routing") if r.status_code == 200 else {"body": r.text}
            self.results.append((time.time(), r.status_code, routing))


async def _poll(check, timeout_s: float, every_s: float = 0.5):
    """`check()` (run in a thread) until it returns something truthy; that value."""
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        if out := await asyncio.to_thread(check):
            return out
        await asyncio.sleep(every_s)
    raise AssertionError(f"{check.__name__}: nothing in {timeout_s} s")


def _readyz(base: str) -> tuple[int, str]:
    """(status, the cheap tier's entry); a slow answer (a starved machine) is not one."""
    try:
        r = httpx.get(f"{base}/readyz", timeout=20)
    except httpx.HTTPError as e:
        return 0, f"no answer: {type(e).__name__}"
    return r.status_code, r.json().get("cheap", "")


async def _break_and_recover(base: str, sig: signal.Signals) -> dict:
    """Under load: send `sig` to the cheap replica's EngineCore; time /readyz reporting it and
    Serve replacing the replica; keep the load on until the new replica has answered."""
    load = Load(base)
    task = asyncio.create_task(load.run())
    await _poll(lambda: len(load.results) >= 4, 60)
    old_id, pid = cheap_replica() or pytest.fail("no live cheap replica")
    core = engine_core(pid)
    stray = [core, *core.children(recursive=True)]
    t0 = time.time()
    os.kill(core.pid, sig)
    seen: list[str] = []

    def reported():
        status, cheap = _readyz(base)
        if status == 503 and cheap != "ok":
            seen.append(cheap)
            return time.time()
        return None

    def replaced():
        now = cheap_replica()
        if now is None or now[0] == old_id:
            return None
        status, cheap = _readyz(base)
        if status != 200:
            seen.append(cheap)
            return None
        return time.time()

    try:
        t_reported = await _poll(reported, 90)
        t_replaced = await _poll(replaced, 400)  # a vLLM replica starts in 30-150 s on 2 cores
        # the new replica answers: a cheap call after the replacement that did not fail
        await _poll(lambda: _answered_by_cheap_since(load.results, t_replaced), 90)
    finally:
        load.stop.set()
        await asyncio.wait_for(task, 180)
        for p in stray:  # a stopped EngineCore survives its replica; the test owns it
            if p.is_running():
                p.kill()
    return {
        "old": old_id,
        "new": cheap_replica(),
        "reported_s": t_reported - t0,
        "replaced_s": t_replaced - t0,
        "seen": list(dict.fromkeys(seen)),
        "results": load.results,
        "t0": t0,
    }


def _answered_by_cheap_since(results, since: float) -> bool:
    return any(
        end > since
        and routing
        and any(a["tier"] == "cheap" and a["outcome"] != "failed" for a in routing["attempts"])
        for end, status, routing in list(results)
    )


def _assert_nothing_lost(out: dict) -> None:
    results = out["results"]
    bad = [(s, r) for _, s, r in results if s != 200]
    assert not bad, f"{len(bad)} of {len(results)} requests not answered 200: {bad[:3]}"
    degraded = [r for _, _, r in results if r["degraded"]]
    assert degraded, "no request felt the broken engine"
    for r in degraded:
        assert r["final_tier"] == "strong" and "cheap" in r["degraded_reason"], r
        assert r["attempts"][0]["tier"] == "cheap" and r["attempts"][0]["outcome"] == "failed"
    print(
        f"\n{len(results)} requests, all 200, {len(degraded)} degraded; /readyz reported it "
        f"after {out['reported_s']:.1f} s, replica {out['old']} -> {out['new'][0]} after "
        f"{out['replaced_s']:.1f} s; /readyz said: {out['seen']}"
    )


@pytest.mark.slow
@pytest.mark.vllm
@needs_vllm
def test_a_killed_engine_is_reported_and_replaced_and_no_request_is_lost(base):
    out = asyncio.run(_break_and_recover(base, signal.SIGKILL))
    assert out["new"] is not None and out["new"][0] != out["old"]
    assert any("engine dead" in s or "UNHEALTHY" in s for s in out["seen"]), out["seen"]
    _assert_nothing_lost(out)


@pytest.mark.slow
@pytest.mark.vllm
@needs_vllm
def test_a_wedged_engine_fails_its_probe_and_is_replaced(base):
    """SIGSTOP: the process is alive, so only the probe generation (its timeout) shows it."""
    out = asyncio.run(_break_and_recover(base, signal.SIGSTOP))
    assert out["new"] is not None and out["new"][0] != out["old"]
    assert any("probe" in s or "UNHEALTHY" in s for s in out["seen"]), out["seen"]
    _assert_nothing_lost(out)
