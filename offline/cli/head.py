"""CLI of the confidence head: `python -m calibration labels|train|report|ablate`.

    python -m calibration labels --split calibration --n 4000 --seed 0
    python -m calibration train --reward linear brier log [--workers 2] [--gpu] [--install]
    python -m calibration report --split test --seed 0 --json
    python -m calibration ablate --split test --seeds 0 1 2 3 4 --json

From the user's collected and judged traces (`collect`, then `judge`), for a config's router:

    python -m calibration labels --config serve_config.yaml --traces traces/ [--split-seed 0]
    python -m calibration train --config serve_config.yaml --traces traces/ --workers 2 --install

`--traces` labels the fit (training) and calibration (validation) parts of `calibrate`'s split,
never its held-out part, with no LM run (`offline.head.trace_labels`). `--workers N [--gpu]`
is Ray Train's `ScalingConfig(num_workers=N, use_gpu=...)`, on the Ray cluster already running
(RAY_ADDRESS) if any. `--zoo` defaults to the built zoo (models.zoo.zoo_dir()); these commands
never build it. Artifacts (labels, heads, PNGs, tables) go under `--out` (default artifacts/).
`add_subcommands(subparsers)` registers the four commands; `register` is the same function
under the name `offline.cli`'s COMMANDS modules use.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict
from pathlib import Path

__all__ = ["add_subcommands", "register"]


def add_subcommands(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("labels", help="label a split for the confidence head (cached)")
    _common(p)
    p.add_argument("--split", default="calibration", help="task split (default calibration)")
    p.add_argument("--n", type=int, default=4000, help="queries to label (default 4000)")
    p.add_argument("--seed", type=int, default=0, help="sample seed (default 0)")
    p.add_argument("--refresh", action="store_true", help="relabel even if the cache is current")
    _traces(p)
    p.set_defaults(func=run_labels, run=run_labels)

    p = subparsers.add_parser("train", help="train the confidence head: SFT, then RL")
    _common(p)
    _data(p)
    _head(p)
    _traces(p)
    h = "GPU workers on Ray Train (ScalingConfig use_gpu); refused where no GPU is visible"
    p.add_argument("--gpu", action="store_true", help=h)
    p.add_argument(
        "--reward",
        nargs="+",
        default=["linear", "brier", "log"],
        choices=["linear", "brier", "log"],
        help="RL rewards to train a head for (default all)",
    )
    p.add_argument(
        "--install",
        nargs="?",
        const="sft_rl_log",
        default=None,
        metavar="METHOD",
        help="copy this trained head beside the router it was trained for (the config's with "
        "--config, else the zoo's) so serving loads it (default sft_rl_log)",
    )
    p.set_defaults(func=run_train, run=run_train)

    p = subparsers.add_parser("report", help="every confidence method on a held-out split")
    _common(p)
    _data(p)
    _head(p)
    _eval(p)
    p.add_argument("--methods", nargs="+", default=None, help="subset of methods (default all)")
    p.set_defaults(func=run_report, run=run_report)

    p = subparsers.add_parser("ablate", help="SFT vs SFT + RL, rewards, loss weights; seeds")
    _common(p)
    _data(p)
    _head(p)
    _eval(p)
    h = "training seeds (default 0 1 2 3 4)"
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4], help=h)
    p.set_defaults(func=run_ablate, run=run_ablate)


register = add_subcommands


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--zoo", type=Path, default=None, help="zoo folder (default: the built zoo)")
    p.add_argument(
        "--config",
        type=Path,
        default=None,
        help="a Ray Serve config (AppArgs): label and train for its router and its cheapest "
        "and top tiers, resolved as serving resolves them (default: the zoo's router/cheap/strong)",
    )
    p.add_argument("--out", type=Path, default=Path("artifacts"), help="artifacts folder")
    h = 'JSON {"cheap/strong": "standard"|"complex"} (default models.oracle)'
    p.add_argument("--oracle-matrix", type=Path, default=None, help=h)
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    h = "torch CPU threads (default 1: the models are tiny, the box is shared)"
    p.add_argument("--threads", type=int, default=1, help=h)


def _data(p: argparse.ArgumentParser) -> None:
    p.add_argument("--n-train", type=int, default=4000, help="calibration-split queries")
    p.add_argument("--n-val", type=int, default=2000, help="validation-split queries")
    p.add_argument("--label-seed", type=int, default=0, help="seed of those two samples")


def _head(p: argparse.ArgumentParser) -> None:
    p.add_argument("--train-seed", type=int, default=0, help="head init / RL sampling seed")
    p.add_argument("--width", type=int, default=64, help="hidden units of the head")
    p.add_argument("--dropout", type=float, default=0.1)
    p.add_argument("--max-epochs", type=int, default=200, help="SFT epoch limit")
    p.add_argument("--patience", type=int, default=15, help="SFT early-stopping patience")
    p.add_argument("--rl-steps", type=int, default=300)
    p.add_argument("--rl-lr", type=float, default=3e-4)
    p.add_argument("--samples", type=int, default=4, help="Beta samples per query (K)")
    p.add_argument("--cal-weight", type=float, default=0.3, help="calibration-loss weight")
    p.add_argument("--rank-weight", type=float, default=0.5, help="ranking-loss weight")
    p.add_argument(
        "--rank-margin",
        type=float,
        default=None,
        help="ranking-loss margin (default: RLConfig's, the design's 0.3)",
    )
    p.add_argument(
        "--workers",
        "--num-workers",
        dest="num_workers",
        type=int,
        default=1,
        help="N > 1 trains on Ray Train's TorchTrainer: ScalingConfig(num_workers=N)",
    )


def _traces(p: argparse.ArgumentParser) -> None:
    h = "collected, judged traces: label them for --config's router, not the zoo's splits"
    p.add_argument("--traces", type=Path, default=None, help=h)
    p.add_argument("--data", type=Path, default=None, help="default: the traces' data file")
    p.add_argument("--split-seed", type=int, default=0, help="calibrate's --seed of the split")
    p.add_argument("--fractions", default="0.4,0.4,0.2", help="fit,calibration,held-out shares")


def _eval(p: argparse.ArgumentParser) -> None:
    p.add_argument("--split", default="test", help="evaluated split (default test)")
    p.add_argument("--seed", type=int, default=0, help="its sample seed (default 0)")
    p.add_argument("--n", type=int, default=4000, help="its size (default 4000)")


# --- the commands -------------------------------------------------------------------------------


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _zoo(args: argparse.Namespace):
    """The checkpoints to label with (`LabelModels`): the config's router and ladder ends with
    --config, else the zoo folder's; the zoo is never built here (`python -m models.zoo`)."""
    from models.zoo import zoo_dir

    _zoo_quiet(args)
    from offline.head.labels import LabelModels

    if args.config is not None:
        from calibration.config import AppArgs

        try:
            models = LabelModels.of_config(AppArgs.from_serve_config(args.config))
        except (ValueError, FileNotFoundError, RuntimeError) as e:
            raise SystemExit(f"cannot use --config {args.config}: {e}") from e
        for name in ("router", "cheap", "strong"):
            if not (getattr(models, name) / "config.json").is_file():
                raise SystemExit(
                    f"--config {args.config}: the {name} checkpoint {getattr(models, name)} "
                    "has no config.json (labels need local checkpoints)"
                )
        return models
    root = Path(args.zoo or zoo_dir()).expanduser()
    if not (root / "manifest.json").is_file():
        raise SystemExit(
            f"no built zoo at {root} (manifest.json missing): run `python -m models.zoo build` "
            "or pass --zoo"
        )
    return LabelModels.of_zoo(root)


def _zoo_quiet(args: argparse.Namespace) -> None:
    """--threads torch threads, and no per-chunk "Loading weights" bars (ours are enough)."""
    import torch
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    torch.set_num_threads(max(1, args.threads))


def _configs(args: argparse.Namespace):
    from offline.head.training import RLConfig, SFTConfig

    try:
        sft = SFTConfig(
            width=args.width,
            dropout=args.dropout,
            max_epochs=args.max_epochs,
            patience=args.patience,
            seed=args.train_seed,
        )
        margin = {} if args.rank_margin is None else {"ranking_margin": args.rank_margin}
        rl = RLConfig(
            steps=args.rl_steps,
            lr=args.rl_lr,
            samples=args.samples,
            calibration_weight=args.cal_weight,
            ranking_weight=args.rank_weight,
            seed=args.train_seed,
            **margin,
        )
    except ValueError as e:
        raise SystemExit(f"bad head option: {e}") from e
    if args.num_workers < 1:
        raise SystemExit(f"--workers must be >= 1, got {args.num_workers}")
    return sft, rl


def _matrix(args: argparse.Namespace):
    from offline.head.labels import load_oracle_matrix

    try:
        return load_oracle_matrix(args.oracle_matrix)
    except ValueError as e:
        raise SystemExit(str(e)) from e


def _data_spec(args: argparse.Namespace):
    from offline.head.report import HeadData

    return HeadData(n_train=args.n_train, n_val=args.n_val, label_seed=args.label_seed)


def _print(payload: dict, as_json: bool, text: str) -> None:
    print(json.dumps(payload) if as_json else text)


def _trace_labels(args: argparse.Namespace, refresh: bool = False):
    """(router folder, {"fit": ..., "calibration": ...}) from --traces and --config."""
    from offline.cli.calibrate import _fractions
    from offline.head.trace_labels import labels_of_traces, trace_router

    _zoo_quiet(args)
    options = {"out_dir": args.out / "labels", "matrix": _matrix(args), "seed": args.split_seed}
    options |= {"fractions": _fractions(args.fractions), "refresh": refresh}
    try:
        app, labels = labels_of_traces(args.config, args.traces, args.data, **options)
        return trace_router(app), labels
    except (FileNotFoundError, ValueError, RuntimeError) as e:  # IdentityMismatch: as calibrate
        raise SystemExit(str(e)) from e


def run_labels(args: argparse.Namespace) -> int:
    from offline.head.labels import label_split, labels_path

    if args.traces is not None:
        from offline.head.trace_labels import summarize

        labels = _trace_labels(args, refresh=args.refresh)[1]
        summary = summarize(labels, args.out / "labels", args.split_seed, str(args.traces))
        _print(summary, args.json, json.dumps(summary, indent=2))
        return 0
    root, matrix = _zoo(args), _matrix(args)
    labels = label_split(
        root,
        args.split,
        args.n,
        args.seed,
        out_dir=args.out / "labels",
        matrix=matrix,
        refresh=args.refresh,
        progress=False if args.quiet else None,
    )
    stem = labels_path(args.out / "labels", args.split, args.seed, args.n)
    complex_true = sum(r.true_policy.value == "complex" for r in labels.records) / labels.n
    summary = {
        "split": args.split,
        "seed": args.seed,
        "n": labels.n,
        "router_accuracy": labels.router_accuracy,
        "true_complex_rate": complex_true,
        "hidden_shape": list(labels.hidden.shape),
        "jsonl": f"{stem}.jsonl",
        "tensors": f"{stem}.safetensors",
        "fingerprint": labels.meta.get("fingerprint"),
    }
    text = "\n".join(f"{k}: {v}" for k, v in summary.items())
    _print(summary, args.json, text)
    return 0


def run_train(args: argparse.Namespace) -> int:
    from offline.head.baselines import fit_methods
    from offline.head.fitting import NoGPU, check_gpu, ray_session

    sft, rl = _configs(args)
    try:
        check_gpu(args.gpu)  # before labelling: a refused --gpu wastes no work
    except NoGPU as e:
        raise SystemExit(str(e)) from e
    if args.traces is not None:
        router_dir, labels = _trace_labels(args)
        train, val = labels["fit"], labels["calibration"]
    else:
        root, matrix = _zoo(args), _matrix(args)
        train, val = _data_spec(args).load(root, args.out, False if args.quiet else None, matrix)
        router_dir = root.router
    names = ["sft", *(f"sft_rl_{r}" for r in args.reward)]
    _log(f"training {names} on {train.n} training / {val.n} validation labels")
    options = {"sft": sft, "rl": rl, "cache_dir": args.out / "heads"}
    try:
        with ray_session(args.num_workers, args.gpu):  # one Ray start-up for every head
            methods = fit_methods(names, train, val, num_workers=args.num_workers, **options)
    except NoGPU as e:  # raised before any Ray starts, or on a cluster without GPUs
        raise SystemExit(str(e)) from e
    summary = {
        "heads": {n: str(args.out / "heads" / n) for n in names},
        "validation": {n: m.info() for n, m in methods.items()},
        "sft_config": asdict(sft),
        "rl_config": asdict(rl),
    }
    if args.install:
        if args.install not in methods:
            raise SystemExit(f"--install {args.install!r}: trained only {names}")
        from models.router_model import ConfidenceHead, router_checksum

        head = ConfidenceHead.load(args.out / "heads" / args.install)
        meta = {**head.meta, "router_checksum": router_checksum(router_dir)}
        head.save(router_dir, meta=meta)
        summary["installed"] = {"method": args.install, "into": str(router_dir)}
    _print(summary, args.json, json.dumps(summary, indent=2))
    return 0


def run_report(args: argparse.Namespace) -> int:
    from offline.head.baselines import METHODS
    from offline.head.fitting import ray_session
    from offline.head.report import report

    root, matrix = _zoo(args), _matrix(args)
    sft, rl = _configs(args)
    unknown = sorted(set(args.methods or ()) - set(METHODS))
    if unknown:
        raise SystemExit(f"unknown methods {unknown}; choose from {list(METHODS)}")
    with ray_session(args.num_workers):
        result = report(
            root,
            args.split,
            args.seed,
            args.n,
            data=_data_spec(args),
            out=args.out,
            methods=args.methods,
            sft=sft,
            rl=rl,
            num_workers=args.num_workers,
            progress=False if args.quiet else None,
            matrix=matrix,
        )
    text = (
        Path(result["table"]).read_text()
        + "\n"
        + "\n".join(f"diagram {k}: {v}" for k, v in result["diagrams"].items())
    )
    _print(result, args.json, text)
    return 0


def run_ablate(args: argparse.Namespace) -> int:
    from offline.head.report import ablate

    root, matrix = _zoo(args), _matrix(args)
    sft, rl = _configs(args)
    if args.num_workers != 1:
        _log("ablate trains in-process; --workers is ignored")
    result = ablate(
        root,
        args.split,
        args.seed,
        args.n,
        seeds=tuple(args.seeds),
        data=_data_spec(args),
        out=args.out,
        sft=sft,
        rl=rl,
        progress=False if args.quiet else None,
        matrix=matrix,
    )
    _print(result, args.json, Path(result["table"]).read_text())
    return 0
