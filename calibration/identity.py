"""What a calibration was made for, and the check that it is applied to the same thing.

A conformal threshold is a statement about one model's scores under one decoding: change the
weights, the tokenizer, the dtype, the top-k the features are computed from, or the sampling
settings, and the guarantee no longer holds, silently. So every artifact records a
`TierIdentity` per tier (and the head its router's), and every consumer (serving at start-up,
`evaluate`, `calibrate` on old traces) compares it with what it is about to use.

`engine` is recorded, and compared as local vs remote only: the transformers and vLLM engines
(and `auto`, which picks whichever is installed; `ray_llm`, which is vLLM inside ray.serve.llm)
return the same raw logprobs for the same checkpoint (tests/test_vllm_engine.py), while a
remote server (`openai`) may run anything. Of the decoding settings, those that change which
tokens come out are compared (temperature, top_p, stop);
`max_tokens` is recorded but not compared: a greedy answer is the same up to the shorter
limit, and one cut by the limit says so in its finish reason.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

__all__ = ["IdentityMismatch", "TierIdentity", "check_identities", "mismatches"]

_LOCAL = {"auto", "transformers", "vllm", "ray_llm"}
_DECODING_COMPARED = ("temperature", "top_p", "stop")


class TierIdentity(BaseModel):
    """One tier's model as it produced (or will produce) the scores."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    model: str = Field(description="as configured: 'zoo:cheap', a hub id or a path")
    revision: str = Field(
        default="", description="hub commit, or a hash of the config and weight files"
    )
    tokenizer: str = Field(default="", description="hash of the tokenizer's files")
    engine: str = Field(default="", description="transformers, vllm, openai, ray_llm or auto")
    dtype: str = Field(default="", description="the weights' dtype as served")
    top_k: int = Field(default=5, ge=0, le=20, description="top logprobs per token")
    decoding: dict[str, Any] = Field(
        default_factory=dict, description="temperature, top_p, max_tokens, stop"
    )


class IdentityMismatch(ValueError):
    """An artifact made for other models than the ones configured; names both sides."""


def mismatches(recorded: TierIdentity, current: TierIdentity) -> list[str]:
    """Each field that differs, as `field: artifact X, config Y`; empty when they agree.

    A field left empty on either side (an old artifact, a hosted model without a revision)
    is not evidence of a difference and is not compared."""
    out = []
    for field in TierIdentity.model_fields:
        a, b = getattr(recorded, field), getattr(current, field)
        if field == "engine":
            a, b = ("local" if x in _LOCAL else x for x in (a, b))
        if field == "decoding":
            a = {k: a[k] for k in _DECODING_COMPARED if k in a and k in b}
            b = {k: b[k] for k in a}
        if a in ("", {}) or b in ("", {}) or (field == "dtype" and "auto" in (a, b)):
            continue  # unknown on one side (a hosted model, an old artifact): not a difference
        if a != b:
            out.append(f"{field}: artifact {a!r}, config {b!r}")
    return out


def check_identities(
    recorded: dict[str, TierIdentity],
    current: dict[str, TierIdentity],
    *,
    what: str,
    allow_mismatch: bool = False,
) -> list[str]:
    """Raise IdentityMismatch for any tier whose recorded identity differs from the current
    one, unless `allow_mismatch`, in which case the differences are returned for the caller to
    report loudly (log, routing record, metrics)."""
    problems = []
    for tier, rec in recorded.items():
        if tier not in current:
            continue  # coverage of the configured tiers is checked by the artifact itself
        diff = mismatches(rec, current[tier])
        if diff:
            problems.append(f"tier {tier!r}: " + "; ".join(diff))
    if problems and not allow_mismatch:
        raise IdentityMismatch(
            f"{what} was made for other models than the ones configured:\n  "
            + "\n  ".join(problems)
            + "\nRecalibrate for these models (python -m calibration collect / calibrate), "
            "or set `allow_mismatch: true` under calibration to serve it anyway."
        )
    return problems
