"""Helpers of the label-free drift monitor as the ingress runs it: building it from the served
artifact, and the one-line message logged when an alarm turns on or off."""

from __future__ import annotations

import logging

from calibration.config import AppArgs
from calibration.drift import DriftMonitor, DriftStatus

__all__ = ["drift_message", "drift_monitor"]

logger = logging.getLogger("ray.serve")


def drift_monitor(args: AppArgs, policy, calibration) -> DriftMonitor | None:
    """The drift monitor `args.drift` asks for (None when off), over the served artifact."""
    if not args.drift.enabled:
        return None
    settings = args.drift.model_dump(exclude={"enabled"})
    monitor = DriftMonitor.from_artifact(calibration, policy, **settings)
    notes = {name: s.note for name, s in monitor.statuses().items()}
    logger.info("drift monitor: %s; tiers %s", settings, notes)
    return monitor


def drift_message(status: DriftStatus) -> str:
    """'drift alarm ON at tier cheap ...: escalation 0.81 vs 0.49 expected (p=3e-09), ...':
    the tests that fired (all tests when it clears), observed against expected."""
    named = status.fired if status.alarm else list(status.tests)
    fired = ", ".join(
        f"{name} {r.observed:.3g} vs {r.expected:.3g} expected (p={r.p_value:.2g})"
        for name in named
        if (r := status.tests[name]).p_value is not None
        and r.observed is not None
        and r.expected is not None
    )
    state = "ON" if status.alarm else "cleared"
    return (
        f"drift alarm {state} at tier {status.tier} after {status.requests} requests "
        f"(window {status.window}, level {status.level:.2g}): {fired or 'no test'}"
    )
