"""build_app(args): the one place the Serve graph is wired; serve_config.yaml points here.

    applications:
      - import_path: deployments.app:build_app
        args: {tiers: [...], router: {...}, calibration: {...}, limits: {...}}

Per-deployment options (autoscaling, CPUs, GPUs) live in the config file's `deployments:`
list, keyed by the names given here: `Ingress`, `Router`, and `Tier-<name>` for each tier.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from ray.serve import Application

__all__ = [
    "AppArgs",
    "AuthArgs",
    "CalibrationArgs",
    "FaultArgs",
    "LimitArgs",
    "RouterArgs",
    "TierArgs",
    "build_app",
    "tier_deployment_name",
]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class FaultArgs(_Strict):
    """Chaos testing: make a tier fail on purpose, to see the cascade degrade as designed.

    Off unless configured. Each call draws once: with `error_rate` it raises, else with
    `hang_rate` it sleeps `hang_s` before answering (past a short `timeout_s`, a hang)."""

    error_rate: float = Field(default=0.0, ge=0, le=1)
    hang_rate: float = Field(default=0.0, ge=0, le=1)
    hang_s: float = Field(default=30.0, ge=0)
    seed: int | None = None


class TierArgs(_Strict):
    name: str = Field(description="Tier name; a request can force it as its `model`.")
    model: str = Field(description="'zoo:cheap' / 'zoo:strong', a Hugging Face id, or a path.")
    engine: Literal["auto", "transformers", "vllm"] = Field(
        default="auto", description="auto: vLLM if importable, else transformers."
    )
    engine_kwargs: dict[str, Any] = Field(
        default_factory=dict, description="Passed to the engine (dtype, max_model_len, ...)."
    )
    trust_remote_code: bool = Field(
        default=False, description="Run the checkpoint's own code; only for a model you trust."
    )
    cost_per_request: float = Field(default=0.0, ge=0)
    cost_per_1k_output_tokens: float = Field(default=0.0, ge=0)
    timeout_s: float = Field(default=60.0, gt=0, description="Per-call timeout at this tier.")
    retries: int = Field(
        default=1,
        ge=0,
        le=5,
        description="Extra tries after a call fails for a reason a retry can fix (the replica "
        "died or was unavailable); never after a timeout or a refused input.",
    )
    retry_backoff_s: float = Field(
        default=0.2, ge=0, description="Wait before retry i: retry_backoff_s * 2**i."
    )
    failed_call_cost: float = Field(
        default=0.0,
        ge=0,
        description="What a failed or timed-out call costs (e.g. a provider that bills it).",
    )
    fault: FaultArgs | None = Field(default=None, description="Chaos testing only.")
    max_batch_size: int = Field(default=16, ge=1, description="Dynamic batching (transformers).")
    batch_wait_timeout_s: float = Field(default=0.01, ge=0)

    @field_validator("engine_kwargs")
    @classmethod
    def _no_hidden_remote_code(cls, v: dict[str, Any]) -> dict[str, Any]:
        if "trust_remote_code" in v:
            raise ValueError("set trust_remote_code on the tier itself, not in engine_kwargs")
        return v

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not v or v == "cascade" or not v.replace("-", "").replace("_", "").isalnum():
            raise ValueError(f"tier name must be alphanumeric (with - or _), not 'cascade': {v!r}")
        return v


class RouterArgs(_Strict):
    enabled: bool = True
    model: str = Field(default="zoo:router", description="A sequence-classifier checkpoint.")
    threshold: float = Field(
        default=0.7,
        ge=0,
        le=1,
        description="'complex' with confidence >= this starts at the top tier.",
    )
    timeout_s: float = Field(default=10.0, gt=0)
    trust_remote_code: bool = Field(
        default=False, description="Run the checkpoint's own code; only for a model you trust."
    )


class CalibrationArgs(_Strict):
    file: str | None = Field(
        default="zoo",
        description="Calibration artifact (JSON) for the cheap tier; 'zoo' = the one built with "
        "the embedded zoo; null = the seed's fixed heuristic thresholds.",
    )
    threshold: float | None = Field(
        default=None, description="Override the artifact's threshold (e.g. via user_config)."
    )


class LimitArgs(_Strict):
    default_max_tokens: int = Field(default=16, ge=1)
    max_tokens: int = Field(default=256, ge=1, description="Largest max_tokens a request may ask.")
    max_prompt_chars: int = Field(default=8000, ge=1)
    max_prompt_tokens: int = Field(default=2048, ge=1)
    max_body_bytes: int = Field(default=1_000_000, ge=1024)
    top_logprobs: int = Field(default=5, ge=1, le=20, description="k for the feedback signal.")


class AuthArgs(_Strict):
    """Optional bearer-token auth on the ingress: on when any token is configured.

    Only where the tokens come from is config; the tokens themselves are read at start-up and
    never logged, returned or put in the config."""

    tokens_env: str | None = Field(
        default="CASCADE_API_KEYS",
        description="Environment variable with comma-separated tokens (unset or empty: none).",
    )
    tokens_file: str | None = Field(default=None, description="A file with one token a line.")
    open_paths: list[str] = Field(
        default_factory=lambda: ["/healthz", "/readyz"],
        description="Paths served without a token (probes).",
    )


class AppArgs(_Strict):
    tiers: list[TierArgs] = Field(min_length=2, description="Cheapest first.")
    router: RouterArgs = Field(default_factory=RouterArgs)
    calibration: CalibrationArgs = Field(default_factory=CalibrationArgs)
    limits: LimitArgs = Field(default_factory=LimitArgs)
    auth: AuthArgs = Field(default_factory=AuthArgs)
    task_floors: dict[str, str] = Field(
        default_factory=dict, description="Request task_type -> lowest tier allowed."
    )
    deployment_options: dict[str, dict[str, Any]] = Field(
        default_factory=dict,
        description="Deployment name (Ingress, Router, Tier-<name>) -> Serve options "
        "(ray_actor_options, autoscaling_config, max_ongoing_requests, ...), for programmatic "
        "use; config files set these in their `deployments:` list instead.",
    )

    @model_validator(mode="after")
    def _unique(self) -> AppArgs:
        names = [t.name for t in self.tiers]
        if len(set(names)) != len(names):
            raise ValueError(f"tier names must be unique, got {names}")
        for task, tier in self.task_floors.items():
            if tier not in names:
                raise ValueError(f"task floor {task!r} names unknown tier {tier!r}; tiers: {names}")
        return self


def tier_deployment_name(tier: str) -> str:
    return f"Tier-{tier}"


def build_app(args: dict[str, Any] | AppArgs) -> Application:
    """The bound graph: one LLMTier per tier, the router, and the ingress over them."""
    from deployments.ingress import Ingress
    from deployments.llm import LLMTier
    from deployments.router import RouterDeployment

    args = args if isinstance(args, AppArgs) else AppArgs.model_validate(args)
    opts = args.deployment_options
    tiers = {}
    for t in args.tiers:
        name = tier_deployment_name(t.name)
        tiers[t.name] = LLMTier.options(name=name, **opts.get(name, {})).bind(
            name=t.name,
            model=t.model,
            engine=t.engine,
            engine_kwargs={**t.engine_kwargs, "trust_remote_code": t.trust_remote_code},
            max_batch_size=t.max_batch_size,
            batch_wait_timeout_s=t.batch_wait_timeout_s,
            fault=t.fault.model_dump() if t.fault else None,
        )
    router = None
    if args.router.enabled:
        router = RouterDeployment.options(name="Router", **opts.get("Router", {})).bind(
            model=args.router.model, trust_remote_code=args.router.trust_remote_code
        )
    return Ingress.options(**opts.get("Ingress", {})).bind(args.model_dump(), tiers, router)
