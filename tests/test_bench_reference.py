"""The bare reference the serving benchmarks compare against, run for real beside the graph:
it must be the same model decoding the same way (or the ratios compare different work), and
the benchmarks' JSON must carry the keys scripts read (`overhead`: bare / forced /
cascade_accept / cascade_escalate with p50_ms, p95_ms, n; `throughput`: bare / graph with
rps_1, rps_16). Transformers engine: it starts in seconds; `make bench` runs vLLM."""

from __future__ import annotations

import httpx
import pytest

from benchmarks import bench_overhead, bench_throughput
from benchmarks.side_by_side import _at_min_replicas, arms_running, chat
from calibration.config import AppArgs
from models.tasks import sample

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def arms(zoo):
    with arms_running("transformers", wait_s=300) as arms:
        yield arms


def test_bare_app_answers_as_the_forced_cheap_tier_does(arms):
    for task in sample("test", 8, seed=4):
        bare = httpx.post(arms.url("bare"), json=chat("bare", task.prompt), timeout=60)
        forced = httpx.post(arms.url("forced"), json=chat("cheap", task.prompt), timeout=60)
        assert bare.status_code == forced.status_code == 200, (bare.text, forced.text)
        text = [r.json()["choices"][0]["message"]["content"] for r in (bare, forced)]
        assert text[0] == text[1], task.prompt
        assert bare.json()["usage"] == forced.json()["usage"]


def test_overhead_and_throughput_report_every_arm(arms):
    over = bench_overhead.measure(arms, rounds=1, n=6)
    for arm in ("bare", "forced", "forced_strong"):
        assert over[arm]["n"] == 6 and over[arm]["p50_ms"] > 0
        assert over[arm]["p95_ms"] >= over[arm]["p50_ms"]
    cascade = [a for a in ("cascade_accept", "cascade_escalate", "cascade_direct") if a in over]
    assert sum(over[a]["n"] for a in cascade) == 6  # every cascade request told apart
    assert set(over["per_round"][0]["p50_minus_bare_ms"]) >= {"forced", *cascade}
    # the floor in the same run: a model-free app with and without one Serve hop
    for arm in ("hop0", "hop1"):
        assert over[arm]["n"] == 6 and 0 < over[arm]["p50_ms"] <= over[arm]["p95_ms"]
    first = over["per_round"][0]
    assert first["hop_ms"] == pytest.approx(first["hop1"]["p50_ms"] - first["hop0"]["p50_ms"])
    assert first["beyond_hops_ms"]["forced"] == pytest.approx(
        first["p50_minus_bare_ms"]["forced"] - first["hop_ms"], abs=0.02
    )

    thr = bench_throughput.measure(arms, rounds=1, seconds=1.0)
    for arm in ("bare", "graph", "forced", "hop0", "hop1"):
        assert thr[arm]["rps_1"] > 0 and thr[arm]["rps_16"] > 0
    assert thr["per_round"][0]["vs_bare"]["graph"]["rps_16"] > 0
    # where the CPU went: the bare app's requests cost its replica CPU, the graph's the
    # ingress's and the router's; every split adds up to its total
    cpu = thr["per_round"][0]["cpu_ms_per_request_16"]
    assert cpu["bare"]["bare"] > 0 and cpu["graph"]["ingress"] > 0 and cpu["graph"]["router"] > 0
    assert cpu["forced"]["tier-cheap"] > 0 and cpu["hop1"]["hop"] > 0
    for split in cpu.values():
        parts = sum(v for k, v in split.items() if k != "total")
        assert parts == pytest.approx(split["total"], abs=0.05 * len(split))


def test_throughput_can_hold_every_deployment_at_its_minimum():
    options = AppArgs.from_serve_config().deployment_options
    fixed = _at_min_replicas(options)
    for name, opts in options.items():
        scaling = opts.get("autoscaling_config")
        assert "autoscaling_config" not in fixed[name]
        if scaling is not None:
            assert fixed[name]["num_replicas"] == scaling.get("min_replicas", 1)
        # everything else as served: CPUs, queue bounds, health checks
        assert {k: v for k, v in fixed[name].items() if k != "num_replicas"} == {
            k: v for k, v in opts.items() if k not in ("autoscaling_config", "num_replicas")
        }
    assert options["Tier-cheap"]["autoscaling_config"]  # the input is not changed
