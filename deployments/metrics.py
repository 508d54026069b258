"""The cascade's Prometheus metrics, through Ray Serve's metrics API (exported on Ray's metrics
endpoint with the deployment and replica as tags). /stats keeps the running totals as JSON."""

from __future__ import annotations

from ray.serve.metrics import Counter, Gauge, Histogram

__all__ = ["CascadeMetrics", "router_mismatch_gauge"]

_LATENCY_S = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0]
_UNIT = [i / 10 for i in range(1, 11)]


class CascadeMetrics:
    """One set per ingress replica; tags name the tier, reason and outcome."""

    def __init__(self) -> None:
        self.requests = Counter(
            "cascade_requests",
            "Requests answered, by final tier and mode.",
            tag_keys=("tier", "mode"),
        )
        self.tier_calls = Counter(
            "cascade_tier_calls", "Calls to each tier, by outcome.", tag_keys=("tier", "outcome")
        )
        self.retries = Counter(
            "cascade_tier_retries",
            "Tier calls retried after a replica failure.",
            tag_keys=("tier",),
        )
        self.escalations = Counter(
            "cascade_escalations",
            "Escalations, by the tier left and the cause.",
            tag_keys=("tier", "reason"),
        )
        self.degraded = Counter(
            "cascade_degraded",
            "Answers served degraded (a tier failed), by cause.",
            tag_keys=("reason",),
        )
        self.errors = Counter(
            "cascade_errors", "Requests answered with an error, by status.", tag_keys=("status",)
        )
        self.cost = Counter("cascade_cost", "Cost spent, by tier.", tag_keys=("tier",))
        self.speculative = Counter(
            "cascade_speculative_calls",
            "Cheapest-tier calls started while the router decided: kept, or dropped because "
            "the run started higher (their work is not in cascade_cost).",
            tag_keys=("outcome",),
        )
        self.tier_latency = Histogram(
            "cascade_tier_latency_s",
            "Latency of one tier call.",
            boundaries=_LATENCY_S,
            tag_keys=("tier",),
        )
        self.latency = Histogram(
            "cascade_request_latency_s",
            "End-to-end latency in the ingress.",
            boundaries=_LATENCY_S,
            tag_keys=("mode",),
        )
        self.router_confidence = Histogram(
            "cascade_router_confidence",
            "The router's confidence, by predicted policy.",
            boundaries=_UNIT,
            tag_keys=("policy",),
        )
        self._drift_gauges()

    def _drift_gauges(self) -> None:
        """The drift monitor's (calibration.drift), set at each of its looks."""
        self.drift_alarm = Gauge(
            "cascade_drift_alarm",
            "1 while the tier's live traffic differs from its calibration reference.",
            tag_keys=("tier",),
        )
        self.drift_p_value = Gauge(
            "cascade_drift_p_value",
            "p-value of each drift test (escalation, score, router, reach) at the last look.",
            tag_keys=("tier", "test"),
        )
        self.drift_escalation_rate = Gauge(
            "cascade_drift_escalation_rate",
            "The tier's escalation rate over the drift monitor's window.",
            tag_keys=("tier",),
        )
        self.identity_mismatch = _mismatch_gauge()

    def set_identity_mismatch(self, tiers: list[str], problems: list[str]) -> None:
        for tier in tiers:
            bad = any(p.startswith(f"tier {tier!r}") for p in problems)
            self.identity_mismatch.set(1.0 if bad else 0.0, tags={"tier": tier})


def _mismatch_gauge() -> Gauge:
    return Gauge(
        "cascade_calibration_mismatch",
        "1 when the tier's calibration (tier 'router': the confidence head) was made for "
        "another model (allow_mismatch).",
        tag_keys=("tier",),
    )


def router_mismatch_gauge(problem: str | None) -> None:
    """The Router replica's entry in the mismatch gauge: 1 when it serves a confidence head
    trained for another router (allow_mismatch), else 0. Set where the head is loaded, as the
    ingress only learns of it from the answers."""
    _mismatch_gauge().set(1.0 if problem else 0.0, tags={"tier": "router"})
