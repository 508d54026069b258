"""`collect --endpoint`: the tiers answer through a running service, nothing is loaded here.

    python -m calibration collect --config serve_config.yaml --data items.jsonl --out traces/ \\
        --endpoint http://127.0.0.1:8000 [--api-key-env CASCADE_API_KEY]

For tiers that exist only behind an API (or a GPU box the calibration is not run on). The URL
is the server's base, with or without `/v1`. Each configured tier (or `--tiers`) is looked up
in the server's `GET /v1/models`:

* this project's ingress lists a card per tier, whose `metadata.identity` is the
  `TierIdentity` the tier serves: it is compared with the config's identity for that tier
  (`calibration.identity.mismatches`) and a difference is refused, naming both sides, before
  anything is generated; the requests force the tier with `model=<tier name>`;
* a server without that metadata (vLLM's, a hosted API) is asked for the tier's configured
  `model`; the identity recorded is then only that name with engine `openai` (no revision, no
  tokenizer hash), and a WARNING says the calibration can be checked against nothing more.

The requests carry the served decoding (greedy, `limits.default_max_tokens`, top-k logprobs =
`limits.top_logprobs`). An item with chat `messages` goes to `/v1/chat/completions`, so the
server renders it with the tier's own chat template (exactly as a served chat request); an
item with a `prompt` goes to `/v1/completions` as is. That route returns each token's top-k
as a token -> logprob mapping, so two alternatives that decode to the same text count once
(the chat route returns lists and keeps both). An answer without logprobs is refused: the
tier's scores would be empty. Batching, resuming and the stored `Generation` are `collect`'s,
so `judge` and `calibrate` read these traces unchanged (token ids are -1: not in the API).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import httpx

from calibration.config import AppArgs, TierArgs
from calibration.dataset import DatasetItem
from calibration.identity import IdentityMismatch, TierIdentity, mismatches
from models.engine import EngineError, Generation, SamplingSettings
from models.identity import configured_identities, served_settings
from models.openai_engine import OpenAIEngine, api_generation
from offline.collect import CollectReport, TierSource, collect

__all__ = ["EndpointEngine", "EndpointError", "api_base", "collect_through", "endpoint_sources"]


class EndpointError(ValueError):
    """The endpoint cannot be collected from (unreachable, refuses, lacks a tier)."""


def collect_through(
    endpoint: str,
    args: AppArgs,
    items: list[DatasetItem],
    out: str | Path,
    *,
    data: str,
    api_key_env: str | None = None,
    tiers: list[str] | None = None,
    **options: Any,
) -> list[CollectReport]:
    """`collect` with every chosen tier answering at `endpoint`; every identity is checked
    before any tier answers (IdentityMismatch, EndpointError)."""
    chosen = [t for t in args.tiers if not tiers or t.name in tiers]
    sources = endpoint_sources(args, chosen, served_settings(args), endpoint, api_key_env)
    return collect(args, items, out, data=data, sources=sources, **options)


def api_base(url: str) -> str:
    """`http://host:8000` or `http://host:8000/v1` (trailing slash or not) -> `.../v1`."""
    base = url.rstrip("/")
    return base if base.endswith("/v1") else f"{base}/v1"


def _headers(api_key_env: str | None) -> dict[str, str]:
    if not api_key_env:
        return {}
    key = os.environ.get(api_key_env)
    if not key:
        raise EndpointError(f"the API key variable {api_key_env} is not set")
    return {"Authorization": f"Bearer {key}"}


def served_cards(base: str, headers: dict[str, str]) -> dict[str, dict[str, Any]]:
    """The server's models, id -> metadata (empty for a server that sends none)."""
    try:
        r = httpx.get(f"{base}/models", headers=headers, timeout=15)
    except httpx.HTTPError as e:
        raise EndpointError(
            f"cannot reach the endpoint {base} ({type(e).__name__}: {e}); is the service "
            "running there, and is the URL its base (http://host:port or http://host:port/v1)?"
        ) from e
    if r.status_code == 401:
        raise EndpointError(f"the endpoint {base} wants an API key: pass --api-key-env VAR")
    if r.status_code != 200:
        raise EndpointError(f"GET {base}/models answered {r.status_code}: {r.text[:300]}")
    try:
        return {c["id"]: c.get("metadata") or {} for c in r.json()["data"]}
    except (ValueError, KeyError, TypeError) as e:
        raise EndpointError(f"GET {base}/models is not an OpenAI model list: {e}") from e


def _tier_card(
    tier: TierArgs, cards: dict[str, dict[str, Any]], base: str
) -> tuple[str, dict[str, Any]]:
    """(the model name to send, its card's metadata): the tier's own card, else the model's."""
    for name in (tier.name, tier.model):
        if name in cards:
            return name, cards[name]
    raise EndpointError(
        f"the endpoint {base} serves neither a tier {tier.name!r} nor a model {tier.model!r}; "
        f"it lists {sorted(cards)}"
    )


def _served_identity(
    name: str, meta: dict[str, Any], settings: SamplingSettings, base: str
) -> TierIdentity:
    """The card's identity, decoded with what collect sends; a foreign card: name + openai."""
    decoding = {"temperature": settings.temperature, "top_p": settings.top_p}
    decoding["max_tokens"] = settings.max_tokens
    raw = meta.get("identity")
    if raw is None:
        print(
            f"WARNING: {base} gives no identity for {name!r} (not this project's ingress); the "
            f"traces record only the model name {meta.get('model', name)!r} with engine "
            "'openai', so the calibration made from them can be checked against nothing more "
            "(not the weights, the tokenizer or the dtype that server runs).",
            file=sys.stderr,
            flush=True,
        )
        model = str(meta.get("model", name))
        return TierIdentity(
            model=model, engine="openai", top_k=settings.top_logprobs, decoding=decoding
        )
    try:
        served = TierIdentity.model_validate(raw)
    except ValueError as e:
        raise EndpointError(f"{base}: the identity of {name!r} is malformed: {e}") from e
    # the answers are cut at the max_tokens sent, whatever the server's default
    return served.model_copy(update={"decoding": {**served.decoding, **decoding}})


def endpoint_sources(
    args: AppArgs,
    tiers: list[TierArgs],
    settings: SamplingSettings,
    endpoint: str,
    api_key_env: str | None = None,
) -> list[TierSource]:
    """One source per tier, each identity checked against the config's before any answers:
    raises IdentityMismatch naming both sides, or EndpointError."""
    base, headers = api_base(endpoint), _headers(api_key_env)
    cards = served_cards(base, headers)
    configured = configured_identities(args)
    sources, problems = [], []
    for tier in tiers:
        name, meta = _tier_card(tier, cards, base)
        identity = _served_identity(name, meta, settings, base)
        diff = [
            d.replace(": artifact ", ": endpoint ", 1)
            for d in mismatches(identity, configured[tier.name])
        ]
        if diff:
            problems.append(f"tier {tier.name!r}: " + "; ".join(diff))
        sources.append(
            TierSource(
                name=tier.name,
                identity=identity,
                open=_opener(name, base, api_key_env, settings),
                render=_request,
            )
        )
    if problems:
        raise IdentityMismatch(
            f"the endpoint {base} serves other models than the ones configured:\n  "
            + "\n  ".join(problems)
            + "\nCollect from the service that runs this config, or fix the config's tiers."
        )
    return sources


def _opener(model: str, base: str, api_key_env: str | None, settings: SamplingSettings):
    def open_engine() -> EndpointEngine:
        return EndpointEngine(
            model,
            base_url=base,
            api_key_env=api_key_env,
            require_logprobs=True,
            top_logprobs=settings.top_logprobs,
        )

    return open_engine


def _request(engine: Any, item: DatasetItem) -> str | tuple[dict[str, str], ...]:
    """A prompt item as its text; a chat item as its messages (the server renders them)."""
    if item.messages:
        return tuple(m.model_dump() for m in item.messages)
    assert item.prompt is not None
    return item.prompt


class EndpointEngine(OpenAIEngine):
    """`OpenAIEngine` that also speaks chat: a request is a prompt or a message sequence."""

    def _probe(self, require_logprobs: bool, k: int) -> None:
        """Where logprobs are needed, the completions probe of the tier engine; else (a grader)
        one chat token, since a chat-only server (most hosted judges) has no /completions."""
        if require_logprobs:
            return super()._probe(require_logprobs, k)
        body = {"model": self.model, "messages": [{"role": "user", "content": "ping"}]}
        try:
            r = httpx.post(
                f"{self.base_url}/chat/completions",
                json={**body, "max_tokens": 1},
                headers=self.headers,
                timeout=30,
            )
        except httpx.HTTPError as e:
            raise EngineError(f"the endpoint {self.base_url} is unreachable: {e}") from e
        if r.status_code != 200:
            raise EngineError(f"the endpoint {self.base_url} answered {r.status_code}: {r.text}")

    async def _complete(self, request: Any, settings: SamplingSettings) -> Generation:
        if isinstance(request, str):
            gen = await super()._complete(request, settings)
        else:
            gen = await self._chat(request, settings)
        if self.require_logprobs and not gen.logprobs and (gen.text or gen.completion_tokens):
            raise EngineError(
                f"{self.base_url} (model {self.model}) answered without logprobs; the tier's "
                "accept/escalate scores are computed from them, so it cannot be calibrated"
            )
        return gen

    async def _chat(
        self, messages: Sequence[dict[str, str]], settings: SamplingSettings
    ) -> Generation:
        body = self._body("", settings)
        del body["prompt"]
        body.update(messages=list(messages))
        del body["logprobs"]
        if settings.top_logprobs or self.require_logprobs:
            body.update(logprobs=True, top_logprobs=settings.top_logprobs)
        payload = await self._post("chat/completions", body)
        return _chat_generation(payload, settings.top_logprobs)


def _chat_generation(payload: dict[str, Any], k: int) -> Generation:
    """A chat completion with `logprobs.content` as the Generation a local engine returns."""
    choice = payload["choices"][0]
    content = (choice.get("logprobs") or {}).get("content") or []
    chosen = tuple(float(e["logprob"]) for e in content)
    top = tuple(
        tuple((a["token"], float(a["logprob"])) for a in (e.get("top_logprobs") or [])[:k])
        for e in content
    )
    text = (choice.get("message") or {}).get("content") or ""
    return api_generation(payload, text, chosen, top, k, len(chosen))
