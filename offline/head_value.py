"""What the confidence head buys: the served cascade against the same cascade driven by the
router's verdict alone, compared at equal accuracy.

The design credits confidence-aware escalation with a 20% cost reduction. The served policy
starts a request at the top tier when the router says "complex" *and* its confidence (the
confidence head's) reaches the router threshold; the verdict-alone variant sends every
"complex" label to the top (router threshold 0: no confidence gate), and its cheap-started
requests meet a conformal threshold calibrated for that population (`calibrate_ladder`, as
the zoo's artifact was). The two differ in accuracy at the same alpha, so comparing costs
there would compare different products. Instead the variant's alpha is swept and the point
matching the served accuracy is chosen on the calibration split (the cheapest alpha whose
accuracy there is at least the served policy's); only then are both replayed on the test
split, which chooses nothing.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from calibration.artifact import CascadeArtifact
from calibration.policy import CascadePolicyConfig, request_cost
from offline.ladder_calibration import calibrate_ladder
from offline.replay import EvalSplit
from offline.served import replay_served

__all__ = ["HeadValueSettings", "head_value", "verdict_alone"]


class HeadValueSettings(BaseModel):
    """The verdict-alone variant's sweep: its conformal mode and the alphas tried."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    mode: str = Field(default="risk", description="conformal mode (the zoo artifact's)")
    alphas: tuple[float, ...] = Field(
        default=tuple(np.round(np.linspace(0.002, 0.1, 50), 4)),
        description="alphas swept on the calibration split",
    )
    router_thresholds: tuple[float, ...] = Field(
        default=(0.5, 0.6, 0.7, 0.8, 0.9, 0.95),
        description="confidence gates tried for the fitted-gate variant (0 is verdict alone)",
    )


def verdict_alone(policy: CascadePolicyConfig) -> CascadePolicyConfig:
    """`policy` with no confidence gate: a 'complex' label starts at the top whatever the
    router's confidence (`start_tier` compares confidence >= 0)."""
    return policy.model_copy(update={"router_threshold": 0.0})


def _measure(policy: CascadePolicyConfig, artifact: CascadeArtifact, data: EvalSplit) -> dict:
    """Accuracy and mean cost (policy units, and / always-strong's on the same requests)."""
    run = replay_served(policy, artifact, data)
    top, name = policy.tiers[-1], policy.tier_names[-1]
    strong = float(np.mean([request_cost(top, int(t)) for t in data.output_tokens[name]]))
    raw = float(run.cost.mean())
    return {
        "accuracy": run.accuracy,
        "cost_raw": raw,
        "cost": raw / strong if strong > 0 else math.nan,
        "started_at_top": float(np.mean([o.start_tier == policy.top for o in run.outcomes])),
    }


def _variant(
    policy: CascadePolicyConfig,
    artifact: CascadeArtifact,
    fit: EvalSplit,
    cal: EvalSplit,
    mode: str,
    alpha: float,
) -> CascadeArtifact:
    """The verdict-alone ladder calibrated like the served artifact, at `alpha`."""
    models = {n: artifact.tiers[n].model for n in policy.tier_names[:-1]}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # small alphas may be conservative: flagged, kept
        return calibrate_ladder(policy, fit, cal, mode=mode, alpha=alpha, models=models)


def _matched(
    policy: CascadePolicyConfig,
    artifact: CascadeArtifact,
    fit: EvalSplit,
    cal: EvalSplit,
    settings: HeadValueSettings,
    target: float,
) -> tuple[float, CascadeArtifact, dict, bool, list]:
    """`policy` recalibrated at every alpha of the sweep; the cheapest point on `cal` at least
    as accurate as `target` (else the most accurate), whether one matched, and the sweep."""
    sweep = []
    for a in settings.alphas:
        art = _variant(policy, artifact, fit, cal, settings.mode, float(a))
        sweep.append((float(a), art, _measure(policy, art, cal)))
    good = [s for s in sweep if s[2]["accuracy"] >= target]
    alpha, chosen, chosen_cal = (
        min(good, key=lambda s: (s[2]["cost_raw"], -s[0]))
        if good
        else max(sweep, key=lambda s: (s[2]["accuracy"], -s[2]["cost_raw"]))
    )
    return alpha, chosen, chosen_cal, bool(good), sweep


def _fitted_gate(
    policy: CascadePolicyConfig,
    artifact: CascadeArtifact,
    fit: EvalSplit,
    cal: EvalSplit,
    settings: HeadValueSettings,
    target: float,
) -> tuple[CascadePolicyConfig, CascadeArtifact, dict]:
    """The head's confidence gate with its threshold and alpha both fitted on `cal`: per gate
    the matched alpha, then the cheapest gate that matched (the confidence-aware cascade at its
    best, chosen where verdict-alone is chosen, so the two compare fairly)."""
    best = None
    for gate in settings.router_thresholds:
        gated = policy.model_copy(update={"router_threshold": float(gate)})
        alpha, art, on_cal, ok, _ = _matched(gated, artifact, fit, cal, settings, target)
        key = (not ok, on_cal["cost_raw"])
        if best is None or key < best[0]:
            best = (key, gated, art, {"router_threshold": gate, "alpha": alpha, **on_cal})
    assert best is not None, "router_thresholds is empty"
    return best[1], best[2], {**best[3], "matched": not best[0][0]}


def head_value(
    policy: CascadePolicyConfig,
    artifact: CascadeArtifact,
    fit: EvalSplit,
    cal: EvalSplit,
    tests: Sequence[EvalSplit],
    settings: HeadValueSettings | None = None,
) -> dict:
    """The served (`policy`, `artifact`) against the verdict-alone variant matched to its
    accuracy on `cal`, replayed on every split of `tests`; and the head's gate with its
    threshold fitted on `cal` too (`fitted_gate`) against the same verdict-alone. `fit`/`cal`
    should be the data the artifact was made on, so every side is fixed the same way."""
    settings = settings or HeadValueSettings()
    plain = verdict_alone(policy)
    served_cal = _measure(policy, artifact, cal)
    target = served_cal["accuracy"]
    alpha, chosen, chosen_cal, matched, sweep = _matched(
        plain, artifact, fit, cal, settings, target
    )
    gated, gated_art, gated_cal = _fitted_gate(policy, artifact, fit, cal, settings, target)
    rows = []
    for test in tests:
        served, alone = _measure(policy, artifact, test), _measure(plain, chosen, test)
        fitted = _measure(gated, gated_art, test)
        rows.append(
            {
                "split": test.split,
                "seed": test.seed,
                "n": test.n,
                "served": served,
                "verdict_alone": alone,
                "fitted_gate": fitted,
                "cost_reduction": 1.0 - served["cost_raw"] / alone["cost_raw"],
                "fitted_gate_cost_reduction": 1.0 - fitted["cost_raw"] / alone["cost_raw"],
                "accuracy_difference": served["accuracy"] - alone["accuracy"],
            }
        )
    return {
        "calibration": {"split": cal.split, "seed": cal.seed, "n": cal.n, "fit_n": fit.n},
        "router_threshold": policy.router_threshold,
        "served_on_calibration": served_cal,
        "verdict_alone_alpha": alpha,
        "verdict_alone_mode": settings.mode,
        "verdict_alone_on_calibration": chosen_cal,
        "fitted_gate_on_calibration": gated_cal,
        "matched": matched,
        "sweep": [{"alpha": a, **m} for a, _, m in sweep],
        "tests": rows,
        "mean_cost_reduction": _mean(r["cost_reduction"] for r in rows),
        "mean_fitted_gate_cost_reduction": _mean(r["fitted_gate_cost_reduction"] for r in rows),
        "design_claim": 0.2,
        "selection": "verdict-alone alpha, and the fitted gate's threshold and alpha: the "
        "cheapest on the calibration split at least as accurate there as the served policy; "
        "the test splits choose nothing",
    }


def _mean(values) -> float:
    values = list(values)
    return float(np.mean(values)) if values else math.nan
