"""Quality-vs-strong-calls curves and their summaries, as RouteLLM defines them.

A strategy family (one score swept over thresholds, a router swept over its threshold) traces
accuracy against the share of requests that call the strong (top) tier. With `weak` and
`strong` the accuracies of always-cheap and always-strong:

- PGR(x) = (accuracy(x) - weak) / (strong - weak): the share of the quality gap recovered.
- APGR: the area under PGR over the strong-call share in [0, 1] (trapezoids between the
  measured points, as RouteLLM's `apgr_metric`); 0.5 is what random routing gets.
- CPT(p%): the smallest strong-call percentage at which the curve reaches PGR = p%
  (linear between points, first crossing); None if it never does.

Every curve here is closed with the two end points every strategy shares: 0% strong calls
is always-cheap and 100% is always-strong (a cascade that escalates everything answers
everything with the strong tier).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

__all__ = ["apgr", "close_curve", "cpt", "optimal_curve", "pgr"]


def pgr(accuracy: np.ndarray | float, weak: float, strong: float) -> np.ndarray | float:
    """Performance gap recovered; undefined (nan) when the tiers are equally accurate."""
    gap = strong - weak
    if gap == 0:
        return np.full_like(np.asarray(accuracy, dtype=float), math.nan)
    return (np.asarray(accuracy, dtype=float) - weak) / gap


def close_curve(
    share: Sequence[float], accuracy: Sequence[float], weak: float, strong: float
) -> tuple[np.ndarray, np.ndarray]:
    """Add the (0, weak) and (1, strong) end points and sort by strong-call share.

    Points at the same share are kept in order of accuracy so the curve is well defined."""
    x = np.concatenate([[0.0], np.asarray(share, dtype=float), [1.0]])
    y = np.concatenate([[weak], np.asarray(accuracy, dtype=float), [strong]])
    order = np.lexsort((y, x))
    return x[order], y[order]


def apgr(share: np.ndarray, accuracy: np.ndarray, weak: float, strong: float) -> float:
    """Area under the PGR curve over strong-call share (closed to [0, 1] first)."""
    x, y = close_curve(share, accuracy, weak, strong)
    return float(np.trapezoid(pgr(y, weak, strong), x))


def cpt(
    share: np.ndarray, accuracy: np.ndarray, weak: float, strong: float, target: float
) -> float | None:
    """Smallest strong-call percentage (0-100) reaching PGR >= target; None if never."""
    x, y = close_curve(share, accuracy, weak, strong)
    p = pgr(y, weak, strong)
    if np.isnan(p).any():
        return None
    if p[0] >= target:
        return 0.0
    for i in range(1, len(x)):
        if p[i] >= target:
            frac = (target - p[i - 1]) / (p[i] - p[i - 1])
            return float(100.0 * (x[i - 1] + frac * (x[i] - x[i - 1])))
    return None


def optimal_curve(
    cheap_right: np.ndarray, strong_right: np.ndarray, points: int = 101
) -> tuple[np.ndarray, np.ndarray]:
    """The oracle's accuracy at each strong-call share (RouteLLM's "optimal").

    It spends strong calls first on requests only the strong tier gets right, then on those
    where the choice does not matter, and last on those only the cheap tier gets right.
    """
    n = len(cheap_right)
    gain = (~cheap_right & strong_right).sum()
    loss = (cheap_right & ~strong_right).sum()
    x = np.linspace(0.0, 1.0, points)
    k = x * n  # strong calls
    acc = cheap_right.mean() + (np.minimum(k, gain) - np.clip(k - (n - loss), 0, None)) / n
    return x, acc
