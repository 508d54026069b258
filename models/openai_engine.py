"""A tier behind an OpenAI-compatible API (a hosted model, vLLM's server, another cascade).

    tiers:
      - name: strong
        model: Qwen/Qwen2.5-32B-Instruct          # the remote server's model name
        engine: openai
        engine_kwargs: {base_url: "http://127.0.0.1:9000/v1", api_key_env: STRONG_API_KEY}

It speaks `/v1/completions` with `logprobs: k`, which returns the chosen tokens' logprobs and
their top-k alternatives: the evidence the cascade decides from. The prompt it sends is the
tier's rendered text (no local tokenizer, so chat messages become plain lines). At start-up it
sends one 1-token request: a server that answers without logprobs is refused when the tier's
decisions need them (every tier below the top), since its scores would be empty.

Token ids are not part of the API; `Generation.token_ids` holds -1 per token (only counts and
logprobs are read downstream). The remote server enforces its own context length: its 400
becomes the ingress's 400 (`ValueError` here, `TierInputError` in the tier).
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Sequence
from typing import Any

import httpx
import numpy as np

from models.engine import EngineError, Generation, SamplingSettings

__all__ = ["OpenAIEngine", "api_generation", "completion_to_generation", "top_matrix"]


class OpenAIEngine:
    name = "openai"
    tokenizer = None  # rendering falls back to plain text (models.prompting)

    def __init__(
        self,
        model: str,
        *,
        base_url: str,
        api_key_env: str | None = None,
        require_logprobs: bool = True,
        timeout_s: float = 60.0,
        max_concurrency: int = 16,
        top_logprobs: int = 5,
        **unused: Any,
    ) -> None:
        unused.pop("trust_remote_code", None)  # meaningless for a remote model
        unused.pop("dtype", None)
        if unused:
            raise ValueError(f"engine: openai does not take {sorted(unused)}")
        self.model = model
        self.base_url = base_url.rstrip("/")
        self.headers = {}
        if api_key_env:
            key = os.environ.get(api_key_env)
            if not key:
                raise EngineError(f"the API key variable {api_key_env} is not set")
            self.headers["Authorization"] = f"Bearer {key}"
        self.timeout_s = timeout_s
        self._limit = max_concurrency
        self._client: httpx.AsyncClient | None = None
        self.require_logprobs = require_logprobs
        self._probe(require_logprobs, top_logprobs)

    def _body(self, prompt: str, settings: SamplingSettings) -> dict[str, Any]:
        body: dict[str, Any] = {
            "model": self.model,
            "prompt": prompt,
            "max_tokens": settings.max_tokens,
            "temperature": settings.temperature,
            "top_p": settings.top_p,
            "logprobs": settings.top_logprobs,
        }
        if settings.stop:
            body["stop"] = list(settings.stop)
        if settings.seed is not None:
            body["seed"] = settings.seed
        return body

    def _probe(self, require_logprobs: bool, k: int) -> None:
        """One real 1-token request: the server is there and returns what the tier needs."""
        body = self._body("ping", SamplingSettings(max_tokens=1, top_logprobs=max(k, 1)))
        try:
            r = httpx.post(
                f"{self.base_url}/completions", json=body, headers=self.headers, timeout=30
            )
        except httpx.HTTPError as e:
            raise EngineError(f"the endpoint {self.base_url} is unreachable: {e}") from e
        if r.status_code != 200:
            raise EngineError(f"the endpoint {self.base_url} answered {r.status_code}: {r.text}")
        logprobs = r.json()["choices"][0].get("logprobs")
        if require_logprobs and not (logprobs and logprobs.get("token_logprobs")):
            raise EngineError(
                f"the endpoint {self.base_url} (model {self.model}) returned no logprobs; "
                "this tier's accept/escalate decision is computed from them, so it cannot "
                "be served from there (use it as the top tier, which decides nothing)"
            )

    async def generate(
        self, prompts: Sequence[str], settings: SamplingSettings
    ) -> list[Generation]:
        if self._client is None:
            self._client = httpx.AsyncClient(timeout=self.timeout_s, headers=self.headers)
        gate = asyncio.Semaphore(self._limit)

        async def one(prompt: str) -> Generation:
            async with gate:
                return await self._complete(prompt, settings)

        return list(await asyncio.gather(*(one(p) for p in prompts)))

    async def _complete(self, prompt: str, settings: SamplingSettings) -> Generation:
        payload = await self._post("completions", self._body(prompt, settings))
        return completion_to_generation(payload, settings.top_logprobs)

    async def _post(self, route: str, body: dict[str, Any]) -> dict[str, Any]:
        """POST `route` under the base URL: the answer's JSON, its 4xx as ValueError (the
        ingress's 400, the tier's TierInputError), anything else as EngineError."""
        assert self._client is not None
        try:
            r = await self._client.post(f"{self.base_url}/{route}", json=body)
        except httpx.HTTPError as e:
            raise EngineError(f"{self.base_url}: {e}") from e
        if 400 <= r.status_code < 500:
            raise ValueError(f"{self.base_url} refused the request: {r.text}")
        if r.status_code != 200:
            raise EngineError(f"{self.base_url} answered {r.status_code}: {r.text}")
        return r.json()

    def count_tokens(self, text: str) -> int:
        return 0  # unknown here; the remote server enforces its own context length

    def check_alive(self) -> None:
        """Remote liveness is the server's; the tier's probe generation checks it for real."""

    def shutdown(self) -> None:
        self._client = None


def top_matrix(top: tuple[tuple[tuple[str, float], ...], ...], k: int) -> np.ndarray | None:
    """The (tokens, k) top-k logprob matrix of per-token (token, logprob) rows, padded with
    -inf where a row has fewer than k; None for k = 0."""
    if not k:
        return None
    matrix = np.full((len(top), k), -np.inf)
    for i, row in enumerate(top):
        matrix[i, : len(row)] = [v for _, v in row]
    return matrix


def completion_to_generation(payload: dict[str, Any], k: int) -> Generation:
    """An OpenAI `/v1/completions` answer (with `logprobs: k`) as a `Generation`: shared with
    the ray_llm engine, whose LLMServer answers in the same form."""
    choice = payload["choices"][0]
    lp = choice.get("logprobs") or {}
    tokens = lp.get("tokens") or []
    chosen = [float(x) if x is not None else float("nan") for x in lp.get("token_logprobs") or []]
    tops = lp.get("top_logprobs") or [{}] * len(chosen)
    top = tuple(
        tuple(sorted(((t, float(v)) for t, v in (row or {}).items()), key=lambda p: -p[1])[:k])
        for row in tops
    )
    return api_generation(payload, choice.get("text", ""), chosen, top, k, len(tokens))


def api_generation(
    payload: dict[str, Any],
    text: str,
    chosen: list[float] | tuple[float, ...],
    top: tuple[tuple[tuple[str, float], ...], ...],
    k: int,
    n_tokens: int,
) -> Generation:
    """The `Generation` of an OpenAI answer (completions or chat) once its text, chosen-token
    logprobs and top-k rows are read: token ids unknown (-1), usage from the payload (else
    `n_tokens` completion tokens)."""
    choice = payload["choices"][0]
    usage = payload.get("usage") or {}
    return Generation(
        text=text,
        token_ids=(-1,) * len(chosen),
        logprobs=tuple(chosen),
        top_logprobs=top,
        finish_reason="length" if choice.get("finish_reason") == "length" else "stop",
        prompt_tokens=int(usage.get("prompt_tokens", 0)),
        completion_tokens=int(usage.get("completion_tokens", n_tokens)),
        logprob_values=np.asarray(chosen, dtype=np.float64),
        top_logprob_values=top_matrix(top, k),
    )
