"""The two-sample tests of the drift monitor (`calibration.drift`), in numpy alone.

Why by hand: the request-time core needs numpy and pydantic only (import-linter checks what it
must not import; scipy is no declared dependency, it is in the venv only through
scikit-learn), and the two tests needed are short. Both compare the live window with the
calibration reference as a *sample*, not as exact truth, since the reference is itself finite
(~1-2 thousand calibration queries per tier); a one-sample test against its point estimate would
over-reject by the reference's own noise. `tests/test_drift.py` checks both against scipy.

    p = fisher_exact(k_window, n_window, k_reference, n_reference)   # a rate moved
    d, p = ks_two_sample(window_scores, reference_quantiles, n_reference)  # a distribution
"""

from __future__ import annotations

import math

import numpy as np

__all__ = ["fisher_exact", "kolmogorov_sf", "ks_two_sample"]

_REL = 1e-7  # outcomes this close in probability to the observed one count as "as extreme"


def fisher_exact(k1: int, n1: int, k2: int, n2: int) -> float:
    """Two-sided p-value of Fisher's exact test that two binomial samples (k1 of n1, k2 of
    n2) share one rate: the conditional (hypergeometric) probability of every table at most as
    likely as the observed one. With n2 >> n1 it is the exact binomial test of k1 of n1
    against the rate k2/n2; here the reference's own count is kept, so its noise is too.

    O(min(n1, k1 + k2)) through the pmf's ratio recursion (no log-factorial table)."""
    if not (0 <= k1 <= n1 and 0 <= k2 <= n2):
        raise ValueError(f"counts must satisfy 0 <= k <= n, got {k1}/{n1} and {k2}/{n2}")
    if n1 == 0 or n2 == 0:
        return 1.0
    big_n, k = n1 + n2, k1 + k2
    lo, hi = max(0, k - n2), min(k, n1)
    if lo == hi:
        return 1.0
    x = np.arange(lo, hi, dtype=float)  # P(x + 1) / P(x) for x in [lo, hi)
    ratio = (k - x) * (n1 - x) / ((x + 1) * (n2 - k + x + 1))
    log_p = np.concatenate([[0.0], np.cumsum(np.log(ratio))])  # up to the constant log P(lo)
    log_p0 = _log_comb(n1, lo) + _log_comb(n2, k - lo) - _log_comb(big_n, k)  # log P(lo), exactly
    log_p += log_p0
    observed = log_p[k1 - lo]
    p = float(np.exp(log_p[log_p <= observed + _REL]).sum())
    return min(1.0, p)


def _log_comb(n: int, k: int) -> float:
    return math.lgamma(n + 1) - math.lgamma(k + 1) - math.lgamma(n - k + 1)


def ks_two_sample(
    x: np.ndarray, reference: np.ndarray, n_reference: int | None = None
) -> tuple[float, float]:
    """Kolmogorov-Smirnov two-sample test: the largest gap D between the empirical CDFs of
    `x` and `reference`, and its two-sided p-value.

    `reference` may be a summary of a larger sample (its quantiles, as a `DriftReference`
    stores them): `n_reference` is then the size of the sample it summarises, which is what
    the p-value's effective size needs; its CDF differs from the full sample's by at most
    1/(2 len(reference)). The p-value is the asymptotic Kolmogorov distribution at
    (sqrt(ne) + 0.12 + 0.11 / sqrt(ne)) D, ne = n m / (n + m) (Stephens' small-sample
    correction; within a few percent of the exact value from ne ~ 20 on); ties make it
    conservative."""
    x = np.sort(np.asarray(x, dtype=float))
    ref = np.sort(np.asarray(reference, dtype=float))
    if x.size == 0 or ref.size == 0:
        return 0.0, 1.0
    m = ref.size if n_reference is None else n_reference
    both = np.concatenate([x, ref])
    cdf_x = np.searchsorted(x, both, side="right") / x.size
    cdf_r = np.searchsorted(ref, both, side="right") / ref.size
    d = float(np.max(np.abs(cdf_x - cdf_r)))
    ne = x.size * m / (x.size + m)
    root = math.sqrt(ne)
    return d, kolmogorov_sf((root + 0.12 + 0.11 / root) * d)


def kolmogorov_sf(lam: float) -> float:
    """P(K > lam) for the Kolmogorov distribution; two series, each converging fast on its
        side of 1.18 (Numerical Recipes' split), five terms give double precision (plain floats:
    numpy's per-call overhead would dominate five terms)."""
    if lam <= 0:
        return 1.0
    if lam < 1.18:
        # the CDF as a theta series: sqrt(2 pi) / lam * sum exp(-(2k - 1)^2 pi^2 / (8 lam^2))
        terms = (math.exp(-((2 * k - 1) ** 2) * math.pi**2 / (8 * lam**2)) for k in range(1, 6))
        cdf = math.sqrt(2 * math.pi) / lam * sum(terms)
        return min(1.0, max(0.0, 1.0 - cdf))
    terms = ((-1.0) ** (k - 1) * math.exp(-2.0 * k**2 * lam**2) for k in range(1, 6))
    return min(1.0, max(0.0, 2.0 * sum(terms)))
