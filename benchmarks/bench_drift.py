"""The drift monitor on replayed traffic: how fast it fires on a shift, how often it does not.

The zoo's held-out test split (seeds 0 and 1) is replayed through the served policy (the
serve config's ladder, router + confidence head and the zoo's artifact, by
`offline.served.replay_served`, i.e. `CascadeRun`), and each request's outcome is fed, in
stream order, to the same `calibration.drift.DriftMonitor` serving runs, with the serve config's
`drift` settings. Scenarios, R runs each:

    unshifted   random orders of the whole pool (no drift): any alarm is a false alarm
    shifted     `--shift-at` unshifted requests, then draws (with replacement) from one part of
                the pool only: the hardest task level, levels 2-3, one task family

Reported: the share of runs that alarm, the detection delay (requests after the shift until
the first alarm: median and range), alarms before the shift, and which test fired first.

    python -m benchmarks.bench_drift [--quick] [--json] [--runs 50] [--length 1000]
    python -m benchmarks.bench_drift --config serve_config.3tier.yaml   # two monitored tiers
"""

from __future__ import annotations

import argparse
import json
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from benchmarks.tables import table
from calibration.config import AppArgs, DriftArgs
from calibration.conformal import empirical
from calibration.drift import DriftMonitor, calibrated_answers
from models.served_calibration import served_artifact
from offline.replay import load_split
from offline.served import replay_served

__all__ = ["Pool", "load_pool", "main", "measure", "realised", "run_scenario"]


@dataclass(frozen=True)
class Pool:
    """Replayed requests by index: outcome, router verdict, task family and level, and (for
    the guarantee each scenario realises, which the monitor never sees) the labels."""

    outcomes: list
    verdicts: list
    families: np.ndarray
    levels: np.ndarray
    correct: dict[str, np.ndarray]  # tier -> (N,) that tier's answer is right


def load_pool(args: AppArgs, seeds: list[int], n: int) -> Pool:
    """The test split's requests of every seed, replayed through the served policy."""
    policy, artifact = args.policy(), served_artifact(args)
    outcomes, verdicts, families, levels = [], [], [], []
    correct: dict[str, list] = {t: [] for t in policy.tier_names}
    for seed in seeds:
        data = load_split("test", n, seed, tiers=policy.tier_names)
        outcomes += replay_served(policy, artifact, data).outcomes
        verdicts += data.router.policy if data.router is not None else [None] * data.n
        families += [t.family for t in data.tasks]
        levels += [t.difficulty for t in data.tasks]
        for t in policy.tier_names:
            correct[t] += list(data.correct[t])
    labels = {t: np.array(v) for t, v in correct.items()}
    return Pool(outcomes, verdicts, np.array(families), np.array(levels), labels)


def realised(pool: Pool, artifact, tiers: list[str], idx: np.ndarray) -> dict[str, float]:
    """Each calibrated tier's guaranteed quantity (`calibration.conformal.empirical`) on the
    requests `idx` that reach it: whether a scenario's shift breaks the guarantee."""
    out = {}
    for t, name in enumerate(tiers[:-1]):
        cal = artifact.tiers[name]
        rows = [
            (i, a.score) for i in idx for a in calibrated_answers(pool.outcomes[i]) if a.tier == t
        ]
        if cal.mode == "heuristic" or not rows:
            continue
        at = np.array([i for i, _ in rows])
        scores = np.array([score for _, score in rows])
        wrong, top = ~pool.correct[name][at], pool.correct[tiers[-1]][at]
        out[name] = empirical(cal.mode, scores, cal.threshold, wrong, top)
    return out


def _scenarios(pool: Pool) -> dict[str, np.ndarray | None]:
    """Scenario name -> the pool indices traffic shifts to (None: no shift)."""
    idx = np.arange(len(pool.outcomes))
    return {
        "unshifted": None,
        "level 3 only": idx[pool.levels == 3],
        "levels 2-3": idx[pool.levels >= 2],
        **{f"family {f} only": idx[pool.families == f] for f in ("add", "sub", "max", "rev")},
    }


def _stream(rng, pool: Pool, shifted: np.ndarray | None, length: int, shift_at: int):
    """One run's request indices: a random order of the pool, then (if shifted) draws from
    the shifted part only."""
    base = rng.permutation(len(pool.outcomes))
    base = np.resize(base, length)  # cycles only if the pool is shorter than a run
    if shifted is None:
        return base
    return np.concatenate([base[:shift_at], rng.choice(shifted, length - shift_at)])


def _one_run(
    args: AppArgs, artifact, pool: Pool, stream: np.ndarray
) -> tuple[int | None, str, float]:
    """Feed one stream; the request count of the first alarm (None: none), what fired
    first ('tier:test'), and the seconds spent in `observe`."""
    settings = args.drift.model_dump(exclude={"enabled"})
    monitor = DriftMonitor.from_artifact(artifact, args.policy(), **settings)
    t0 = time.perf_counter()
    for i in stream:
        looked = monitor.observe(pool.outcomes[i], pool.verdicts[i])
        for s in looked or ():
            if s.alarm:
                fired = min(
                    (r.p_value, f"{s.tier}:{name}")
                    for name, r in s.tests.items()
                    if r.p_value is not None
                )[1]
                return monitor.requests, fired, time.perf_counter() - t0
    return None, "", time.perf_counter() - t0


def run_scenario(
    args: AppArgs, artifact, pool: Pool, shifted, runs: int, length: int, shift_at: int, seed: int
) -> dict:
    """R runs of one scenario: alarm share, delays after the shift, what fired first."""
    alarms, delays, early, fired, seconds = 0, [], 0, Counter(), 0.0
    at = shift_at if shifted is not None else 0
    for r in range(runs):
        rng = np.random.default_rng([seed, r])
        first, what, dt = _one_run(args, artifact, pool, _stream(rng, pool, shifted, length, at))
        seconds += dt
        if first is None:
            continue
        alarms += 1
        fired[what] += 1
        if shifted is not None and first <= at:
            early += 1
        elif shifted is not None:
            delays.append(first - at)
    out = {
        "runs": runs,
        "alarmed": alarms,
        "alarm_rate": alarms / runs,
        "alarms_before_shift": early if shifted is not None else None,
        "pool": len(pool.outcomes) if shifted is None else len(shifted),
        "first_fired": dict(fired.most_common()),
        "us_per_request": 1e6 * seconds / max(1, runs * length),
    }
    if delays:
        out["delay"] = {
            "median": float(np.median(delays)),
            "min": int(min(delays)),
            "max": int(max(delays)),
            "detected": len(delays),
        }
    return out


def _rows(results: dict) -> list[list]:
    rows = []
    for name, r in results.items():
        d = r.get("delay")
        delay = f"{d['median']:.0f} [{d['min']}, {d['max']}]" if d else "-"
        top = next(iter(r["first_fired"]), "-")
        early = "-" if r["alarms_before_shift"] is None else r["alarms_before_shift"]
        got = ", ".join(f"{t} {v:.3f}" for t, v in r["realised"].items()) or "-"
        rows.append(
            [name, r["pool"], f"{r['alarmed']}/{r['runs']}", delay, early, top, _us(r), got]
        )
    return rows


def _us(r: dict) -> str:
    return f"{r['us_per_request']:.0f}"


def _targets(targets: dict) -> str:
    """'risk (cheap <= 0.02, mid <= 0.02)': what `realised` is compared against."""
    inner = ", ".join(f"{t} <= {alpha:g}" if alpha else t for t, (_, alpha) in targets.items())
    modes = sorted({mode for mode, _ in targets.values()})
    return f"{'/'.join(modes)} ({inner})"


def _parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks.bench_drift", description=__doc__)
    p.add_argument("--config", type=Path, default=None, help="serve config (default: the repo's)")
    p.add_argument("--runs", type=int, default=50, help="runs per scenario (R)")
    p.add_argument("--length", type=int, default=1000, help="requests per run")
    p.add_argument("--shift-at", type=int, default=300, help="unshifted requests before a shift")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1], help="test split seeds")
    p.add_argument("--n", type=int, default=1000, help="test requests per seed")
    p.add_argument("--seed", type=int, default=0, help="seed of the stream orders")
    p.add_argument("--only", nargs="+", default=None, help="run only these scenarios")
    for name in ("window", "min_samples", "alpha", "test_every"):
        kind = float if name == "alpha" else int
        flag = "--" + name.replace("_", "-")
        p.add_argument(flag, type=kind, default=None, help="override the config's drift setting")
    p.add_argument("--quick", action="store_true", help="10 runs of 600 requests, shift at 200")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    a = p.parse_args(argv)
    if a.quick:
        a.runs, a.length, a.shift_at = 10, 600, 200
    if not 0 < a.shift_at < a.length:
        raise SystemExit(f"--shift-at must be in (0, --length), got {a.shift_at}")
    return a


def _app_args(a: argparse.Namespace) -> AppArgs:
    """The serve config's args with the command line's drift overrides (validated)."""
    args = AppArgs.from_serve_config(a.config)
    names = ("window", "min_samples", "alpha", "test_every")
    over = {k: getattr(a, k) for k in names if getattr(a, k) is not None}
    return args.model_copy(update={"drift": DriftArgs(**{**args.drift.model_dump(), **over})})


def measure(a: argparse.Namespace) -> dict:
    """Every scenario, R runs each, with the guarantee each scenario's traffic realises."""
    args = _app_args(a)
    artifact = served_artifact(args)
    pool = load_pool(args, a.seeds, a.n)
    results = {}
    for name, idx in _scenarios(pool).items():
        if a.only and name not in a.only:
            continue
        results[name] = run_scenario(
            args, artifact, pool, idx, a.runs, a.length, a.shift_at, a.seed
        )
        everything = np.arange(len(pool.outcomes)) if idx is None else idx
        results[name]["realised"] = realised(pool, artifact, args.tier_names, everything)
    below_top = args.tier_names[:-1]
    return {
        "config": str(a.config or "serve_config.yaml"),
        "tiers": args.tier_names,
        "drift": args.drift.model_dump(),
        "runs": a.runs,
        "length": a.length,
        "shift_at": a.shift_at,
        "seeds": a.seeds,
        "targets": {t: (c.mode, c.alpha) for t, c in artifact.tiers.items() if t in below_top},
        "scenarios": results,
    }


def main(argv: list[str] | None = None) -> dict:
    a = _parse(argv)
    report = measure(a)
    if a.json:
        print(json.dumps(report))
        return report
    d = DriftArgs(**report["drift"])
    header = ["scenario", "pool", "alarmed", "delay med [min, max]", "before shift"]
    header += ["fired first", "us/request", f"realised {_targets(report['targets'])}"]
    title = (
        f"Drift monitor on replayed test traffic, {report['config']} ({a.runs} runs x "
        f"{a.length} requests, shift after {a.shift_at}; window {d.window}, min_samples "
        f"{d.min_samples}, alpha {d.alpha:g}, test every {d.test_every})"
    )
    print(table(title, header, _rows(report["scenarios"])))
    return report


if __name__ == "__main__":
    main()
