"""build_app(args): the one place the Serve graph is wired; serve_config.yaml points here.

    applications:
      - import_path: deployments.app:build_app
        args: {tiers: [...], router: {...}, calibration: {...}, limits: {...}}

The args are `calibration.config.AppArgs`, the one typed config. Per-deployment options
(autoscaling, CPUs, GPUs) live in the config file's `deployments:` list, keyed by the names
given here: `Ingress`, `Router`, and `Tier-<name>` for each tier.
"""

from __future__ import annotations

from typing import Any

from ray.serve import Application

from calibration.config import INGRESS, ROUTER, AppArgs, TierArgs, tier_deployment_name
from deployments.ingress import Ingress
from deployments.llm import LLMTier
from deployments.router import RouterDeployment

__all__ = ["build_app"]


def _llm_server(tier: TierArgs, top_logprobs: int) -> Application | None:
    """A ray_llm tier's own LLMServer deployment (`deployments.ray_llm`), else None."""
    if tier.engine != "ray_llm":
        return None
    from deployments.ray_llm import build_llm_server

    return build_llm_server(tier, top_logprobs)


def build_app(args: dict[str, Any] | AppArgs) -> Application:
    """The bound graph: one LLMTier per tier, the router, and the ingress over them."""
    args = args if isinstance(args, AppArgs) else AppArgs.model_validate(args)
    opts = args.deployment_options
    tiers = {}
    for t in args.tiers:
        name = tier_deployment_name(t.name)
        tiers[t.name] = LLMTier.options(name=name, **opts.get(name, {})).bind(
            name=t.name,
            model=t.model,
            engine=t.engine,
            engine_kwargs=args.engine_kwargs(t.name),
            max_batch_size=t.max_batch_size,
            batch_wait_timeout_s=t.batch_wait_timeout_s,
            fault=t.fault.model_dump() if t.fault else None,
            health_probe_interval_s=t.health_probe_interval_s,
            health_probe_timeout_s=t.health_probe_timeout_s,
            health_startup_grace_s=t.startup_grace_s,
            llm_server=_llm_server(t, args.limits.top_logprobs),
        )
    router = None
    if args.router.enabled:
        router = RouterDeployment.options(name=ROUTER, **opts.get(ROUTER, {})).bind(
            model=args.router.model,
            trust_remote_code=args.router.trust_remote_code,
            device=args.router.device,
            dtype=args.router.dtype,
            allow_mismatch=args.calibration.allow_mismatch,
        )
    return Ingress.options(name=INGRESS, **opts.get(INGRESS, {})).bind(
        args.model_dump(), tiers, router
    )
