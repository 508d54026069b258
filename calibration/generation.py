"""Generation: one tier's answer with the per-token evidence the cascade decides from.

It lives in the request-time core because every decision reads it (features, signals, the
cascade state machine) while only the engines in `models` produce it; `models.engine`
re-exports it for the engines.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import numpy as np

__all__ = ["FinishReason", "Generation", "generation_from_dict", "generation_to_dict"]

FinishReason = Literal["stop", "length"]


@dataclass(frozen=True)
class Generation:
    """One completion with the per-token evidence the cascade needs.

    `top_logprobs[i]` lists up to k (token text, logprob) pairs for position i, best first;
    `logprobs[i]` is the chosen token's logprob (which may lie outside the top k when sampling).
    """

    text: str
    token_ids: tuple[int, ...]
    logprobs: tuple[float, ...]
    top_logprobs: tuple[tuple[tuple[str, float], ...], ...]
    finish_reason: FinishReason
    prompt_tokens: int
    completion_tokens: int = field(default=-1)
    # The same numbers as arrays, when the engine has them so (the feedback signal reads these:
    # unpacking T x k Python pairs costs more than computing every feature).
    logprob_values: np.ndarray | None = field(default=None, repr=False, compare=False)
    top_logprob_values: np.ndarray | None = field(default=None, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.completion_tokens == -1:
            object.__setattr__(self, "completion_tokens", len(self.token_ids))
        assert len(self.logprobs) == len(self.token_ids), "one logprob per generated token"

    def logprob_array(self) -> np.ndarray:
        """Chosen-token logprobs as a float64 vector, shape (T,)."""
        if self.logprob_values is not None:
            return self.logprob_values
        return np.asarray(self.logprobs, dtype=np.float64)

    def top_logprob_matrix(self) -> np.ndarray:
        """Top-k logprobs as a (T, k) matrix, rows padded with -inf where fewer than k came."""
        if self.top_logprob_values is not None:
            return self.top_logprob_values
        k = max((len(row) for row in self.top_logprobs), default=0)
        out = np.full((len(self.top_logprobs), k), -np.inf)
        for i, row in enumerate(self.top_logprobs):
            out[i, : len(row)] = [lp for _, lp in row]
        return out


def generation_to_dict(g: Generation) -> dict:
    """JSON-ready form: what caches and collected traces store (the arrays are derived)."""
    return {
        "text": g.text,
        "token_ids": list(g.token_ids),
        "logprobs": list(g.logprobs),
        "top_logprobs": [[list(p) for p in row] for row in g.top_logprobs],
        "finish_reason": g.finish_reason,
        "prompt_tokens": g.prompt_tokens,
        "completion_tokens": g.completion_tokens,
    }


def generation_from_dict(d: dict) -> Generation:
    return Generation(
        text=d["text"],
        token_ids=tuple(d["token_ids"]),
        logprobs=tuple(d["logprobs"]),
        top_logprobs=tuple(tuple((t, lp) for t, lp in row) for row in d["top_logprobs"]),
        finish_reason=d["finish_reason"],
        prompt_tokens=d["prompt_tokens"],
        completion_tokens=d["completion_tokens"],
    )
