"""`collect` and `judge`: from the user's data set to labelled traces of every tier.

python -m calibration collect --config serve_config.yaml --data items.jsonl --out traces/
python -m calibration collect --config serve_config.yaml --data items.jsonl --out traces/ \
    --endpoint http://127.0.0.1:8000 [--api-key-env CASCADE_API_KEY]
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
    c.add_argument(
        "--endpoint",
        default=None,
        help="collect through this running service (http://host:port[/v1]) instead of loading "
        "the engines here; the tiers' identities are checked against the config's",
    )
    c.add_argument("--api-key-env", default=None, help="the variable holding the endpoint's key")
    c.add_argument("--no-progress", action="store_true")
    c.add_argument("--json", action="store_true")
    c.set_defaults(run=_collect)
    j = sub.add_parser("judge", help="label collected answers right / wrong")
    j.add_argument("--traces", type=Path, required=True)
    group = j.add_mutually_exclusive_group()
    group.add_argument(
        "--judge", default="normalized", help="exact, normalized, regex, contains or llm"
    )
    group.add_argument("--judges", type=Path, help="JSON file: task_type -> judge")
    j.add_argument("--data", type=Path, default=None, help="default: the manifest's data file")
    _llm_options(j)
    j.add_argument("--no-progress", action="store_true")
    j.add_argument("--json", action="store_true")
    j.set_defaults(run=_judge)


def _llm_options(j: argparse.ArgumentParser) -> None:
    """The llm judge's grader: a configured tier, or an OpenAI-compatible endpoint."""
    g = j.add_argument_group("llm judge")
    g.add_argument(
        "--config", dest="serve_config", type=Path, default=None, help="with --judge-tier"
    )
    g.add_argument("--judge-tier", default=None, help="the config's tier that grades")
    g.add_argument("--judge-endpoint", default=None, help="an OpenAI-compatible base URL")
    g.add_argument("--judge-model", default=None, help="the endpoint's model name")
    g.add_argument("--api-key-env", default=None, help="the variable holding the endpoint's key")
    g.add_argument(
        "--judge-template", type=Path, default=None, help="{question} {reference} {answer}"
    )
    g.add_argument("--judge-grades", default="RIGHT/WRONG", help="reply words: RIGHT/WRONG")
    g.add_argument("--judge-batch", type=int, default=16, help="prompts per grader call")
    g.add_argument("--allow-unparsed", action="store_true", help="exit 0 despite unread replies")


def _items(path: Path):
    from calibration.dataset import DatasetError, load_dataset

    try:
        return load_dataset(path)
    except DatasetError as e:
        raise SystemExit(str(e)) from e


def _collect(args: argparse.Namespace) -> int:
    from models.engine import EngineError
    from offline.collect import collect

    if args.batch < 1:
        raise SystemExit(f"--batch must be >= 1, got {args.batch}")
    app = load_app_args(args)
    items = _items(args.data)
    tiers = args.tiers.split(",") if args.tiers else None
    unknown = set(tiers or ()) - {t.name for t in app.tiers}
    if unknown:
        raise SystemExit(f"--tiers names {sorted(unknown)}, not tiers of the config")
    if args.api_key_env and not args.endpoint:
        raise SystemExit("--api-key-env is the key of an --endpoint; give the endpoint too")
    via = f" through {args.endpoint}" if args.endpoint else ""
    log(f"collecting {len(items)} items from {args.data} into {args.out}{via}")
    options = {"data": str(args.data), "batch": args.batch, "progress": not args.no_progress}
    try:
        if args.endpoint:
            from offline.collect_endpoint import collect_through

            reports = collect_through(
                args.endpoint,
                app,
                items,
                args.out,
                api_key_env=args.api_key_env,
                tiers=tiers,
                **options,
            )
        else:
            reports = collect(app, items, args.out, tiers=tiers, **options)
    except (ValueError, EngineError) as e:  # IdentityMismatch, EndpointError, a refused item
        raise SystemExit(str(e)) from e
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


def _grader(args: argparse.Namespace, judges):
    """The llm judge's grader from the flags, or None when no judge is `llm`; a half-given
    grader is refused naming the flags, before any model loads."""
    from calibration.judges import parse_grades
    from offline.llm_judge import LLMGrader

    uses_llm = judges.default.name == "llm" or any(s.name == "llm" for s in judges.by_task.values())
    tier, endpoint = args.judge_tier is not None, args.judge_endpoint is not None
    if not uses_llm:
        if tier or endpoint:
            raise SystemExit("--judge-tier / --judge-endpoint name a grader, but no judge is llm")
        return None
    if tier == endpoint:
        raise SystemExit(
            "--judge llm needs exactly one grader: --config CONFIG --judge-tier NAME, or "
            "--judge-endpoint URL --judge-model MODEL [--api-key-env VAR]"
        )
    if args.judge_batch < 1:
        raise SystemExit(f"--judge-batch must be >= 1, got {args.judge_batch}")
    options = {"template": args.judge_template, "grades": parse_grades(args.judge_grades)}
    if tier:
        if args.serve_config is None:
            raise SystemExit("--judge-tier needs --config CONFIG (the serving config it is in)")
        app = load_app_args(args)
        return LLMGrader.from_tier(app, args.judge_tier, batch=args.judge_batch, **options)
    if args.judge_model is None:
        raise SystemExit("--judge-endpoint needs --judge-model MODEL (the server's model name)")
    return LLMGrader.from_endpoint(
        args.judge_endpoint,
        args.judge_model,
        api_key_env=args.api_key_env,
        batch=args.judge_batch,
        **options,
    )


def _judge(args: argparse.Namespace) -> int:
    from calibration.judges import JudgeError, JudgesFile, JudgeSpec
    from models.engine import EngineError
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
        grader = _grader(args, judges)
    except (JudgeError, EngineError) as e:
        raise SystemExit(f"cannot start the llm judge's grader: {e}") from e
    try:
        reports = judge_traces(store, items, judges, grader, progress=not args.no_progress)
    except (ValueError, EngineError) as e:  # JudgeError, or a grader refusing a prompt
        raise SystemExit(str(e)) from e
    finally:
        if grader is not None:
            grader.close()
    return _report_judged(args, judges, grader, reports)


def _report_judged(args: argparse.Namespace, judges, grader, reports) -> int:
    """Per tier counts; unparsed llm replies are listed and fail the run unless allowed."""
    payload = {
        "judges": judges.model_dump(),
        "grader": grader.spec.model_dump() if grader is not None else None,
        "tiers": {
            r.tier: {
                "n": r.n,
                "right": r.right,
                "accuracy": r.accuracy,
                "missing": r.missing,
                "unparsed": r.unparsed,
                "unparsed_ids": list(r.unparsed_ids),
            }
            for r in reports
        },
    }
    lines = [
        f"{r.tier:10s} {r.right}/{r.n} right ({r.accuracy:.3f}), {r.missing} missing"
        + (f", {r.unparsed} unparsed (no label): {', '.join(r.unparsed_ids)}" if r.unparsed else "")
        for r in reports
    ]
    emit(payload, args.json, "\n".join(lines))
    unparsed = sum(r.unparsed for r in reports)
    if unparsed and not args.allow_unparsed:
        log(
            f"{unparsed} grader replies held none of the grades {args.judge_grades}; those items "
            "have no label (see above). Fix the template or --judge-grades, or pass "
            "--allow-unparsed to accept the labels written."
        )
        return 1
    return 0
