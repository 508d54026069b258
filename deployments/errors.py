"""Errors as OpenAI-style JSON bodies with the right status code; never a stack trace.

`APIError` is what serving code raises; the handlers installed by `install_handlers` turn it,
pydantic's validation errors and malformed bodies into `{"error": {message, type, param, code}}`.
"""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from deployments.protocol import ErrorBody, ErrorResponse

__all__ = ["APIError", "describe_failure", "error_response", "install_handlers", "retryable"]

logger = logging.getLogger("ray.serve")

_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    404: "not_found_error",
    405: "invalid_request_error",
    413: "invalid_request_error",
    422: "invalid_request_error",
    503: "service_unavailable",
}


class APIError(Exception):
    def __init__(
        self, status: int, message: str, param: str | None = None, code: str | None = None
    ) -> None:
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code


def error_response(
    status: int, message: str, param: str | None = None, code: str | None = None
) -> JSONResponse:
    body = ErrorResponse(
        error=ErrorBody(
            message=message, type=_TYPES.get(status, "server_error"), param=param, code=code
        )
    )
    return JSONResponse(status_code=status, content=body.model_dump())


def _is_type_tag(part: str) -> bool:
    return "[" in part or part in {"str", "int", "float", "bool", "list", "dict", "none"}


def _param(loc: tuple) -> str | None:
    """pydantic's location ('body', 'messages', 0, 'content') as 'messages[0].content'."""
    # pydantic adds the union member tried ('str', 'list[TextPart]') after a union field.
    parts = [p for p in loc if p != "body" and not (isinstance(p, str) and _is_type_tag(p))]
    out = ""
    for p in parts:
        out += f"[{p}]" if isinstance(p, int) else (f".{p}" if out else str(p))
    return out or None


def install_handlers(app: FastAPI) -> None:
    @app.exception_handler(APIError)
    async def _api_error(_: Request, e: APIError) -> JSONResponse:
        return error_response(e.status, e.message, e.param, e.code)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, e: RequestValidationError) -> JSONResponse:
        errors = e.errors()
        first = errors[0] if errors else {"loc": (), "msg": "invalid request", "type": ""}
        if first.get("type") == "json_invalid":
            return error_response(400, "the request body is not valid JSON", None, "invalid_json")
        param = _param(tuple(first.get("loc", ())))
        msg = str(first.get("msg", "invalid value")).removeprefix("Value error, ")
        more = f" (and {len(errors) - 1} more problem(s))" if len(errors) > 1 else ""
        where = f"{param}: " if param else ""
        return error_response(400, f"{where}{msg}{more}", param, "invalid_value")

    @app.exception_handler(HTTPException)
    async def _http(_: Request, e: HTTPException) -> JSONResponse:
        """Starlette's own errors (unknown route 404, wrong method 405, an unreadable body
        400) in the same OpenAI shape as ours."""
        detail = e.detail if isinstance(e.detail, str) else "invalid request"
        if e.status_code == 400:
            detail = f"{detail}: send a UTF-8 JSON body"
        return error_response(e.status_code, detail, None, None)

    @app.exception_handler(Exception)
    async def _unexpected(_: Request, e: Exception) -> JSONResponse:
        logger.exception("unhandled error in the ingress")
        return error_response(500, f"internal error ({type(e).__name__}); see the server log")


def retryable(e: BaseException) -> bool:
    """Failures of the replica, not of the request: it died, was unreachable, or was
    shedding load. A second try may reach a healthy (or restarted) replica."""
    import ray.exceptions
    from ray.serve.exceptions import BackPressureError

    return isinstance(e, ray.exceptions.RayActorError | BackPressureError)


def describe_failure(e: BaseException) -> str:
    """A tier failure in one line for the routing record: the cause's type and last line."""
    cause = getattr(e, "cause", None)
    if cause is not None and cause is not e:
        e = cause
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[-1]}" if text else type(e).__name__
