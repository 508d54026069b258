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
    """serve_config.yaml's graph with `router.speculate` on (off by default): so the agreement
    test below holds the speculative path to the offline routes too; the other graph tests
    (3-tier, autoscaling, health) run it off."""
    args = AppArgs.from_serve_config()
    args = args.model_copy(update={"router": args.router.model_copy(update={"speculate": True})})
    with running_app(args) as urls:
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
        if "cheap" in routing["tiers_visited"]:  # decided with the router's evidence too
            cheap = routing["attempts"][0]["features"]
            assert cheap["router_p_complex"] == routing["router"]["probabilities"]["complex"]
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
    drift = stats["drift"]  # the drift monitor (calibration.drift), on the zoo's references
    assert drift["enabled"] and drift["alpha"] == 0.001 and set(drift["tiers"]) == {"cheap"}
    cheap = drift["tiers"]["cheap"]
    assert cheap["reference"] and not cheap["alarm"] and cheap["requests"] <= drift["requests"]


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


def _speculative_counts(metrics: str) -> dict[str, float]:
    """{"kept": n, "dropped": n} summed over the Prometheus series (0 before any)."""
    counts = {"kept": 0.0, "dropped": 0.0}
    for line in httpx.get(metrics, timeout=10).text.splitlines():
        if line.startswith("#") or "cascade_speculative_calls" not in line:
            continue
        for outcome in counts:
            if f'outcome="{outcome}"' in line:
                counts[outcome] += float(line.rsplit(" ", 1)[1])
    return counts


def _settled_counts(metrics: str) -> dict[str, float]:
    """The counts once two reads 3 s apart (metrics are exported every second) agree."""
    last, deadline = _speculative_counts(metrics), time.time() + 30
    while time.time() < deadline:
        time.sleep(3)
        now = _speculative_counts(metrics)
        if now == last:
            break
        last = now
    return last


def test_the_cheap_call_starts_beside_the_router_and_is_dropped_when_it_starts_higher(
    client, service
):
    """Every cascade request starts the cheap tier's call while the router decides; it is kept
    exactly when the run starts at the cheap tier (the routing says where it started)."""
    _, metrics = service
    before = _settled_counts(metrics)  # earlier tests' requests reach Prometheus late
    started_cheap = 0
    tasks = sample("test", 20, seed=9)
    for t in tasks:
        r = client.chat.completions.with_raw_response.create(
            model="cascade", messages=[{"role": "user", "content": t.prompt}]
        )
        started_cheap += json.loads(r.text)["routing"]["tiers_visited"][0] == "cheap"
    assert 0 < started_cheap < len(tasks)  # both kinds among these prompts
    want = {"kept": started_cheap, "dropped": len(tasks) - started_cheap}
    deadline, got = time.time() + 60, {}
    while time.time() < deadline:
        now = _speculative_counts(metrics)
        got = {k: now[k] - before[k] for k in now}
        if got == want:
            break
        time.sleep(2)
    assert got == want


def test_serving_decides_as_the_offline_evaluation(service):
    """The same test prompts through HTTP and through the offline replay take the same routes."""
    base, _ = service
    tasks, expected = offline(AppArgs.from_serve_config(), 60, "test", 3)
    served = asyncio.run(serve_all(base, tasks))
    result = compare(expected, served, tasks)
    assert result["same_route"] == 1.0, result["disagreements"]
    assert abs(result["served"]["accuracy"] - result["offline"]["accuracy"]) <= 0.05, result
    assert abs(result["served"]["cost"] - result["offline"]["cost"]) <= 0.05, result


# --- engine: openai, against this running graph (a real OpenAI-compatible server) ----------


def test_openai_engine_reads_logprobs_from_a_real_server(service, zoo):
    from models.engine import SamplingSettings
    from models.hf_engine import HFEngine
    from models.openai_engine import OpenAIEngine

    base, _ = service
    remote = OpenAIEngine("cheap", base_url=f"{base}/v1", top_logprobs=5)
    local = HFEngine(str(zoo / "cheap"))
    prompts = [t.prompt for t in sample("test", 4, seed=5)]
    settings = SamplingSettings(max_tokens=6, top_logprobs=5)
    got = asyncio.run(remote.generate(prompts, settings))
    want = local.generate_sync(prompts, settings)
    for g, w in zip(got, want, strict=True):
        assert g.text == w.text and len(g.logprobs) == len(w.logprobs) >= 1
        assert max(abs(a - b) for a, b in zip(g.logprobs, w.logprobs, strict=True)) < 1e-3
        assert g.top_logprob_matrix().shape == (len(w.logprobs), 5)


def test_openai_engine_refuses_an_endpoint_without_logprobs(service):
    """A real proxy in front of the graph that drops logprobs, as some hosted APIs do."""
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    from models.engine import EngineError
    from models.openai_engine import OpenAIEngine

    base, _ = service

    class Strip(BaseHTTPRequestHandler):
        def do_POST(self):
            body = self.rfile.read(int(self.headers["Content-Length"]))
            r = httpx.post(
                f"{base}{self.path}",
                content=body,
                headers={"Content-Type": "application/json"},
                timeout=60,
            )
            payload = r.json()
            for choice in payload.get("choices", []):
                choice["logprobs"] = None
            out = json.dumps(payload).encode()
            self.send_response(r.status_code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(out)))
            self.end_headers()
            self.wfile.write(out)

        def log_message(self, *args):
            pass

    proxy = ThreadingHTTPServer(("127.0.0.1", 0), Strip)
    threading.Thread(target=proxy.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{proxy.server_address[1]}/v1"
    try:
        with pytest.raises(EngineError, match="returned no logprobs"):
            OpenAIEngine("cheap", base_url=url)
        OpenAIEngine("strong", base_url=url, require_logprobs=False)  # a top tier may
    finally:
        proxy.shutdown()
    with pytest.raises(EngineError, match="CASCADE_TEST_NO_SUCH_KEY is not set"):
        OpenAIEngine("cheap", base_url=f"{base}/v1", api_key_env="CASCADE_TEST_NO_SUCH_KEY")


def test_collect_through_openai_tiers(service, tmp_path):
    """`engine: openai` tiers from the typed config, through the same collect as local ones."""
    from calibration.dataset import load_dataset
    from models.tasks import _main as tasks_main
    from offline.collect import collect
    from offline.traces import TraceStore

    base, _ = service
    remote = {"engine": "openai", "engine_kwargs": {"base_url": f"{base}/v1"}}
    app = AppArgs(
        tiers=[
            {"name": "cheap", "model": "cheap", **remote},
            {"name": "strong", "model": "strong", **remote},
        ],
        limits={"default_max_tokens": 8},
    )
    data = tmp_path / "items.jsonl"
    tasks_main(["export", "--split", "test", "--seed", "9", "--n", "6", "--out", str(data)])
    reports = collect(app, load_dataset(data), tmp_path / "t", data=str(data), progress=False)
    assert [(r.tier, r.collected) for r in reports] == [("cheap", 6), ("strong", 6)]
    store = TraceStore(tmp_path / "t")
    ident = store.manifest().tiers["cheap"]
    assert ident.engine == "openai" and ident.top_k == 5
    assert all(len(g.logprobs) >= 1 for g in store.answers("cheap", ident).values())


def test_an_endpoint_grades_answers_through_chat(service, zoo, tmp_path):
    """`judge --judge llm --judge-endpoint`: this running graph as the grader (model=strong),
    reached over chat, so the server renders the grading prompt with the model's own template.
    The zoo grades by subtraction: `9{answer}-{reference}` is 90 exactly when they are equal
    (see tests/test_llm_judge.py); the labels must be what the strong model replies asked
    directly (tests/subtraction_grader.py)."""
    from calibration.dataset import load_dataset, write_dataset
    from models.tasks import _main as tasks_main
    from offline.cli import main
    from offline.collect import collect
    from offline.traces import TraceStore
    from tests.subtraction_grader import GRADES, TEMPLATE, expected_verdicts

    base, _ = service
    tasks_main(["export", "--split", "calibration", "--seed", "3", "--n", "200", "--out",
                str(tmp_path / "all.jsonl")])  # fmt: skip
    items = [i for i in load_dataset(tmp_path / "all.jsonl") if i.task_type == "max"][:12]
    for i in items[1::2]:  # off by one: half the cheap tier's (mostly right) answers are wrong
        i.reference = str((int(i.reference) + 1) % 10)
    write_dataset(items, tmp_path / "items.jsonl")
    local = {"engine": "transformers", "engine_kwargs": {"dtype": "float32"}}
    app = AppArgs(
        tiers=[{"name": "cheap", "model": "zoo:cheap", **local},
               {"name": "strong", "model": "zoo:strong", **local}],
        limits={"default_max_tokens": 4},
    )  # fmt: skip
    out = tmp_path / "traces"
    collect(app, items, out, data=str(tmp_path / "items.jsonl"), progress=False, tiers=["cheap"])
    template = tmp_path / "sub.txt"
    template.write_text(TEMPLATE)
    args = ["judge", "--traces", str(out), "--judge", "llm", "--judge-endpoint", f"{base}/v1"]
    args += ["--judge-model", "strong", "--judge-template", str(template)]
    args += ["--judge-grades", GRADES, "--no-progress", "--allow-unparsed"]
    assert main(args) == 0
    store = TraceStore(out)
    ident = store.manifest().tiers["cheap"]
    labels, answers = store.labels("cheap", ident), store.answers("cheap", ident)
    refs = {i.id: i.reference for i in items}
    one_digit = [i for i in refs if len(answers[i].text.strip()) == 1]
    assert len(one_digit) >= 10
    want = expected_verdicts(zoo, {i: answers[i].text.strip() for i in one_digit}, refs)
    got = {i: labels[i].verdict if i in labels else None for i in one_digit}
    assert sum(got[i] == want[i] for i in one_digit) >= len(one_digit) - 1  # vLLM vs HF ties
    assert sum(v is not None for v in got.values()) >= len(one_digit) // 2
    spec = labels[one_digit[0]].judge
    assert spec.endpoint == f"{base}/v1" and spec.model == "strong"
    assert spec.grader.engine == "openai"
