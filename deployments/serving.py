"""CascadeServer: one request in, the final answer and its `routing` out; no HTTP here.

The ingress owns one. It calls the router and the tiers through Serve handles and asks
`calibration` for every decision (start tier, accept or escalate), so serving decides exactly
as the offline evaluation does. What this module adds is what only serving has: timeouts,
failures, degraded answers, metrics and running totals.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from calibration.artifact import CascadeCalibration, ModelIdentity
from calibration.feedback import FeedbackSignal, extract_features
from calibration.policy import (
    CascadePolicyConfig,
    CascadeStats,
    TierConfig,
    decide,
    request_cost,
    start_tier,
)
from deployments.app import AppArgs, CalibrationArgs
from deployments.errors import APIError
from deployments.llm import TierInputError, TierRequest
from deployments.metrics import CascadeMetrics
from deployments.protocol import RouterView, Routing, TierAttempt
from models.engine import Generation

__all__ = ["CascadeResult", "CascadeServer", "load_calibration"]

logger = logging.getLogger("ray.serve")


@dataclass(frozen=True)
class CascadeResult:
    generation: Generation
    tier: str
    routing: Routing


def load_calibration(args: CalibrationArgs, cheap_model: str) -> CascadeCalibration:
    """The artifact named by the config: 'zoo' (built with the zoo), a path, or None for the
    seed's heuristic limits. A threshold override (user_config) replaces the file's."""
    if args.file is None:
        cal = CascadeCalibration.heuristic(ModelIdentity(name=cheap_model))
    else:
        path = args.file
        if path == "zoo":
            from models.zoo import calibration_path

            path = str(calibration_path())
        if not Path(path).is_file():
            raise FileNotFoundError(
                f"calibration file {path!r} not found; run `python -m calibration conformal "
                f"--out {path}` or set calibration.file: null for the heuristic thresholds"
            )
        cal = CascadeCalibration.load(path)
    if args.threshold is not None:
        cal = cal.model_copy(update={"threshold": args.threshold})
    return cal


class CascadeServer:
    def __init__(self, args: AppArgs, tiers: dict[str, Any], router: Any | None) -> None:
        self.args = args
        self.tiers = tiers  # tier name -> DeploymentHandle of an LLMTier
        self.router = router  # DeploymentHandle of the RouterDeployment, or None
        self.metrics = CascadeMetrics()
        self.configure(args)
        self.stats = CascadeStats(self.policy)

    def configure(self, args: AppArgs) -> None:
        """(Re)build what a config change touches: policy, calibration. Stats are kept."""
        self.args = args
        self.policy = CascadePolicyConfig(
            tiers=tuple(
                TierConfig(
                    name=t.name,
                    cost_per_request=t.cost_per_request,
                    cost_per_1k_output_tokens=t.cost_per_1k_output_tokens,
                )
                for t in args.tiers
            ),
            task_floors=args.task_floors,
            router_threshold=args.router.threshold,
        )
        self.calibration = load_calibration(args.calibration, args.tiers[0].model)
        if hasattr(self, "stats"):
            self.stats.config = self.policy
        logger.info(
            "cascade: tiers %s, calibration mode %s threshold %.4g",
            self.policy.tier_names,
            self.calibration.mode,
            self.calibration.threshold,
        )

    # --- calls -------------------------------------------------------------------------

    async def route(self, query: str) -> RouterView:
        if self.router is None:
            return RouterView(skipped_reason="router disabled")
        try:
            out = await asyncio.wait_for(
                self.router.predict.remote(query), timeout=self.args.router.timeout_s
            )
        except Exception as e:  # the router is advisory: the cascade still escalates
            logger.warning("router failed, starting at the cheapest tier: %r", e)
            self.metrics.degraded.inc(tags={"reason": "router_failed"})
            return RouterView(skipped_reason=f"router failed: {type(e).__name__}")
        view = RouterView(**out)
        if view.confidence is not None:
            self.metrics.router_confidence.observe(view.confidence, tags={"policy": view.policy})
        return view

    async def call_tier(self, tier: int, request: TierRequest) -> Generation:
        """One tier's answer: a timeout per try, bounded retries with exponential backoff
        for failures that a retry can fix (`retryable`), everything else raised at once."""
        name = self.policy.tiers[tier].name
        cfg = self.args.tiers[tier]
        for attempt in range(cfg.retries + 1):
            response = self.tiers[name].generate.remote(request)
            try:
                return await asyncio.wait_for(response, timeout=cfg.timeout_s)
            except TimeoutError:
                response.cancel()
                raise TimeoutError(f"tier {name!r} timed out after {cfg.timeout_s:g} s") from None
            except Exception as e:
                if attempt == cfg.retries or not retryable(e):
                    raise
                delay = cfg.retry_backoff_s * 2**attempt
                logger.warning("tier %s: %r; retry %d in %.2f s", name, e, attempt + 1, delay)
                self.metrics.retries.inc(tags={"tier": name})
                await asyncio.sleep(delay)
        raise AssertionError("unreachable")  # the loop returns or raises

    async def readiness(self, timeout_s: float = 5.0) -> dict[str, str]:
        """Each tier's (and the router's) answer to a trivial call: 'ok', or why not. A
        deployment still starting, or with no live replica, does not answer in time."""
        targets = dict(self.tiers)
        if self.router is not None:
            targets["router"] = self.router

        async def check(handle) -> str:
            try:
                await asyncio.wait_for(handle.info.remote(), timeout=timeout_s)
            except TimeoutError:
                return f"no answer in {timeout_s:g} s"
            except Exception as e:
                return _describe(e)
            return "ok"

        results = await asyncio.gather(*(check(h) for h in targets.values()))
        return dict(zip(targets, results, strict=True))

    # --- the cascade ---------------------------------------------------------------------

    async def serve(
        self, request: TierRequest, model: str, query: str, task_type: str | None = None
    ) -> CascadeResult:
        started = time.perf_counter()
        mode = "cascade" if model == "cascade" else "forced"
        try:
            if model == "cascade":
                result = await self._cascade(request, query, task_type)
            else:
                result = await self._forced(request, model)
        except APIError as e:
            self.metrics.errors.inc(tags={"status": str(e.status)})
            raise
        self.metrics.requests.inc(tags={"tier": result.tier, "mode": mode})
        self.metrics.latency.observe(time.perf_counter() - started, tags={"mode": mode})
        return result

    async def _attempt(
        self, tier: int, request: TierRequest, attempts: list[TierAttempt]
    ) -> Generation | Exception:
        """One tier call; failures come back as the exception (recorded), bad input raises."""
        name = self.policy.tiers[tier].name
        t0 = time.perf_counter()
        try:
            gen = await self.call_tier(tier, request)
        except TierInputError as e:
            raise APIError(400, str(e), param="messages", code="prompt_too_long") from e
        except Exception as e:
            latency = time.perf_counter() - t0
            logger.warning("tier %s failed: %r", name, e)
            self.metrics.tier_calls.inc(tags={"tier": name, "outcome": "failed"})
            cost = self.args.tiers[tier].failed_call_cost
            if cost:
                self.metrics.cost.inc(cost, tags={"tier": name})
            attempts.append(
                TierAttempt(
                    tier=name,
                    outcome="failed",
                    reasons=[_describe(e)],
                    latency_s=latency,
                    cost=cost,
                )
            )
            return e
        latency = time.perf_counter() - t0
        self.metrics.tier_latency.observe(latency, tags={"tier": name})
        self.metrics.tier_calls.inc(tags={"tier": name, "outcome": "ok"})
        cost = request_cost(self.policy.tiers[tier], gen.completion_tokens)
        self.metrics.cost.inc(cost, tags={"tier": name})
        attempts.append(TierAttempt(tier=name, outcome="final", latency_s=latency, cost=cost))
        return gen

    def _signal(self, tier: int, gen: Generation) -> FeedbackSignal | None:
        """The calibrated signal below the top tier; the top tier has nothing to escalate to."""
        if tier == self.policy.top:
            return None
        return self.calibration.signal(gen)

    async def _cascade(self, request: TierRequest, query: str, task_type: str | None):
        router = await self.route(query)
        tier = start_tier(
            self.policy,
            router_policy=router.policy,
            router_confidence=router.confidence,
            task_type=task_type,
        )
        attempts: list[TierAttempt] = []
        visited: list[int] = []
        tokens: list[int] = []
        causes: list[str] = []
        reasons: list[str] = []
        if tier > 0:
            reasons.append(
                f"started at {self.policy.tiers[tier].name}: router said {router.policy} "
                f"with confidence {router.confidence:.2f}"
                if router.confidence is not None
                else f"started at {self.policy.tiers[tier].name}: task floor for {task_type!r}"
            )
        best: tuple[int, Generation, FeedbackSignal | None] | None = None
        last_signal: FeedbackSignal | None = None  # the last calibrated decision, for routing
        degraded: str | None = None
        while True:
            out = await self._attempt(tier, request, attempts)
            name = self.policy.tiers[tier].name
            if isinstance(out, Exception):
                degraded = f"tier {name!r} failed ({_describe(out)})"
                self.metrics.degraded.inc(tags={"reason": f"{name}_failed"})
                if tier < self.policy.top:
                    reasons.append(f"{degraded}; trying the next tier")
                    tier += 1
                    continue
                if best is None:
                    raise APIError(
                        503,
                        f"no tier could answer: {'; '.join(_failures(attempts))}",
                        code="tiers_unavailable",
                    )
                reasons.append(f"{degraded}; answering from {self.policy.tiers[best[0]].name}")
                break
            gen = out
            visited.append(tier)
            tokens.append(gen.completion_tokens)
            sig = self._signal(tier, gen)
            features = (
                dict(sig.features) if sig else extract_features(gen, self.calibration.feedback)
            )
            attempt = attempts[-1]
            attempt.features = features
            if sig is None:
                best = (tier, gen, None)
                reasons.append(f"{name} is the top tier: accepted")
                break
            d = decide(self.policy, tier, sig)
            last_signal = sig
            attempt.score, attempt.threshold = sig.score, sig.threshold
            attempt.reasons = list(d.reasons)
            best = (tier, gen, sig)
            if not d.escalate:
                attempt.outcome = "accepted"
                reasons.extend(d.reasons)
                break
            attempt.outcome = "escalated"
            causes.append(d.cause)
            self.metrics.escalations.inc(tags={"tier": name, "reason": d.cause})
            reasons.extend(d.reasons)
            tier = d.next_tier
        final_tier, gen, _ = best
        sig = last_signal
        self.stats.record(visited, tokens, causes)
        routing = Routing(
            tiers_visited=[self.policy.tiers[t].name for t in visited],
            final_tier=self.policy.tiers[final_tier].name,
            escalated=len(visited) > 1,
            forced=False,
            reasons=reasons,
            router=router,
            # features, score and threshold of the last calibrated decision (per tier: attempts)
            features=dict(sig.features) if sig else attempts[-1].features,
            score=sig.score if sig else None,
            threshold=sig.threshold if sig else None,
            conformal_mode=self.calibration.mode,
            cost=sum(a.cost for a in attempts),
            degraded=degraded is not None,
            degraded_reason=degraded,
            attempts=attempts,
        )
        return CascadeResult(gen, routing.final_tier, routing)

    async def _forced(self, request: TierRequest, model: str) -> CascadeResult:
        if model not in self.tiers:
            raise APIError(
                400,
                f"unknown model {model!r}; use 'cascade' or one of {self.policy.tier_names}",
                param="model",
                code="model_not_found",
            )
        tier = self.policy.index(model)
        attempts: list[TierAttempt] = []
        out = await self._attempt(tier, request, attempts)
        if isinstance(out, Exception):
            raise APIError(
                503, f"tier {model!r} could not answer: {_describe(out)}", code="tier_unavailable"
            )
        sig = self._signal(tier, out)
        features = dict(sig.features) if sig else extract_features(out, self.calibration.feedback)
        attempts[-1].features = features
        self.stats.record([tier], [out.completion_tokens], [])
        routing = Routing(
            tiers_visited=[model],
            final_tier=model,
            escalated=False,
            forced=True,
            reasons=[f"model {model!r} requested: the cascade was skipped"],
            router=RouterView(skipped_reason="tier forced by the request"),
            features=features,
            score=sig.score if sig else None,
            threshold=sig.threshold if sig else None,
            conformal_mode=self.calibration.mode,
            cost=attempts[-1].cost,
            attempts=attempts,
        )
        return CascadeResult(out, model, routing)


def retryable(e: BaseException) -> bool:
    """Failures of the replica, not of the request: it died, was unreachable, or was
    shedding load. A second try may reach a healthy (or restarted) replica."""
    import ray.exceptions
    from ray.serve.exceptions import BackPressureError

    return isinstance(e, ray.exceptions.RayActorError | BackPressureError)


def _describe(e: BaseException) -> str:
    cause = getattr(e, "cause", None)
    if cause is not None and cause is not e:
        e = cause
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[-1]}" if text else type(e).__name__


def _failures(attempts: list[TierAttempt]) -> list[str]:
    return [f"{a.tier}: {'; '.join(a.reasons)}" for a in attempts if a.outcome == "failed"]
