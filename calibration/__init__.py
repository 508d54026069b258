"""Deciding from signals, and making the decisions trustworthy.

The request-time core: features and signals from one tier's answer, scores, conformal
thresholds, the tier ladder, the cascade state machine (`CascadeRun`), the calibration
artifact, the application's typed config, and the seed design's facade. numpy and pydantic
only: nothing here imports Ray, FastAPI, torch, transformers or vLLM (import-linter
checks). Names resolve lazily, so `import calibration` costs nothing until used.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING

_EXPORTS: dict[str, str] = {
    # feedback: logprobs -> features -> signal
    "FEATURE_NAMES": "feedback",
    "FeedbackConfig": "feedback",
    "TierSignal": "feedback",
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
    "Decision": "policy",
    "TierConfig": "policy",
    "decide": "policy",
    "request_cost": "policy",
    "start_tier": "policy",
    # cascade: the one state machine
    "CascadeOutcome": "cascade",
    "CascadeRun": "cascade",
    "CascadeStats": "cascade",
    "NoTierAnswered": "cascade",
    "run_cascade": "cascade",
    # generation: one tier's answer
    "Generation": "generation",
    # artifact: what serving loads
    "CascadeArtifact": "artifact",
    "load_artifact": "artifact",
    # config: the application's one typed config
    "AppArgs": "config",
    "CascadeCalibration": "artifact",
    "ModelIdentity": "artifact",
    # the seed design's interface
    "CascadeResult": "seed_router",
    "ExecutionFeedbackRouter": "seed_router",
    "FeedbackSignal": "seed_router",
}

__all__ = [
    "CONFORMAL_MODES",
    "FEATURE_NAMES",
    "SCORERS",
    "AppArgs",
    "CalibrationError",
    "CascadeArtifact",
    "CascadeCalibration",
    "CascadeOutcome",
    "CascadePolicyConfig",
    "CascadeResult",
    "CascadeRun",
    "CascadeStats",
    "ConformalResult",
    "Decision",
    "ExecutionFeedbackRouter",
    "FeatureScorer",
    "FeedbackConfig",
    "FeedbackSignal",
    "Generation",
    "HeuristicLimits",
    "ModelIdentity",
    "NoTierAnswered",
    "QualityEstimator",
    "Scorer",
    "ScorerSpec",
    "SeedHeuristicScorer",
    "TierConfig",
    "TierSignal",
    "binary_entropy",
    "calibrate",
    "decide",
    "extract_features",
    "feature_matrix",
    "feature_names",
    "features_from_arrays",
    "get_scorer",
    "load_artifact",
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
    from calibration.artifact import (
        CascadeArtifact,
        CascadeCalibration,
        ModelIdentity,
        load_artifact,
    )
    from calibration.cascade import (
        CascadeOutcome,
        CascadeRun,
        CascadeStats,
        NoTierAnswered,
        run_cascade,
    )
    from calibration.config import AppArgs
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
        TierSignal,
        binary_entropy,
        extract_features,
        feature_matrix,
        feature_names,
        features_from_arrays,
        signal,
        token_entropy,
    )
    from calibration.generation import Generation
    from calibration.policy import (
        CascadePolicyConfig,
        Decision,
        TierConfig,
        decide,
        request_cost,
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
    from calibration.seed_router import (
        CascadeResult,
        ExecutionFeedbackRouter,
        FeedbackSignal,
    )
