"""The soak's request mix: what each kind of request sends and what counts as its right answer.

Every request is sent once (no client retry: a failure the server lets through must show) and
ends in one verdict:

- ok: the answer it should get (a 200 with a whole body; for bad input, a 4xx error object);
- error: a complete response that is wrong (a 5xx, a 4xx to a good request, a 200 to bad input,
  a forced tier answered by another tier);
- lost: sent, and no complete response (a transport error, a stream that breaks off);
- disconnected: the client hung up on purpose (a stream cut after its first chunk, a request
  abandoned while the cascade works).
"""

from __future__ import annotations

import asyncio
import json
import random
import time
from dataclasses import dataclass

import httpx

from calibration.config import LimitArgs

__all__ = ["Outcome", "Workload"]

CHAT, COMPLETIONS = "/v1/chat/completions", "/v1/completions"
JSON_CT = {"content-type": "application/json"}


@dataclass(frozen=True)
class Outcome:
    kind: str
    t0: float  # perf_counter at send
    t1: float  # perf_counter at the verdict
    status: int | None  # HTTP status, None when no response came
    verdict: str  # ok | error | lost | disconnected
    detail: str = ""  # for error and lost: the status and message, or the exception

    @property
    def latency_s(self) -> float:
        return self.t1 - self.t0


def _chat(content: str, model: str = "cascade", **extra) -> dict:
    return {"model": model, "messages": [{"role": "user", "content": content}], **extra}


def bad_requests(limits: LimitArgs) -> list[tuple[str, str, str, dict]]:
    """(label, method, path, httpx kwargs) of requests the server must refuse with a 4xx."""
    big = b'{"model": "cascade", "user": "' + b"x" * (limits.max_body_bytes + 1) + b'"}'
    return [
        ("not JSON", "POST", CHAT, {"content": b"{not json", "headers": JSON_CT}),
        ("not UTF-8", "POST", CHAT, {"content": b"\xff\xfe\x00\x01", "headers": JSON_CT}),
        ("no messages", "POST", CHAT, {"json": {"model": "cascade"}}),
        ("no user message", "POST", CHAT, {"json": _chat("1+1") | {"messages": []}}),
        ("unknown model", "POST", CHAT, {"json": _chat("1+1", model="gpt-9")}),
        ("max_tokens", "POST", CHAT, {"json": _chat("1+1", max_tokens=limits.max_tokens + 1)}),
        ("prompt too long", "POST", CHAT, {"json": _chat("1" * (limits.max_prompt_chars + 1))}),
        ("temperature", "POST", CHAT, {"json": _chat("1+1", temperature=5)}),
        ("two prompts", "POST", COMPLETIONS, {"json": {"model": "cascade", "prompt": ["a", "b"]}}),
        ("wrong method", "GET", CHAT, {}),
        ("unknown path", "POST", "/v1/nope", {"json": _chat("1+1")}),
        ("form body", "POST", CHAT, {"content": b"model=cascade", "headers": _form()}),
        ("oversized body", "POST", CHAT, {"content": big, "headers": JSON_CT}),
    ]


def _form() -> dict[str, str]:
    return {"content-type": "application/x-www-form-urlencoded"}


def _error_text(r: httpx.Response) -> str:
    try:
        return str(r.json()["error"]["message"])[:160]
    except Exception:
        return r.text[:160]


class Workload:
    """The mix: cascade chat and completions, streams (some cut on purpose), abandoned
    requests, each end of the tier ladder forced, bad input, and the read-only routes."""

    def __init__(self, tiers: list[str], prompts: list[str], limits: LimitArgs, timeout_s: float):
        self.prompts, self.timeout_s = prompts, timeout_s
        self.forced = sorted({tiers[0], tiers[-1]}, key=tiers.index)
        self.bad = bad_requests(limits)
        self.weights = {
            "chat": 20,
            "completion": 12,
            "stream": 12,
            "stream_cut": 6,
            "abort": 4,
            **{f"forced:{t}": 16 / len(self.forced) for t in self.forced},
            "bad": 18,
            "meta": 6,
        }

    def pick(self, rng: random.Random) -> str:
        return rng.choices(list(self.weights), weights=list(self.weights.values()))[0]

    async def send(self, c: httpx.AsyncClient, base: str, kind: str, rng: random.Random):
        """One request of `kind`; never raises (a failure is the verdict)."""
        t0 = time.perf_counter()
        prompt = rng.choice(self.prompts)
        try:
            if kind in ("stream", "stream_cut"):
                return await self._stream(c, base, kind, prompt, t0)
            if kind == "abort":
                return await self._abort(c, base, prompt, rng, t0)
            if kind == "bad":
                label, method, path, kw = rng.choice(self.bad)
                r = await c.request(method, base + path, timeout=self.timeout_s, **kw)
                return self._judge_bad(label, r, t0)
            if kind == "meta":
                path = rng.choice(["/v1/models", "/stats", "/healthz"])
                r = await c.get(base + path, timeout=self.timeout_s)
                return self._judge(kind, r, t0, lambda b: bool(b))
            return await self._answer(c, base, kind, prompt, t0)
        except httpx.HTTPError as e:
            return Outcome(kind, t0, time.perf_counter(), None, "lost", type(e).__name__)

    async def _answer(self, c, base: str, kind: str, prompt: str, t0: float) -> Outcome:
        model = kind.split(":", 1)[1] if kind.startswith("forced:") else "cascade"
        if kind == "completion":
            body = {"model": model, "prompt": prompt, "max_tokens": 10}
            r = await c.post(base + COMPLETIONS, json=body, timeout=self.timeout_s)
            return self._judge(kind, r, t0, lambda b: "text" in b["choices"][0])
        r = await c.post(
            base + CHAT, json=_chat(prompt, model, max_tokens=10), timeout=self.timeout_s
        )

        def right(b: dict) -> bool:
            tier_ok = model == "cascade" or b["routing"]["final_tier"] == model
            return tier_ok and "content" in b["choices"][0]["message"]

        return self._judge(kind, r, t0, right)

    def _judge(self, kind: str, r: httpx.Response, t0: float, right) -> Outcome:
        t1 = time.perf_counter()
        if r.status_code != 200:
            return Outcome(
                kind, t0, t1, r.status_code, "error", f"{r.status_code}: {_error_text(r)}"
            )
        try:
            good = right(r.json())
        except (ValueError, KeyError, IndexError, TypeError) as e:
            return Outcome(kind, t0, t1, 200, "error", f"200 with a bad body: {e!r}"[:160])
        if not good:
            return Outcome(kind, t0, t1, 200, "error", f"200, wrong answer: {r.text[:120]}")
        return Outcome(kind, t0, t1, 200, "ok")

    def _judge_bad(self, label: str, r: httpx.Response, t0: float) -> Outcome:
        t1, s = time.perf_counter(), r.status_code
        if 400 <= s < 500:
            has_error = "error" in r.text
            return Outcome(
                "bad", t0, t1, s, "ok" if has_error else "error", "" if has_error else label
            )
        return Outcome("bad", t0, t1, s, "error", f"{s} to bad input ({label}): {_error_text(r)}")

    async def _stream(self, c, base: str, kind: str, prompt: str, t0: float) -> Outcome:
        body = _chat(prompt, max_tokens=10, stream=True)
        chunks, done, routing = 0, False, False
        async with c.stream("POST", base + CHAT, json=body, timeout=self.timeout_s) as r:
            if r.status_code != 200:
                await r.aread()
                return self._judge(kind, r, t0, lambda b: False)
            async for line in r.aiter_lines():
                if not line.startswith("data: "):
                    continue
                if line == "data: [DONE]":
                    done = True
                    break
                chunks += 1
                routing = routing or "routing" in json.loads(line[6:])
                if kind == "stream_cut":  # leaving the block closes the connection mid-stream
                    return Outcome(kind, t0, time.perf_counter(), 200, "disconnected")
        t1 = time.perf_counter()
        if done and routing:
            return Outcome(kind, t0, t1, 200, "ok")
        return Outcome(kind, t0, t1, 200, "lost", f"stream ended after {chunks} chunks, no [DONE]")

    async def _abort(self, c, base: str, prompt: str, rng: random.Random, t0: float) -> Outcome:
        """Give up after 20-400 ms, usually while the cascade is still working; an answer that
        comes first is judged like any chat answer."""
        wait = rng.uniform(0.02, 0.4)
        body = _chat(prompt, max_tokens=10)
        try:
            r = await asyncio.wait_for(c.post(base + CHAT, json=body, timeout=self.timeout_s), wait)
        except TimeoutError:
            return Outcome("abort", t0, time.perf_counter(), None, "disconnected")
        return self._judge("abort", r, t0, lambda b: "content" in b["choices"][0]["message"])
