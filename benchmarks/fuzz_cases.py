"""Hypothesis strategies for requests the OpenAPI schema does not describe: valid bodies with
fields swapped for edge values (huge and negative integers, NaN and infinities, lone
surrogates, control characters, nested junk), JSON that is not an object, broken and deeply
nested JSON, raw bytes under any content type, odd methods and paths.

Schemathesis (in `bench_fuzz`) covers what the schema says; these cover what a client can send
anyway, so that every one of them gets a 4xx and none a 5xx.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from hypothesis import strategies as st

__all__ = ["ROUTES", "RawRequest", "raw_requests"]

ROUTES = ["/v1/chat/completions", "/v1/completions", "/v1/models", "/stats", "/healthz", "/readyz"]
ROUTES += ["/v1/feedback"]
POSTS = ROUTES[:2]
JSON = "application/json"


@dataclass(frozen=True)
class RawRequest:
    family: str  # which strategy made it
    method: str
    path: str
    headers: dict[str, str]
    content: bytes | None

    def describe(self, limit: int = 400) -> str:
        body = "" if self.content is None else f" body={self.content[:limit]!r}"
        more = (
            f" (+{len(self.content) - limit} bytes)"
            if self.content and len(self.content) > limit
            else ""
        )
        return f"{self.method} {self.path} headers={self.headers}{body}{more}"


EDGE_INTS = [0, -1, 1, 2**31, 2**53 + 1, 2**63 - 1, 2**63, 2**64, -(2**63) - 1, 10**30, -(10**30)]
EDGE_FLOATS = [float("nan"), float("inf"), float("-inf"), 1e308, -0.0, 5e-324, 0.5, 2.0000001]
EDGE_TEXT = ["", " ", "\x00", "\ud800", "\udfff", "\u202e1+1", "🙂" * 12, "a\r\nb", "\t", "\\"]

edge_ints = st.sampled_from(EDGE_INTS) | st.integers()
edge_floats = st.sampled_from(EDGE_FLOATS) | st.floats()
edge_text = st.sampled_from(EDGE_TEXT) | st.text(max_size=60)
leaves = st.none() | st.booleans() | edge_ints | edge_floats | edge_text
junk = st.recursive(
    leaves,
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(edge_text, inner, max_size=5),
    max_leaves=16,
)
value = edge_ints | edge_floats | edge_text | junk

CHAT_FIELDS = ["model", "messages", "max_tokens", "max_completion_tokens", "temperature"]
CHAT_FIELDS += ["top_p", "n", "stop", "seed", "stream", "stream_options", "user", "task_type"]
CHAT_FIELDS += ["metadata", "logprobs", "top_logprobs"]
COMPLETION_FIELDS = [f for f in CHAT_FIELDS if f not in ("messages", "top_logprobs")]
COMPLETION_FIELDS += ["prompt", "echo", "logprobs"]
ROLES = ["user", "system", "assistant", "developer", "tool", "", "USER", "function"]

message = st.fixed_dictionaries(
    {"role": st.sampled_from(ROLES) | edge_text},
    optional={
        "content": edge_text
        | st.lists(st.fixed_dictionaries({"type": st.just("text"), "text": edge_text}), max_size=3)
        | junk,
        "name": edge_text,
    },
)


def _encode(body: object, ascii_only: bool) -> bytes:
    """JSON as a client might send it: NaN and Infinity literals allowed; without
    `ascii_only`, lone surrogates become invalid UTF-8 bytes."""
    return json.dumps(body, allow_nan=True, ensure_ascii=ascii_only).encode(
        "utf-8", "surrogatepass"
    )


@st.composite
def mutated(draw) -> RawRequest:
    """A valid chat or completion body with 1-4 fields replaced, or messages rebuilt."""
    chat = draw(st.booleans())
    prompt = draw(st.sampled_from(["1+1", "rev abc", "max 3 9 4", "12-5"]))
    if chat:
        body: dict = {"model": "cascade", "messages": [{"role": "user", "content": prompt}]}
        fields = CHAT_FIELDS
    else:
        body, fields = {"model": "cascade", "prompt": prompt}, COMPLETION_FIELDS
    body["model"] = draw(st.sampled_from(["cascade", "cheap", "strong"]))
    body.update(
        draw(st.dictionaries(st.sampled_from(fields) | edge_text, value, min_size=1, max_size=4))
    )
    if chat and draw(st.booleans()):
        body["messages"] = draw(st.lists(message, max_size=6))
    path = POSTS[0] if chat else POSTS[1]
    return RawRequest(
        "mutated", "POST", path, {"content-type": JSON}, _encode(body, draw(st.booleans()))
    )


@st.composite
def not_an_object(draw) -> RawRequest:
    body = draw(junk.filter(lambda v: not isinstance(v, dict)))
    return RawRequest(
        "not-an-object",
        "POST",
        draw(st.sampled_from(POSTS)),
        {"content-type": JSON},
        _encode(body, True),
    )


@st.composite
def broken_json(draw) -> RawRequest:
    """A valid body cut short or spliced with bytes, deep nesting, or a 5000-digit number."""
    good = _encode({"model": "cascade", "messages": [{"role": "user", "content": "1+1"}]}, True)
    how = draw(st.sampled_from(["cut", "splice", "deep", "digits", "duplicate"]))
    if how == "cut":
        content = good[: draw(st.integers(0, len(good) - 1))]
    elif how == "splice":
        at = draw(st.integers(0, len(good)))
        content = good[:at] + draw(st.binary(min_size=1, max_size=8)) + good[at:]
    elif how == "deep":
        depth = draw(st.sampled_from([100, 1_000, 10_000, 100_000]))
        content = good[:-1] + b', "metadata": ' + b"[" * depth + b"]" * depth + b"}"
    elif how == "digits":
        content = good[:-1] + b', "seed": ' + b"9" * draw(st.sampled_from([20, 400, 5000])) + b"}"
    else:
        content = good[:-1] + b', "model": "strong", "model": 7}'
    return RawRequest(
        f"broken-{how}", "POST", draw(st.sampled_from(POSTS)), {"content-type": JSON}, content
    )


CONTENT_TYPES = [
    JSON,
    "text/plain",
    "multipart/form-data; boundary=x",
    "application/x-www-form-urlencoded",
]
CONTENT_TYPES += ["", "application/json; charset=latin-1", "application/vnd.api+json", "a/b/c"]


@st.composite
def raw_bytes(draw) -> RawRequest:
    headers = {"content-type": draw(st.sampled_from(CONTENT_TYPES))}
    if draw(st.booleans()):
        headers["content-encoding"] = draw(st.sampled_from(["gzip", "br", "identity", "junk"]))
    content = draw(st.binary(max_size=600))
    return RawRequest(
        "raw-bytes",
        draw(st.sampled_from(["POST", "PUT"])),
        draw(st.sampled_from(ROUTES)),
        headers,
        content,
    )


JUNK_PATHS = ["/", "/v1", "/v1/", "/v1/chat/completions/", "//v1/models", "/v1/models/cascade"]
JUNK_PATHS += ["/%00", "/v1/%ff", "/..%2f..%2fetc/passwd", "/" + "a" * 4000, "/stats?x=%zz"]


@st.composite
def method_and_path(draw) -> RawRequest:
    method = draw(st.sampled_from(["GET", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "HEAD"]))
    path = draw(st.sampled_from(ROUTES + JUNK_PATHS))
    query = draw(st.sampled_from(["", "?a=1", "?model=strong&stream=true", "?" + "x=y&" * 200]))
    return RawRequest("method-path", method, path + query, {}, None)


@st.composite
def feedback(draw) -> RawRequest:
    """A verdict on an id never served (or on junk): a 4xx, never a 5xx."""
    body = draw(
        st.fixed_dictionaries(
            {},
            optional={
                "id": st.sampled_from(["chatcmpl-0", "cmpl-x" * 30]) | edge_text | junk,
                "verdict": st.sampled_from(["right", "wrong", "strong", "RIGHT"]) | junk,
                "extra": junk,
            },
        )
    )
    content = _encode(body, draw(st.booleans()))
    return RawRequest("feedback", "POST", "/v1/feedback", {"content-type": JSON}, content)


def raw_requests() -> st.SearchStrategy[RawRequest]:
    """All families; mutated bodies weigh most (they reach the deepest code)."""
    return st.one_of(
        feedback(),
        mutated(),
        mutated(),
        mutated(),
        not_an_object(),
        broken_json(),
        raw_bytes(),
        method_and_path(),
    )
