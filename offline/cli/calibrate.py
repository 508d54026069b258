"""`calibrate`: the user's labelled traces in, a served artifact out, its guarantee measured.

    python -m calibration calibrate --config serve_config.yaml --traces traces/ \\
        --mode risk --alpha 0.05 --out artifact.json --json

Splits the labelled items itself (fit / calibration / held-out, by a hash of seed and id),
fits each tier's quality estimator on the fit part, calibrates each non-final tier's
threshold on the calibration items the configured router and policy send to it
(`offline.ladder_calibration`, what the zoo's build runs), and measures the guarantee on the
held-out part through the served replay. The artifact records every tier's model identity, so
serving it with other models is refused.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from offline.cli.common import emit, load_app_args, log

__all__ = ["register"]


def register(sub: argparse._SubParsersAction) -> None:
    c = sub.add_parser("calibrate", help="fit and calibrate a served artifact from traces")
    c.add_argument("--config", dest="serve_config", type=Path, default=None)
    c.add_argument("--traces", type=Path, required=True, help="collected and judged traces")
    c.add_argument("--data", type=Path, default=None, help="default: the manifest's data file")
    c.add_argument("--mode", choices=["budget", "recall", "risk"], default="risk")
    c.add_argument("--alpha", type=float, default=0.05)
    c.add_argument("--seed", type=int, default=0, help="which fit/calibration/held-out split")
    c.add_argument("--fractions", default="0.4,0.4,0.2", help="fit,calibration,held-out shares")
    c.add_argument("--out", type=Path, required=True, help="the artifact JSON to write")
    c.add_argument("--allow-mismatch", action="store_true", help="traces of other models")
    c.add_argument(
        "--mondrian",
        action="store_true",
        help="also one threshold per task type (where a type has enough items), so each type "
        "gets the guarantee; the report then splits the held-out guarantee by type",
    )
    c.add_argument(
        "--no-router-evidence",
        dest="router_evidence",
        action="store_false",
        help="fit each tier's quality estimator on the answer's logprobs alone, without the "
        "router's P(complex) (used by default when the config has a router); such an artifact "
        "also serves with the router off",
    )
    c.add_argument("--json", action="store_true")
    c.set_defaults(run=_calibrate)


def _fractions(text: str) -> tuple[float, float, float]:
    try:
        parts = tuple(float(x) for x in text.split(","))
    except ValueError:
        parts = ()
    if len(parts) != 3 or min(parts) <= 0 or abs(sum(parts) - 1) > 1e-6:
        raise SystemExit(f"--fractions takes three positive shares summing to 1, got {text!r}")
    return parts  # type: ignore[return-value]


def _calibrate(args: argparse.Namespace) -> int:
    from calibration.artifact import ModelIdentity
    from calibration.dataset import DatasetError, load_dataset
    from calibration.identity import IdentityMismatch
    from offline.ladder_calibration import calibrate_ladder
    from offline.served import realised_guarantees, replay_served
    from offline.trace_split import trace_splits
    from offline.traces import TraceStore

    if not 0 < args.alpha < 1:
        raise SystemExit(f"--alpha must be in (0, 1), got {args.alpha}")
    app = load_app_args(args)
    store = TraceStore(args.traces)
    try:
        items = load_dataset(args.data or Path(store.manifest().data))
        splits = trace_splits(
            store,
            items,
            app,
            seed=args.seed,
            fractions=_fractions(args.fractions),
            allow_mismatch=args.allow_mismatch,
        )
    except (DatasetError, FileNotFoundError, IdentityMismatch, ValueError) as e:
        raise SystemExit(str(e)) from e
    policy = app.policy()
    names = policy.tier_names
    log(
        f"{splits.fit.n} fit, {splits.calibration.n} calibration, {splits.holdout.n} held-out "
        f"items; tiers {names}"
    )
    models = {t.name: ModelIdentity(name=t.model) for t in app.tiers[:-1]}
    try:
        artifact = calibrate_ladder(
            policy,
            splits.fit,
            splits.calibration,
            mode=args.mode,
            alpha=args.alpha,
            models=models,
            identities=splits.identities,
            where=f"traces {args.traces} seed={args.seed}",
            mondrian=args.mondrian,
            router_evidence=args.router_evidence,
        )
    except ValueError as e:
        raise SystemExit(f"cannot calibrate: {e}") from e
    artifact.save(args.out)
    run = replay_served(policy, artifact, splits.holdout)
    _report(args, artifact, realised_guarantees(policy, artifact, splits.holdout, run), splits)
    return 0


def _report(args: argparse.Namespace, artifact, realised: dict, splits) -> None:
    """`{"tiers": {NAME: {"threshold", "target", "realised", "n_holdout"}}}` and the text."""
    tiers = {
        name: {
            "threshold": cal.threshold,
            "target": realised.get(name, {}).get("target"),
            "realised": realised.get(name, {}).get("realised"),
            "n_holdout": realised.get(name, {}).get("n", 0),
            "n_calibration": cal.n_calibration,
        }
        for name, cal in artifact.tiers.items()
    }
    payload = {"tiers": tiers, "out": str(args.out), "mismatches": splits.mismatches}
    lines = [
        f"{name:10s} threshold {t['threshold']:.4g}  {args.mode} target {t['target']}  "
        f"realised {t['realised']} on {t['n_holdout']} held-out"
        for name, t in tiers.items()
    ]
    for name, t in tiers.items() if getattr(args, "mondrian", False) else ():
        t["group_thresholds"] = artifact.tiers[name].group_thresholds
        t["per_task_type"] = realised.get(name, {}).get("per_task_type", {})
        lines += [
            f"  {name} {kind:8s} threshold {v.get('threshold', t['threshold']):.4g}  realised "
            f"{v['realised']} on {v['n']} held-out"
            for kind, v in t["per_task_type"].items()
        ]
    emit(payload, args.json, "\n".join([*lines, f"wrote {args.out}"]))
