"""The `llm` judge: a model grades each answer against the item's reference.

    python -m calibration judge --traces traces/ --judge llm --config serve_config.yaml \\
        --judge-tier strong
    python -m calibration judge --traces traces/ --judge llm \\
        --judge-endpoint http://127.0.0.1:9000/v1 --judge-model Qwen/Qwen2.5-32B-Instruct

The grader is a tier of a serving config, loaded and decoded exactly as `collect` does (same
`load_engine`, same rendering, same served decoding, same `TierIdentity`), or an
OpenAI-compatible endpoint through the same `OpenAIEngine` a remote tier uses. Its prompt is a
template with {question} {reference} {answer}; its reply is read for a grade word
(`calibration.judges.parse_verdict`). A reply without one is *unparsed*: that item gets no
label and the run says so. Every label records the template's sha256, the grades and the
grader's identity, so "right" can be traced to who said it and how it was asked.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Sequence
from pathlib import Path

from tqdm import tqdm

from calibration.config import AppArgs
from calibration.identity import TierIdentity
from calibration.judges import DEFAULT_GRADES, JudgeError, JudgeSpec
from models.engine import Engine, SamplingSettings
from models.identity import served_settings, tier_identity
from models.loading import engine_kind, load_engine
from models.prompting import render_prompt
from offline.collect import close_engine

__all__ = ["DEFAULT_TEMPLATE", "LLMGrader", "fill_template"]

DEFAULT_TEMPLATE = """You are grading an answer to a question against the reference answer.

Question:
{question}

Reference answer:
{reference}

Answer to grade:
{answer}

Is the answer to grade correct, given the reference? Reply with one word: RIGHT or WRONG.
"""

_ENDPOINT_MAX_TOKENS = 16


def fill_template(template: str, question: str, reference: str, answer: str) -> str:
    """The grading prompt; only the three placeholders are replaced, so a template may hold
    other braces (JSON examples) untouched."""
    return (
        template.replace("{question}", question)
        .replace("{reference}", reference)
        .replace("{answer}", answer)
    )


class LLMGrader:
    """A loaded grading model and the spec its labels carry; `close()` when done."""

    def __init__(
        self,
        engine: Engine,
        settings: SamplingSettings,
        spec: JudgeSpec,
        template: str,
        batch: int = 16,
    ) -> None:
        self.engine, self.settings, self.spec = engine, settings, spec
        self.template, self.batch = template, batch
        self._loop = asyncio.new_event_loop()  # an AsyncLLM lives on the loop of its first call

    @classmethod
    def from_tier(
        cls,
        app: AppArgs,
        tier_name: str,
        *,
        template: Path | None = None,
        grades: tuple[tuple[str, ...], tuple[str, ...]] = DEFAULT_GRADES,
        batch: int = 16,
    ) -> LLMGrader:
        """A configured tier as grader: its engine, decoding and identity as `collect`'s."""
        tiers = {t.name: t for t in app.tiers}
        if tier_name not in tiers:
            raise JudgeError(
                f"--judge-tier {tier_name!r} is not a tier of the config: {list(tiers)}"
            )
        tier = tiers[tier_name]
        settings = served_settings(app)
        identity = tier_identity(tier, settings, engine_kind(tier.engine))
        text, where = _template(template)
        spec = _spec(text, where, grades, identity, tier=tier_name)
        engine = load_engine(tier.engine, tier.model, **app.engine_kwargs(tier.name))
        return cls(engine, settings, spec, text, batch)

    @classmethod
    def from_endpoint(
        cls,
        base_url: str,
        model: str,
        *,
        api_key_env: str | None = None,
        template: Path | None = None,
        grades: tuple[tuple[str, ...], tuple[str, ...]] = DEFAULT_GRADES,
        max_tokens: int = _ENDPOINT_MAX_TOKENS,
        batch: int = 16,
    ) -> LLMGrader:
        """An OpenAI-compatible server as grader, through the remote tier's `OpenAIEngine`
        (logprobs not required: a grader decides nothing from them)."""
        settings = SamplingSettings(max_tokens=max_tokens, top_logprobs=0)
        identity = TierIdentity(
            model=model,
            engine="openai",
            top_k=0,
            decoding={"temperature": 0.0, "top_p": 1.0, "max_tokens": max_tokens},
        )
        text, where = _template(template)
        spec = _spec(text, where, grades, identity, endpoint=base_url, model=model)
        from offline.collect_endpoint import EndpointEngine

        # chat: the server renders the grading prompt with its model's own template (a hosted
        # judge may not serve /v1/completions at all)
        engine = EndpointEngine(
            model, base_url=base_url, api_key_env=api_key_env, require_logprobs=False
        )
        return cls(engine, settings, spec, text, batch)

    def grade(self, prompts: Sequence[str], *, desc: str, progress: bool = True) -> list[str]:
        """The grader's reply to each filled-in template, batch by batch."""
        replies: list[str] = []
        with tqdm(total=len(prompts), desc=desc, disable=not progress) as bar:
            for i in range(0, len(prompts), self.batch):
                chunk = [self._request(p) for p in prompts[i : i + self.batch]]
                gens = self._loop.run_until_complete(self.engine.generate(chunk, self.settings))
                replies.extend(g.text for g in gens)
                bar.update(len(chunk))
        return replies

    def _request(self, prompt: str):
        """The grading prompt as one user message: rendered here with a local tier's chat
        template, or sent as chat messages to an endpoint, which renders them itself."""
        message = ({"role": "user", "content": prompt},)
        if self.engine.tokenizer is None:
            return message
        return render_prompt(self.engine.tokenizer, messages=list(message))

    def close(self) -> None:
        close_engine(self.engine, self._loop)


def _template(path: Path | None) -> tuple[str, str]:
    if path is None:
        return DEFAULT_TEMPLATE, "default"
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise JudgeError(f"cannot read --judge-template {path}: {e}") from e
    if "{answer}" not in text:
        raise JudgeError(f"the template {path} has no {{answer}} placeholder: it grades nothing")
    return text, str(path)


def _spec(
    text: str,
    where: str,
    grades: tuple[tuple[str, ...], tuple[str, ...]],
    identity: TierIdentity,
    **fields: str,
) -> JudgeSpec:
    return JudgeSpec(
        name="llm",
        template=where,
        template_sha256=hashlib.sha256(text.encode("utf-8")).hexdigest(),
        grades=grades,
        grader=identity,
        **fields,
    )
