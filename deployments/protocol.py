"""OpenAI-compatible request and response schemas, plus the `routing` object the cascade adds.

Requests are validated here, at the boundary: a bad field becomes a 400 with an OpenAI-style
error naming the field (see `errors.py`). Unknown fields are ignored, as OpenAI's own server
ignores them, so any OpenAI client works unchanged.
"""

from __future__ import annotations

import math
import time
import uuid
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic.functional_serializers import PlainSerializer

from calibration.feedback import router_evidence

__all__ = [
    "ChatCompletionRequest",
    "ChatCompletionResponse",
    "ChatMessage",
    "CompletionRequest",
    "CompletionResponse",
    "ErrorBody",
    "ErrorResponse",
    "ModelCard",
    "ModelList",
    "Routing",
    "Usage",
]


class _Lenient(BaseModel):
    model_config = ConfigDict(extra="ignore")

    @field_validator("*")
    @classmethod
    def _valid_unicode(cls, v: Any) -> Any:
        """JSON's `\\ud800` escapes (and Python's JSON reader, on raw bytes) give strings with
        lone surrogates, which no tokenizer, engine or UTF-8 response can take: refused here
        (a 400 naming the field) instead of failing inside every tier (a 503)."""
        _check_unicode(v)
        return v


def _check_unicode(v: Any) -> None:
    if isinstance(v, str):
        try:
            v.encode("utf-8")
        except UnicodeEncodeError as e:
            raise ValueError(
                f"not valid Unicode: a lone surrogate ({v[e.start]!r}) at character {e.start}"
            ) from None
    elif isinstance(v, list | tuple):
        for x in v:
            _check_unicode(x)
    elif isinstance(v, dict):
        for k, x in v.items():
            _check_unicode(k)
            _check_unicode(x)


class TextPart(_Lenient):
    type: Literal["text"]
    text: str


class ChatMessage(_Lenient):
    role: Literal["system", "user", "assistant", "developer", "tool"]
    content: str | list[TextPart] = Field(description="Text, or a list of text parts.")

    @property
    def text(self) -> str:
        if isinstance(self.content, str):
            return self.content
        return "".join(part.text for part in self.content)


class StreamOptions(_Lenient):
    include_usage: bool = True


class _SamplingFields(_Lenient):
    """Fields shared by chat and text completions; limits are checked again by the ingress
    against its configured maxima (max_tokens, prompt length)."""

    model: str = Field(description="'cascade' lets the cascade choose; a tier name forces it.")
    max_tokens: int | None = Field(default=None, ge=1, description="Tokens to generate.")
    temperature: float = Field(default=0.0, ge=0.0, le=2.0)
    top_p: float = Field(default=1.0, gt=0.0, le=1.0)
    n: int = Field(default=1, ge=1, le=1, description="Only n=1 is served.")
    stop: str | list[str] | None = Field(default=None, validate_default=True)
    seed: int | None = Field(
        default=None,
        ge=-(2**63),
        le=2**63 - 1,
        description="A 64-bit signed integer (as vLLM's own server takes); a larger one would "
        "fail inside the engines.",
    )
    stream: bool = False
    stream_options: StreamOptions | None = None
    user: str | None = None
    task_type: str | None = Field(
        default=None,
        max_length=64,
        description="The request's task type (the config's `task_floors` may name the lowest "
        "tier allowed for it); also read from `metadata.task_type`. Unknown types have no floor.",
    )
    metadata: dict[str, str] | None = Field(
        default=None, description="OpenAI-style string metadata; `task_type` is read from it."
    )

    @property
    def effective_task_type(self) -> str | None:
        """`task_type`, else `metadata.task_type`, else None."""
        if self.task_type:
            return self.task_type
        value = (self.metadata or {}).get("task_type")
        return value or None

    @field_validator("stop")
    @classmethod
    def _stop_list(cls, v: str | list[str] | None) -> list[str]:
        stops = [v] if isinstance(v, str) else list(v or [])
        if len(stops) > 4:
            raise ValueError(f"at most 4 stop strings, got {len(stops)}")
        if any(not s for s in stops):
            raise ValueError("stop strings must be non-empty")
        return stops

    @field_validator("model")
    @classmethod
    def _model_named(cls, v: str) -> str:
        if not v.strip():
            raise ValueError("model must name a tier or 'cascade'")
        return v


class ChatCompletionRequest(_SamplingFields):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    logprobs: bool = False
    top_logprobs: int | None = Field(default=None, ge=0, le=20)

    @field_validator("messages")
    @classmethod
    def _has_user_message(cls, v: list[ChatMessage]) -> list[ChatMessage]:
        if not any(m.role == "user" and m.text.strip() for m in v):
            raise ValueError("messages must contain a non-empty user message")
        return v

    @model_validator(mode="after")
    def _max_completion_tokens(self) -> ChatCompletionRequest:
        if self.max_tokens is None and self.max_completion_tokens is not None:
            self.max_tokens = self.max_completion_tokens
        return self


class CompletionRequest(_SamplingFields):
    prompt: str | list[str] = Field(description="One prompt (a list of one is accepted).")
    logprobs: int | None = Field(default=None, ge=0, le=20)
    echo: bool = False

    @field_validator("prompt")
    @classmethod
    def _one_prompt(cls, v: str | list[str]) -> str:
        if isinstance(v, list):
            if len(v) != 1:
                raise ValueError(f"send one prompt per request, got a list of {len(v)}")
            v = v[0]
        if not v:
            raise ValueError("prompt must be non-empty")
        return v

    @field_validator("echo")
    @classmethod
    def _no_echo(cls, v: bool) -> bool:
        if v:
            raise ValueError("echo is not supported")
        return v


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class RouterView(BaseModel):
    policy: str | None = None
    confidence: float | None = None
    confidence_source: str | None = Field(
        default=None, description="'confidence_head', or 'max_probability' when no head is trained"
    )
    probabilities: dict[str, float] | None = None
    skipped_reason: str | None = None
    head_mismatch: bool = Field(
        default=False,
        description="The confidence head was trained for another router (served under "
        "calibration.allow_mismatch): its confidence describes that router.",
    )

    @property
    def evidence(self) -> dict[str, float]:
        """The router's evidence for the tiers' signals (`calibration.feedback.router_evidence`):
        its P(complex), NaN when it was skipped or failed."""
        return router_evidence((self.probabilities or {}).get("complex"))


def json_float(x: Any) -> Any:
    """JSON has no infinities: thresholds of +-inf (never / always escalate; adaptive conformal
    may set -inf) and an empty answer's score (+inf) are written "inf" / "-inf"."""
    return ("inf" if x > 0 else "-inf") if isinstance(x, float) and math.isinf(x) else x


JSONFloat = Annotated[float | None, PlainSerializer(json_float)]  # a number, "inf" or "-inf"


class TierAttempt(BaseModel):
    tier: str
    outcome: Literal["accepted", "escalated", "failed", "final"]
    score: JSONFloat = None
    threshold: JSONFloat = None
    reasons: list[str] = []
    features: dict[str, float] = {}
    latency_s: float
    cost: float
    adapted: bool = Field(
        default=False,
        description="The threshold came from adaptive conformal (labels moved it), not the "
        "artifact or user_config alone.",
    )


class Routing(BaseModel):
    """Why the answer came from the tier it came from; one per response."""

    tiers_visited: list[str]
    final_tier: str
    escalated: bool
    forced: bool = Field(description="True when the request named a tier instead of 'cascade'.")
    reasons: list[str]
    router: RouterView
    features: dict[str, float] = {}
    score: JSONFloat = None
    threshold: JSONFloat = None
    conformal_mode: str | None = None
    cost: float
    degraded: bool = False
    degraded_reason: str | None = None
    task_type: str | None = Field(default=None, description="The task type the request gave.")
    task_floor: str | None = Field(
        default=None, description="The tier a task floor raised the start to, if one did."
    )
    attempts: list[TierAttempt] = []
    threshold_adapted: bool = Field(
        default=False, description="`threshold` came from adaptive conformal (see attempts)."
    )
    threshold_group: str | None = Field(
        default=None,
        description="The task type whose own (Mondrian) threshold `threshold` is; None: the "
        "pooled one (or adaptive conformal's, or none was used).",
    )
    calibration_mismatch: bool = Field(
        default=False,
        description="The calibration (or the router's confidence head: router.head_mismatch) "
        "was made for other models (served under allow_mismatch; see /stats): its guarantee "
        "does not hold.",
    )
    feedback_id: str | None = Field(
        default=None,
        description="The id POST /v1/feedback takes for this answer: the response's `id` (a "
        "streamed answer's chunks carry another id; use this one).",
    )


class LogprobEntry(BaseModel):
    token: str
    logprob: float
    bytes: list[int] | None = None


class TokenLogprob(LogprobEntry):
    top_logprobs: list[LogprobEntry] = []


class ChoiceLogprobs(BaseModel):
    content: list[TokenLogprob]


class AssistantMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str


class ChatChoice(BaseModel):
    index: int = 0
    message: AssistantMessage
    finish_reason: str
    logprobs: ChoiceLogprobs | None = None


def _id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:24]}"


class ChatCompletionResponse(BaseModel):
    id: str = Field(default_factory=lambda: _id("chatcmpl"))
    object: Literal["chat.completion"] = "chat.completion"
    created: int = Field(default_factory=lambda: int(time.time()))
    model: str
    choices: list[ChatChoice]
    usage: Usage
    routing: Routing


class CompletionLogprobs(BaseModel):
    tokens: list[str]
    token_logprobs: list[float]
    top_logprobs: list[dict[str, float]]
    text_offset: list[int]


class CompletionChoice(BaseModel):
    index: int = 0
    text: str
    finish_reason: str
    logprobs: CompletionLogprobs | None = None


class CompletionResponse(BaseModel):
    id: str = Field(default_factory=lambda: _id("cmpl"))
    object: Literal["text_completion"] = "text_completion"
    created: int = Field(default_factory=lambda: int(time.time()))
    model: str
    choices: list[CompletionChoice]
    usage: Usage
    routing: Routing


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int = Field(default_factory=lambda: int(time.time()))
    owned_by: str = "cascade-router"
    metadata: dict[str, Any] = {}


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


class ErrorBody(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorResponse(BaseModel):
    error: ErrorBody
