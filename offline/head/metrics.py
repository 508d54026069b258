"""How well a confidence says whether the router is right: ECE, Brier, AUROC, reliability.

`confidence` is a predicted probability that the router's policy is right, `correct` is 0/1.

- ECE (equal width): bins [0, 1/B), ..., [(B-1)/B, 1] (the last one closed);
  sum_b (n_b / n) |accuracy_b - mean confidence_b|. Same binning as torchmetrics'
  `BinaryCalibrationError` except that it keeps confidence 1.0 in the last bin.
- ECE (equal mass): the sorted confidences split into B bins of (almost) equal count.
- Brier: mean (confidence - correct)^2. AUROC: P(conf of a right > conf of a wrong), ties 1/2;
  None when only one class is present. Decision accuracy: how often `confidence >= 0.5` agrees
  with `correct` (the thresholded "trust the router" decision).

Reliability diagrams are matplotlib PNGs (Agg): one per method, with bin counts, and one overlay.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

__all__ = [
    "PAIRED_METRICS",
    "ReliabilityBins",
    "auroc",
    "bootstrap_interval",
    "brier",
    "decision_accuracy",
    "ece",
    "overlay_diagram",
    "paired_bootstrap_interval",
    "paired_versus",
    "reliability_bins",
    "reliability_diagram",
    "summarize",
]


def _check(confidence, correct) -> tuple[np.ndarray, np.ndarray]:
    conf = np.asarray(confidence, dtype=np.float64)
    y = np.asarray(correct, dtype=np.float64)
    if conf.ndim != 1 or y.ndim != 1:
        raise ValueError(f"confidence and correct must be 1-D, got {conf.shape} and {y.shape}")
    if conf.shape != y.shape:
        raise ValueError(f"confidence {conf.shape} and correct {y.shape} differ in length")
    if conf.size == 0:
        raise ValueError("no predictions: confidence and correct are empty")
    if not np.isfinite(conf).all() or conf.min() < 0 or conf.max() > 1:
        raise ValueError(f"confidence must lie in [0, 1], got range [{conf.min()}, {conf.max()}]")
    if not np.isin(y, (0.0, 1.0)).all():
        raise ValueError(f"correct must be 0/1, got values {np.unique(y)[:5]}")
    return conf, y


@dataclass(frozen=True)
class ReliabilityBins:
    """Per-bin statistics; empty bins have count 0 and nan means."""

    edges: np.ndarray  # (B + 1,) bin edges (equal-mass: the quantiles reached)
    count: np.ndarray  # (B,)
    confidence: np.ndarray  # (B,) mean confidence in the bin
    accuracy: np.ndarray  # (B,) share of right predictions in the bin

    @property
    def ece(self) -> float:
        w = self.count / self.count.sum()
        gap = np.nan_to_num(np.abs(self.accuracy - self.confidence))
        return float((w * gap).sum())


def reliability_bins(
    confidence, correct, bins: int = 15, strategy: str = "width"
) -> ReliabilityBins:
    """Bin the predictions: `strategy` "width" (equal-width) or "mass" (equal count)."""
    conf, y = _check(confidence, correct)
    if bins < 1:
        raise ValueError(f"bins must be >= 1, got {bins}")
    if strategy == "width":
        edges = np.linspace(0.0, 1.0, bins + 1)
        ids = np.clip(np.searchsorted(edges, conf, side="right") - 1, 0, bins - 1)
    elif strategy == "mass":
        chunks = np.array_split(np.argsort(conf, kind="stable"), bins)  # B index arrays
        ids = np.empty(conf.size, dtype=np.int64)
        for b, chunk in enumerate(chunks):
            ids[chunk] = b
        edges = np.quantile(conf, np.linspace(0.0, 1.0, bins + 1))  # descriptive only
    else:
        raise ValueError(f"strategy must be 'width' or 'mass', got {strategy!r}")
    count = np.bincount(ids, minlength=bins).astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_conf = np.bincount(ids, weights=conf, minlength=bins) / count
        acc = np.bincount(ids, weights=y, minlength=bins) / count
    return ReliabilityBins(edges=edges, count=count, confidence=mean_conf, accuracy=acc)


def ece(confidence, correct, bins: int = 15, strategy: str = "width") -> float:
    """Expected calibration error (L1), equal-width or equal-mass bins."""
    return reliability_bins(confidence, correct, bins, strategy).ece


def brier(confidence, correct) -> float:
    conf, y = _check(confidence, correct)
    return float(np.mean((conf - y) ** 2))


def auroc(confidence, correct) -> float | None:
    """Mann-Whitney AUROC with average ranks for ties; None if one class is missing."""
    conf, y = _check(confidence, correct)
    pos = int(y.sum())
    neg = y.size - pos
    if pos == 0 or neg == 0:
        return None
    order = np.argsort(conf, kind="stable")
    ranks = np.empty(conf.size)
    sorted_conf = conf[order]
    # average rank within each run of equal confidences
    _, start, counts = np.unique(sorted_conf, return_index=True, return_counts=True)
    avg = start + (counts + 1) / 2.0  # 1-based average rank of each run
    ranks[order] = np.repeat(avg, counts)
    return float((ranks[y == 1].sum() - pos * (pos + 1) / 2) / (pos * neg))


def decision_accuracy(confidence, correct, threshold: float = 0.5) -> float:
    conf, y = _check(confidence, correct)
    return float(np.mean((conf >= threshold) == (y == 1)))


def _group_resamples(keys: np.ndarray, n_boot: int, seed: int):
    """`n_boot` bootstrap row selections drawing whole groups (`keys`: one per row) with
    replacement, so that a query drawn many times is one observation, not many."""
    _, gid = np.unique(keys, return_inverse=True)  # (N,) group index per row
    order = np.argsort(gid, kind="stable")  # rows sorted by group
    counts = np.bincount(gid)  # (G,)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])  # (G,)
    rng = np.random.default_rng(seed)
    for _ in range(n_boot):
        pick = rng.integers(0, counts.size, counts.size)  # (G,) groups drawn with replacement
        sizes = counts[pick]
        offsets = np.arange(sizes.sum()) - np.repeat(np.cumsum(sizes) - sizes, sizes)
        yield order[np.repeat(starts[pick], sizes) + offsets]


def _keys(groups, size: int) -> np.ndarray:
    keys = np.arange(size) if groups is None else np.asarray(groups)
    if keys.shape != (size,):
        raise ValueError(f"groups {keys.shape} must match confidence {(size,)}")
    return keys


def _percentiles(values: list[float], level: float) -> tuple[float, float]:
    if not values:
        return (float("nan"), float("nan"))
    lo, hi = np.quantile(values, [(1 - level) / 2, (1 + level) / 2])
    return float(lo), float(hi)


def bootstrap_interval(
    confidence,
    correct,
    metric: Callable[[np.ndarray, np.ndarray], float | None],
    groups=None,
    n_boot: int = 200,
    level: float = 0.9,
    seed: int = 0,
) -> tuple[float, float]:
    """Percentile interval of `metric` over bootstrap resamples.

    With `groups` (e.g. the query text) whole groups are resampled: a query drawn many times
    is one observation, not many, so the interval is not falsely narrow.
    """
    conf, y = _check(confidence, correct)
    values = []
    for rows in _group_resamples(_keys(groups, conf.size), n_boot, seed):
        v = metric(conf[rows], y[rows])
        if v is not None:
            values.append(v)
    return _percentiles(values, level)


def paired_bootstrap_interval(
    confidence_a,
    confidence_b,
    correct,
    metric: Callable[[np.ndarray, np.ndarray], float | None],
    groups=None,
    n_boot: int = 200,
    level: float = 0.9,
    seed: int = 0,
) -> tuple[float, float]:
    """Percentile interval of metric(a) - metric(b), both methods scored on the same
    resampled queries each time (grouped as `bootstrap_interval` groups them).

    Two separate intervals overlap even when one method is better on nearly every resample;
    pairing cancels the sample's shared difficulty, so this interval says whether the
    difference itself is distinguishable from 0.
    """
    a, y = _check(confidence_a, correct)
    b, _ = _check(confidence_b, correct)
    values = []
    for rows in _group_resamples(_keys(groups, a.size), n_boot, seed):
        va, vb = metric(a[rows], y[rows]), metric(b[rows], y[rows])
        if va is not None and vb is not None:
            values.append(va - vb)
    return _percentiles(values, level)


# The metrics a paired comparison reports, and which direction is better for each.
PAIRED_METRICS: dict[str, tuple[Callable, str]] = {
    "ece": (ece, "lower"),
    "brier": (brier, "lower"),
    "auroc": (auroc, "higher"),
}
_NOISE = 1e-6


def paired_versus(
    conf: Mapping[str, np.ndarray], baseline: str, correct, groups=None, level: float = 0.9
) -> dict:
    """Each method of `conf` minus `baseline`: the paired bootstrap interval of the
    difference in ECE-15, Brier and AUROC (`paired_bootstrap_interval`, grouped by
    `groups`), the point difference, and a verdict per metric (better / level / worse: the
    interval lies on the good side of 0, holds it, or lies on the bad side). Empty when
    `baseline` is not among the methods."""
    if baseline not in conf:
        return {}
    out = {}
    for name, c in conf.items():
        if name == baseline:
            continue
        row: dict = {}
        for key, (metric, good) in PAIRED_METRICS.items():
            lo, hi = paired_bootstrap_interval(
                c, conf[baseline], correct, metric, groups=groups, level=level
            )
            a, b = metric(c, correct), metric(conf[baseline], correct)
            row[key] = [lo, hi]
            row[f"{key}_difference"] = None if a is None or b is None else a - b
            row[f"{key}_verdict"] = _verdict(lo, hi, good)
        out[name] = row
    return out


def _verdict(lo: float, hi: float, good: str) -> str:
    """`level` when the interval holds 0 (within float noise: a monotone rescaling moves
    AUROC by ~1e-7 through ties) or is undefined, else whether it lies on the good side."""
    if not (lo > _NOISE or hi < -_NOISE):
        return "level"
    return "better" if (hi < 0 if good == "lower" else lo > 0) else "worse"


def summarize(confidence, correct) -> dict:
    """Every metric of one method on one split, JSON-ready (`ece` is ECE with 15 bins)."""
    conf, y = _check(confidence, correct)
    return {
        "ece": ece(conf, y, 15),
        "ece_10": ece(conf, y, 10),
        "ece_equal_mass": ece(conf, y, 15, "mass"),
        "brier": brier(conf, y),
        "auroc": auroc(conf, y),
        "decision_accuracy": decision_accuracy(conf, y),
        "mean_confidence": float(conf.mean()),
        "accuracy": float(y.mean()),
        "n": int(conf.size),
    }


# --- reliability diagrams -------------------------------------------------------------------


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def reliability_diagram(
    confidence, correct, path: str | Path, title: str = "", bins: int = 15
) -> Path:
    """Accuracy per equal-width bin against confidence, the gap shaded, counts on the bars,
    and a histogram of the confidences below; written as a PNG to `path`."""
    plt = _pyplot()
    rb = reliability_bins(confidence, correct, bins)
    width = 1.0 / bins
    centers = rb.edges[:-1] + width / 2
    filled = rb.count > 0
    fig, (ax, ax_n) = plt.subplots(
        2, 1, figsize=(5.5, 6.5), sharex=True, gridspec_kw={"height_ratios": [3, 1]}
    )
    ax.bar(
        centers[filled],
        rb.accuracy[filled],
        width=width,
        edgecolor="black",
        lw=0.6,
        color="tab:blue",
        label="accuracy",
    )
    ax.bar(
        centers[filled],
        (rb.confidence - rb.accuracy)[filled],
        bottom=rb.accuracy[filled],
        width=width,
        facecolor="none",
        edgecolor="tab:red",
        hatch="///",
        lw=0.8,
        label="gap to mean confidence",
    )
    ax.scatter(centers[filled], rb.confidence[filled], marker="_", s=60, color="tab:red", zorder=3)
    top = np.fmax(rb.accuracy, rb.confidence)
    for x, t, n in zip(centers[filled], top[filled], rb.count[filled], strict=True):
        ax.text(x, min(t, 0.9) + 0.02, f"n={int(n)}", ha="center", fontsize=6, rotation=90)
    ax.plot([0, 1], [0, 1], ls="--", color="grey", lw=1)
    ax.set(
        ylim=(0, 1.05),
        ylabel="accuracy of the router",
        title=f"{title}\nECE-{bins} {rb.ece:.3f}, Brier {brier(confidence, correct):.3f}",
    )
    ax.legend(loc="upper left", fontsize=8)
    ax_n.bar(centers, rb.count, width=width, color="grey", edgecolor="black", lw=0.5)
    ax_n.set(xlim=(0, 1), xlabel="confidence", ylabel="count")
    fig.tight_layout()
    return _save(fig, plt, path)


def overlay_diagram(
    methods: Mapping[str, tuple[np.ndarray, np.ndarray]],
    path: str | Path,
    title: str = "",
    bins: int = 15,
) -> Path:
    """All methods' reliability curves (accuracy vs mean confidence per non-empty bin) on one
    plot; marker area grows with the bin count, the legend gives ECE and n."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 6))
    ax.plot([0, 1], [0, 1], ls="--", color="grey", lw=1, label="perfect calibration")
    for name, (conf, y) in methods.items():
        rb = reliability_bins(conf, y, bins)
        m = rb.count > 0
        size = 8 + 200 * rb.count[m] / rb.count.sum()
        line = ax.plot(
            rb.confidence[m],
            rb.accuracy[m],
            lw=1.2,
            label=f"{name} (ECE {rb.ece:.3f}, n={int(rb.count.sum())})",
        )[0]
        ax.scatter(rb.confidence[m], rb.accuracy[m], s=size, color=line.get_color(), alpha=0.6)
    ax.set(
        xlim=(0, 1),
        ylim=(0, 1.02),
        xlabel="mean confidence in bin",
        ylabel="accuracy of the router in bin",
        title=title or "reliability (all methods)",
    )
    ax.legend(fontsize=7, loc="lower right")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return _save(fig, plt, path)


def _save(fig, plt, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
