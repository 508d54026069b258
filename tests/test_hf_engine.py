import asyncio

import pytest

from models.engine import EngineError, Generation, SamplingSettings
from models.hf_engine import HFEngine
from models.loading import load_engine
from models.tasks import sample
from tests.engine_checks import assert_matches_forward_pass


def chat(engine, prompt: str) -> str:
    return engine.tokenizer.apply_chat_template(
        [{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True
    )


@pytest.fixture(scope="module")
def prompts(hf_cheap):
    return [chat(hf_cheap, t.prompt) for t in sample("test", 12, seed=11)]


def test_logprobs_equal_a_fresh_forward_pass(hf_cheap, prompts):
    gens = hf_cheap.generate_sync(prompts, SamplingSettings(max_tokens=8, top_logprobs=5))
    for prompt, gen in zip(prompts, gens, strict=True):
        assert gen.completion_tokens == len(gen.token_ids) >= 1
        assert_matches_forward_pass(hf_cheap.model, hf_cheap.tokenizer, prompt, gen)


def test_batching_gives_the_same_result_as_one_by_one(hf_cheap, prompts):
    settings = SamplingSettings(max_tokens=8, top_logprobs=3)
    batched = hf_cheap.generate_sync(prompts, settings)
    single = [hf_cheap.generate_sync([p], settings)[0] for p in prompts]
    for b, s in zip(batched, single, strict=True):
        assert b.text == s.text and b.token_ids == s.token_ids
        assert b.logprobs == pytest.approx(s.logprobs, abs=1e-4)


def test_eos_is_kept_as_a_token_and_text_has_no_special_tokens(hf_cheap, prompts):
    gen = hf_cheap.generate_sync(prompts[:1], SamplingSettings(max_tokens=12))[0]
    if gen.finish_reason == "stop":
        assert gen.token_ids[-1] == hf_cheap.tokenizer.eos_token_id
    assert "<" not in gen.text and "=" not in gen.text


def test_max_tokens_cuts_with_finish_reason_length(hf_cheap, prompts):
    gens = hf_cheap.generate_sync(prompts, SamplingSettings(max_tokens=1))
    for g in gens:
        assert len(g.token_ids) == 1
        assert g.finish_reason == (
            "stop" if g.token_ids[0] == hf_cheap.tokenizer.eos_token_id else "length"
        )


def test_stop_string_is_cut_from_text(hf_cheap):
    prompt = chat(hf_cheap, "rev abcdefg")
    full = hf_cheap.generate_sync([prompt], SamplingSettings(max_tokens=10))[0]
    assert len(full.text) >= 2, full
    stop = full.text[1]
    cut = hf_cheap.generate_sync([prompt], SamplingSettings(max_tokens=10, stop=(stop,)))[0]
    assert cut.text == full.text[: full.text.index(stop)]
    assert cut.finish_reason == "stop"
    assert len(cut.token_ids) == full.text.index(stop) + 1  # one token per character


def test_sampling_is_reproducible_with_a_seed(hf_cheap, prompts):
    settings = SamplingSettings(max_tokens=8, temperature=1.5, seed=123)
    a = hf_cheap.generate_sync(prompts, settings)
    b = hf_cheap.generate_sync(prompts, settings)
    assert [g.token_ids for g in a] == [g.token_ids for g in b]
    # Raw logprobs: temperature changes the choice, not the reported distribution.
    for prompt, gen in zip(prompts, a, strict=True):
        assert_matches_forward_pass(hf_cheap.model, hf_cheap.tokenizer, prompt, gen)


def test_a_vanishing_temperature_decodes_greedily(hf_cheap, prompts):
    """Found by fuzzing: temperature 5e-324 used to overflow the logits into a NaN
    distribution; below GREEDY_TEMPERATURE it is greedy decoding, as in vLLM."""
    greedy = hf_cheap.generate_sync(prompts, SamplingSettings(max_tokens=6))
    for t in (5e-324, 1e-300, 1e-6):
        tiny = hf_cheap.generate_sync(prompts, SamplingSettings(max_tokens=6, temperature=t))
        assert [g.token_ids for g in tiny] == [g.token_ids for g in greedy]


def test_async_generate_and_protocol(hf_cheap, prompts):
    gens = asyncio.run(hf_cheap.generate(prompts[:2], SamplingSettings(max_tokens=4)))
    assert all(isinstance(g, Generation) for g in gens)
    assert hf_cheap.count_tokens("12+34=") == 7  # <bos> and one token per character


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"max_tokens": 0}, "max_tokens must be >= 1"),
        ({"temperature": -1}, "temperature must be >= 0"),
        ({"top_p": 0}, r"top_p must be in \(0, 1\]"),
        ({"top_logprobs": 50}, r"top_logprobs must be in \[0, 20\]"),
        ({"stop": ("",)}, "stop strings must be non-empty"),
    ],
)
def test_bad_settings_raise_clear_errors(kwargs, message):
    with pytest.raises(ValueError, match=message):
        SamplingSettings(**kwargs)


def test_prompt_longer_than_the_context_is_refused(hf_cheap):
    with pytest.raises(ValueError, match="exceeds the model's context"):
        hf_cheap.generate_sync(["1" * 70], SamplingSettings(max_tokens=4))


def test_missing_model_raises_engine_error(tmp_path):
    with pytest.raises(EngineError, match="cannot load model"):
        HFEngine(str(tmp_path / "nowhere"))
    with pytest.raises(ValueError, match="unknown zoo model"):
        load_engine("transformers", "zoo:giant")
    with pytest.raises(ValueError, match="unknown engine"):
        load_engine("tensorrt", "zoo:cheap")  # type: ignore[arg-type]
