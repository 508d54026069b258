"""The real graph from serve_config.yaml, over real HTTP, with the official openai client.

Slow (it starts Ray, the router and two engines), so marked; CI runs it all the same.
"""

from __future__ import annotations

import asyncio
import json
import time

import httpx
import pytest
from openai import BadRequestError, OpenAI

from benchmarks.bench_agreement import offline, serve_all
from calibration.config import AppArgs
from deployments.local import running_app
from models.tasks import judge, sample
from offline.expected_routes import compare

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def service(zoo):
    with running_app(AppArgs.from_serve_config()) as urls:
        yield urls


@pytest.fixture(scope="module")
def client(service) -> OpenAI:
    base, _ = service
    return OpenAI(base_url=f"{base}/v1", api_key="unused", max_retries=0)


def test_cascade_answers_a_task_prompt_with_the_answer_alone(client):
    tasks = sample("test", 12, seed=77)
    right = 0
    for task in tasks:
        out = client.chat.completions.create(
            model="cascade", messages=[{"role": "user", "content": task.prompt}]
        )
        text = out.choices[0].message.content
        assert "=" not in text and "<" not in text and task.prompt not in text
        right += judge(text, task.answer).value == "correct"
        routing = out.model_extra["routing"]
        assert routing["final_tier"] in ("cheap", "strong")
        assert routing["tiers_visited"][-1] == routing["final_tier"]
        assert routing["escalated"] == (len(routing["tiers_visited"]) > 1)
        assert routing["conformal_mode"] in ("budget", "recall", "risk")
        assert routing["router"]["policy"] in ("standard", "complex")
        assert 0 <= routing["router"]["confidence"] <= 1
        assert routing["cost"] > 0 and routing["reasons"]
        assert out.usage.completion_tokens >= 1
    assert right >= 10, f"only {right}/12 right through the cascade"


@pytest.mark.parametrize("tier", ["cheap", "strong"])
def test_forcing_a_tier(client, zoo, tier):
    """A forced tier answers with exactly its own model's greedy answer (vLLM in the graph,
    transformers here)."""
    from models.engine import SamplingSettings
    from models.hf_engine import HFEngine

    messages = [{"role": "user", "content": "rev abcde"}]
    out = client.chat.completions.create(model=tier, messages=messages)
    routing = out.model_extra["routing"]
    assert routing["forced"] and routing["tiers_visited"] == [tier] and out.model == tier
    engine = HFEngine(str(zoo / tier))
    prompt = engine.tokenizer.apply_chat_template(
        messages, tokenize=False, add_generation_prompt=True
    )
    direct = engine.generate_sync([prompt], SamplingSettings(max_tokens=16))[0]
    assert out.choices[0].message.content == direct.text
    if tier == "strong":
        assert direct.text == "edcba"


def test_streaming_gives_the_same_answer_and_routing_last(client, service):
    messages = [{"role": "user", "content": "583+9"}]
    whole = client.chat.completions.create(model="strong", messages=messages)
    chunks = list(client.chat.completions.create(model="strong", messages=messages, stream=True))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole.choices[0].message.content == "592"
    assert chunks[-1].usage.completion_tokens == whole.usage.completion_tokens
    assert chunks[-1].model_extra["routing"]["final_tier"] == "strong"
    # Raw SSE framing, as any client sees it.
    base, _ = service
    with httpx.stream(
        "POST",
        f"{base}/v1/completions",
        timeout=60,
        json={"model": "cascade", "prompt": "max 39157=", "stream": True},
    ) as r:
        lines = [ln for ln in r.iter_lines() if ln]
    assert r.headers["content-type"].startswith("text/event-stream")
    assert lines[-1] == "data: [DONE]"
    last = json.loads(lines[-2].removeprefix("data: "))
    assert "routing" in last and "usage" in last


def test_text_completions_endpoint(client):
    out = client.completions.create(model="cascade", prompt="rev hgf=", max_tokens=8, logprobs=2)
    assert out.choices[0].text == "fgh"
    lp = out.choices[0].logprobs
    assert len(lp.tokens) == len(lp.token_logprobs) == out.usage.completion_tokens
    assert all(len(d) == 2 for d in lp.top_logprobs)


def test_models_health_and_stats(client, service):
    base, _ = service
    assert {m.id for m in client.models.list()} == {"cascade", "cheap", "strong"}
    assert httpx.get(f"{base}/healthz").json()["status"] == "ok"
    ready = httpx.get(f"{base}/readyz", timeout=30)
    assert ready.status_code == 200
    assert ready.json() == {"ready": True, "cheap": "ok", "strong": "ok", "router": "ok"}
    stats = httpx.get(f"{base}/stats").json()
    assert stats["requests"] >= 1
    assert set(stats["answered_by"]) <= {"cheap", "strong"}
    assert stats["calibration"]["mode"] in ("budget", "recall", "risk")


def test_bad_requests_get_openai_style_400s(client, service):
    with pytest.raises(BadRequestError) as e:
        client.chat.completions.create(model="gpt-9", messages=[{"role": "user", "content": "1+1"}])
    assert e.value.body["param"] == "model" and "cascade" in e.value.body["message"]
    base, _ = service
    r = httpx.post(f"{base}/v1/chat/completions", json={"model": "cascade", "messages": []})
    assert r.status_code == 400 and r.json()["error"]["param"] == "messages"
    r = httpx.post(
        f"{base}/v1/chat/completions",
        content=b"{not json",
        headers={"content-type": "application/json"},
    )
    assert r.status_code == 400 and "JSON" in r.json()["error"]["message"]


def test_prometheus_exports_the_cascade_metrics(client, service):
    _, metrics = service
    client.chat.completions.create(model="cascade", messages=[{"role": "user", "content": "7+5"}])
    deadline, text = time.time() + 60, ""
    while time.time() < deadline:
        text = httpx.get(metrics, timeout=10).text
        if "cascade_requests" in text and "cascade_tier_latency_s" in text:
            break
        time.sleep(2)
    for name in (
        "cascade_requests",
        "cascade_tier_calls",
        "cascade_cost",
        "cascade_tier_latency_s",
        "cascade_request_latency_s",
        "cascade_router_confidence",
    ):
        assert name in text, f"{name} missing from Prometheus"


def test_serving_decides_as_the_offline_evaluation(service):
    """The same test prompts through HTTP and through the offline replay take the same routes."""
    base, _ = service
    tasks, expected = offline(AppArgs.from_serve_config(), 60, "test", 3)
    served = asyncio.run(serve_all(base, tasks))
    result = compare(expected, served, tasks)
    assert result["same_route"] == 1.0, result["disagreements"]
    assert abs(result["served"]["accuracy"] - result["offline"]["accuracy"]) <= 0.05, result
    assert abs(result["served"]["cost"] - result["offline"]["cost"]) <= 0.05, result
