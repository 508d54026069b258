"""This deployment's limits, written into its OpenAPI schema (served at /openapi.json)."""

from __future__ import annotations

import copy
from typing import Any

from calibration.config import AppArgs
from deployments.protocol import ErrorResponse

__all__ = ["with_limits"]


def with_limits(schema: dict[str, Any], args: AppArgs) -> dict[str, Any]:
    """A copy of the OpenAPI schema with this deployment's own limits: the model names it
    serves, the largest max_tokens and prompt it accepts, non-empty stop strings, a non-empty
    user message; and the errors it really returns (OpenAI-shaped 4xx/5xx, not FastAPI's 422).
    Clients and schema fuzzers then see what is valid here, not just types."""
    schema = copy.deepcopy(schema)
    _document_errors(schema)
    limits = args.limits
    models = ["cascade", *(t.name for t in args.tiers)]
    defs = schema.get("components", {}).get("schemas", {})
    for name in ("ChatCompletionRequest", "CompletionRequest"):
        props = defs.get(name, {}).get("properties", {})
        if "model" in props:
            props["model"]["enum"] = models
        for option in props.get("max_tokens", {}).get("anyOf", []):
            if option.get("type") == "integer":
                option["maximum"] = limits.max_tokens
        for option in props.get("stop", {}).get("anyOf", []):  # stop strings are non-empty
            if option.get("type") == "string":
                option["minLength"] = 1
            elif option.get("type") == "array":
                option.setdefault("items", {})["minLength"] = 1
                option["maxItems"] = 4
    chat = defs.get("ChatCompletionRequest", {}).get("properties", {})
    if "messages" in chat:  # at least one non-empty user message
        chat["messages"]["contains"] = {
            "type": "object",
            "properties": {
                "role": {"const": "user"},
                "content": {"type": "string", "pattern": r"\S"},
            },
            "required": ["role", "content"],
        }
    prompt = defs.get("CompletionRequest", {}).get("properties", {}).get("prompt", {})
    content = defs.get("ChatMessage", {}).get("properties", {}).get("content", {})
    for field in (prompt, content):
        for option in field.get("anyOf", [field]):
            if option.get("type") == "string":
                option["maxLength"] = limits.max_prompt_chars
    return schema


_ERRORS = {
    "400": "Invalid request: error.message says what to fix, error.param names the field.",
    "401": "Auth is on and no valid bearer token was sent.",
    "413": "The body is over the configured size limit.",
    "503": "No tier could answer (error.message says which failed how).",
}


def _document_errors(schema: dict[str, Any]) -> None:
    """Replace FastAPI's 422 HTTPValidationError with the OpenAI error object this service
    returns, on every operation that takes a body."""
    defs = schema.setdefault("components", {}).setdefault("schemas", {})
    error = ErrorResponse.model_json_schema(ref_template="#/components/schemas/{model}")
    defs.update(error.pop("$defs", {}))
    defs["ErrorResponse"] = error
    ref = {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorResponse"}}}
    for methods in schema.get("paths", {}).values():
        for op in methods.values():
            responses = op.get("responses", {})
            if responses.pop("422", None) is None:
                continue
            for code, text in _ERRORS.items():
                responses[code] = {"description": text, "content": ref}
    for unused in ("HTTPValidationError", "ValidationError"):
        defs.pop(unused, None)
