"""CascadeServer: one request in, the final answer and its `routing` out; no HTTP here.

The ingress owns one. It drives `calibration.cascade.CascadeRun`, the same state machine the
offline replay and evaluation drive, with real calls: the router and the tiers through Serve
handles. The run decides (start tier, accept or escalate, what a failure means); this module
adds what only serving has: timeouts, retries, metrics, running totals and the routing record.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import Any

from calibration.cascade import CascadeOutcome, CascadeRun, CascadeStats, NoTierAnswered
from calibration.config import AppArgs
from calibration.feedback import extract_features
from deployments.errors import APIError
from deployments.llm import TierInputError, TierRequest
from deployments.metrics import CascadeMetrics
from deployments.protocol import RouterView, Routing, TierAttempt
from models.engine import Generation
from models.zoo import served_artifact

__all__ = ["CascadeResult", "CascadeServer"]

logger = logging.getLogger("ray.serve")


@dataclass(frozen=True)
class CascadeResult:
    generation: Generation
    tier: str
    routing: Routing


class CascadeServer:
    def __init__(self, args: AppArgs, tiers: dict[str, Any], router: Any | None) -> None:
        self.args = args
        self.tiers = tiers  # tier name -> DeploymentHandle of an LLMTier
        self.router = router  # DeploymentHandle of the RouterDeployment, or None
        self.metrics = CascadeMetrics()
        self.configure(args)
        self.stats = CascadeStats(self.policy)

    def configure(self, args: AppArgs) -> None:
        """(Re)build what a config change touches: policy, calibration. Stats are kept.
        Everything is built before anything is replaced, so a bad config changes nothing."""
        policy, calibration = args.policy(), served_artifact(args)
        self.args, self.policy, self.calibration = args, policy, calibration
        if hasattr(self, "stats"):
            self.stats.config = self.policy
        logger.info(
            "cascade: tiers %s, thresholds %s",
            self.policy.tier_names,
            {t: f"{c.mode} {c.threshold:.4g}" for t, c in self.calibration.tiers.items()},
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
                router = await self.route(query)
                run = CascadeRun.begin(
                    self.policy,
                    router_policy=router.policy,
                    router_confidence=router.confidence,
                    task_type=task_type,
                )
            else:
                router = RouterView(skipped_reason="tier forced by the request")
                run = CascadeRun.forced(self.policy, self._known_tier(model))
            result = await self._drive(run, request, router, task_type)
        except APIError as e:
            self.metrics.errors.inc(tags={"status": str(e.status)})
            raise
        self.metrics.requests.inc(tags={"tier": result.tier, "mode": mode})
        self.metrics.latency.observe(time.perf_counter() - started, tags={"mode": mode})
        return result

    def _known_tier(self, model: str) -> str:
        if model not in self.tiers:
            raise APIError(
                400,
                f"unknown model {model!r}; use 'cascade' or one of {self.policy.tier_names}",
                param="model",
                code="model_not_found",
            )
        return model

    async def _drive(
        self, run: CascadeRun, request: TierRequest, router: RouterView, task_type: str | None
    ) -> CascadeResult:
        """Call each tier `run` names until it is done; it decides, this does the I/O."""
        answers: dict[int, Generation] = {}
        latencies: list[float] = []
        while run.next_tier is not None:
            tier = run.next_tier
            name = self.policy.tiers[tier].name
            t0 = time.perf_counter()
            out = await self._call(tier, request)
            latencies.append(time.perf_counter() - t0)
            if isinstance(out, Exception):
                self._failed(run, tier, out)
                continue
            answers[tier] = out
            self.metrics.tier_latency.observe(latencies[-1], tags={"tier": name})
            self.metrics.tier_calls.inc(tags={"tier": name, "outcome": "ok"})
            # the signal below the top: for the decision, and for a forced tier's record
            sig = self.calibration.signal(name, out) if tier < self.policy.top else None
            d = run.observe(sig, out.completion_tokens)
            self.metrics.cost.inc(run.calls[-1].cost, tags={"tier": name})
            if d.escalate:
                self.metrics.escalations.inc(tags={"tier": name, "reason": d.cause})
        outcome = run.outcome()
        self.stats.record_outcome(outcome)
        routing = self._routing(outcome, answers, latencies, router, task_type)
        return CascadeResult(answers[outcome.final_tier], routing.final_tier, routing)

    def _failed(self, run: CascadeRun, tier: int, error: Exception) -> None:
        """A failed call: the run climbs, ends degraded, or (no answer at all) a 503."""
        name = self.policy.tiers[tier].name
        logger.warning("tier %s failed: %r", name, error)
        self.metrics.tier_calls.inc(tags={"tier": name, "outcome": "failed"})
        cost = self.args.tiers[tier].failed_call_cost
        if cost:
            self.metrics.cost.inc(cost, tags={"tier": name})
        self.metrics.degraded.inc(tags={"reason": f"{name}_failed"})
        try:
            run.fail(_describe(error), cost)
        except NoTierAnswered as e:
            if run.forced:
                raise APIError(
                    503,
                    f"tier {name!r} could not answer: {_describe(error)}",
                    code="tier_unavailable",
                ) from e
            raise APIError(503, str(e), code="tiers_unavailable") from e

    async def _call(self, tier: int, request: TierRequest) -> Generation | Exception:
        """One tier's answer, or the exception it failed with; a refused input is a 400."""
        try:
            return await self.call_tier(tier, request)
        except TierInputError as e:
            raise APIError(400, str(e), param="messages", code="prompt_too_long") from e
        except Exception as e:
            return e

    def _routing(
        self,
        outcome: CascadeOutcome,
        answers: dict[int, Generation],
        latencies: list[float],
        router: RouterView,
        task_type: str | None,
    ) -> Routing:
        """The response's `routing` record, read off the outcome."""
        names = self.policy.tier_names
        feedback = self.calibration.tiers.get(names[0])
        attempts = []
        for call, latency in zip(outcome.calls, latencies, strict=True):
            sig = call.signal
            if sig is not None:
                features = dict(sig.features)
            elif call.tier in answers:
                features = extract_features(answers[call.tier], feedback and feedback.feedback)
            else:
                features = {}
            attempts.append(
                TierAttempt(
                    tier=names[call.tier],
                    outcome=call.outcome,
                    score=sig.score if sig and not outcome.forced else None,
                    threshold=sig.threshold if sig and not outcome.forced else None,
                    reasons=list(call.reasons),
                    features=features,
                    latency_s=latency,
                    cost=call.cost,
                )
            )
        sig = outcome.signal
        final = names[outcome.final_tier]
        return Routing(
            tiers_visited=[names[t] for t in outcome.visited],
            final_tier=final,
            escalated=outcome.escalated,
            forced=outcome.forced,
            reasons=list(outcome.reasons),
            router=router,
            # features, score and threshold of the last calibrated decision (per tier: attempts)
            features=dict(sig.features) if sig else attempts[-1].features,
            score=sig.score if sig else None,
            threshold=sig.threshold if sig else None,
            conformal_mode=self._mode(outcome),
            cost=outcome.cost,
            degraded=outcome.degraded is not None,
            degraded_reason=outcome.degraded,
            task_type=task_type,
            task_floor=outcome.task_floor,
            attempts=attempts,
        )

    def _mode(self, outcome: CascadeOutcome) -> str | None:
        """The conformal mode of the tier whose signal decided last (the cheapest tier's when
        none did, as before)."""
        calls = [c for c in outcome.calls if c.signal is not None]
        tier = self.policy.tier_names[calls[-1].tier if calls else 0]
        cal = self.calibration.tiers.get(tier)
        return cal.mode if cal else None


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
