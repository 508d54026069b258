"""calibration.conformal: closed forms against brute force and MAPIE, guarantees over many
random calibration/test splits, and what too little data does."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest

from calibration.conformal import (
    CONFORMAL_MODES,
    CalibrationError,
    ConformalResult,
    budget_threshold,
    calibrate,
    empirical,
    recall_threshold,
    risk_threshold,
    trials,
)

TRIALS = 400  # >= 200 random splits per mode, as the issue asks


def pool(n: int, seed: int, discrete: bool = False):
    """Scores higher for wrong answers; the strong tier fixes most of them."""
    rng = np.random.default_rng(seed)
    wrong = rng.random(n) < 0.35
    scores = rng.normal(0, 1, n) + 1.2 * wrong
    if discrete:
        scores = np.round(scores, 1)  # many ties, like a count-based score
    strong_right = np.where(wrong, rng.random(n) < 0.7, rng.random(n) < 0.95)
    return scores, wrong, strong_right


# --- closed forms against an independent brute force --------------------------------------------


def candidates(scores: np.ndarray) -> list[float]:
    """Every threshold at which "escalate iff s > t" can change on these scores, from both
    sides, and the two infinities."""
    s = np.unique(scores)
    return sorted({-math.inf, math.inf, *s.tolist(), *np.nextafter(s, -np.inf).tolist()})


def brute_budget(scores, alpha):
    n = len(scores)
    ok = [t for t in candidates(scores) if ((scores > t).sum() + 1) / (n + 1) <= alpha + 1e-12]
    return min(ok)


def brute_accept_bound(scores, bad, alpha, n):
    """Largest t with (#bad accepted (s <= t) + 1) / (n + 1) <= alpha, -inf if none."""
    ok = [
        t for t in candidates(scores) if ((scores <= t) & bad).sum() + 1 <= alpha * (n + 1) + 1e-9
    ]
    return max(ok) if ok else -math.inf


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("alpha", [0.02, 0.05, 0.1, 0.25])
@pytest.mark.parametrize("discrete", [False, True])
def test_thresholds_equal_brute_force(seed, alpha, discrete):
    s, w, r = pool(int(60 + 37 * seed), seed, discrete)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # small cases are conservative and warn; compared anyway
        b = budget_threshold(s, alpha)
        rc = recall_threshold(s, w, alpha)
        rk = risk_threshold(s, w & r, alpha)
    assert b.threshold == brute_budget(s, alpha)
    assert rc.threshold == brute_accept_bound(s[w], np.ones(w.sum(), bool), alpha, w.sum())
    assert rk.threshold == brute_accept_bound(s, w & r, alpha, len(s))


def test_docstring_example_and_known_values():
    r = calibrate("budget", np.arange(100.0), 0.1)
    assert (r.threshold, r.conservative, r.n, r.n_min) == (90.0, False, 100, 9)
    # n = 19, alpha = 0.1: k = 20 - 2 = 18 -> the 18th smallest of 0..18 is 17
    assert budget_threshold(np.arange(19.0), 0.1).threshold == 17.0
    # recall: m = 19 wrong, j = floor(0.1 * 20) = 2 -> accept below the 2nd smallest (1.0)
    r = recall_threshold(np.arange(19.0), np.ones(19, bool), 0.1)
    assert r.threshold == np.nextafter(1.0, -np.inf)
    # risk: n = 19, c = floor(2) - 1 = 1 bad may be accepted: accept below the 2nd bad score
    bad = np.zeros(19, bool)
    bad[[3, 7, 11]] = True
    assert risk_threshold(np.arange(19.0), bad, 0.1).threshold == np.nextafter(7.0, -np.inf)
    # no bad answer at all: accepting everything costs nothing
    assert risk_threshold(np.arange(19.0), np.zeros(19, bool), 0.1).threshold == math.inf


# --- cross-check with MAPIE's conformal risk control ------------------------------------------


@pytest.mark.parametrize("mode", ["risk", "recall"])
@pytest.mark.parametrize("seed", range(4))
def test_risk_and_recall_match_mapie_crc(mode, seed):
    """MAPIE's CRC (r_hat_plus = n/(n+1) r_hat + 1/(n+1), largest lambda below alpha) on the
    same per-sample losses over every candidate threshold must pick our threshold.

    alpha * (n + 1) is kept off the integers: MAPIE's test is strict (< alpha), ours <= alpha.
    """
    methods = pytest.importorskip("mapie.risk_control.methods")
    s, w, r = pool(301 + 50 * seed, 100 + seed)
    alpha = 0.0537
    if mode == "risk":
        scores, bad = s, w & r
        ours = risk_threshold(scores, bad, alpha)
    else:
        scores, bad = s[w], np.ones(w.sum(), bool)
        ours = recall_threshold(s, w, alpha)
    assert alpha * (len(scores) + 1) % 1 != 0
    lambdas = np.array([t for t in candidates(scores) if math.isfinite(t)])
    risks = ((scores[:, None] <= lambdas[None, :]) & bad[:, None]).astype(float)  # (n, n_lambda)
    _, r_hat_plus = methods.get_r_hat_plus(risks, lambdas, "crc", None, None, None)
    mapie_t = methods.find_best_predict_param(lambdas, r_hat_plus, np.array([alpha]))[0]
    assert mapie_t == ours.threshold


# --- the guarantees over many random calibration/test splits --------------------------------------


@pytest.mark.parametrize("alpha", [0.05, 0.1, 0.2])
def test_budget_guarantee_over_random_splits(alpha):
    s, _, _ = pool(2000, 1)
    rep = trials("budget", s, alpha, n_trials=TRIALS, seed=2)
    assert rep.trials == TRIALS and rep.direction == "<="
    assert rep.holds, rep
    # and not wastefully conservative: E >= alpha - 1/(n + 1) for continuous scores
    assert rep.mean >= alpha - 1 / (rep.n_calibration + 1) - 3 * rep.stderr
    assert rep.mean_escalation_rate == pytest.approx(rep.mean)


@pytest.mark.parametrize("alpha", [0.05, 0.1, 0.2])
def test_recall_guarantee_over_random_splits(alpha):
    s, w, _ = pool(2000, 3)
    rep = trials("recall", s, alpha, wrong=w, n_trials=TRIALS, seed=4)
    assert rep.direction == ">=" and rep.bound == 1 - alpha
    assert rep.holds, rep
    m = int(w.sum() * 0.5)
    assert rep.mean <= 1 - alpha + 1 / (m + 1) + 3 * rep.stderr


@pytest.mark.parametrize("alpha", [0.02, 0.05, 0.1])
def test_risk_guarantee_over_random_splits(alpha):
    s, w, r = pool(2000, 5)
    rep = trials("risk", s, alpha, wrong=w, strong_right=r, n_trials=TRIALS, seed=6)
    assert rep.holds, rep
    # CRC is tight too: E[L] >= alpha - 2B/(n + 1), when the bad rate exceeds alpha
    assert (w & r).mean() > alpha
    assert rep.mean >= alpha - 2 / (rep.n_calibration + 1) - 3 * rep.stderr


def test_budget_guarantee_holds_with_ties():
    s, _, _ = pool(1000, 7, discrete=True)
    assert trials("budget", s, 0.1, n_trials=TRIALS, seed=8).holds


def test_the_check_catches_the_seed_uncorrected_quantile():
    """The empirical check is a test that can fail: the seed's np.quantile(scores, 1 - alpha)
    escalates more than alpha on a small calibration set, and `holds` says so."""

    def seed_rule(mode, scores, alpha, **_):
        t = float(np.quantile(scores, 1 - alpha))
        return ConformalResult(mode, alpha, t, len(scores), 0, False)

    s, _, _ = pool(60, 9)
    bad = trials("budget", s, 0.1, n_trials=3000, seed=10, calibrator=seed_rule)
    good = trials("budget", s, 0.1, n_trials=3000, seed=10)
    assert not bad.holds and bad.mean > 0.1
    assert good.holds


def test_violation_share_is_reported_not_bounded():
    s, _, _ = pool(400, 11)
    rep = trials("budget", s, 0.1, n_trials=300, seed=12)
    assert 0.0 < rep.violation_share < 1.0


# --- too little data, bad input ----------------------------------------------------------------


def test_small_sets_return_the_conservative_answer_and_say_so():
    s = np.arange(5.0)
    with pytest.warns(UserWarning, match="too few for alpha=0.1"):
        b = budget_threshold(s, 0.1)
    assert b.conservative and b.threshold == math.inf and b.n_min == 9
    with pytest.warns(UserWarning, match="wrong answers are too few"):
        rc = recall_threshold(s, np.array([1, 0, 0, 1, 0], bool), 0.1)
    assert rc.conservative and rc.threshold == -math.inf and rc.n == 2
    with pytest.warns(UserWarning):
        rk = risk_threshold(s, np.ones(5, bool), 0.1)
    assert rk.conservative and rk.threshold == -math.inf
    # the conservative answers do keep the guarantees
    assert empirical("budget", s, b.threshold) == 0.0
    assert empirical("recall", s, rc.threshold, np.ones(5, bool)) == 1.0


def test_strict_raises_instead():
    with pytest.raises(CalibrationError, match="need >= 19"):
        budget_threshold(np.arange(5.0), 0.05, strict=True)


def test_n_min_is_exactly_where_it_stops_being_conservative():
    for alpha in (0.05, 0.1, 0.2, 0.3):
        n_min = budget_threshold(np.arange(100.0), alpha).n_min
        assert not budget_threshold(np.arange(float(n_min)), alpha).conservative
        with pytest.warns(UserWarning):
            assert budget_threshold(np.arange(float(n_min - 1)), alpha).conservative


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda: budget_threshold(np.array([]), 0.1), "no calibration scores"),
        (lambda: budget_threshold(np.array([1.0, np.nan]), 0.1), "1 calibration scores are NaN"),
        (lambda: budget_threshold(np.arange(3.0), 1.5), "alpha must be in \\(0, 1\\), got 1.5"),
        (lambda: calibrate("recall", np.arange(3.0), 0.1), "needs the `wrong` labels"),
        (lambda: calibrate("risk", np.arange(3.0), 0.1, wrong=np.ones(3)), "strong_right"),
        (lambda: recall_threshold(np.arange(3.0), np.ones(2), 0.1), "2 labels for 3"),
        (lambda: calibrate("median", np.arange(3.0), 0.1), "unknown conformal mode 'median'"),
    ],
)
def test_bad_input_raises_a_clear_error(call, match):
    with pytest.raises(CalibrationError, match=match):
        call()


def test_modes_registry():
    assert CONFORMAL_MODES == ("budget", "recall", "risk")
    assert ConformalResult("budget", 0.1, 1.0, 10, 9, False).as_dict()["threshold"] == 1.0
