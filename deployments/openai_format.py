"""Turning a `Generation` and its `routing` into OpenAI response bodies and SSE chunks.

Kept apart from the routes (and defined before any Serve class uses them: Serve's ingress
wrapper captures module globals when the class is defined).
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from typing import Any

from deployments.protocol import (
    ChatCompletionRequest,
    ChoiceLogprobs,
    CompletionLogprobs,
    LogprobEntry,
    TokenLogprob,
    Usage,
)
from deployments.serving import CascadeResult
from models.engine import Generation

__all__ = [
    "chat_logprobs",
    "completion_logprobs",
    "requested_k",
    "sse_chunks",
    "usage",
]


def requested_k(body) -> int:
    if isinstance(body, ChatCompletionRequest):
        return body.top_logprobs or 0 if body.logprobs else 0
    return body.logprobs or 0


def usage(gen: Generation) -> Usage:
    return Usage(
        prompt_tokens=gen.prompt_tokens,
        completion_tokens=gen.completion_tokens,
        total_tokens=gen.prompt_tokens + gen.completion_tokens,
    )


def _token_texts(gen: Generation) -> list[str]:
    """Each generated token as text: the matching top-k entry, else (outside the top k) ''."""
    out = []
    for lp, row in zip(gen.logprobs, gen.top_logprobs, strict=True):
        out.append(next((t for t, v in row if abs(v - lp) < 1e-6), ""))
    return out


def chat_logprobs(gen: Generation, k: int) -> ChoiceLogprobs:
    texts = _token_texts(gen)
    return ChoiceLogprobs(
        content=[
            TokenLogprob(
                token=t,
                logprob=lp,
                bytes=list(t.encode()),
                top_logprobs=[
                    LogprobEntry(token=a, logprob=b, bytes=list(a.encode())) for a, b in row[:k]
                ],
            )
            for t, lp, row in zip(texts, gen.logprobs, gen.top_logprobs, strict=True)
        ]
    )


def completion_logprobs(gen: Generation, k: int) -> CompletionLogprobs:
    texts = _token_texts(gen)
    offsets, pos = [], 0
    for t in texts:
        offsets.append(pos)
        pos += len(t)
    return CompletionLogprobs(
        tokens=texts,
        token_logprobs=list(gen.logprobs),
        top_logprobs=[dict(row[:k]) for row in gen.top_logprobs],
        text_offset=offsets,
    )


async def sse_chunks(result: CascadeResult, body, chat: bool) -> AsyncIterator[str]:
    """The final tier's answer as OpenAI chunks; usage and routing ride on the last chunk.

    The cascade must see a whole answer before it can accept it, so streaming starts once the
    final tier is known; the chunks then carry the answer token by token.
    """
    gen = result.generation
    kind = "chat.completion.chunk" if chat else "text_completion"
    base = {
        "id": f"{'chatcmpl' if chat else 'cmpl'}-{int(time.time() * 1e6):x}",
        "object": kind,
        "created": int(time.time()),
        "model": result.tier,
    }

    def chunk(text: str | None, finish: str | None, first: bool = False) -> str:
        if chat:
            delta = (
                {"role": "assistant", "content": text or ""}
                if first
                else ({"content": text} if text is not None else {})
            )
            choice = {"index": 0, "delta": delta, "finish_reason": finish}
        else:
            choice = {"index": 0, "text": text or "", "finish_reason": finish, "logprobs": None}
        return f"data: {json.dumps({**base, 'choices': [choice]})}\n\n"

    pieces = _token_texts(gen) if gen.text else []
    if "".join(pieces) != gen.text:  # tokens that do not decode one by one: send the text whole
        pieces = [gen.text]
    if chat:
        yield chunk("", None, first=True)
    for piece in pieces:
        yield chunk(piece, None)
    yield chunk(None, gen.finish_reason)
    include_usage = body.stream_options is None or body.stream_options.include_usage
    tail: dict[str, Any] = {**base, "choices": [], "routing": result.routing.model_dump()}
    if include_usage:
        tail["usage"] = usage(gen).model_dump()
    yield f"data: {json.dumps(tail)}\n\n"
    yield "data: [DONE]\n\n"
