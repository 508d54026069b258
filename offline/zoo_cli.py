"""Building the default zoo end to end, and measuring it: `python -m models.zoo build|report`.

`models.zoo_build` trains the models; what serving also needs is derived from them here, in
the offline layer (`offline.zoo_artifacts`: the cheap tier's conformal calibration artifact and
the router's confidence head). `ensure_zoo` runs both under the zoo's lock, so concurrent first
uses build once, and re-derives only when the derived artifacts are older than the code
(`DERIVED_VERSION`) or were made from other models than the zoo has now.

    python -m models.zoo build [--dir DIR] [--force]     # or `make zoo`
    python -m models.zoo report --split test --seed 1 --json
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path
from typing import Any

from models.oracle import true_policy
from models.tasks import Judgement, Task, judge, sample
from models.zoo import MANIFEST_FILE, answer_queries, read_manifest, require_zoo, zoo_dir
from models.zoo_build import ZooSpec, stale_models, update_models, write_manifest, zoo_lock

__all__ = ["ensure_zoo", "main", "report"]


def _derived_current(manifest: dict[str, Any] | None) -> bool:
    """Derived artifacts of this code's version, made from exactly the models the zoo has now:
    a retrained model, or a new one (a zoo gaining `mid` gains a tier to calibrate), re-derives
    them (seconds, against minutes for any model)."""
    from offline.zoo_artifacts import DERIVED_VERSION  # heavy (calibration, sklearn): lazy

    if manifest is None or (manifest.get("derived") or {}).get("version") != DERIVED_VERSION:
        return False
    return manifest.get("derived_from") == _model_keys(manifest)


def _model_keys(manifest: dict[str, Any]) -> dict[str, str]:
    return {name: rec["key"] for name, rec in (manifest.get("models") or {}).items()}


def _complete(root: Path, spec: ZooSpec, derived: bool) -> bool:
    if stale_models(root, spec):
        return False
    return not derived or _derived_current(read_manifest(root))


def ensure_zoo(
    root: Path | str | None = None, spec: ZooSpec | None = None, derived: bool | None = None
) -> Path:
    """The zoo folder, with the models of `spec` trained first where missing or stale (only
    those), and its derived artifacts made if needed; concurrent callers build it once.

    `derived` defaults to True for the default spec and False for an explicit `spec` (tests
    build tiny zoos without them). A failing derive step leaves the trained models recorded.
    """
    root = Path(root or zoo_dir())
    derived = spec is None if derived is None else derived
    spec = spec or ZooSpec()
    if _complete(root, spec, derived):
        return root
    with zoo_lock(root):  # update_models re-checks: another process may have built meanwhile
        manifest = update_models(root, spec)
        if derived and not _derived_current(manifest):
            _derive(root, spec, manifest)
    return root


def _derive(root: Path, spec: ZooSpec, manifest: dict[str, Any]) -> None:
    """Make the derived artifacts and record them, with the model keys they were made from."""
    from offline.zoo_artifacts import build_derived

    print("deriving the calibration artifact and the confidence head", flush=True)
    t0 = time.time()
    manifest["derived"] = build_derived(root, seed=spec.seed)
    manifest["derived_from"] = _model_keys(manifest)
    manifest.setdefault("seconds", {})["derived"] = round(time.time() - t0, 1)
    write_manifest(root, manifest)


# --- report ---------------------------------------------------------------------------------


def _judged(root: Path, tier: str, tasks: list[Task]) -> tuple[list[Judgement], list[float]]:
    """Each task's judgement of `tier`'s greedy answer, and the answer's mean token logprob."""
    gens = answer_queries(root / tier, tasks)
    judgements = [judge(g.text, t.answer) for g, t in zip(gens, tasks, strict=True)]
    return judgements, [sum(g.logprobs) / max(1, len(g.logprobs)) for g in gens]


def _by_level(tasks: list[Task], right: dict[str, list[bool]]) -> dict[str, dict[str, float]]:
    """Accuracy of each tier per family/difficulty cell (where the tiers differ)."""
    out: dict[str, dict[str, float]] = {}
    for key in sorted({f"{t.family}/{t.difficulty}" for t in tasks}):
        idx = [i for i, t in enumerate(tasks) if f"{t.family}/{t.difficulty}" == key]
        out[key] = {"n": len(idx)}
        out[key].update(
            {tier: round(sum(ok[i] for i in idx) / len(idx), 3) for tier, ok in right.items()}
        )
    return out


def report(
    split: str = "test", seed: int = 0, n: int = 1000, root: Path | str | None = None
) -> dict[str, Any]:
    """Accuracy of each zoo model on a fresh sample of a split, and the cheap tier's AUROC.

    The default zoo is built first if needed; an explicit `root` must hold a built zoo (a tiny
    test zoo is not rebuilt to the default spec). The router's policies come from
    `RouterWithHead`, the code serving routes with, so this measures what is served.
    """
    from sklearn.metrics import roc_auc_score

    from models.router_model import RouterWithHead

    root = ensure_zoo() if root is None else require_zoo(root)
    tasks = sample(split, n, seed=seed)
    judged = {tier: _judged(root, tier, tasks) for tier in ("cheap", "mid", "strong")}
    right = {tier: [j == Judgement.correct for j in js] for tier, (js, _) in judged.items()}
    cheap_ok, mean_lp = right["cheap"], judged["cheap"][1]
    truth = [
        true_policy(c, s).value
        for c, s in zip(judged["cheap"][0], judged["strong"][0], strict=True)
    ]
    # The policy is the argmax, which the confidence head does not change: skip loading it.
    predicted = RouterWithHead(root / "router", load_head=False)([t.prompt for t in tasks]).policies
    auroc = roc_auc_score(cheap_ok, mean_lp) if 0 < sum(cheap_ok) < n else None
    return {
        "split": split,
        "seed": seed,
        "n": n,
        "cheap": {
            "accuracy": sum(cheap_ok) / n,
            "logprob_auroc": None if auroc is None else float(auroc),
        },
        "mid": {"accuracy": sum(right["mid"]) / n},
        "strong": {"accuracy": sum(right["strong"]) / n},
        "router": {
            "accuracy": sum(p == t for p, t in zip(predicted, truth, strict=True)) / n,
            "complex_rate_true": truth.count("complex") / n,
            "complex_rate_predicted": predicted.count("complex") / n,
        },
        "by_family_level": _by_level(tasks, right),
    }


# --- command line ---------------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m models.zoo",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True)
    b = sub.add_parser("build", help="train the zoo (only what is missing or out of date)")
    b.add_argument("--dir", type=Path, default=None, help="target folder (default: zoo_dir())")
    b.add_argument("--force", action="store_true", help="retrain every model, then re-derive")
    r = sub.add_parser("report", help="accuracy and AUROC of the zoo on a split")
    r.add_argument("--split", default="test")
    r.add_argument("--seed", type=int, default=0)
    r.add_argument("--n", type=int, default=1000)
    r.add_argument("--json", action="store_true")
    return parser


def main(argv: list[str] | None = None) -> None:
    """`build` prints the manifest's timings (seconds per model, models, derived, total);
    `report` prints `report()` (one line with --json)."""
    import torch

    torch.set_num_threads(max(1, min(os.cpu_count() or 1, 4)))
    args = _parser().parse_args(argv)
    if args.command == "build":
        root = Path(args.dir or zoo_dir())
        if args.force and (root / MANIFEST_FILE).exists():
            (root / MANIFEST_FILE).unlink()  # no record: every model is retrained
        ensure_zoo(root, derived=True)
        print(json.dumps(json.loads((root / MANIFEST_FILE).read_text())["seconds"]))
    else:
        result = report(args.split, args.seed, args.n)
        print(json.dumps(result, indent=None if args.json else 2))


if __name__ == "__main__":
    main()
