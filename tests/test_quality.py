"""calibration.scores: the registry, single-feature scores, the seed heuristic, the estimator."""

from __future__ import annotations

import dataclasses
import json
import math

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from calibration.feedback import FEATURE_NAMES
from calibration.scores import (
    FEATURE_SCORERS,
    SCORERS,
    HeuristicLimits,
    QualityEstimator,
    QualityEstimatorParams,
    Scorer,
    ScorerSpec,
    SeedHeuristicScorer,
    get_scorer,
)
from calibration.seed_router import ExecutionFeedbackRouter
from offline.synthetic import synthetic_split


@pytest.fixture(scope="module")
def data():
    """Synthetic splits of the answer's features alone (FEATURE_NAMES columns): the router's
    evidence beside them is tested in test_router_evidence.py."""
    return tuple(dataclasses.replace(synthetic_split(800, seed=s), router=None) for s in (1, 2))


def test_registry_names_the_required_scores():
    for name in (
        "quality_estimator",
        "neg_mean_logprob",
        "neg_q10_logprob",
        "mean_entropy",
        "seed_heuristic",
    ):
        assert name in SCORERS
    with pytest.raises(ValueError, match="unknown scorer 'nope'"):
        get_scorer("nope")


@pytest.mark.parametrize("name", sorted(FEATURE_SCORERS))
def test_feature_scorers_agree_one_by_one_and_vectorised(name, data):
    _, test = data
    scorer = get_scorer(name)
    assert isinstance(scorer, Scorer)
    m = test.features["cheap"]
    many = scorer.score_many(m, FEATURE_NAMES)
    one = [scorer.score(dict(zip(FEATURE_NAMES, row, strict=True))) for row in m[:50]]
    assert many[:50] == pytest.approx(one)
    feature, sign = FEATURE_SCORERS[name]
    assert many == pytest.approx(sign * m[:, FEATURE_NAMES.index(feature)])


def test_nan_features_score_inf():
    row = np.full((1, len(FEATURE_NAMES)), np.nan)
    assert get_scorer("neg_mean_logprob").score_many(row)[0] == math.inf
    assert SeedHeuristicScorer().score_many(row)[0] == math.inf


def test_seed_heuristic_score_fires_exactly_with_the_seed_rules(data):
    """score > 1 iff entropy > 2.5 or low-conf ratio > 0.15 or min logprob < -5."""
    _, test = data
    m = test.features["cheap"]
    col = {n: m[:, i] for i, n in enumerate(FEATURE_NAMES)}
    rules = (col["mean_entropy"] > 2.5) | (col["low_conf_ratio"] > 0.15) | (col["min_logprob"] < -5)
    assert ((SeedHeuristicScorer().score_many(m) > 1.0) == rules).all()
    edge = {"mean_entropy": 2.5, "low_conf_ratio": 0.15, "min_logprob": -5.0}
    assert SeedHeuristicScorer().score(edge) == pytest.approx(1.0)  # at the limits: no rule fires


def test_heuristic_limits_validate():
    with pytest.raises(ValueError, match=r"min_logprob limit must be < 0, got 1\.0"):
        HeuristicLimits(min_logprob=1.0)
    with pytest.raises(ValueError, match="low_conf_ratio limit must be in"):
        HeuristicLimits(low_conf_ratio=0.0)


def test_quality_estimator_learns_and_beats_chance(data):
    fit, test = data
    qe = QualityEstimator.fit(fit.features["cheap"], fit.wrong, FEATURE_NAMES, fit_split="fit")
    p = qe.score_many(test.features["cheap"])
    assert ((p >= 0) & (p <= 1)).all()
    assert roc_auc_score(test.wrong, p) > 0.75
    assert qe.params.n_fit == 800 and qe.params.fit_split == "fit"
    assert qe.params.wrong_rate == pytest.approx(fit.wrong.mean())


def test_quality_estimator_json_round_trip_scores_identically(data):
    fit, test = data
    qe = QualityEstimator.fit(fit.features["cheap"], fit.wrong)
    text = json.dumps(ScorerSpec.of(qe).model_dump(mode="json"))
    back = ScorerSpec.model_validate_json(text).build()
    m = test.features["cheap"]
    assert back.score_many(m) == pytest.approx(qe.score_many(m), abs=0, rel=0)
    row = dict(zip(FEATURE_NAMES, m[0], strict=True))
    assert back.score(row) == pytest.approx(qe.score_many(m[:1])[0])


def test_quality_estimator_on_a_feature_subset_and_other_column_order(data):
    fit, test = data
    qe = QualityEstimator.fit(
        fit.features["cheap"], fit.wrong, features=("q10_logprob", "mean_entropy")
    )
    m = test.features["cheap"]
    order = list(reversed(FEATURE_NAMES))
    assert qe.score_many(m[:, ::-1], order) == pytest.approx(qe.score_many(m))


def test_quality_estimator_errors():
    x = np.zeros((4, len(FEATURE_NAMES)))
    with pytest.raises(ValueError, match="needs both right and wrong"):
        QualityEstimator.fit(x, np.zeros(4))
    with pytest.raises(ValueError, match="4 feature rows but 3 labels"):
        QualityEstimator.fit(x, np.zeros(3))
    with pytest.raises(ValueError, match="scale has 1 entries but there are 2 features"):
        QualityEstimatorParams(
            features=("a", "b"), mean=(0, 0), scale=(1,), coef=(1, 1), intercept=0
        )
    with pytest.raises(ValueError, match="every scale must be > 0"):
        QualityEstimatorParams(features=("a",), mean=(0,), scale=(0,), coef=(1,), intercept=0)
    with pytest.raises(ValueError, match="needs its fitted"):
        ScorerSpec(name="quality_estimator")
    with pytest.raises(KeyError, match="'q10_logprob' is not among the columns"):
        get_scorer("neg_q10_logprob").score_many(np.zeros((1, 1)), ["mean_logprob"])


def test_estimator_beats_a_single_feature_on_its_own_terms(data):
    """Fitted on the same features, the estimator should rank at least about as well as the
    best single one (a sanity check of the standardisation, not a claim about the zoo)."""
    fit, test = data
    qe = QualityEstimator.fit(fit.features["cheap"], fit.wrong)
    m = test.features["cheap"]
    best_single = max(
        roc_auc_score(test.wrong, get_scorer(n).score_many(m)) for n in FEATURE_SCORERS
    )
    assert roc_auc_score(test.wrong, qe.score_many(m)) >= best_single - 0.02


def test_facade_score_option_uses_the_registry():
    assert ExecutionFeedbackRouter(score="neg_q10_logprob").scorer.name == "neg_q10_logprob"
