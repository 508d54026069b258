"""`python -m calibration evaluate`: replay every strategy on a split and summarise.

    python -m calibration evaluate --split test [--seed N] [--n 1000] --json

Generates each tier's answers once per (model, split, seed, n) (cached), fits the quality
estimator on --fit-split, calibrates conformal thresholds on the calibration split, and
writes the cost-quality plot to --out (default artifacts/). Tiers are priced as serving
prices them (serve_config.yaml's tiers; --costs params or --policy FILE to change that);
costs are reported relative to always-strong = 1.0.
"""

from __future__ import annotations

import argparse
from functools import partial
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
    p = sub.add_parser("evaluate", help="offline cascade evaluation (APGR, CPT, cost-quality)")
    p.add_argument("--split", default="test", help="split to evaluate on (default test)")
    add_data_options(p)
    p.add_argument("--out", type=Path, default=Path("artifacts"), help="folder for the PNG")
    p.add_argument("--no-plot", action="store_true", help="skip the PNG")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument(
        "--traces",
        type=Path,
        default=None,
        help="evaluate on collected, judged traces (python -m calibration collect / judge) "
        "instead of the zoo's splits: the held-out part of `calibrate`'s split (same --seed), "
        "the served artifact from the config's calibration.file",
    )
    p.set_defaults(run=run)


def _text(report: dict) -> str:
    s = report["summary"]
    lines = [
        f"split {report['split']} n={report['n']}: cheap {s['weak_accuracy']:.3f}, "
        f"strong {s['strong_accuracy']:.3f} (cost {s['always_strong_cost_raw']:.4g} per "
        f"request = 1.0; tiers from {report.get('policy_source', '?')})",
        f"best family {s['best_family']}: APGR {s['apgr']:.3f}, CPT50 {s['cpt50']}, "
        f"CPT80 {s['cpt80']}; oracle APGR {s['oracle']['apgr']:.3f}",
        f"{'family':32s} {'APGR':>7s} {'CPT50%':>8s} {'CPT80%':>8s}",
    ]

    def fmt(v: float | None) -> str:
        return "-" if v is None else f"{v:.1f}"

    for fam, m in sorted(s["families"].items(), key=lambda kv: -kv[1]["apgr"]):
        lines.append(f"{fam:32s} {m['apgr']:7.3f} {fmt(m['cpt50']):>8s} {fmt(m['cpt80']):>8s}")
    for key in (
        "best_conformal",
        "best_conformal_without_router",
        "best_conformal_with_router",
        "heuristic",
        "seed_rules",
    ):
        p = s[key]
        if p:
            lines.append(
                f"{key}: {p['name']} acc {p['accuracy']:.3f} cost {p['cost']:.3f} "
                f"({100 * p['cost_vs_always_strong']:.0f}% of strong) PGR {p['pgr']:.3f}"
            )
    lines.append(f"criteria: {s['criteria']}")
    if s.get("served"):
        lines += _served_text(s)
    if report.get("three_tier"):
        from offline.ladder import ladder_text

        lines.append(ladder_text(report["three_tier"]))
    if report.get("plot"):
        lines.append(f"plot: {report['plot']}")
    return "\n".join(lines)


def _served_text(s: dict) -> list[str]:
    """The served point, its bar against the oracle, and its realised guarantee per tier and
    per task type."""
    p, t = s["served"], s.get("served_vs_targets", {})
    lines = [
        f"served: acc {p['accuracy']:.3f} cost {p['cost']:.3f} escalation "
        f"{p['escalation_rate']:.3f}",
    ]
    if t:
        lines.append(
            f"served vs oracle: acc gap to strong {t['accuracy_gap_to_strong']:.3f}, cost "
            f"{t['cost_vs_oracle']:.2f}x oracle's, APGR {t['served_apgr']:.3f} = "
            f"{t['apgr_vs_oracle']:.2f}x oracle's; accuracy+cost met "
            f"{t['accuracy_and_cost_met']}, APGR met {t['apgr_met']}"
        )
        if t.get("hindsight"):
            h = t["hindsight"]
            lines.append(
                f"hindsight (threshold picked on this split, never served): {h['tier']} "
                f"threshold {h['threshold']:.4g}, acc {h['accuracy']:.3f}, cost "
                f"{h['cost_vs_oracle']:.2f}x oracle's"
            )
    lines.append(f"{'task type':10s} {'tier':8s} {'n':>6s} {'realised':>9s} target")
    rows = [("all", tier, g) for tier, g in p["params"].get("guarantee", {}).items()]
    rows += [(k, tier, g) for k, by in p.get("per_task_type", {}).items() for tier, g in by.items()]
    for kind, tier, g in rows:
        got = "-" if g["realised"] is None else f"{g['realised']:.4f}"
        lines.append(f"{kind:10s} {tier:8s} {g['n']:6d} {got:>9s} {g['target']}")
    return lines


def run(args: argparse.Namespace) -> int:
    from calibration.identity import IdentityMismatch
    from offline.evaluate import EvalSettings, evaluate
    from offline.plots import cost_quality_plot
    from offline.replay import load_split

    if args.traces is not None:
        return _run_traces(args)
    if args.split in (args.fit_split, "calibration"):
        raise SystemExit(
            f"--split {args.split} is used to fit or calibrate; evaluate on another split"
        )
    root = zoo_root(args)
    policy = load_policy(args, root)
    tiers = policy.tier_names
    log(
        f"answers: {args.fit_split} (fit) n={args.n_fit}, calibration n={args.n_cal}, "
        f"{args.split} n={args.n}, seed {args.seed} (cached after the first run)"
    )
    # a confidence head trained for another router is refused, as serving refuses it
    split = partial(load_split, root=root, tiers=tiers, allow_mismatch=_allow_mismatch(args))
    try:
        fit = split(args.fit_split, args.n_fit, args.seed)
        cal = split("calibration", args.n_cal, args.seed)
        test = split(args.split, args.n, args.seed)
    except IdentityMismatch as e:
        raise SystemExit(f"cannot evaluate: {e}") from e
    log("replaying strategies")
    served = _served(args, root, tiers)
    report = evaluate(policy, test, cal, fit, EvalSettings(seed=args.seed), served)
    report["policy_source"] = describe_policy(args)
    three = _three_tier(args, root)
    if three is not None:
        report["three_tier"] = three
    if not args.no_plot:
        path = args.out / f"cost_quality_{args.split}_s{args.seed}.png"
        report["plot"] = str(cost_quality_plot(report, path))
    emit(report, args.json, _text(report))
    return 0


def _allow_mismatch(args: argparse.Namespace) -> bool:
    """The serve config's `calibration.allow_mismatch`: evaluate what serving would serve."""
    from offline.cli.common import load_app_args

    return load_app_args(args).calibration.allow_mismatch


def _served(args: argparse.Namespace, root: Path, tiers: list[str]):
    """(policy, artifact) of the served application, when its ladder is the evaluated one."""
    from calibration.identity import IdentityMismatch
    from models.served_calibration import served_artifact
    from offline.cli.common import load_app_args

    app = load_app_args(args)
    if app.tier_names != tiers:
        log(f"no `served` strategy: the config's tiers {app.tier_names} are not {tiers}")
        return None
    try:
        artifact = served_artifact(app, root)
    except IdentityMismatch as e:  # evaluating another model's calibration would mislead
        raise SystemExit(f"cannot evaluate the served policy: {e}") from e
    except (FileNotFoundError, RuntimeError) as e:
        log(f"no `served` strategy: {e}")
        return None
    return app.policy(), artifact


def _three_tier(args: argparse.Namespace, root: Path) -> dict | None:
    """The 3-tier table (serve_config.3tier.yaml on the zoo with its middle tier)."""
    from calibration.config import AppArgs
    from models.served_calibration import served_artifact
    from offline.ladder import ladder_table
    from offline.replay import load_split
    from offline.zoo_artifacts import SERVE_CONFIG_3TIER

    if not (root / "mid").is_dir() or not SERVE_CONFIG_3TIER.is_file():
        return None
    app = AppArgs.from_serve_config(SERVE_CONFIG_3TIER)
    names = app.tier_names
    test = load_split(args.split, args.n, args.seed, root=root, tiers=names)
    artifact = served_artifact(app, root)
    return {"config": SERVE_CONFIG_3TIER.name, **ladder_table(app.policy(), artifact, test)}


def _run_traces(args: argparse.Namespace) -> int:
    """The same evaluation on the user's traces: fit / calibration / held-out as `calibrate`
    split them (same --seed), every strategy replayed on the held-out part."""
    from calibration.dataset import DatasetError, load_dataset
    from calibration.identity import IdentityMismatch
    from models.served_calibration import served_artifact
    from offline.cli.common import load_app_args
    from offline.evaluate import EvalSettings, evaluate
    from offline.trace_split import trace_splits
    from offline.traces import TraceStore

    app = load_app_args(args)
    store = TraceStore(args.traces)
    try:
        items = load_dataset(Path(store.manifest().data))
        splits = trace_splits(store, items, app, seed=args.seed)
        artifact = served_artifact(app)
    except (DatasetError, FileNotFoundError, IdentityMismatch, ValueError) as e:
        raise SystemExit(f"cannot evaluate: {e}") from e
    policy = app.policy()
    log(f"traces {args.traces}: {splits.holdout.n} held-out items evaluated")
    report = evaluate(
        policy,
        splits.holdout,
        splits.calibration,
        splits.fit,
        EvalSettings(seed=args.seed),
        (policy, artifact),
    )
    report["policy_source"] = f"serve config {args.serve_config}"
    report["split"] = f"traces held-out ({args.traces})"
    emit(report, args.json, _text(report))
    return 0
