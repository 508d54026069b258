"""Ingress: the OpenAI-compatible HTTP routes over the cascade.

    POST /v1/chat/completions   POST /v1/completions   GET /v1/models
    GET /healthz (liveness)   GET /readyz (every tier answers)   GET /stats
    POST /v1/feedback (a verdict on an answer, by its id; `deployments/feedback.py`)

Routes only translate HTTP <-> `CascadeServer`; the cascade itself is in `serving.py` and its
decisions in `calibration`. Calibrated thresholds arrive through `user_config`
(`reconfigure`), so `serve deploy` with a new threshold updates them without restarting replicas.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse, JSONResponse, Response, StreamingResponse
from pydantic import BaseModel
from ray import serve

from calibration.config import AppArgs
from deployments.auth import TokenCheck, load_tokens
from deployments.errors import APIError, install_handlers
from deployments.feedback import FeedbackDesk, FeedbackRejected, json_safe
from deployments.feedback_protocol import FeedbackRequest, FeedbackResponse
from deployments.http_guards import BearerAuth, BodyLimit
from deployments.llm import TierRequest
from deployments.openai_format import (
    chat_logprobs,
    completion_logprobs,
    requested_k,
    sse_chunks,
    usage,
)
from deployments.openapi_limits import with_limits
from deployments.protocol import (
    AssistantMessage,
    ChatChoice,
    ChatCompletionRequest,
    ChatCompletionResponse,
    CompletionChoice,
    CompletionRequest,
    CompletionResponse,
    ErrorResponse,
    ModelCard,
    ModelList,
)
from deployments.serving import CascadeResult, CascadeServer
from models.engine import SamplingSettings
from models.identity import configured_identities

__all__ = ["Ingress", "app"]

logger = logging.getLogger("ray.serve")

# /openapi.json and /docs are routes of the deployment (below), so that the schema they serve
# carries this deployment's limits; FastAPI's own would describe field types only.
app = FastAPI(
    title="cascade-router", version="0.1.0", openapi_url=None, docs_url=None, redoc_url=None
)
install_handlers(app)


# Registered inner first: BearerAuth, added last, runs first, so no unauthenticated body is read.
app.add_middleware(BodyLimit)
app.add_middleware(BearerAuth)


def _json(body: BaseModel) -> Response:
    """pydantic's own serializer (Rust) straight to bytes: FastAPI's default for a returned
    model walks it again in Python (`jsonable_encoder`) before encoding, on every answer."""
    return Response(content=body.model_dump_json(), media_type="application/json")


@serve.deployment
@serve.ingress(app)
class Ingress:
    def __init__(self, args: dict[str, Any], tiers: dict[str, Any], router: Any | None) -> None:
        self.base_args = AppArgs.model_validate(args)
        self.server = CascadeServer(self.base_args, tiers, router)
        self.feedback = FeedbackDesk(self.server, self.base_args.adaptive)
        # what each tier serves, as calibration artifacts record it (GET /v1/models): computed
        # once, since tiers do not change without a restart (reconfigure moves thresholds only)
        self.identities = {
            t: i.model_dump(mode="json") for t, i in configured_identities(self.base_args).items()
        }
        app.state.max_body_bytes = self.base_args.limits.max_body_bytes
        self._openapi: dict | None = None
        self._serving, self.config_refused = False, None  # see reconfigure
        auth = self.base_args.auth
        app.state.auth = TokenCheck(load_tokens(auth), auth.open_paths)
        logger.info("ingress auth: %s", "bearer tokens" if app.state.auth.enabled else "off")

    def reconfigure(self, user_config: dict[str, Any]) -> None:
        """`serve deploy` with a new user_config: thresholds (`calibration.threshold`,
        `calibration.thresholds`, `calibration.file`) and `router.threshold`, applied without
        a restart. `adaptive` settings apply too; a tier given a new threshold restarts its
        adaptation from that threshold (logged; /stats `adaptive.tiers.<tier>.last_reset`).

        A bad one, while this replica is starting, raises: it does not start and Serve reports
        the error. Once it serves, a bad one is refused (logged, /stats `config_refused`) and
        the running config keeps serving: Serve stops a replica whose reconfigure raises
        (seen with Ray 2.60, despite its "previous version keeps running" message), so raising
        here would turn a typo in `serve deploy` into an outage."""
        try:
            self.server.configure(self.base_args.reconfigured(user_config))
        except Exception as e:
            if not self._serving:
                raise
            self.config_refused = {"user_config": user_config, "error": str(e)}
            logger.error("user_config refused; the running config keeps serving: %s", e)
            return
        self.config_refused = None

    def check_health(self) -> None:
        """Serve's first health check follows the start-up reconfigure: from then on the
        replica serves, and a bad user_config is refused rather than raised."""
        self._serving = True

    # --- routes ----------------------------------------------------------------------------

    @app.get("/healthz")
    async def healthz(self) -> dict:
        return {"status": "ok", "tiers": self.server.policy.tier_names}

    @app.get("/readyz")
    async def readyz(self) -> JSONResponse:
        """Ready when every tier and the router answer; 503 with the laggards otherwise.
        (/healthz only says the ingress is up: load balancers should route on this one.)"""
        checks = await self.server.readiness()
        ready = all(v == "ok" for v in checks.values())
        return JSONResponse(status_code=200 if ready else 503, content={"ready": ready, **checks})

    @app.get("/stats")
    async def stats(self) -> dict:
        tiers = self.server.calibration.tiers
        per_tier = {
            name: {
                "mode": c.mode,
                "alpha": c.alpha,
                "threshold": c.threshold,
                "scorer": c.scorer.name,
            }
            for name, c in tiers.items()
        }
        first = per_tier[self.server.policy.tier_names[0]]
        return {
            **self.server.stats.as_dict(),
            "calibration": {**first, "tiers": per_tier},
            "router_threshold": self.server.policy.router_threshold,
            "drift": self.server.drift_stats(),
            "calibration_mismatch": self.server.identity_mismatch,
            "feedback": self.feedback.as_dict(),
            "adaptive": json_safe(self.server.adaptive.state()),
            "config_refused": json_safe(self.config_refused),
        }

    @app.post(
        "/v1/feedback",
        response_model=FeedbackResponse,
        responses={
            404: {"model": ErrorResponse, "description": "Never served here, expired, evicted."},
            409: {"model": ErrorResponse, "description": "The answer already has a verdict."},
        },
    )
    async def feedback_verdict(self, body: FeedbackRequest):
        """A verdict on a served answer, by its response `id`: 'right', 'wrong', or 'strong'
        (the top tier judges). 404: id never served here, expired or evicted; 409: it already
        has a verdict. With adaptive.enabled the label moves the thresholds (`updates`)."""
        try:
            return await self.feedback.apply(body)
        except FeedbackRejected as e:
            return e.response()

    @app.get("/openapi.json", include_in_schema=False)
    async def openapi(self, request: Request) -> dict:
        if self._openapi is None:
            self._openapi = with_limits(request.app.openapi(), self.server.args)
        return self._openapi

    @app.get("/docs", include_in_schema=False)
    async def docs(self) -> HTMLResponse:
        return get_swagger_ui_html(openapi_url="/openapi.json", title="cascade-router")

    @app.get("/v1/models")
    async def models(self) -> ModelList:
        """The cascade, then one card per tier (`model` = its name forces it). A tier's
        `metadata.identity` is the `TierIdentity` its calibration must have been made for:
        `collect --endpoint` records it with the traces it collects from here."""
        cards = [ModelCard(id="cascade", metadata={"tiers": self.server.policy.tier_names})]
        cards += [
            ModelCard(
                id=t.name,
                metadata={
                    "model": t.model,
                    "cost_per_request": t.cost_per_request,
                    "identity": self.identities.get(t.name),
                },
            )
            for t in self.server.args.tiers
        ]
        return ModelList(data=cards)

    @app.post("/v1/chat/completions")
    async def chat(self, body: ChatCompletionRequest):
        messages = tuple({"role": m.role, "content": m.text} for m in body.messages)
        query = next(m.text for m in reversed(body.messages) if m.role == "user")
        k = body.top_logprobs if body.logprobs and body.top_logprobs else 0
        request = self._tier_request(
            body, messages=messages, chars=sum(len(m["content"]) for m in messages)
        )
        result = await self.server.serve(request, body.model, query, body.effective_task_type)
        rid = self.feedback.remember(result, request, "chatcmpl")  # open for POST /v1/feedback
        if body.stream:
            return self._stream(result, body, chat=True)
        gen = result.generation
        return _json(
            ChatCompletionResponse(
                id=rid,
                model=result.tier,
                choices=[
                    ChatChoice(
                        message=AssistantMessage(content=gen.text),
                        finish_reason=gen.finish_reason,
                        logprobs=chat_logprobs(gen, k) if body.logprobs else None,
                    )
                ],
                usage=usage(gen),
                routing=result.routing,
            )
        )

    @app.post("/v1/completions")
    async def completions(self, body: CompletionRequest):
        prompt: str = body.prompt  # type: ignore[assignment]  (validated to one string)
        request = self._tier_request(body, prompt=prompt, chars=len(prompt))
        result = await self.server.serve(request, body.model, prompt, body.effective_task_type)
        rid = self.feedback.remember(result, request, "cmpl")  # open for POST /v1/feedback
        if body.stream:
            return self._stream(result, body, chat=False)
        gen = result.generation
        return _json(
            CompletionResponse(
                id=rid,
                model=result.tier,
                choices=[
                    CompletionChoice(
                        text=gen.text,
                        finish_reason=gen.finish_reason,
                        logprobs=completion_logprobs(gen, body.logprobs)
                        if body.logprobs is not None
                        else None,
                    )
                ],
                usage=usage(gen),
                routing=result.routing,
            )
        )

    # --- helpers -----------------------------------------------------------------------------

    def _tier_request(
        self, body, *, chars: int, prompt: str | None = None, messages=None
    ) -> TierRequest:
        limits = self.server.args.limits
        if chars > limits.max_prompt_chars:
            raise APIError(
                400,
                f"the prompt is {chars} characters long, above the limit of "
                f"{limits.max_prompt_chars}; shorten it",
                param="messages" if messages else "prompt",
                code="prompt_too_long",
            )
        max_tokens = body.max_tokens or limits.default_max_tokens
        if max_tokens > limits.max_tokens:
            raise APIError(
                400,
                f"max_tokens is {max_tokens}, above this server's limit of {limits.max_tokens}",
                param="max_tokens",
                code="max_tokens_too_large",
            )
        settings = SamplingSettings(
            max_tokens=max_tokens,
            temperature=body.temperature,
            top_p=body.top_p,
            stop=tuple(body.stop),
            top_logprobs=max(limits.top_logprobs, requested_k(body)),
            seed=body.seed,
        )
        return TierRequest(
            settings=settings,
            prompt=prompt,
            messages=messages,
            max_prompt_tokens=limits.max_prompt_tokens,
        )

    def _stream(self, result: CascadeResult, body, *, chat: bool) -> StreamingResponse:
        return StreamingResponse(sse_chunks(result, body, chat), media_type="text/event-stream")
