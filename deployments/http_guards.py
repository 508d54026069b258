"""The ingress's two request guards, auth and the body limit, as plain ASGI middleware.

Why not `@app.middleware("http")`: Starlette runs such a function through BaseHTTPMiddleware,
which wraps every request in an anyio task group and re-streams its body and response; profiled
under 16 clients (py-spy, `docs/architecture.md` "Where a request's time goes") the two guards
written that way were a fifth of the ingress replica's CPU. These look at the ASGI scope and
step aside, so a request that passes both costs a dict lookup or two.

Both read their settings from the app's state (`app.state.auth`, `app.state.max_body_bytes`),
set by the Ingress replica at start-up.
"""

from __future__ import annotations

from starlette.datastructures import Headers
from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from calibration.config_sections import LimitArgs
from deployments.auth import TokenCheck
from deployments.errors import error_response

__all__ = ["BearerAuth", "BodyLimit"]

# until the replica has set app.state: the config's own default, not a second copy of it
DEFAULT_MAX_BODY_BYTES: int = LimitArgs.model_fields["max_body_bytes"].default
_WITH_BODY = frozenset({"POST", "PUT", "PATCH"})


class BodyLimit:
    """Refuse oversized bodies (413) before they are parsed: by the declared length, or, for a
    body sent without one (chunked), by counting it as it arrives; it stops reading at the limit,
    and a body under it is handed on whole, as it came."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = getattr(scope["app"].state, "max_body_bytes", DEFAULT_MAX_BODY_BYTES)
        declared = Headers(scope=scope).get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            await _too_big(limit)(scope, receive, send)
            return
        if declared is not None or scope["method"] not in _WITH_BODY:
            await self.app(scope, receive, send)
            return
        messages: list[Message] = []
        size = 0
        while True:
            message = await receive()
            messages.append(message)
            if message["type"] != "http.request":  # the client went away: pass it on
                break
            size += len(message.get("body", b""))
            if size > limit:
                await _too_big(limit)(scope, receive, send)
                return
            if not message.get("more_body", False):
                break

        async def replay() -> Message:
            return messages.pop(0) if messages else await receive()

        await self.app(scope, replay, send)


class BearerAuth:
    """401 unless the request carries a configured bearer token (when tokens are configured;
    `deployments.auth`). Outermost, so no unauthenticated body is read."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        check: TokenCheck | None = getattr(scope["app"].state, "auth", None)
        if scope["type"] == "http" and check is not None and check.enabled:
            request = Request(scope)
            if not check.allows(request.url.path, request.headers.get("authorization")):
                refusal = error_response(
                    401,
                    "a valid API key is required: send the header 'Authorization: Bearer <key>'",
                    code="invalid_api_key",
                )
                await refusal(scope, receive, send)
                return
        await self.app(scope, receive, send)


def _too_big(limit: int):
    return error_response(
        413, f"the request body is over the limit of {limit} bytes", code="body_too_large"
    )
