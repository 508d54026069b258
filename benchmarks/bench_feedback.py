"""Feedback-signal overhead per request: features, score and decision for one generation.

    python -m benchmarks.bench_feedback [--tokens 256] [--k 5] [--repeat 2000]

The target (issue: <= 50 us) is for a 256-token generation with top-5 logprobs. Timings are
best-of-5 means, so a busy machine inflates them less; ratios compare paths in the same run.
"""

from __future__ import annotations

import argparse
import dataclasses
import timeit

import numpy as np

from calibration.feedback import FeedbackConfig, extract_features, features_from_arrays, signal
from calibration.scores import QualityEstimator, get_scorer
from offline.synthetic import random_generation, synthetic_split


def _us(fn, repeat: int) -> float:
    return min(timeit.repeat(fn, number=repeat, repeat=5)) / repeat * 1e6


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--tokens", type=int, default=256)
    p.add_argument("--k", type=int, default=5)
    p.add_argument("--repeat", type=int, default=2000)
    args = p.parse_args(argv)

    g = random_generation(np.random.default_rng(0), args.tokens, args.k)
    config = FeedbackConfig()
    fit = synthetic_split(300, seed=1)
    qe = QualityEstimator.fit(fit.features["cheap"], fit.wrong, fit.feature_names)
    lp, top = g.logprob_array(), g.top_logprob_matrix()
    # What serving sees: the engines attach the arrays they already hold (models.engine).
    served = dataclasses.replace(g, logprob_values=lp, top_logprob_values=top)

    rows = [
        ("features_from_arrays (arrays in hand)", lambda: features_from_arrays(lp, top, config)),
        ("extract_features (engine Generation)", lambda: extract_features(served, config)),
        ("signal, quality_estimator (engine Gen.)", lambda: signal(served, qe, 0.5, config)),
        ("extract_features (tuples only)", lambda: extract_features(g, config)),
        (
            "  via Generation.top_logprob_matrix()",
            lambda: features_from_arrays(g.logprob_array(), g.top_logprob_matrix(), config),
        ),
        ("signal, neg_q10_logprob scorer", lambda: signal(g, get_scorer("neg_q10_logprob"), 1.0)),
        ("signal, quality_estimator scorer", lambda: signal(g, qe, 0.5, config)),
    ]
    base = None
    print(f"feedback overhead, {args.tokens} tokens, top-{args.k} (best of 5 x {args.repeat})")
    print(f"{'path':44s} {'us/gen':>8s} {'ratio':>7s}")
    for name, fn in rows:
        us = _us(fn, args.repeat)
        base = base or us
        print(f"{name:44s} {us:8.1f} {us / base:7.2f}")


if __name__ == "__main__":
    main()
