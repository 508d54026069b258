"""The bare reference: one Ray Serve deployment, the same engine and model as a tier, no router,
no feedback, no conformal step.

What the cascade graph costs is only measurable against this, started in the same cluster and
measured interleaved (`benchmarks.side_by_side`): it renders the prompt and decodes exactly as a
tier does (`models.prompting.render_prompt`, the same `SamplingSettings`, top-k logprobs
included, since a tier needs them), and answers in the OpenAI chat shape, so the difference is
the graph's own work: proxy hops to the router and tier, the decision, the routing record.
"""

from __future__ import annotations

import time
import uuid
from typing import Any

from fastapi import FastAPI, Request
from ray import serve

from models.engine import SamplingSettings
from models.loading import load_engine
from models.prompting import render_prompt

__all__ = ["BareLLM", "bare_app", "chat_completion"]

api = FastAPI(title="bare reference")


def chat_completion(
    model: str, text: str, finish_reason: str, prompt_tokens: int, completion_tokens: int
) -> dict[str, Any]:
    """An OpenAI chat completion as a plain dict: the reference apps' answer shape. Defined
    above the deployments that call it: Serve captures a deployment class when it is
    decorated, and a name defined below it was missing in the replica (NameError)."""
    return {
        "id": f"chatcmpl-{uuid.uuid4().hex}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": text},
                "finish_reason": finish_reason,
            }
        ],
        "usage": {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
        },
    }


@serve.deployment(max_ongoing_requests=32, ray_actor_options={"num_cpus": 0.1})
@serve.ingress(api)
class BareLLM:
    def __init__(self, model: str, engine: str, engine_kwargs: dict[str, Any], top_logprobs: int):
        self.engine = load_engine(engine, model, **engine_kwargs)
        self.model = model
        self.top_logprobs = top_logprobs

    @api.post("/v1/chat/completions")
    async def chat(self, request: Request) -> dict:
        body = await request.json()
        prompt = render_prompt(self.engine.tokenizer, messages=body["messages"])
        settings = SamplingSettings(
            max_tokens=int(body.get("max_tokens", 16)), top_logprobs=self.top_logprobs
        )
        gen = (await self.engine.generate([prompt], settings))[0]
        return chat_completion(
            self.model, gen.text, gen.finish_reason, gen.prompt_tokens, gen.completion_tokens
        )


def bare_app(
    model: str,
    engine: str,
    engine_kwargs: dict[str, Any] | None = None,
    top_logprobs: int = 5,
    num_cpus: float = 0.3,
):
    """The reference application for one tier's model (give the tier's own engine settings)."""
    return BareLLM.options(ray_actor_options={"num_cpus": num_cpus}).bind(
        model, engine, dict(engine_kwargs or {}), top_logprobs
    )
