"""Nonconformity scores: one small interface, a registry, and the quality estimator.

A score maps an answer's features to a number that is *higher when the cheap answer is more
likely wrong*; the conformal modes only ever compare scores with a threshold, so any
monotone transform of a good score is equally good. Three kinds live here:

- single features, sign-flipped where needed (`neg_mean_logprob`, `neg_q10_logprob`,
  `mean_entropy`, ...): no fitting, the baselines the estimator has to beat;
- `seed_heuristic`: the seed design's fixed limits folded into one number (> 1 iff a limit is
  crossed), so the heuristic runs through the same code path as every other score;
- `quality_estimator`: logistic regression on standardised features, fitted on held-out
  answers to predict P(cheap answer wrong). It serialises to plain JSON (means, scales,
  coefficients) because serving loads it from the calibration artifact without sklearn.

    >>> scorer = get_scorer("neg_q10_logprob")
    >>> scorer.score({"q10_logprob": -2.0})
    2.0
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Protocol, runtime_checkable

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from calibration.feedback import FEATURE_NAMES, ROUTER_FEATURES

__all__ = [
    "FEATURE_SCORERS",
    "SCORERS",
    "FeatureScorer",
    "HeuristicLimits",
    "QualityEstimator",
    "QualityEstimatorParams",
    "Scorer",
    "ScorerSpec",
    "SeedHeuristicScorer",
    "get_scorer",
]


@runtime_checkable
class Scorer(Protocol):
    """Higher score = the answer is more likely wrong. NaN features score +inf (escalate)."""

    name: str

    def score(self, features: Mapping[str, float]) -> float:
        """Score one answer from its named features (`calibration.feedback.extract_features`)."""
        ...

    def score_many(self, matrix: np.ndarray, names: Sequence[str] = FEATURE_NAMES) -> np.ndarray:
        """Score an (N, F) feature matrix whose columns are `names`; returns shape (N,)."""
        ...


def _column(names: Sequence[str], feature: str) -> int:
    try:
        return list(names).index(feature)
    except ValueError as e:
        raise KeyError(f"feature {feature!r} is not among the columns {list(names)}") from e


def _nan_to_inf(x: np.ndarray) -> np.ndarray:
    return np.where(np.isnan(x), np.inf, x)


@dataclass(frozen=True)
class FeatureScorer:
    """One feature times a sign: `neg_mean_logprob` is -mean_logprob, `mean_entropy` itself."""

    name: str
    feature: str
    sign: float = 1.0

    def score(self, features: Mapping[str, float]) -> float:
        value = self.sign * float(features[self.feature])
        return math.inf if math.isnan(value) else value

    def score_many(self, matrix: np.ndarray, names: Sequence[str] = FEATURE_NAMES) -> np.ndarray:
        return _nan_to_inf(self.sign * matrix[:, _column(names, self.feature)])


# Single-feature scores: (feature, sign). Low logprobs and high entropies mean "likely wrong".
FEATURE_SCORERS: dict[str, tuple[str, float]] = {
    "neg_mean_logprob": ("mean_logprob", -1.0),
    "neg_min_logprob": ("min_logprob", -1.0),
    "neg_q05_logprob": ("q05_logprob", -1.0),
    "neg_q10_logprob": ("q10_logprob", -1.0),
    "neg_q25_logprob": ("q25_logprob", -1.0),
    "neg_q50_logprob": ("q50_logprob", -1.0),
    "mean_entropy": ("mean_entropy", 1.0),
    "max_entropy": ("max_entropy", 1.0),
    "binary_entropy": ("binary_entropy", 1.0),
    "low_conf_ratio": ("low_conf_ratio", 1.0),
}


class HeuristicLimits(BaseModel):
    """The seed design's fixed escalation limits (its `heuristic` mode)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    entropy: float = Field(default=2.5, description="Escalate if mean token entropy (bits) > this.")
    low_conf_ratio: float = Field(
        default=0.15, description="Escalate if the share of low-confidence tokens > this."
    )
    min_logprob: float = Field(default=-5.0, description="Escalate if any token's logprob < this.")

    @field_validator("entropy")
    @classmethod
    def _positive(cls, value: float) -> float:
        if not value > 0:
            raise ValueError(f"entropy limit must be > 0, got {value}")
        return value

    @field_validator("low_conf_ratio")
    @classmethod
    def _ratio(cls, value: float) -> float:
        if not 0 < value <= 1:
            raise ValueError(f"low_conf_ratio limit must be in (0, 1], got {value}")
        return value

    @field_validator("min_logprob")
    @classmethod
    def _negative(cls, value: float) -> float:
        if not value < 0:
            raise ValueError(f"min_logprob limit must be < 0, got {value}")
        return value


@dataclass(frozen=True)
class SeedHeuristicScorer:
    """The seed's rules as one score: the largest ratio of a feature to its limit.

    max(mean_entropy / 2.5, low_conf_ratio / 0.15, min_logprob / -5.0) exceeds 1 exactly when
    one of the seed's rules fires, so `score > 1.0` reproduces the heuristic and the same
    threshold-based code path serves it.
    """

    limits: HeuristicLimits = field(default_factory=HeuristicLimits)
    name: str = "seed_heuristic"

    THRESHOLD = 1.0

    def score(self, features: Mapping[str, float]) -> float:
        lim = self.limits
        value = max(
            features["mean_entropy"] / lim.entropy,
            features["low_conf_ratio"] / lim.low_conf_ratio,
            features["min_logprob"] / lim.min_logprob,
        )
        return math.inf if math.isnan(value) else float(value)

    def score_many(self, matrix: np.ndarray, names: Sequence[str] = FEATURE_NAMES) -> np.ndarray:
        lim = self.limits
        ratios = np.stack(
            [
                matrix[:, _column(names, "mean_entropy")] / lim.entropy,
                matrix[:, _column(names, "low_conf_ratio")] / lim.low_conf_ratio,
                matrix[:, _column(names, "min_logprob")] / lim.min_logprob,
            ],
            axis=1,
        )
        return _nan_to_inf(ratios.max(axis=1))


class QualityEstimatorParams(BaseModel):
    """Everything serving needs to score with a fitted estimator, as plain JSON numbers."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    features: tuple[str, ...] = Field(description="Input feature names, in coefficient order.")
    mean: tuple[float, ...] = Field(description="Standardisation means, one per feature.")
    scale: tuple[float, ...] = Field(description="Standardisation scales (> 0), one per feature.")
    coef: tuple[float, ...] = Field(description="Logistic coefficients on standardised features.")
    intercept: float = Field(description="Logistic intercept.")
    n_fit: int = Field(default=0, ge=0, description="Answers the estimator was fitted on.")
    wrong_rate: float = Field(default=math.nan, description="Share of wrong answers in the fit.")
    fit_split: str = Field(default="", description="Which data split it was fitted on.")

    @model_validator(mode="after")
    def _lengths(self) -> QualityEstimatorParams:
        n = len(self.features)
        for name in ("mean", "scale", "coef"):
            if len(getattr(self, name)) != n:
                raise ValueError(
                    f"{name} has {len(getattr(self, name))} entries but there are {n} features"
                )
        if any(not s > 0 for s in self.scale):
            raise ValueError(f"every scale must be > 0, got {self.scale}")
        return self


class QualityEstimator:
    """P(cheap answer wrong) from features: logistic regression on standardised features.

    Fitted with sklearn, scored with numpy alone (a dot product and a sigmoid), so serving
    needs only the JSON parameters. Its output is the nonconformity score: a probability is
    easy to read, and conformal calibration needs nothing more than an order.
    """

    name = "quality_estimator"

    def __init__(self, params: QualityEstimatorParams) -> None:
        self.params = params
        self._mean = np.asarray(params.mean)
        self._scale = np.asarray(params.scale)
        self._coef = np.asarray(params.coef)

    @classmethod
    def fit(
        cls,
        matrix: np.ndarray,
        wrong: np.ndarray,
        names: Sequence[str] = FEATURE_NAMES,
        *,
        features: Sequence[str] | None = None,
        c: float = 1.0,
        fit_split: str = "",
    ) -> QualityEstimator:
        """Fit on an (N, F) matrix and 0/1 labels (1 = the cheap answer was wrong).

        Rows with a non-finite feature (empty generations) are left out: serving escalates
        those before any score is computed. Both classes must be present.
        """
        from sklearn.linear_model import LogisticRegression

        features = tuple(features or names)
        x = matrix[:, [_column(names, f) for f in features]]
        y = np.asarray(wrong, dtype=int)
        if len(x) != len(y):
            raise ValueError(f"{len(x)} feature rows but {len(y)} labels")
        keep = np.isfinite(x).all(axis=1)
        x, y = x[keep], y[keep]
        if len(np.unique(y)) < 2:
            raise ValueError(
                f"the fit set needs both right and wrong answers, got {len(y)} rows all {y[:1]}"
            )
        mean = x.mean(axis=0)
        scale = x.std(axis=0)
        scale = np.where(scale > 1e-12, scale, 1.0)  # a constant feature: leave it unscaled
        model = LogisticRegression(C=c, max_iter=1000).fit((x - mean) / scale, y)
        return cls(
            QualityEstimatorParams(
                features=features,
                mean=tuple(mean.tolist()),
                scale=tuple(scale.tolist()),
                coef=tuple(model.coef_[0].tolist()),
                intercept=float(model.intercept_[0]),
                n_fit=len(y),
                wrong_rate=float(y.mean()),
                fit_split=fit_split,
            )
        )

    @classmethod
    def from_params(cls, params: QualityEstimatorParams | Mapping) -> QualityEstimator:
        if not isinstance(params, QualityEstimatorParams):
            params = QualityEstimatorParams.model_validate(params)
        return cls(params)

    def _prob(self, x: np.ndarray) -> np.ndarray:
        z = ((x - self._mean) / self._scale) @ self._coef + self.params.intercept
        with np.errstate(over="ignore"):
            p = 1.0 / (1.0 + np.exp(-z))
        return _nan_to_inf(p)

    @property
    def needs_router(self) -> bool:
        """Whether it scores with the router's evidence (`calibration.feedback.ROUTER_FEATURES`)
        too: serving then needs a router, and scores +inf where the router gave none."""
        return any(f in ROUTER_FEATURES for f in self.params.features)

    def score(self, features: Mapping[str, float]) -> float:
        # router evidence absent (no context given) reads as NaN, like a router that failed
        x = np.fromiter(
            (
                features.get(f, math.nan) if f in ROUTER_FEATURES else features[f]
                for f in self.params.features
            ),
            np.float64,
        )
        return float(self._prob(x))

    def score_many(self, matrix: np.ndarray, names: Sequence[str] = FEATURE_NAMES) -> np.ndarray:
        cols = [
            np.full(len(matrix), math.nan)  # no router column: as `score` without context
            if f in ROUTER_FEATURES and f not in names
            else matrix[:, _column(names, f)]
            for f in self.params.features
        ]
        return self._prob(np.stack(cols, axis=1) if cols else matrix[:, :0])


SCORERS: dict[str, Callable[..., Scorer]] = {
    **{
        name: partial(FeatureScorer, name, feature, sign)
        for name, (feature, sign) in FEATURE_SCORERS.items()
    },
    "seed_heuristic": SeedHeuristicScorer,
    "quality_estimator": QualityEstimator.from_params,
}


def get_scorer(name: str, **kwargs) -> Scorer:
    """Build a registered scorer; `quality_estimator` needs `params=`, `seed_heuristic`
    takes optional `limits=`."""
    try:
        factory = SCORERS[name]
    except KeyError as e:
        raise ValueError(f"unknown scorer {name!r}; choose from {sorted(SCORERS)}") from e
    return factory(**kwargs)


class ScorerSpec(BaseModel):
    """A scorer as data, for the calibration artifact: its registry name and parameters."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = Field(description="Registry name in calibration.scores.SCORERS.")
    estimator: QualityEstimatorParams | None = Field(
        default=None, description="Fitted parameters; required for quality_estimator."
    )
    limits: HeuristicLimits | None = Field(
        default=None, description="The seed's limits; only for seed_heuristic."
    )

    @model_validator(mode="after")
    def _check(self) -> ScorerSpec:
        if self.name not in SCORERS:
            raise ValueError(f"unknown scorer {self.name!r}; choose from {sorted(SCORERS)}")
        if self.name == "quality_estimator" and self.estimator is None:
            raise ValueError("scorer 'quality_estimator' needs its fitted `estimator` parameters")
        return self

    def build(self) -> Scorer:
        if self.name == "quality_estimator":
            return QualityEstimator(self.estimator)
        if self.name == "seed_heuristic":
            return SeedHeuristicScorer(self.limits or HeuristicLimits())
        return get_scorer(self.name)

    @classmethod
    def of(cls, scorer: Scorer) -> ScorerSpec:
        """The spec that rebuilds `scorer`."""
        if isinstance(scorer, QualityEstimator):
            return cls(name=scorer.name, estimator=scorer.params)
        if isinstance(scorer, SeedHeuristicScorer):
            return cls(name=scorer.name, limits=scorer.limits)
        return cls(name=scorer.name)
