"""The real 3-tier graph (serve_config.3tier.yaml: cheap -> mid -> strong, vLLM tiers, the
router with its head, the zoo's per-tier artifact) over real HTTP: identical routes to the
offline replay of the served policy, every kind of path seen, and task floors from requests.

Slow (Ray, the router and three engines), so marked; CI runs it all the same.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx
import pytest
from openai import OpenAI

from benchmarks.bench_agreement import offline, serve_all
from calibration.config import AppArgs
from deployments.local import running_app
from offline.expected_routes import compare

pytestmark = pytest.mark.slow

CONFIG = Path(__file__).resolve().parents[1] / "serve_config.3tier.yaml"
FLOORS = {"rev": "strong", "sums": "mid"}  # added to the shipped config for the floor tests


def _args() -> AppArgs:
    shipped = AppArgs.from_serve_config(CONFIG)
    return AppArgs.model_validate({**shipped.model_dump(), "task_floors": FLOORS})


@pytest.fixture(scope="module")
def service(zoo):
    with running_app(_args()) as urls:
        yield urls


@pytest.fixture(scope="module")
def client(service) -> OpenAI:
    base, _ = service
    return OpenAI(base_url=f"{base}/v1", api_key="unused", max_retries=0)


def test_three_tiers_take_the_routes_the_offline_replay_takes(service):
    """The shipped 3-tier policy, replayed offline by CascadeRun and served over HTTP: the
    same path for every request, and each kind of path occurs."""
    base, _ = service
    tasks, expected = offline(AppArgs.from_serve_config(CONFIG), 120, "test", 5)
    served = asyncio.run(serve_all(base, tasks))
    result = compare(expected, served, tasks)
    assert result["same_route"] == 1.0, result["disagreements"]
    paths = {tuple(s["routing"]["tiers_visited"]) for s in served}
    assert ("cheap",) in paths  # cheap accepted
    assert any(p[:2] == ("cheap", "mid") for p in paths)  # cheap -> mid
    assert ("cheap", "mid", "strong") in paths  # mid -> strong
    assert ("strong",) in paths  # the router's confident-complex queries
    for s in served:
        r = s["routing"]
        for a in r["attempts"][:-1]:
            assert a["outcome"] == "escalated" and a["threshold"] is not None


def test_stats_report_every_tiers_threshold(service):
    base, _ = service
    stats = httpx.get(f"{base}/stats", timeout=10).json()
    assert set(stats["calibration"]["tiers"]) == {"cheap", "mid"}
    for cal in stats["calibration"]["tiers"].values():
        assert cal["mode"] == "risk" and cal["threshold"] is not None


def test_a_task_floor_from_the_request_sets_the_start(client):
    """task_type as a top-level field (the OpenAI client's extra_body) and in metadata."""
    messages = [{"role": "user", "content": "12+3"}]
    out = client.chat.completions.create(
        model="cascade", messages=messages, extra_body={"task_type": "rev"}
    )
    r = out.model_extra["routing"]
    assert r["tiers_visited"] == ["strong"] and r["task_floor"] == "strong"
    assert r["task_type"] == "rev"
    assert any("task floor for 'rev'" in x for x in r["reasons"])
    out = client.chat.completions.create(
        model="cascade", messages=messages, metadata={"task_type": "sums"}
    )
    r = out.model_extra["routing"]
    assert r["tiers_visited"][0] == "mid" and r["task_floor"] == "mid"
    out = client.completions.create(
        model="cascade", prompt="12+3", extra_body={"task_type": "no-such-type"}
    )
    r = out.model_extra["routing"]
    assert r["task_floor"] is None and r["task_type"] == "no-such-type"
    assert r["tiers_visited"][0] in ("cheap", "strong")  # no floor: cheapest or the router's


def test_a_bad_task_type_is_a_400_naming_the_field(service):
    base, _ = service
    body = {"model": "cascade", "messages": [{"role": "user", "content": "1+1"}]}
    r = httpx.post(f"{base}/v1/chat/completions", json={**body, "task_type": "x" * 65}, timeout=30)
    assert r.status_code == 400 and r.json()["error"]["param"] == "task_type"
