"""Options and helpers shared by the command groups: data sizes, the zoo, the ladder, output."""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

__all__ = [
    "add_data_options",
    "describe_policy",
    "emit",
    "jsonable",
    "load_app_args",
    "load_policy",
    "log",
    "zoo_root",
]


def add_data_options(p: argparse.ArgumentParser, policy: bool = True) -> None:
    """--seed, sample sizes, where the models are, and (with `policy`) the tier costs."""
    p.add_argument("--seed", type=int, default=0, help="seed of every sampled split (default 0)")
    p.add_argument("--n", type=int, default=1000, help="requests of the evaluated/test split")
    p.add_argument("--n-cal", type=int, default=1000, help="requests of the calibration split")
    p.add_argument("--n-fit", type=int, default=1000, help="requests to fit the estimator on")
    p.add_argument("--fit-split", default="validation", help="split the estimator is fitted on")
    p.add_argument("--zoo", type=Path, default=None, help="zoo folder (default: models.zoo)")
    if not policy:
        return
    p.add_argument(
        "--policy",
        type=Path,
        default=None,
        help="the ladder (tiers, costs, floors, router threshold) as a CascadePolicyConfig JSON "
        "or a Ray Serve config YAML (*.yaml, *.yml); overrides --costs",
    )
    p.add_argument(
        "--costs",
        choices=["serve", "params"],
        default="serve",
        help="serve (default): the tiers and costs serving charges, from --serve-config; "
        "params: the zoo's tiers priced by parameter count (strong = 1.0)",
    )
    p.add_argument(
        "--config",
        "--serve-config",
        dest="serve_config",
        type=Path,
        default=None,
        help="the Ray Serve config whose application (AppArgs) is served: its ladder, router "
        "threshold and calibration are what is evaluated (default: serve_config.yaml)",
    )


def log(msg: str) -> None:
    """Progress goes to stderr so --json output stays parseable."""
    print(msg, file=sys.stderr, flush=True)


def zoo_root(args: argparse.Namespace) -> Path:
    """The zoo folder, built first when missing (once, locked; offline code may train)."""
    from offline.zoo_cli import ensure_zoo

    return ensure_zoo(args.zoo)


def load_app_args(args: argparse.Namespace):
    """The served application's typed config (`AppArgs`) from --config."""
    from calibration.config import AppArgs

    try:
        return AppArgs.from_serve_config(args.serve_config)
    except ValueError as e:
        raise SystemExit(f"cannot use the serve config: {e}") from e


def load_policy(args: argparse.Namespace, root: Path):
    """The ladder the evaluation prices with; `describe_policy(args)` says where it came from.

    --policy FILE wins (JSON CascadePolicyConfig, or a serve config YAML); else --costs serve
    (the default) reads the serve config's tiers, so the evaluation charges what serving
    charges; --costs params prices the zoo's tiers by parameter count.
    """
    from calibration.config import AppArgs
    from calibration.policy import CascadePolicyConfig
    from offline.replay import zoo_tiers

    if args.policy is not None:
        try:
            if args.policy.suffix in (".yaml", ".yml"):
                return AppArgs.from_serve_config(args.policy).policy()
            return CascadePolicyConfig.model_validate_json(args.policy.read_text())
        except (OSError, ValueError) as e:
            raise SystemExit(f"cannot use policy file {args.policy}: {e}") from e
    if args.costs == "params":
        return CascadePolicyConfig(tiers=zoo_tiers(root))
    return load_app_args(args).policy()


def describe_policy(args: argparse.Namespace) -> str:
    """Where `load_policy` took the ladder from, for reports."""
    from calibration.config import SERVE_CONFIG

    if args.policy is not None:
        return f"file {args.policy}"
    if args.costs == "params":
        return "params: zoo tiers priced by parameter count"
    return f"serve config {args.serve_config or SERVE_CONFIG}"


def jsonable(x):
    """Strict JSON: +-inf become the strings "inf"/"-inf", NaN becomes null."""
    if isinstance(x, float) and not math.isfinite(x):
        return None if math.isnan(x) else ("inf" if x > 0 else "-inf")
    if isinstance(x, dict):
        return {str(k): jsonable(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [jsonable(v) for v in x]
    if hasattr(x, "item") and not isinstance(x, str):  # numpy scalars
        return jsonable(x.item())
    return x


def emit(payload: dict, as_json: bool, text: str) -> None:
    if as_json:
        print(json.dumps(jsonable(payload), allow_nan=False))
    else:
        print(text)
