"""The router's P(complex) as ex-ante evidence in the quality estimator: fitted, carried by the
offline splits and by serving's signal alike, missing evidence escalates, and an artifact that
needs it is refused where no router runs."""

from __future__ import annotations

import math

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from calibration.feedback import ROUTER_FEATURES, extract_features, router_evidence, signal
from calibration.scores import QualityEstimator
from offline.evaluate import fit_quality_estimator
from offline.synthetic import synthetic_split


@pytest.fixture(scope="module")
def splits():
    """Synthetic splits whose router P(complex) follows each request's latent difficulty, as
    the zoo router's does: real evidence the answer's logprobs only partly carry."""
    return synthetic_split(600, 1, "validation"), synthetic_split(2000, 3, "test")


def test_splits_carry_the_routers_evidence_as_named_columns(splits):
    fit, _ = splits
    base = len(fit.feature_names) - len(ROUTER_FEATURES)
    assert fit.feature_names[base:] == ROUTER_FEATURES
    assert np.array_equal(fit.features["cheap"][:, -1], fit.router.p_complex)
    assert fit.context(4) == {"router_p_complex": float(fit.router.p_complex[4])}
    fit.router, routed = None, fit.router
    try:
        assert math.isnan(fit.context(4)["router_p_complex"])
    finally:
        fit.router = routed


def test_the_router_evidence_lifts_the_estimator_on_the_zoo(zoo):
    """On the requests the served router sends to the cheap tier (where the estimator
    decides), the router's P(complex) beside the logprobs ranks wrong answers better than the
    logprobs alone: AUROC +0.03 to +0.04 on this machine's zoo, +0.015 asserted."""
    from calibration.config import AppArgs
    from models.served_calibration import served_artifact
    from offline.replay import load_split
    from offline.served import replay_served

    app = AppArgs.from_serve_config()
    names = app.tier_names
    fit = load_split("validation", 1000, 0, root=zoo, tiers=names)
    both = fit_quality_estimator(fit)
    alone = fit_quality_estimator(fit, router_evidence=False)
    assert both.needs_router and not alone.needs_router
    assert both.params.features[-1] == "router_p_complex"
    for seed in (0, 1):
        test = load_split("test", 1000, seed, root=zoo, tiers=names)
        here = replay_served(app.policy(), served_artifact(app, zoo), test).reached["cheap"]
        wrong = ~test.correct["cheap"][here]
        auc = {
            name: roc_auc_score(
                wrong, qe.score_many(test.features["cheap"][here], test.feature_names)
            )
            for name, qe in (("both", both), ("alone", alone))
        }
        assert auc["both"] > auc["alone"] + 0.015, (seed, auc)


def test_one_answer_scores_as_its_row_and_no_evidence_escalates(splits):
    fit, test = splits
    qe = fit_quality_estimator(fit)
    rows = qe.score_many(test.features["cheap"], test.feature_names)
    for i in (0, 7, 99):
        gen = test.answers["cheap"][i]
        sig = signal(gen, qe, threshold=0.5, context=test.context(i))
        assert sig.score == pytest.approx(rows[i])
        assert sig.features["router_p_complex"] == test.router.p_complex[i]
        assert sig.escalate == (rows[i] > 0.5)
    # the router gave nothing (skipped, failed): no accept on evidence never calibrated
    gen = test.answers["cheap"][0]
    for sig in (
        signal(gen, qe, threshold=0.99, context=router_evidence(None)),
        signal(gen, qe, threshold=0.99),
    ):
        assert sig.score == math.inf and sig.escalate
        assert any("no router evidence" in r for r in sig.reasons), sig.reasons
    # without the router's column the matrix path agrees
    names = test.feature_names[: -len(ROUTER_FEATURES)]
    assert np.isinf(qe.score_many(test.features["cheap"][:, : len(names)], names)).all()
    # a logprob-only estimator ignores the context entirely
    alone = QualityEstimator.fit(test.features["cheap"], ~test.correct["cheap"], names)
    f = extract_features(gen)
    assert signal(gen, alone, 0.5, context=router_evidence(None)).score == alone.score(f)


def test_calibration_uses_it_only_where_both_splits_carry_it(splits):
    from calibration.artifact import ModelIdentity
    from calibration.config import AppArgs
    from calibration.policy import CascadePolicyConfig
    from offline.ladder_calibration import calibrate_ladder

    fit, test = splits
    app = AppArgs(tiers=[{"name": "cheap", "model": "m"}, {"name": "strong", "model": "m"}])
    policy: CascadePolicyConfig = app.policy()
    kw = {"mode": "risk", "alpha": 0.1, "models": {"cheap": ModelIdentity(name="m")}}
    assert calibrate_ladder(policy, fit, test, **kw).needs_router
    assert not calibrate_ladder(policy, fit, test, **kw, router_evidence=False).needs_router
    unrouted = synthetic_split(400, 5)
    unrouted.router = None
    assert not calibrate_ladder(policy, fit, unrouted, **kw).needs_router


def test_serving_refuses_an_artifact_that_needs_the_router_with_the_router_off(zoo):
    from calibration.config import AppArgs
    from models.served_calibration import served_artifact

    args = AppArgs(
        tiers=[{"name": "cheap", "model": "zoo:cheap"}, {"name": "strong", "model": "zoo:strong"}],
        router={"enabled": False},
    )
    with pytest.raises(ValueError, match=r"router\.enabled is false; enable the router"):
        served_artifact(args, zoo)
    on = args.model_copy(update={"router": args.router.model_copy(update={"enabled": True})})
    assert served_artifact(on, zoo).needs_router  # the zoo's artifact uses the evidence


def test_the_router_view_hands_serving_its_evidence():
    from deployments.protocol import RouterView

    view = RouterView(policy="complex", probabilities={"standard": 0.25, "complex": 0.75})
    assert view.evidence == {"router_p_complex": 0.75}
    assert math.isnan(RouterView(skipped_reason="router failed").evidence["router_p_complex"])
