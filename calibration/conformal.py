"""Conformal thresholds for the cascade rule "escalate iff score > threshold".

Every mode turns n calibration answers (their scores, and for some modes their labels) into a
threshold with a finite-sample guarantee that holds whatever the score and the model, as long
as the calibration answers and the future ones are exchangeable (drawn from the same traffic).
The guarantees are *marginal*: in expectation over the draw of the calibration set and the
new request, not for every calibration set; `trials` measures both views.

- `budget`  (the seed design's rule): P(escalate) <= alpha.
- `recall`: P(escalate | cheap answer wrong) >= 1 - alpha.
- `risk`  (conformal risk control): E[loss] <= alpha, where the loss is 1 when the cheap answer
  is accepted, it is wrong, and the strong tier would have been right.

Too little data never yields a silently wrong threshold: each mode then returns its
*conservative* answer (never escalate for `budget`, always escalate for `recall` and `risk`),
which satisfies the guarantee trivially, flags `conservative=True`, explains itself in
`note`, and warns; `strict=True` raises `CalibrationError` instead. No data at all, NaN
scores or missing labels always raise.

    >>> r = calibrate("budget", scores=np.arange(100.0), alpha=0.1)
    >>> r.threshold, r.conservative
    (90.0, False)
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Literal, get_args

import numpy as np

__all__ = [
    "CONFORMAL_MODES",
    "CalibrationError",
    "ConformalMode",
    "ConformalResult",
    "TrialReport",
    "budget_threshold",
    "calibrate",
    "empirical",
    "recall_threshold",
    "risk_threshold",
    "trials",
]

ConformalMode = Literal["budget", "recall", "risk"]
# alpha * (n + 1) is compared with integers; without a little slack 0.05 * 200 = 10.000000000000002
# would count as 10 on one machine and as "more than 10" on another.
_EPS = 1e-9


class CalibrationError(ValueError):
    """The calibration data cannot give the asked-for threshold (empty, NaN, missing labels,
    or too small under strict=True)."""


@dataclass(frozen=True)
class ConformalResult:
    """A calibrated threshold and how it came about.

    `n` counts the calibration answers the mode used (all of them for budget and risk, the
    wrong ones for recall); `n_min` is the least n for which the mode can return anything but
    its conservative answer at this alpha.
    """

    mode: str
    alpha: float
    threshold: float
    n: int
    n_min: int
    conservative: bool
    note: str = ""

    def as_dict(self) -> dict:
        return asdict(self)


def _check(scores: np.ndarray, alpha: float, what: str) -> np.ndarray:
    if not 0 < alpha < 1:
        raise CalibrationError(f"alpha must be in (0, 1), got {alpha}")
    s = np.asarray(scores, dtype=np.float64).ravel()
    if s.size == 0:
        raise CalibrationError(f"no calibration {what}: cannot calibrate a threshold from nothing")
    if np.isnan(s).any():
        raise CalibrationError(f"{int(np.isnan(s).sum())} calibration scores are NaN")
    return s


def _labels(labels: np.ndarray | None, n: int, name: str) -> np.ndarray:
    if labels is None:
        raise CalibrationError(f"this mode needs the `{name}` labels of the calibration answers")
    y = np.asarray(labels).ravel()
    if y.shape != (n,):
        raise CalibrationError(f"`{name}` has {y.size} labels for {n} calibration scores")
    return y.astype(bool)


def _n_min(alpha: float) -> int:
    """Least n with floor(alpha (n + 1)) >= 1: below it every mode is conservative."""
    return max(0, math.ceil(1 / alpha - _EPS) - 1)


def _conservative(mode: str, alpha: float, n: int, threshold: float, strict: bool, what: str):
    note = (
        f"{mode}: {n} calibration {what} are too few for alpha={alpha} (need >= {_n_min(alpha)});"
        f" returning the conservative threshold {threshold}"
    )
    if strict:
        raise CalibrationError(note)
    warnings.warn(note, stacklevel=3)
    return ConformalResult(mode, alpha, threshold, n, _n_min(alpha), True, note)


def _sub(labels: np.ndarray | None, idx: np.ndarray) -> np.ndarray | None:
    return None if labels is None else labels[idx]


def budget_threshold(scores: np.ndarray, alpha: float, *, strict: bool = False) -> ConformalResult:
    """Split-conformal quantile: escalate at most alpha of traffic.

    Guarantee: P(S_new > t) <= alpha for an exchangeable new request, and, for continuous
    scores, P(S_new > t) >= alpha - 1/(n + 1) (it is not wastefully conservative either).

    Formula: sort the n scores s_(1) <= ... <= s_(n); t = s_(k) with
    k = n + 1 - floor(alpha (n + 1)) = ceil((n + 1)(1 - alpha)). S_new > s_(k) needs S_new to
    rank above k of the n + 1 exchangeable scores, which has probability <= 1 - k/(n + 1).

    Too small (n + 1 < 1/alpha, so k > n): t = +inf, never escalate; the budget holds trivially.
    The seed's rule, np.quantile(scores, 1 - alpha), lacks the (n + 1) correction and
    escalates more than alpha on small calibration sets.
    """
    s = np.sort(_check(scores, alpha, "scores"))
    n = len(s)
    k = n + 1 - math.floor(alpha * (n + 1) + _EPS)
    if k > n:
        return _conservative("budget", alpha, n, math.inf, strict, "answers")
    return ConformalResult("budget", alpha, float(s[k - 1]), n, _n_min(alpha), False)


def recall_threshold(
    scores: np.ndarray, wrong: np.ndarray, alpha: float, *, strict: bool = False
) -> ConformalResult:
    """Class-conditional (Mondrian) conformal on the wrong answers: escalate >= 1 - alpha of them.

    Guarantee: P(S_new > t | cheap answer wrong) >= 1 - alpha, i.e. the share of wrong cheap
    answers that are accepted is <= alpha in expectation. Says nothing about how many right
    answers escalate; that is the price, paid in cost.

    Formula: sort the m scores of the wrong calibration answers w_(1) <= ... <= w_(m);
    j = floor(alpha (m + 1)); accept iff S < w_(j), i.e. t = the float just below w_(j). A new
    wrong answer scores below w_(j) only if it ranks among the j lowest of m + 1 exchangeable
    wrong scores: probability <= j / (m + 1) <= alpha (ties only lower it).

    Too small (m + 1 < 1/alpha, so j = 0): t = -inf, escalate everything.
    """
    s = _check(scores, alpha, "scores")
    w = np.sort(s[_labels(wrong, len(s), "wrong")])
    m = len(w)
    j = math.floor(alpha * (m + 1) + _EPS)
    if j == 0:
        return _conservative("recall", alpha, m, -math.inf, strict, "wrong answers")
    return ConformalResult(
        "recall", alpha, float(np.nextafter(w[j - 1], -np.inf)), m, _n_min(alpha), False
    )


def risk_threshold(
    scores: np.ndarray, loss_if_accepted: np.ndarray, alpha: float, *, strict: bool = False
) -> ConformalResult:
    """Conformal risk control (Angelopoulos et al., 2022) for the 0/1 loss of a bad accept.

    Loss of a request at threshold t: L(t) = bad * 1[S <= t], where bad = "cheap answer wrong
    and the strong tier right" (`loss_if_accepted`). L is bounded by B = 1 and grows with t.
    Guarantee: E[L_new(t)] <= alpha.

    Formula: the largest t with (sum_i L_i(t) + B) / (n + 1) <= alpha, i.e. at most
    c = floor(alpha (n + 1)) - 1 bad calibration answers accepted. With the bad answers' scores
    b_(1) <= ... <= b_(m): accept iff S < b_(c + 1), t = the float just below it; t = +inf
    when c >= m (accepting everything costs at most c). This is CRC's lambda-hat with
    lambda = -t, whose losses 1[lambda < -s] are right-continuous and non-increasing, as the
    theorem needs.

    Too small (n + 1 < 1/alpha, so c < 0): t = -inf, escalate everything (loss 0).
    """
    s = _check(scores, alpha, "scores")
    bad = _labels(loss_if_accepted, len(s), "loss_if_accepted")
    n = len(s)
    c = math.floor(alpha * (n + 1) + _EPS) - 1
    if c < 0:
        return _conservative("risk", alpha, n, -math.inf, strict, "answers")
    b = np.sort(s[bad])
    t = math.inf if c >= len(b) else float(np.nextafter(b[c], -np.inf))
    return ConformalResult("risk", alpha, t, n, _n_min(alpha), False)


def calibrate(
    mode: str,
    scores: np.ndarray,
    alpha: float,
    *,
    wrong: np.ndarray | None = None,
    strong_right: np.ndarray | None = None,
    strict: bool = False,
) -> ConformalResult:
    """The threshold of one mode; `wrong` (cheap answer wrong) is needed by recall and risk,
    `strong_right` by risk (loss = wrong and strong right)."""
    if mode == "budget":
        return budget_threshold(scores, alpha, strict=strict)
    if mode == "recall":
        return recall_threshold(scores, wrong, alpha, strict=strict)
    if mode == "risk":
        n = np.asarray(scores).size
        bad = _labels(wrong, n, "wrong") & _labels(strong_right, n, "strong_right")
        return risk_threshold(scores, bad, alpha, strict=strict)
    raise CalibrationError(f"unknown conformal mode {mode!r}; choose from {CONFORMAL_MODES}")


CONFORMAL_MODES: tuple[str, ...] = get_args(ConformalMode)


# --- checking the guarantees ------------------------------------------------------------------


def empirical(
    mode: str,
    scores: np.ndarray,
    threshold: float,
    wrong: np.ndarray | None = None,
    strong_right: np.ndarray | None = None,
) -> float:
    """The guaranteed quantity measured on a labelled set at a threshold: the escalation rate
    (budget), the share of wrong answers escalated (recall), the bad-accept rate (risk).
    NaN when recall has no wrong answer to measure."""
    esc = np.asarray(scores) > threshold
    if mode == "budget":
        return float(esc.mean())
    w = np.asarray(wrong, dtype=bool)
    if mode == "recall":
        return float(esc[w].mean()) if w.any() else math.nan
    if mode == "risk":
        return float((~esc & w & np.asarray(strong_right, dtype=bool)).mean())
    raise CalibrationError(f"unknown conformal mode {mode!r}; choose from {CONFORMAL_MODES}")


@dataclass(frozen=True)
class TrialReport:
    """A mode recalibrated on many random calibration/test partitions of one labelled pool.

    `mean` estimates the guaranteed quantity (the guarantee is about it); `violation_share` is
    the share of trials whose own test set broke the bound, which a marginal guarantee does
    *not* bound (expect up to about half for budget). `holds` compares `mean` with the bound
    allowing `z` standard errors of the trial mean.
    """

    mode: str
    alpha: float
    trials: int
    n_calibration: int
    n_test: int
    bound: float
    direction: Literal["<=", ">="]
    mean: float
    stderr: float
    violation_share: float
    threshold_mean: float
    threshold_std: float
    conservative_share: float
    mean_escalation_rate: float
    holds: bool

    def as_dict(self) -> dict:
        return asdict(self)


def _partition_trials(
    mode: str,
    scores: np.ndarray,
    alpha: float,
    w: np.ndarray | None,
    sr: np.ndarray | None,
    n_trials: int,
    n_cal: int,
    seed: int,
    calibrator: Callable[..., ConformalResult] | None,
) -> tuple[list[float], list[float], list[bool], list[float]]:
    """`trials`' loop: per random partition (the first `n_cal` of a permutation calibrate), the
    held-out value of the guaranteed quantity, the threshold, whether it was conservative and
    the held-out escalation rate."""
    n = len(scores)
    calibrator = calibrator or calibrate
    rng = np.random.default_rng(seed)
    values, thresholds, conservative, esc_rates = [], [], [], []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # conservative trials are counted, not shouted
        for _ in range(n_trials):
            perm = rng.permutation(n)
            cal, test = perm[:n_cal], perm[n_cal:]
            r = calibrator(mode, scores[cal], alpha, wrong=_sub(w, cal), strong_right=_sub(sr, cal))
            values.append(empirical(mode, scores[test], r.threshold, _sub(w, test), _sub(sr, test)))
            thresholds.append(r.threshold)
            conservative.append(r.conservative)
            esc_rates.append(float((scores[test] > r.threshold).mean()))
    return values, thresholds, conservative, esc_rates


def trials(
    mode: str,
    scores: np.ndarray,
    alpha: float,
    *,
    wrong: np.ndarray | None = None,
    strong_right: np.ndarray | None = None,
    n_trials: int = 200,
    calibration_fraction: float = 0.5,
    seed: int = 0,
    z: float = 3.0,
    calibrator: Callable[..., ConformalResult] | None = None,
) -> TrialReport:
    """Recalibrate `n_trials` times on random partitions of a labelled pool and measure the
    guaranteed quantity on each held-out part. A random partition of one pool makes the two
    parts exchangeable, which is exactly the guarantee's premise.

    `calibrator(mode, scores, alpha, wrong=, strong_right=)` replaces `calibrate`, so a test
    can show that a wrong rule (the seed's uncorrected quantile) is caught.
    """
    scores = np.asarray(scores, dtype=np.float64)
    n = len(scores)
    n_cal = round(calibration_fraction * n)
    if not 0 < n_cal < n:
        raise CalibrationError(f"calibration_fraction {calibration_fraction} leaves an empty part")
    w = None if wrong is None else np.asarray(wrong, dtype=bool)
    sr = None if strong_right is None else np.asarray(strong_right, dtype=bool)
    draws = _partition_trials(mode, scores, alpha, w, sr, n_trials, n_cal, seed, calibrator)
    values, thresholds, conservative, esc_rates = draws
    v = np.asarray(values)
    v = v[~np.isnan(v)]
    bound, direction = (1 - alpha, ">=") if mode == "recall" else (alpha, "<=")
    mean = float(v.mean()) if v.size else math.nan
    se = float(v.std(ddof=1) / math.sqrt(v.size)) if v.size > 1 else math.nan
    violated = v < bound if direction == ">=" else v > bound
    holds = mean >= bound - z * se if direction == ">=" else mean <= bound + z * se
    finite = np.asarray(thresholds)[np.isfinite(thresholds)]
    return TrialReport(
        mode=mode,
        alpha=alpha,
        trials=n_trials,
        n_calibration=n_cal,
        n_test=n - n_cal,
        bound=bound,
        direction=direction,
        mean=mean,
        stderr=se,
        violation_share=float(violated.mean()) if v.size else math.nan,
        threshold_mean=float(finite.mean()) if finite.size else math.nan,
        threshold_std=float(finite.std()) if finite.size else math.nan,
        conservative_share=float(np.mean(conservative)),
        mean_escalation_rate=float(np.mean(esc_rates)),
        holds=bool(holds),
    )
