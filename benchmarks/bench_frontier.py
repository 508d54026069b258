"""How close a threshold can bring the served cascade to the oracle, on every test seed at
once: the served policy (serve_config.yaml, the zoo's artifact) against the same policy with
its cheapest tier's threshold picked in hindsight, on each seed alone and one for all seeds
together (`offline.hindsight.one_threshold_for_all`).

    python -m benchmarks frontier [--seeds 0 1 2] [--n 1000] [--max-gap 0.02] [--json]

Both hindsight rows are picked on the test splits they are measured on: they are never served
and never results, only bounds. When even the one threshold picked on all seeds together
misses issue 13's cost bar (1.15x the oracle's at accuracy within 0.02 of always-strong), no
threshold fixed beforehand can meet it on every seed: the router and the quality estimator's
evidence is what limits the served cost, not the calibration.
"""

from __future__ import annotations

import sys
from pathlib import Path

from benchmarks.served_zoo import ServedZoo, emit, served_parser
from benchmarks.tables import table

__all__ = ["cli", "main", "measure"]


def measure(config: Path, seeds: list[int], n: int, max_gap: float, zoo: Path | None) -> dict:
    """`one_threshold_for_all` on the served config over the test split's seeds."""
    from offline.hindsight import one_threshold_for_all

    served = ServedZoo.load(config, zoo)
    tests = [served.split("test", n, s) for s in seeds]
    result = one_threshold_for_all(served.app.policy(), served.artifact, tests, max_gap)
    return {"config": str(config), "seeds": seeds, "n": n, **result}


def _cell(row: dict | None) -> str:
    if row is None:
        return "-"
    return f"{row['cost_vs_oracle']:.3f}x (gap {row['accuracy_gap']:.3f})"


def _print(r: dict) -> None:
    best, served, own = r["best"], r["served"], r["each_split_own"]
    rows = [
        [
            seed,
            _cell(served["splits"][k]),
            _cell(best["splits"][k]) if best else "-",
            _cell(own[k]),
            f"{own[k]['threshold']:.4g}" if own[k] else "-",
        ]
        for k, seed in enumerate(r["seeds"])
    ]
    common = f"{best['threshold']:.4g}" if best else "none keeps every seed within the gap"
    print(
        table(
            f"cost / oracle's at accuracy within {r['max_gap']:g} of always-strong, tier "
            f"{r['tier']}: served threshold {served['threshold']:.4g}; one threshold for all "
            f"seeds, picked on them: {common}",
            [
                "seed",
                "served",
                "one threshold, all seeds (hindsight)",
                "own threshold (hindsight)",
                "own threshold",
            ],
            rows,
        )
    )
    if best:
        print(f"best worst-case over the seeds: {best['worst_cost_vs_oracle']:.3f}x the oracle's")


def main(argv: list[str] | None = None) -> dict:
    p = served_parser(__doc__.split("\n\n")[0])
    p.add_argument("--max-gap", type=float, default=0.02, help="accuracy gap to always-strong")
    a = p.parse_args(argv)
    return emit(a, measure(a.config, a.seeds, a.n, a.max_gap, a.zoo), _print)


def cli(argv: list[str]) -> None:
    main(argv)


if __name__ == "__main__":
    cli(sys.argv[1:])
