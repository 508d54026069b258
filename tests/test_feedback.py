"""calibration.feedback: features on hand-built logprob sequences, entropy, signal."""

from __future__ import annotations

import math

import numpy as np
import pytest

from calibration.feedback import (
    FEATURE_NAMES,
    NO_TOKENS_REASON,
    FeedbackConfig,
    binary_entropy,
    extract_features,
    feature_matrix,
    feature_names,
    features_from_arrays,
    signal,
    token_entropy,
)
from calibration.scores import get_scorer
from models.engine import Generation
from offline.synthetic import make_generation, random_generation

LN = math.log


def direct_entropy_bits(row_logprobs: list[float]) -> float:
    """Shannon entropy of the top-k probabilities plus the leftover, the long way."""
    probs = [math.exp(lp) for lp in row_logprobs if lp > -math.inf]
    probs.append(max(0.0, 1.0 - sum(probs)))
    return -sum(p * math.log2(p) for p in probs if p > 0)


def test_stable_feature_names():
    assert FEATURE_NAMES == (
        "mean_logprob",
        "min_logprob",
        "q05_logprob",
        "q10_logprob",
        "q25_logprob",
        "q50_logprob",
        "mean_entropy",
        "max_entropy",
        "binary_entropy",
        "low_conf_count",
        "low_conf_ratio",
        "num_tokens",
    )
    assert feature_names(FeedbackConfig(quantiles=(0.2,)))[2] == "q20_logprob"


def test_features_of_a_hand_built_sequence():
    lps = [LN(0.9), LN(0.6), LN(0.3), LN(0.05)]
    top = [
        [LN(0.9), LN(0.05)],
        [LN(0.6), LN(0.3), LN(0.1)],
        [LN(0.4), LN(0.3), LN(0.2)],  # sampled token (0.3) is not the argmax
        [LN(0.5), LN(0.05)],
    ]
    f = extract_features(make_generation(lps, top))
    assert f["num_tokens"] == 4
    assert f["mean_logprob"] == pytest.approx(np.mean(lps))
    assert f["min_logprob"] == pytest.approx(LN(0.05))
    for q, name in ((0.05, "q05"), (0.1, "q10"), (0.25, "q25"), (0.5, "q50")):
        assert f[f"{name}_logprob"] == pytest.approx(np.quantile(lps, q))
    # below log 0.5: 0.3 and 0.05 (0.6 is above; the default limit is log 0.5)
    assert f["low_conf_count"] == 2
    assert f["low_conf_ratio"] == 0.5
    ents = [direct_entropy_bits(row) for row in top]
    assert f["mean_entropy"] == pytest.approx(np.mean(ents))
    assert f["max_entropy"] == pytest.approx(max(ents))
    p = math.exp(np.mean(lps))
    assert f["binary_entropy"] == pytest.approx(-p * math.log2(p) - (1 - p) * math.log2(1 - p))


def test_entropy_matches_direct_computation_on_random_rows():
    rng = np.random.default_rng(0)
    for _ in range(20):
        g = random_generation(
            rng,
            n_tokens=int(rng.integers(1, 30)),
            k=int(rng.integers(1, 8)),
            sharpness=float(rng.uniform(0.1, 5)),
        )
        h = token_entropy(g.top_logprob_matrix())
        assert h == pytest.approx(
            [direct_entropy_bits([lp for _, lp in row]) for row in g.top_logprobs]
        )


def test_entropy_bounds_and_edge_rows():
    with np.errstate(divide="ignore"):
        top = np.log(np.array([[1.0, 0.0, 0.0], [1 / 3, 1 / 3, 1 / 3], [0.25, 0.25, 0.25]]))
    h = token_entropy(top)
    assert h[0] == pytest.approx(0.0)  # a certain token: no uncertainty, no nan from 0 log 0
    assert h[1] == pytest.approx(math.log2(3))  # top-k holds all mass
    assert h[2] == pytest.approx(2.0)  # four outcomes of 1/4: the leftover counts as one
    # mass over 1 from rounding must not produce a negative leftover or nan
    assert np.isfinite(token_entropy(np.log(np.array([[0.7, 0.300001]])))).all()


def test_entropy_is_not_the_seed_pseudo_entropy():
    """Same chosen-token logprobs, different alternatives: a real entropy differs, while any
    function of the chosen logprobs alone (the seed's) cannot."""
    lps = [LN(0.5)] * 3
    peaked = make_generation(lps, [[LN(0.5), LN(0.5)]] * 3)
    spread = make_generation(lps, [[LN(0.5), LN(0.1), LN(0.1), LN(0.1), LN(0.1)]] * 3)
    assert extract_features(peaked)["mean_entropy"] == pytest.approx(1.0)
    assert extract_features(spread)["mean_entropy"] > 2.0


def test_binary_entropy_values():
    assert binary_entropy(0.5) == pytest.approx(1.0)
    assert binary_entropy(0.0) == 0.0
    assert binary_entropy(1.0) == 0.0
    assert binary_entropy(np.array([0.1, 0.9])) == pytest.approx([0.4690, 0.4690], abs=1e-4)


def test_empty_generation_is_explicit():
    g = Generation("", (), (), (), "stop", 3)
    f = extract_features(g)
    assert f["num_tokens"] == 0 and f["low_conf_count"] == 0
    assert math.isnan(f["mean_logprob"])
    sig = signal(g, get_scorer("neg_mean_logprob"), threshold=100.0)
    assert sig.escalate and sig.reasons == (NO_TOKENS_REASON,) and sig.score == math.inf
    assert sig.cause == "no_tokens"


def test_no_top_logprobs_falls_back_to_the_chosen_token():
    g = Generation("ab", (1, 2), (LN(0.5), LN(0.5)), ((), ()), "stop", 3)
    f = extract_features(g)
    assert f["mean_entropy"] == pytest.approx(1.0)  # (0.5, leftover 0.5)


def test_ragged_rows_are_padded():
    g = make_generation([LN(0.5), LN(0.9)], [[LN(0.5), LN(0.25)], [LN(0.9)]])
    f = extract_features(g)
    assert f["max_entropy"] == pytest.approx(1.5)


def test_minus_inf_logprob_is_clipped_not_propagated():
    f = extract_features(make_generation([-math.inf, LN(0.9)], [[-math.inf], [LN(0.9)]]))
    assert all(math.isfinite(v) for v in f.values())


def test_mismatched_rows_raise():
    g = Generation("ab", (1, 2), (-0.1, -0.2), ((("a", -0.1),),), "stop", 3)
    with pytest.raises(ValueError, match="2 logprobs but 1 top-logprob rows"):
        extract_features(g)


def test_array_path_equals_generation_path_and_matrix():
    rng = np.random.default_rng(1)
    gens = [random_generation(rng, 17) for _ in range(5)]
    m = feature_matrix(gens)
    for g, row in zip(gens, m, strict=True):
        f = extract_features(g)
        f2 = features_from_arrays(g.logprob_array(), g.top_logprob_matrix())
        assert f == pytest.approx(f2)
        assert list(row) == pytest.approx([f[n] for n in FEATURE_NAMES])


def test_signal_tie_accepts_and_reasons_are_readable():
    g = make_generation([LN(0.4), LN(0.4)])
    score = -LN(0.4)
    scorer = get_scorer("neg_mean_logprob")
    tie = signal(g, scorer, threshold=score)
    assert not tie.escalate and "accept" in tie.reasons[0]
    up = signal(g, scorer, threshold=score - 1e-9)
    assert up.escalate and "escalate" in up.reasons[0]
    assert any("tokens below logprob" in r for r in up.reasons)
    assert up.cause == "neg_mean_logprob_above_threshold"
    assert up.as_dict()["features"]["num_tokens"] == 2


def test_signal_from_features_only():
    f = extract_features(make_generation([LN(0.9)]))
    sig = signal(None, get_scorer("mean_entropy"), 10.0, features=f)
    assert not sig.escalate
    with pytest.raises(ValueError, match="needs a generation"):
        signal(None, get_scorer("mean_entropy"), 1.0)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"low_confidence_logprob": 0.5}, "low_confidence_logprob must be < 0"),
        ({"quantiles": (0.5, 1.2)}, "quantile must be in"),
        ({"quantiles": ()}, "must not be empty"),
        ({"quantiles": (0.101, 0.1)}, "differ at the percent level"),
    ],
)
def test_bad_config_raises_naming_the_value(kwargs, match):
    with pytest.raises(ValueError, match=match):
        FeedbackConfig(**kwargs)
