"""The application's one typed config, read once: what `serve_config.yaml` says, validated.

Everything that needs to know the cascade takes an `AppArgs`: `deployments.app.build_app`, the
in-process runner, the offline evaluation, the conformal and head CLIs, the benchmarks. Ray-free,
so the core, the offline tools and the tests read a config file exactly as serving does:

    args = AppArgs.from_serve_config("serve_config.yaml")    # the application named "cascade"
    args.policy()                   # the tier ladder (CascadePolicyConfig) serving decides with
    args.reconfigured({"router": {"threshold": 0.8}})       # what `serve deploy` would apply

Deployment names in the graph: `Ingress`, `Router`, and `Tier-<name>` for each tier.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import Field, ValidationError, field_validator, model_validator

from calibration.config_sections import (
    AdaptiveArgs,
    AuthArgs,
    DriftArgs,
    FaultArgs,
    LimitArgs,
    Strict,
)
from calibration.policy import CascadePolicyConfig, TierConfig

__all__ = [
    "INGRESS",
    "RECONFIGURABLE",
    "ROUTER",
    "SERVE_CONFIG",
    "AdaptiveArgs",
    "AppArgs",
    "AuthArgs",
    "CalibrationArgs",
    "DriftArgs",
    "FaultArgs",
    "LimitArgs",
    "RouterArgs",
    "TierArgs",
    "tier_deployment_name",
]

SERVE_CONFIG = Path(__file__).resolve().parents[1] / "serve_config.yaml"
"""The Ray Serve config at the repository root: the product's default application."""
INGRESS, ROUTER = "Ingress", "Router"
RECONFIGURABLE = {
    "calibration": {"file", "threshold", "thresholds"},
    "router": {"threshold"},
    "drift": {"enabled", "window", "min_samples", "alpha", "test_every"},
    "adaptive": {"enabled", "gamma", "min_feedback", "max_alpha_ratio"},
}
"""user_config keys `serve deploy` may change on a running graph without restarting it."""


def tier_deployment_name(tier: str) -> str:
    return f"Tier-{tier}"


_Strict = Strict


class TierArgs(_Strict):
    name: str = Field(description="Tier name; a request can force it as its `model`.")
    model: str = Field(description="'zoo:cheap' / 'zoo:strong', a Hugging Face id, or a path.")
    engine: Literal["auto", "transformers", "vllm", "openai", "ray_llm"] = Field(
        default="auto",
        description="auto: vLLM if importable, else transformers; openai: an OpenAI-compatible "
        "server (engine_kwargs: base_url, api_key_env), `model` being its model name; "
        "ray_llm: a ray.serve.llm LLMServer deployment (vLLM), engine_kwargs being its "
        "vLLM engine args and llm_config its other LLMConfig fields.",
    )
    engine_kwargs: dict[str, Any] = Field(
        default_factory=dict, description="Passed to the engine (dtype, max_model_len, ...)."
    )
    llm_config: dict[str, Any] = Field(
        default_factory=dict,
        description="engine: ray_llm only. ray.serve.llm LLMConfig fields passed through as "
        "given (placement_group_config, deployment_config, accelerator_type, runtime_env, ...); "
        "model_loading_config comes from `name`/`model`, engine_kwargs from `engine_kwargs`.",
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
    batch_wait_timeout_s: float = Field(
        default=0.0,
        ge=0,
        description=(
            "How long a batch waits to fill. 0: it takes the requests that queued while the "
            "last batch ran, so a lone request waits for nothing and load still batches."
        ),
    )
    health_probe_interval_s: float = Field(
        default=30.0, gt=0, description="Health check: a 1-token probe when idle this long."
    )
    health_probe_timeout_s: float = Field(
        default=10.0, gt=0, description="Health check: a probe slower than this fails it."
    )
    health_startup_grace_s: float | None = Field(
        default=None,
        ge=0,
        description=(
            "Health check: until the engine first answers, a probe that times out does not fail "
            "the replica for this long after it started. A ray_llm tier's engine is another "
            "deployment (its LLMServer), which loads its model after the tier's replica is up. "
            "None: 600 for ray_llm, 0 for engines that load in the replica's constructor."
        ),
    )

    @property
    def startup_grace_s(self) -> float:
        """`health_startup_grace_s`, its None resolved for the tier's engine."""
        if self.health_startup_grace_s is not None:
            return self.health_startup_grace_s
        return 600.0 if self.engine == "ray_llm" else 0.0

    @field_validator("engine_kwargs")
    @classmethod
    def _no_hidden_remote_code(cls, v: dict[str, Any]) -> dict[str, Any]:
        if "trust_remote_code" in v:
            raise ValueError("set trust_remote_code on the tier itself, not in engine_kwargs")
        return v

    @model_validator(mode="after")
    def _llm_config_only_for_ray_llm(self) -> TierArgs:
        if self.llm_config and self.engine != "ray_llm":
            raise ValueError(
                f"tier {self.name!r}: llm_config is read only with engine: ray_llm "
                f"(this tier's engine is {self.engine!r})"
            )
        owned = sorted({"model_loading_config", "engine_kwargs"} & set(self.llm_config))
        if owned:
            raise ValueError(
                f"tier {self.name!r}: llm_config may not set {owned}: the model comes from the "
                "tier's `model` (served as its `name`), the vLLM args from its `engine_kwargs`"
            )
        return self

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
    speculate: bool = Field(
        default=False,
        description="Start the cheapest tier's call while the router decides; it is dropped "
        "(cancelled, not charged) when the run starts higher (deployments.speculation). Off "
        "by default: it sends the cheap tier every cascade request, so a load the router "
        "sends to the top tier scales the cheap tier too.",
    )
    device: Literal["auto", "cpu", "cuda"] = Field(
        default="auto",
        description="Where the router runs: auto = cuda when the replica sees a GPU, else cpu; "
        "cuda without one is refused when the router loads (models.router_device).",
    )
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        default="auto",
        description="The router's weights: auto = bfloat16 on cuda, float32 on cpu; float16 "
        "is refused on cpu. The confidence head always runs in float32.",
    )

    @model_validator(mode="after")
    def _no_float16_on_cpu(self) -> RouterArgs:
        # auto devices are checked where torch is (models.router_device); this is the case a
        # config file alone already shows to be wrong
        if self.device == "cpu" and self.dtype == "float16":
            raise ValueError(
                "router dtype float16 is not supported on cpu (slow, inaccurate kernels); "
                "use dtype: float32 or bfloat16 on cpu, or device: cuda"
            )
        return self


class CalibrationArgs(_Strict):
    file: str | None = Field(
        default="zoo",
        description="Calibration artifact (JSON) with a threshold for every tier but the top; "
        "'zoo' = the one built with the embedded zoo; null = the seed's fixed heuristic limits.",
    )
    threshold: float | None = Field(
        default=None,
        description="Override the cheapest tier's threshold (e.g. via user_config).",
    )
    thresholds: dict[str, float] = Field(
        default_factory=dict,
        description="Override thresholds per tier name (e.g. via user_config); wins over "
        "`threshold` for the tier it names.",
    )
    allow_mismatch: bool = Field(
        default=False,
        description="Serve an artifact made for other models than the configured ones "
        "(calibration.identity); logged, in /stats and in the metrics. Its guarantee is void.",
    )


class AppArgs(_Strict):
    tiers: list[TierArgs] = Field(min_length=2, description="Cheapest first.")
    router: RouterArgs = Field(default_factory=RouterArgs)
    calibration: CalibrationArgs = Field(default_factory=CalibrationArgs)
    limits: LimitArgs = Field(default_factory=LimitArgs)
    auth: AuthArgs = Field(default_factory=AuthArgs)
    drift: DriftArgs = Field(default_factory=DriftArgs)
    adaptive: AdaptiveArgs = Field(default_factory=AdaptiveArgs)
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

    def policy(self) -> CascadePolicyConfig:
        """The ladder serving decides with: tier names and costs, floors, router threshold."""
        return CascadePolicyConfig(
            tiers=tuple(
                TierConfig(
                    name=t.name,
                    cost_per_request=t.cost_per_request,
                    cost_per_1k_output_tokens=t.cost_per_1k_output_tokens,
                )
                for t in self.tiers
            ),
            task_floors=self.task_floors,
            router_threshold=self.router.threshold,
        )

    @property
    def tier_names(self) -> list[str]:
        return [t.name for t in self.tiers]

    def engine_kwargs(self, tier: str) -> dict[str, Any]:
        """What `models.loading.load_engine` gets for a tier, wherever the engine is built
        (the tier replica, `collect`): the configured kwargs, trust_remote_code, and for an
        API tier whether its decisions need logprobs (every tier below the top)."""
        t = next(x for x in self.tiers if x.name == tier)
        out = {**t.engine_kwargs, "trust_remote_code": t.trust_remote_code}
        if t.engine == "openai":
            out.setdefault("require_logprobs", tier != self.tiers[-1].name)
            out.setdefault("top_logprobs", self.limits.top_logprobs)
        return out

    def threshold_overrides(self) -> dict[str, float]:
        """Tier -> threshold replacing the artifact's: `calibration.thresholds`, and
        `calibration.threshold` for the cheapest tier unless `thresholds` names it."""
        over = dict(self.calibration.thresholds)
        if self.calibration.threshold is not None:
            over.setdefault(self.tiers[0].name, self.calibration.threshold)
        return over

    def deployment_names(self) -> list[str]:
        """The deployments `build_app` creates from these args."""
        names = [INGRESS, *(tier_deployment_name(t) for t in self.tier_names)]
        return [*names, ROUTER] if self.router.enabled else names

    def reconfigured(self, user_config: dict[str, Any] | None) -> AppArgs:
        """These args with the Ingress's `user_config` applied, as `reconfigure` does on a
        live graph; raises ValueError naming what cannot be changed that way."""
        user_config = user_config or {}
        if not isinstance(user_config, dict):
            raise ValueError(f"user_config must be a mapping, got {type(user_config).__name__}")
        merged = self.model_dump()
        for key, value in user_config.items():
            allowed = RECONFIGURABLE.get(key)
            if allowed is None:
                raise ValueError(
                    f"user_config key {key!r} is not reconfigurable; use {sorted(RECONFIGURABLE)}"
                )
            if not isinstance(value, dict) or not set(value) <= allowed:
                raise ValueError(f"user_config.{key} may set only {sorted(allowed)}, got {value!r}")
            merged[key] = {**merged[key], **value}
        try:
            return AppArgs.model_validate(merged)
        except ValidationError as e:
            raise ValueError(f"invalid user_config {user_config!r}: {e}") from e

    @classmethod
    def from_serve_config(
        cls, path: str | Path | None = None, app: str | int = "cascade"
    ) -> AppArgs:
        """The args of one application of a Ray Serve config file (default `SERVE_CONFIG`),
        with its `deployments:` list as `deployment_options` and the Ingress's `user_config`
        applied, so they are what `serve run` would serve. Every deployment the file names
        must be one the graph creates; errors name the file and what is wrong."""
        import yaml

        path = Path(path) if path is not None else SERVE_CONFIG
        try:
            doc = yaml.safe_load(path.read_text()) or {}
        except (OSError, yaml.YAMLError) as e:
            raise ValueError(f"cannot read serve config {path}: {e}") from e
        entry = _application(doc, app, path)
        options = {
            d.get("name"): {k: v for k, v in d.items() if k != "name"}
            for d in entry.get("deployments") or []
        }
        raw = dict(entry.get("args") or {})
        raw["deployment_options"] = {**options, **raw.get("deployment_options", {})}
        try:
            args = cls.model_validate(raw)
        except ValidationError as e:
            raise ValueError(f"{path}: invalid args of application {app!r}: {e}") from e
        unknown = sorted(set(args.deployment_options) - set(args.deployment_names()))
        if unknown:
            raise ValueError(
                f"{path}: deployments {unknown} are not in the graph; it has "
                f"{args.deployment_names()}"
            )
        user_config = args.deployment_options.get(INGRESS, {}).get("user_config")
        try:
            return args.reconfigured(user_config)
        except ValueError as e:
            raise ValueError(f"{path}: Ingress {e}") from e


def _application(doc: dict, app: str | int, path: Path) -> dict:
    apps = doc.get("applications") or []
    if isinstance(app, int):
        if not 0 <= app < len(apps):
            raise ValueError(f"{path}: no application #{app} ({len(apps)} found)")
        return apps[app]
    found = [a for a in apps if a.get("name") == app]
    if not found:
        raise ValueError(
            f"{path}: no application named {app!r}; found {[a.get('name') for a in apps]}"
        )
    return found[0]
