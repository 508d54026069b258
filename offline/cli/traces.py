"""`collect` and `judge`: from the user's data set to labelled traces of every tier.

python -m calibration collect --config serve_config.yaml --data items.jsonl --out traces/
python -m calibration judge --traces traces/ --judge normalized
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from offline.cli.common import emit, load_app_args, log

__all__ = ["register"]


def register(sub: argparse._SubParsersAction) -> None:
    c = sub.add_parser("collect", help="every tier answers every item of a JSONL data set")
    c.add_argument("--config", dest="serve_config", type=Path, default=None)
    c.add_argument("--data", type=Path, required=True, help="the JSONL data set")
    c.add_argument("--out", type=Path, required=True, help="the traces folder (resumable)")
    c.add_argument("--batch", type=int, default=32, help="items per engine call (default 32)")
    c.add_argument("--tiers", default=None, help="comma-separated tier names (default: all)")
    c.add_argument("--no-progress", action="store_true")
    c.add_argument("--json", action="store_true")
    c.set_defaults(run=_collect)
    j = sub.add_parser("judge", help="label collected answers right / wrong")
    j.add_argument("--traces", type=Path, required=True)
    group = j.add_mutually_exclusive_group()
    group.add_argument("--judge", default="normalized", help="exact, normalized, regex, contains")
    group.add_argument("--judges", type=Path, help="JSON file: task_type -> judge")
    j.add_argument("--data", type=Path, default=None, help="default: the manifest's data file")
    j.add_argument("--json", action="store_true")
    j.set_defaults(run=_judge)


def _items(path: Path):
    from calibration.dataset import DatasetError, load_dataset

    try:
        return load_dataset(path)
    except DatasetError as e:
        raise SystemExit(str(e)) from e


def _collect(args: argparse.Namespace) -> int:
    from offline.collect import collect

    if args.batch < 1:
        raise SystemExit(f"--batch must be >= 1, got {args.batch}")
    app = load_app_args(args)
    items = _items(args.data)
    tiers = args.tiers.split(",") if args.tiers else None
    unknown = set(tiers or ()) - {t.name for t in app.tiers}
    if unknown:
        raise SystemExit(f"--tiers names {sorted(unknown)}, not tiers of the config")
    log(f"collecting {len(items)} items from {args.data} into {args.out}")
    reports = collect(
        app,
        items,
        args.out,
        data=str(args.data),
        batch=args.batch,
        tiers=tiers,
        progress=not args.no_progress,
    )
    payload = {
        "items": len(items),
        "tiers": {
            r.tier: {
                "collected": r.collected,
                "reused": r.reused,
                "seconds": round(r.seconds, 3),
                "items_per_s": round(r.items_per_s, 2) if r.collected else None,
                "identity": r.identity.model_dump(),
            }
            for r in reports
        },
    }
    lines = [
        f"{r.tier:10s} {r.collected:6d} collected  {r.reused:6d} reused  "
        + (f"{r.items_per_s:8.1f} items/s" if r.collected else "")
        for r in reports
    ]
    emit(payload, args.json, "\n".join(lines))
    return 0


def _judge(args: argparse.Namespace) -> int:
    from calibration.judges import JudgeError, JudgesFile, JudgeSpec
    from offline.judge import judge_traces
    from offline.traces import TraceStore

    store = TraceStore(args.traces)
    try:
        manifest = store.manifest()
    except FileNotFoundError as e:
        raise SystemExit(str(e)) from e
    if args.judges is not None:
        judges = JudgesFile.parse(json.loads(args.judges.read_text()))
    else:
        judges = JudgesFile(default=JudgeSpec(name=args.judge))
    items = _items(args.data or Path(manifest.data))
    try:
        reports = judge_traces(store, items, judges)
    except JudgeError as e:
        raise SystemExit(str(e)) from e
    payload = {
        "judges": judges.model_dump(),
        "tiers": {
            r.tier: {"n": r.n, "right": r.right, "accuracy": r.accuracy, "missing": r.missing}
            for r in reports
        },
    }
    lines = [
        f"{r.tier:10s} {r.right}/{r.n} right ({r.accuracy:.3f}), {r.missing} missing"
        for r in reports
    ]
    emit(payload, args.json, "\n".join(lines))
    return 0
