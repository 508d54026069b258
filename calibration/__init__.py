"""Deciding from signals, and making the decisions trustworthy.

The serving path needs four names: `CascadeCalibration.load(path)` (the artifact),
`signal(generation, scorer, threshold)` or `artifact.signal(generation)` (the verdict on one
answer), and `start_tier` / `decide` (the ladder). Everything here is pure Python + numpy;
nothing imports Ray. Names resolve lazily, so `import calibration` costs nothing until used.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING

_EXPORTS: dict[str, str] = {
    # feedback: logprobs -> features -> signal
    "FEATURE_NAMES": "feedback",
    "FeedbackConfig": "feedback",
    "FeedbackSignal": "feedback",
    "binary_entropy": "feedback",
    "extract_features": "feedback",
    "feature_matrix": "feedback",
    "feature_names": "feedback",
    "features_from_arrays": "feedback",
    "signal": "feedback",
    "token_entropy": "feedback",
    # scores: nonconformity scores and the quality estimator
    "SCORERS": "scores",
    "FeatureScorer": "scores",
    "HeuristicLimits": "scores",
    "QualityEstimator": "scores",
    "Scorer": "scores",
    "ScorerSpec": "scores",
    "SeedHeuristicScorer": "scores",
    "get_scorer": "scores",
    # conformal: thresholds with guarantees
    "CONFORMAL_MODES": "conformal",
    "CalibrationError": "conformal",
    "ConformalResult": "conformal",
    "calibrate": "conformal",
    "trials": "conformal",
    # policy: the tier ladder
    "CascadePolicyConfig": "policy",
    "CascadeStats": "policy",
    "Decision": "policy",
    "TierConfig": "policy",
    "decide": "policy",
    "request_cost": "policy",
    "run_cascade": "policy",
    "start_tier": "policy",
    # artifact: what serving loads
    "CascadeCalibration": "artifact",
    "ModelIdentity": "artifact",
    # the seed design's interface
    "ExecutionFeedbackRouter": "seed_router",
}

__all__ = [
    "CONFORMAL_MODES",
    "FEATURE_NAMES",
    "SCORERS",
    "CalibrationError",
    "CascadeCalibration",
    "CascadePolicyConfig",
    "CascadeStats",
    "ConformalResult",
    "Decision",
    "ExecutionFeedbackRouter",
    "FeatureScorer",
    "FeedbackConfig",
    "FeedbackSignal",
    "HeuristicLimits",
    "ModelIdentity",
    "QualityEstimator",
    "Scorer",
    "ScorerSpec",
    "SeedHeuristicScorer",
    "TierConfig",
    "binary_entropy",
    "calibrate",
    "decide",
    "extract_features",
    "feature_matrix",
    "feature_names",
    "features_from_arrays",
    "get_scorer",
    "request_cost",
    "run_cascade",
    "signal",
    "start_tier",
    "token_entropy",
    "trials",
]
assert set(__all__) == set(_EXPORTS), "every export is in __all__ and has a module"


def __getattr__(name: str):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'calibration' has no attribute {name!r}")
    value = getattr(import_module(f"calibration.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})


if TYPE_CHECKING:  # for type checkers and IDEs; never executed
    from calibration.artifact import CascadeCalibration, ModelIdentity
    from calibration.conformal import (
        CONFORMAL_MODES,
        CalibrationError,
        ConformalResult,
        calibrate,
        trials,
    )
    from calibration.feedback import (
        FEATURE_NAMES,
        FeedbackConfig,
        FeedbackSignal,
        binary_entropy,
        extract_features,
        feature_matrix,
        feature_names,
        features_from_arrays,
        signal,
        token_entropy,
    )
    from calibration.policy import (
        CascadePolicyConfig,
        CascadeStats,
        Decision,
        TierConfig,
        decide,
        request_cost,
        run_cascade,
        start_tier,
    )
    from calibration.scores import (
        SCORERS,
        FeatureScorer,
        HeuristicLimits,
        QualityEstimator,
        Scorer,
        ScorerSpec,
        SeedHeuristicScorer,
        get_scorer,
    )
    from calibration.seed_router import ExecutionFeedbackRouter
