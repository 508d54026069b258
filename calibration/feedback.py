"""Token logprobs -> a `TierSignal`: the features, the nonconformity score and the decision.

A generation carries, per token, the chosen token's logprob and its top-k alternatives. From
them this module computes a fixed, named set of features (`extract_features`), and `signal`
turns features + a scorer + a threshold into an escalate-or-accept verdict with readable
reasons. Everything is vectorised numpy on one (T,) vector and one (T, k) matrix, so it costs
tens of microseconds per request (see `benchmarks/bench_feedback.py`).

    >>> from calibration.feedback import extract_features, signal
    >>> from calibration.scores import get_scorer
    >>> sig = signal(generation, get_scorer("neg_mean_logprob"), threshold=0.4)  # doctest: +SKIP
    >>> sig.escalate, sig.reasons  # doctest: +SKIP

Units: every entropy here is in **bits** (log base 2), so the binary entropy lies in [0, 1] and
a token entropy computed from k alternatives plus the leftover mass in [0, log2(k + 1)]
(2.585 bits for k = 5).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from itertools import chain
from operator import itemgetter
from typing import TYPE_CHECKING, Protocol

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator

if TYPE_CHECKING:
    from calibration.generation import Generation

__all__ = [
    "DEFAULT_LOW_CONFIDENCE_LOGPROB",
    "FEATURE_NAMES",
    "NO_TOKENS_REASON",
    "ROUTER_FEATURES",
    "FeedbackConfig",
    "TierSignal",
    "binary_entropy",
    "extract_features",
    "feature_matrix",
    "feature_names",
    "features_from_arrays",
    "router_evidence",
    "signal",
    "token_entropy",
]


class _Scores(Protocol):
    """What `signal` needs of a scorer (`calibration.scores.Scorer`, which builds on this
    module's features, so it is named here structurally rather than imported)."""

    def score(self, features: Mapping[str, float]) -> float: ...


# A token the model gave less than even odds: another token had comparable mass.
DEFAULT_LOW_CONFIDENCE_LOGPROB = math.log(0.5)
DEFAULT_QUANTILES = (0.05, 0.1, 0.25, 0.5)
NO_TOKENS_REASON = "no tokens: the model produced nothing to judge"
# Logprobs are clipped here: a chosen token of probability 0 (possible after top-p sampling)
# would turn every mean into -inf, and 0 * log 0 into nan inside the entropy.
_LOGPROB_FLOOR = -100.0
_INV_LN2 = 1.0 / math.log(2.0)
_pick_logprob = itemgetter(1)


class FeedbackConfig(BaseModel):
    """How features are computed; saved inside the calibration artifact, so serving computes
    exactly the features the scorer was fitted and calibrated on."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    low_confidence_logprob: float = Field(
        default=DEFAULT_LOW_CONFIDENCE_LOGPROB,
        description="A token whose chosen logprob is below this counts as low-confidence "
        "(default log 0.5: the model gave it less than even odds).",
    )
    quantiles: tuple[float, ...] = Field(
        default=DEFAULT_QUANTILES,
        description="Quantiles of the token logprobs to use as features; the cascade "
        "literature finds low quantiles stronger than the mean.",
    )

    @field_validator("low_confidence_logprob")
    @classmethod
    def _check_low_conf(cls, value: float) -> float:
        if not value < 0:
            raise ValueError(f"low_confidence_logprob must be < 0 (a log probability), got {value}")
        return value

    @field_validator("quantiles")
    @classmethod
    def _check_quantiles(cls, value: tuple[float, ...]) -> tuple[float, ...]:
        if not value:
            raise ValueError(f"quantiles must not be empty, got {value}")
        for q in value:
            if not 0 < q < 1:
                raise ValueError(f"every quantile must be in (0, 1), got {q}")
        names = [_quantile_name(q) for q in value]
        if len(set(names)) != len(names):
            raise ValueError(f"quantiles must differ at the percent level, got {value}")
        return tuple(value)


def _quantile_name(q: float) -> str:
    return f"q{round(q * 100):02d}_logprob"


@lru_cache(maxsize=64)
def _quantile_names(qs: tuple[float, ...]) -> tuple[str, ...]:
    return tuple(_quantile_name(q) for q in qs)


def feature_names(config: FeedbackConfig | None = None) -> tuple[str, ...]:
    """The feature names, in the column order of `feature_matrix`, for a config."""
    config = config or FeedbackConfig()
    return (
        "mean_logprob",
        "min_logprob",
        *(_quantile_name(q) for q in config.quantiles),
        "mean_entropy",
        "max_entropy",
        "binary_entropy",
        "low_conf_count",
        "low_conf_ratio",
        "num_tokens",
    )


FEATURE_NAMES: tuple[str, ...] = feature_names()

# Ex-ante evidence: what the router said of the prompt before any tier answered. A quality
# estimator may use it beside the answer's logprobs (ex-post): on the zoo the router's
# P(complex) lifts the estimator's AUROC by 0.03 to 0.04, because how hard the prompt looked
# and how unsure the answer was are different evidence. Serving and the replay pass it to
# `signal` as `context`; the offline splits carry it as extra named columns.
ROUTER_FEATURES: tuple[str, ...] = ("router_p_complex",)


def router_evidence(p_complex: float | None) -> dict[str, float]:
    """The router's features for one request: NaN where the router gave none (skipped,
    failed, or disabled); a scorer that needs them then scores +inf, so the answer escalates
    rather than being accepted on evidence the threshold was never calibrated without."""
    return {"router_p_complex": math.nan if p_complex is None else float(p_complex)}


def binary_entropy(p: float | np.ndarray) -> float | np.ndarray:
    """H(p) = -p log2 p - (1 - p) log2(1 - p) in bits, 0 at p in {0, 1}, 1 at p = 0.5.

    Applied to exp(mean logprob), the geometric-mean token probability. Being symmetric, it is
    high both for p near 0.5 and never for p near 0: on its own it *cannot* flag an answer the
    model is sure is unlikely (p = 0.05 gives 0.29 bits). That is why the seed design paired it
    with a separate minimum-confidence ("safety") rule.
    """
    if isinstance(p, float | int):
        return _binary_entropy_scalar(float(p))
    p = np.clip(np.asarray(p, dtype=np.float64), 0.0, 1.0)
    with np.errstate(divide="ignore", invalid="ignore"):
        h = -(p * np.log2(p) + (1 - p) * np.log2(1 - p))
    h = np.nan_to_num(h, nan=0.0)
    return float(h) if h.ndim == 0 else h


def _binary_entropy_scalar(p: float) -> float:
    if p <= 0.0 or p >= 1.0:
        return 0.0
    return -(p * math.log2(p) + (1 - p) * math.log2(1 - p))


def token_entropy(top_logprobs: np.ndarray) -> np.ndarray:
    """Per-token entropy in bits of the top-k distribution plus the leftover mass, shape (T,).

    `top_logprobs` is (T, k), rows padded with -inf. Each row's k probabilities and the
    leftover 1 - sum(p) (the rest of the vocabulary, lumped into one outcome) form a proper
    distribution, and this is its Shannon entropy. Lumping can only lower entropy, so this is
    a lower bound on the full-vocabulary entropy, exact when the top k hold all the mass, at
    most log2(k + 1), and loose when much mass lies outside the top k.

    This replaces the seed design's `compute_entropy`, which was *not an entropy*: it was
    computed from the sampled tokens' own logprobs alone, values that belong to different
    positions' distributions and do not sum to one, so it measured neither the spread of any
    distribution nor a quantity bounded by the alphabet; it mostly grew with answer length.
    """
    lp = np.maximum(top_logprobs, _LOGPROB_FLOOR)  # (T, k); -inf padding -> p = 0, no nan
    p = np.exp(lp)
    rest = np.maximum(1.0 - p.sum(axis=1), 0.0)  # (T,); rounding can push sum(p) past 1
    # rest * log(rest) -> 0 as rest -> 0; the tiny floor keeps log finite without errstate
    h = -(p * lp).sum(axis=1) - rest * np.log(np.maximum(rest, 1e-300))  # nats
    return h * _INV_LN2


@lru_cache(maxsize=256)
def _quantile_plan(n: int, qs: tuple[float, ...]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Indices and weights of numpy's default ("linear") quantiles of n sorted values; cached
    per length because np.quantile's ~20 us of overhead would exceed every other feature."""
    pos = np.asarray(qs) * (n - 1)
    lo = np.floor(pos).astype(np.intp)
    hi = np.minimum(lo + 1, n - 1)
    return lo, hi, pos - lo


def features_from_arrays(
    logprobs: np.ndarray, top_logprobs: np.ndarray | None, config: FeedbackConfig | None = None
) -> dict[str, float]:
    """The named features from a (T,) chosen-logprob vector and a (T, k) top-k matrix.

    For engines that already hold arrays. With no top-k (k = 0), the chosen token stands in as
    the only known outcome, so the entropy is that of (p, 1 - p). An empty generation gets
    `num_tokens = 0`, zero counts and NaN for every statistic that needs a token; `signal`
    escalates it explicitly and the scorers map NaN to +inf.
    """
    config = config or FeedbackConfig()
    n = len(logprobs)
    if n == 0:
        out = dict.fromkeys(feature_names(config), math.nan)
        out.update(low_conf_count=0.0, low_conf_ratio=0.0, num_tokens=0.0)
        return out
    lp = np.maximum(logprobs, _LOGPROB_FLOOR)
    if top_logprobs is None or top_logprobs.size == 0:
        top_logprobs = lp[:, None]
    s = np.sort(lp)
    lo, hi, frac = _quantile_plan(n, config.quantiles)
    quants = s[lo] + frac * (s[hi] - s[lo])
    mean = float(lp.sum()) / n
    ent = token_entropy(top_logprobs)
    low = float(np.count_nonzero(lp < config.low_confidence_logprob))
    p = math.exp(mean)
    out = {"mean_logprob": mean, "min_logprob": float(s[0])}
    out.update(zip(_quantile_names(config.quantiles), quants.tolist(), strict=True))
    out.update(
        mean_entropy=float(ent.sum()) / n,
        max_entropy=float(ent.max()),
        binary_entropy=_binary_entropy_scalar(p),
        low_conf_count=low,
        low_conf_ratio=low / n,
        num_tokens=float(n),
    )
    return out


def _arrays(generation: Generation) -> tuple[np.ndarray, np.ndarray | None]:
    """(T,) and (T, k) arrays from a Generation without a Python loop per row.

    `Generation.top_logprob_matrix()` builds the matrix row by row (~150 us for 256 tokens);
    when every row holds k pairs, flattening through C iterators takes a fraction of that.
    """
    t = len(generation.logprobs)
    if generation.logprob_values is not None and generation.top_logprob_values is not None:
        lp, top = generation.logprob_values, generation.top_logprob_values  # engines' arrays
        if top.shape[0] != t:
            raise ValueError(
                f"generation has {t} logprobs but {top.shape[0]} top-logprob rows; they must match"
            )
        return lp, (top if top.size else None)
    lp = np.fromiter(generation.logprobs, dtype=np.float64, count=t)
    rows = generation.top_logprobs
    if not rows or t == 0:
        return lp, None
    k = len(rows[0])
    if k and sum(map(len, rows)) == k * len(rows):
        flat = np.fromiter(map(_pick_logprob, chain.from_iterable(rows)), np.float64, k * len(rows))
        top = flat.reshape(len(rows), k)
    else:  # ragged rows: the engine's own padding (-inf) is right, just slower
        top = generation.top_logprob_matrix()
    if top.shape[0] != t:
        raise ValueError(
            f"generation has {t} logprobs but {top.shape[0]} top-logprob rows; they must match"
        )
    return lp, top


def extract_features(
    generation: Generation, config: FeedbackConfig | None = None
) -> dict[str, float]:
    """The named features (see `feature_names`) of one generation."""
    lp, top = _arrays(generation)
    return features_from_arrays(lp, top, config)


def feature_matrix(
    generations: Sequence[Generation], config: FeedbackConfig | None = None
) -> np.ndarray:
    """Features of many generations as an (N, F) matrix, columns in `feature_names` order."""
    names = feature_names(config)
    out = np.empty((len(generations), len(names)))
    for i, g in enumerate(generations):
        f = extract_features(g, config)
        out[i] = [f[name] for name in names]
    return out


@dataclass(frozen=True, slots=True)
class TierSignal:
    """What the cascade knows about one answer: features, score, threshold and the verdict.

    `escalate` is `score > threshold` (a tie accepts), or True for an empty generation.
    `reasons` are for people (logs, the response's `routing` object), not for code.
    """

    features: Mapping[str, float]
    score: float
    threshold: float
    escalate: bool
    reasons: tuple[str, ...] = field(default=())
    scorer: str = ""

    @property
    def cause(self) -> str:
        """A short categorical reason, for counting escalations in metrics (reasons are prose)."""
        if self.features.get("num_tokens") == 0:
            return "no_tokens"
        return f"{self.scorer or 'score'}_above_threshold" if self.escalate else "accepted"

    def as_dict(self) -> dict:
        return {
            "features": dict(self.features),
            "score": self.score,
            "threshold": self.threshold,
            "escalate": self.escalate,
            "reasons": list(self.reasons),
            "scorer": self.scorer,
        }


def _diagnostics(features: Mapping[str, float], config: FeedbackConfig) -> list[str]:
    """Readable notes on an escalated answer's evidence, whatever the scorer: they tell an
    operator *why* the score is high, and are not themselves the decision."""
    notes = []
    n = int(features["num_tokens"])
    if features["low_conf_count"]:
        notes.append(
            f"{int(features['low_conf_count'])}/{n} tokens below logprob "
            f"{config.low_confidence_logprob:.2f}"
        )
    notes.append(f"min token logprob {features['min_logprob']:.2f}")
    notes.append(f"mean token entropy {features['mean_entropy']:.2f} bits")
    return notes


def signal(
    generation: Generation | None,
    scorer: _Scores,
    threshold: float,
    config: FeedbackConfig | None = None,
    *,
    features: Mapping[str, float] | None = None,
    context: Mapping[str, float] | None = None,
) -> TierSignal:
    """Score one generation and decide: escalate iff score > threshold.

    Pass `features` when already computed (then `generation` may be None). `context` adds
    evidence known before the answer (`router_evidence`) to the features the scorer sees and
    the signal records. An empty generation escalates with the reason `NO_TOKENS_REASON` and
    score +inf: there is no evidence that the answer is right, and the threshold was never
    calibrated on such cases.
    """
    config = config or FeedbackConfig()
    if features is None:
        if generation is None:
            raise ValueError("signal() needs a generation or its features, got neither")
        features = extract_features(generation, config)
    if context:
        features = {**features, **context}
    name = getattr(scorer, "name", type(scorer).__name__)
    if features["num_tokens"] == 0:
        return TierSignal(features, math.inf, threshold, True, (NO_TOKENS_REASON,), name)
    score = float(scorer.score(features))
    if math.isnan(score):
        score = math.inf
    escalate = score > threshold
    verdict = (
        f"{name} score {score:.4g} > threshold {threshold:.4g}: escalate"
        if escalate
        else f"{name} score {score:.4g} <= threshold {threshold:.4g}: accept"
    )
    reasons = (verdict, *_diagnostics(features, config)) if escalate else (verdict,)
    if escalate and getattr(scorer, "needs_router", False):
        missing = [k for k in ROUTER_FEATURES if math.isnan(features.get(k, math.nan))]
        if missing:
            reasons = (*reasons, f"no router evidence ({', '.join(missing)}): the router gave none")
    return TierSignal(features, score, threshold, escalate, reasons, name)
