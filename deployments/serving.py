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

from calibration.adaptive import AdaptiveConformal
from calibration.cascade import CascadeOutcome, CascadeRun, CascadeStats, NoTierAnswered
from calibration.config import AppArgs
from calibration.feedback import extract_features
from deployments.drift_watch import drift_message, drift_monitor
from deployments.errors import APIError, describe_failure, retryable
from deployments.llm import TierInputError, TierRequest, deployment_problems
from deployments.metrics import CascadeMetrics
from deployments.protocol import RouterView, Routing, TierAttempt
from deployments.speculation import Speculation
from models.engine import Generation
from models.served_calibration import identity_mismatches, served_artifact

__all__ = ["CascadeResult", "CascadeServer"]

logger = logging.getLogger("ray.serve")


@dataclass(frozen=True)
class CascadeResult:
    generation: Generation
    tier: str
    routing: Routing
    outcome: CascadeOutcome | None = None  # the run's decisions (feedback judges them)


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
        mismatch = identity_mismatches(args, calibration) if args.calibration.allow_mismatch else []
        for problem in mismatch:  # allowed, loudly: the guarantee does not hold for this tier
            logger.warning("calibration made for other models, served anyway: %s", problem)
        drift = drift_monitor(args, policy, calibration)
        # adaptive conformal: a tier keeps its state unless its calibration changed (a new
        # user_config threshold resets it, and the log says so)
        below_top = {t: calibration.tiers[t] for t in policy.tier_names[:-1]}
        previous = getattr(self, "adaptive", None)
        adaptive = AdaptiveConformal.build(below_top, args.adaptive, previous)
        for tier, why in adaptive.resets.items():
            logger.info("adaptive conformal: tier %s starts afresh (%s)", tier, why)
        self.adaptive = adaptive
        self.args, self.policy, self.calibration, self.drift = args, policy, calibration, drift
        self.identity_mismatch = mismatch
        self.metrics.set_identity_mismatch(policy.tier_names[:-1], mismatch)
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
        deployment still starting, or with no live replica, does not answer in time; a tier
        replica reports its engine's health (`LLMTier.info`), Serve any deployment it marks
        unhealthy (e.g. a replica failing its health checks, until it is replaced)."""
        targets = dict(self.tiers)
        if self.router is not None:
            targets["router"] = self.router

        async def check(handle) -> str:
            # not wait_for: it awaits the cancellation, and a call still waiting for a replica
            # (one just died) cancels only once Serve has updated its set, ~10 s later
            response = handle.info.remote()
            call = asyncio.ensure_future(response)
            call.add_done_callback(lambda f: f.cancelled() or f.exception())
            if not (await asyncio.wait([call], timeout=timeout_s))[0]:
                response.cancel()
                return f"no answer in {timeout_s:g} s"
            if call.exception() is not None:
                return describe_failure(call.exception())
            info = call.result()
            return info.get("health", "ok") if isinstance(info, dict) else "ok"

        results = await asyncio.gather(*(check(h) for h in targets.values()))
        report = dict(zip(targets, results, strict=True))
        for name, problem in (await deployment_problems(targets)).items():
            report[name] = problem if report[name] == "ok" else f"{report[name]}; {problem}"
        return report

    # --- the cascade ---------------------------------------------------------------------

    async def serve(
        self, request: TierRequest, model: str, query: str, task_type: str | None = None
    ) -> CascadeResult:
        started = time.perf_counter()
        mode = "cascade" if model == "cascade" else "forced"
        try:
            spec = None
            if model == "cascade":
                run, router, spec = await self._begin(request, query, task_type)
            else:
                router = RouterView(skipped_reason="tier forced by the request")
                run = CascadeRun.forced(self.policy, self._known_tier(model))
            result = await self._drive(run, request, router, task_type, spec)
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

    async def _begin(self, request: TierRequest, query: str, task_type: str | None):
        """The router's verdict and the run it starts, with the cheapest tier's call started
        beside the router's (`deployments.speculation`): kept when the run starts there."""
        spec = None
        if self.router is not None and self.args.router.speculate:
            spec = Speculation.start(self._call(0, request))
        kept = False
        try:
            router = await self.route(query)
            run = CascadeRun.begin(
                self.policy,
                router_policy=router.policy,
                router_confidence=router.confidence,
                task_type=task_type,
            )
            kept = run.next_tier == 0
        finally:
            if spec is not None:
                self.metrics.speculative.inc(tags={"outcome": "kept" if kept else "dropped"})
                if not kept:
                    spec.drop()
        return run, router, spec if kept else None

    async def _drive(
        self,
        run: CascadeRun,
        request: TierRequest,
        router: RouterView,
        task_type: str | None,
        spec: Speculation | None = None,
    ) -> CascadeResult:
        """Call each tier `run` names until it is done; it decides, this does the I/O."""
        answers: dict[int, Generation] = {}
        latencies: list[float] = []
        adapted: set[str] = set()  # tiers whose threshold adaptive conformal had moved
        while run.next_tier is not None:
            tier = run.next_tier
            name = self.policy.tiers[tier].name
            if spec is not None and tier == 0:  # the call started while the router decided
                (out, t0), spec = await spec.kept(), None
            else:
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
            sig = (
                self._signal(name, out, adapted, task_type, router)
                if tier < self.policy.top
                else None
            )
            d = run.observe(sig, out.completion_tokens)
            if run.calls[-1].cost > 0:  # Ray's Counter refuses inc(0): a free tier would 500
                self.metrics.cost.inc(run.calls[-1].cost, tags={"tier": name})
            if d.escalate:
                self.metrics.escalations.inc(tags={"tier": name, "reason": d.cause})
        outcome = run.outcome()
        self.stats.record_outcome(outcome)
        self._watch_drift(outcome, router)
        routing = self._routing(outcome, answers, latencies, router, task_type)
        decided = _mark_adapted(routing, outcome, self.policy.tier_names, adapted)
        if decided is not None and not routing.threshold_adapted:  # the type's own, or pooled
            routing.threshold_group = self.calibration.threshold_group(decided, task_type)
        return CascadeResult(answers[outcome.final_tier], routing.final_tier, routing, outcome)

    def _signal(self, name, out: Generation, adapted: set[str], task_type, router: RouterView):
        """The tier's signal, with the router's evidence, at the threshold served now: the
        artifact's (the task type's own if it has one) or user_config's, or adaptive
        conformal's once labels moved it (`adapted`)."""
        context = router.evidence
        if not self.adaptive.adapted(name):
            return self.calibration.signal(name, out, task_type=task_type, context=context)
        adapted.add(name)
        threshold = self.adaptive.threshold(name)
        return self.calibration.signal(name, out, threshold=threshold, context=context)

    def _watch_drift(self, outcome: CascadeOutcome, router: RouterView) -> None:
        """Feed the drift monitor; at its looks, set the gauges and log each alarm turning on
        (WARNING) or off (INFO). A monitor failure is logged, never the request's."""
        if self.drift is None:
            return
        try:
            looked = self.drift.observe(outcome, router.policy)
        except Exception:
            logger.exception("drift monitor failed; the request is unaffected")
            return
        for status in looked or ():
            tags = {"tier": status.tier}
            self.metrics.drift_alarm.set(int(status.alarm), tags=tags)
            for test, result in status.tests.items():
                if result.p_value is not None:
                    self.metrics.drift_p_value.set(result.p_value, tags={**tags, "test": test})
            esc = status.tests.get("escalation")
            if esc is not None and esc.observed is not None:
                self.metrics.drift_escalation_rate.set(esc.observed, tags=tags)
            if status.changed:
                log = logger.warning if status.alarm else logger.info
                log("%s", drift_message(status))

    def drift_stats(self) -> dict:
        """The /stats section: the monitor's settings and each tier's last look."""
        if self.drift is None:
            return {"enabled": False}
        return {"enabled": True, **self.drift.as_dict()}

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
            run.fail(describe_failure(error), cost)
        except NoTierAnswered as e:
            if run.forced:
                raise APIError(
                    503,
                    f"tier {name!r} could not answer: {describe_failure(error)}",
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
            calibration_mismatch=bool(self.identity_mismatch) or router.head_mismatch,
            attempts=attempts,
        )

    def _mode(self, outcome: CascadeOutcome) -> str | None:
        """The conformal mode of the tier whose signal decided last (the cheapest tier's when
        none did, as before)."""
        calls = [c for c in outcome.calls if c.signal is not None]
        tier = self.policy.tier_names[calls[-1].tier if calls else 0]
        cal = self.calibration.tiers.get(tier)
        return cal.mode if cal else None


def _mark_adapted(
    routing: Routing, outcome: CascadeOutcome, names: list[str], adapted: set[str]
) -> str | None:
    """Flag the thresholds adaptive conformal had moved; return the tier that decided last."""
    for a in routing.attempts:
        a.adapted = a.threshold is not None and a.tier in adapted
    decided = [names[c.tier] for c in outcome.calls if c.signal is not None]
    routing.threshold_adapted = bool(decided) and decided[-1] in adapted
    return decided[-1] if decided else None
