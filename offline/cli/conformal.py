"""`python -m calibration conformal`: calibrate a threshold, check it, write the artifact.

    python -m calibration conformal --mode risk --alpha 0.05 --trials 200 [--seed N] --json \\
        [--out artifacts/calibration.json]

The threshold comes from the zoo's calibration split (the scorer, by default the quality
estimator, is fitted on --fit-split first). The check pools the calibration and test splits
and recalibrates on --trials random calibration/test partitions of the pool, reporting the
mean of the guaranteed quantity and the share of trials whose test part violates the bound.
--mode heuristic writes the seed's fixed limits instead (no data, no guarantee). `on_test`
replays the cascade with the threshold on the test split, priced as serving prices the tiers
(serve_config.yaml; --costs params or --policy FILE to change that), cost relative to
always-strong = 1.0.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from offline.cli.common import (
    add_data_options,
    describe_policy,
    emit,
    load_policy,
    log,
    zoo_root,
)

__all__ = ["register", "run"]


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("conformal", help="calibrate a conformal threshold and check it")
    p.add_argument("--mode", required=True, choices=["budget", "recall", "risk", "heuristic"])
    p.add_argument("--alpha", type=float, default=0.05, help="conformal level (default 0.05)")
    p.add_argument("--trials", type=int, default=200, help="random partitions to check on")
    p.add_argument(
        "--calibration-fraction", type=float, default=0.5, help="pool share used to calibrate"
    )
    p.add_argument(
        "--scorer", default="quality_estimator", help="registry name in calibration.scores"
    )
    add_data_options(p)
    p.add_argument("--out", type=Path, default=None, help="write the calibration artifact here")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(run=run)


def _text(r: dict) -> str:
    lines = [
        f"{r['mode']} alpha={r['alpha']}: threshold {r['threshold']:.6g} on {r['n_calibration']} "
        f"calibration answers (scorer {r['scorer']}, conservative={r['conservative']})"
    ]
    c = r["check"]
    if "bound" in c:
        lines.append(
            f"check over {c['trials']} partitions ({c['n_calibration']} cal / {c['n_test']} "
            f"test): mean {c['mean']:.4f} (se {c['stderr']:.4f}) {c['direction']} "
            f"{c['bound']:.4f}: {'holds' if c['holds'] else 'VIOLATED'}; "
            f"{100 * c['violation_share']:.1f}% of trials beyond the bound; "
            f"mean escalation rate {c['mean_escalation_rate']:.3f}"
        )
    else:
        lines.append(f"check on the pool (no guarantee): {c}")
    t = r.get("on_test")
    if t:
        lines.append(
            f"on test: accuracy {t['accuracy']:.3f}, cost {t['cost_vs_always_strong']:.3f} of "
            f"always-strong, escalation rate {t['escalation_rate']:.3f} "
            f"(tiers from {r['policy_source']})"
        )
    if r.get("artifact"):
        lines.append(f"artifact: {r['artifact']}")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    from calibration.identity import IdentityMismatch
    from offline.replay import load_split

    if not 0 < args.alpha < 1:
        raise SystemExit(f"--alpha must be in (0, 1), got {args.alpha}")
    if args.trials < 1:
        raise SystemExit(f"--trials must be >= 1, got {args.trials}")
    root = zoo_root(args)
    policy = load_policy(args, root)
    tiers = tuple(policy.tier_names)
    log(f"answers: calibration n={args.n_cal}, test n={args.n}, seed {args.seed} (cached)")
    # the router's verdicts only for the artifact's drift reference (`_with_drift`)
    router = "router" if args.out is not None else None
    try:  # a confidence head trained for another router is refused, as serving refuses it
        cal = load_split(
            "calibration", args.n_cal, args.seed, root=root, tiers=tiers, router=router
        )
    except IdentityMismatch as e:
        raise SystemExit(f"cannot calibrate: {e}") from e
    test = load_split("test", args.n, args.seed, root=root, tiers=tiers, router=None)
    scorer = _scorer(args, root, tiers)
    artifact, check = _calibrate_and_check(args, root, scorer, cal, test)
    result = {
        "mode": args.mode,
        "alpha": None if args.mode == "heuristic" else args.alpha,
        "threshold": artifact.threshold,
        "conservative": artifact.conservative,
        "n_calibration": artifact.n_calibration,
        "scorer": artifact.scorer.name,
        "check": check,
        "on_test": _on_test(policy, scorer, artifact.threshold, test),
        "policy_source": describe_policy(args),
    }
    if args.out is not None:
        result["artifact"] = str(_with_drift(policy, artifact, cal, args).save(args.out))
    emit(result, args.json, _text(result))
    return 0


def _with_drift(policy, artifact, cal, args: argparse.Namespace):
    """The cheapest tier's artifact with its drift reference: the calibration split replayed
    through the served policy (router verdicts included), as the zoo's artifact records it."""
    from calibration.artifact import CascadeArtifact
    from offline.ladder_calibration import record_drift

    first = policy.tier_names[0]
    where = f"calibration seed={args.seed} n={args.n_cal}"
    return record_drift(policy, CascadeArtifact(tiers={first: artifact}), cal, where).tiers[first]


def _scorer(args: argparse.Namespace, root: Path, tiers: tuple[str, ...]):
    """The nonconformity score: the seed's heuristic, the fitted quality estimator, or a
    registered single feature."""
    from calibration.scores import SeedHeuristicScorer, get_scorer
    from offline.evaluate import fit_quality_estimator
    from offline.replay import load_split

    if args.mode == "heuristic":
        return SeedHeuristicScorer()
    if args.scorer != "quality_estimator":
        return get_scorer(args.scorer)
    log(f"fitting the quality estimator on {args.fit_split} n={args.n_fit}")
    fit = load_split(args.fit_split, args.n_fit, args.seed, root=root, tiers=tiers, router=None)
    return fit_quality_estimator(fit)


def _calibrate_and_check(args: argparse.Namespace, root: Path, scorer, cal, test):
    """The cheapest tier's artifact (from the calibration split) and the check of its
    guarantee on random partitions of calibration + test (for the heuristic: the measured
    quantities, no guarantee)."""
    import numpy as np

    from calibration.adaptive import CalibrationSample
    from calibration.artifact import CascadeCalibration, ModelIdentity
    from calibration.conformal import calibrate, empirical, trials
    from offline.replay import model_fingerprint
    from offline.zoo_artifacts import zoo_identities

    first = cal.tiers[0]
    model = ModelIdentity(
        name=f"zoo:{first}", path=str(root / first), fingerprint=model_fingerprint(root / first)
    )

    def scores(d):
        return scorer.score_many(d.features[first], d.feature_names)

    pool_s = np.concatenate([scores(cal), scores(test)])
    pool_w = np.concatenate([cal.wrong, test.wrong])
    pool_r = np.concatenate([cal.strong_right, test.strong_right])
    if args.mode == "heuristic":
        artifact = CascadeCalibration.heuristic(model, n_calibration=0)
        measured = {
            m: empirical(m, pool_s, artifact.threshold, pool_w, pool_r)
            for m in ("budget", "recall", "risk")
        }
        return artifact, {
            "escalation_rate": measured["budget"],
            "recall": measured["recall"],
            "risk": measured["risk"],
            "n": len(pool_s),
        }
    res = calibrate(
        args.mode, scores(cal), args.alpha, wrong=cal.wrong, strong_right=cal.strong_right
    )
    sample = (  # what adaptive conformal recomputes the threshold from, as the ladder stores it
        CalibrationSample.of(args.mode, scores(cal), wrong=cal.wrong, strong_right=cal.strong_right)
        if args.mode in ("budget", "risk")
        else None
    )
    artifact = CascadeCalibration.from_result(
        res, scorer, cal.feedback, model, f"calibration seed={args.seed} n={args.n_cal}", sample
    ).model_copy(update={"identity": zoo_identities(root, [first])[first]})
    log(f"checking over {args.trials} random partitions")
    check = trials(
        args.mode,
        pool_s,
        args.alpha,
        wrong=pool_w,
        strong_right=pool_r,
        n_trials=args.trials,
        calibration_fraction=args.calibration_fraction,
        seed=args.seed,
    ).as_dict()
    return artifact, check


def _on_test(policy, scorer, threshold: float, test) -> dict:
    """The cascade with this threshold at every tier below the top, replayed on test."""
    import numpy as np

    from offline.evaluate import replay

    escalate = {
        t: scorer.score_many(test.features[t], test.feature_names) > threshold
        for t in test.tiers[:-1]
    }
    acc, cost, esc, strong = replay(policy, test, escalate)
    _, strong_cost, _, _ = replay(policy, test, {}, np.full(test.n, policy.top))
    return {
        "accuracy": acc,
        "cost_vs_always_strong": cost / strong_cost if strong_cost else cost,
        "escalation_rate": esc,
        "strong_share": strong,
        "weak_accuracy": float(test.correct[test.tiers[0]].mean()),
        "strong_accuracy": float(test.strong_right.mean()),
    }
