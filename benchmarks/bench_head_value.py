"""The confidence head's value in money: the served cascade (router + confidence head + the
zoo's artifact, serve_config.yaml) against the same cascade with the router's verdict alone,
at equal accuracy (`offline.head_value`), on the zoo's test split at each seed.

    python -m benchmarks head-value [--seeds 0 1 2] [--n 1000] [--json]

The verdict-alone variant is calibrated and matched on the data the zoo's artifact was made
on (calibration split seed 0, n 2000; fit: validation n 1000), so both sides are fixed before
any test split is seen. The design's claim to check: a 20% cost reduction. The `fitted gate`
column is the head's confidence gate with its threshold (and alpha) fitted on the same
calibration split, so it and verdict-alone are chosen the same way.
"""

from __future__ import annotations

import sys
from pathlib import Path

from benchmarks.served_zoo import ServedZoo, emit, served_parser
from benchmarks.tables import table

__all__ = ["cli", "main", "measure"]


def measure(
    config: Path, seeds: list[int], n: int, n_cal: int, n_fit: int, zoo: Path | None
) -> dict:
    """`offline.head_value.head_value` on the served config over the test split's seeds."""
    from offline.head_value import head_value

    served = ServedZoo.load(config, zoo)
    fit = served.split("validation", n_fit, 0)
    cal = served.split("calibration", n_cal, 0)
    tests = [served.split("test", n, s) for s in seeds]
    result = head_value(served.app.policy(), served.artifact, fit, cal, tests)
    return {"config": str(config), **result}


def _print(r: dict) -> None:
    rows = [
        [
            t["seed"],
            t["n"],
            f"{t['served']['accuracy']:.3f}",
            f"{t['verdict_alone']['accuracy']:.3f}",
            f"{t['fitted_gate']['accuracy']:.3f}",
            f"{t['served']['cost']:.3f}",
            f"{t['verdict_alone']['cost']:.3f}",
            f"{t['fitted_gate']['cost']:.3f}",
            f"{100 * t['cost_reduction']:.1f}%",
            f"{100 * t['fitted_gate_cost_reduction']:.1f}%",
        ]
        for t in r["tests"]
    ]
    s, v = r["served_on_calibration"], r["verdict_alone_on_calibration"]
    print(
        table(
            f"Head vs verdict alone at equal accuracy (verdict alone: {r['verdict_alone_mode']} "
            f"alpha {r['verdict_alone_alpha']:g}, matched on calibration: acc {v['accuracy']:.3f} "
            f"vs served {s['accuracy']:.3f}, matched={r['matched']})",
            [
                "seed",
                "n",
                "acc served",
                "acc verdict",
                "acc fitted gate",
                "cost served",
                "cost verdict",
                "cost fitted gate",
                "saving served",
                "saving fitted gate",
            ],
            rows,
        )
    )
    g = r["fitted_gate_on_calibration"]
    print(
        f"fitted gate (on calibration): router threshold {g['router_threshold']:g}, "
        f"alpha {g['alpha']:g}, acc {g['accuracy']:.3f}, matched={g['matched']}"
    )
    print(
        f"mean cost reduction against verdict alone: served {100 * r['mean_cost_reduction']:.1f}%"
        f", fitted gate {100 * r['mean_fitted_gate_cost_reduction']:.1f}% "
        f"(design: {100 * r['design_claim']:.0f}%); costs: / always-strong on the same requests"
    )


def main(argv: list[str] | None = None) -> dict:
    p = served_parser(__doc__)
    p.add_argument("--n-cal", type=int, default=2000, help="calibration requests (the zoo's)")
    p.add_argument("--n-fit", type=int, default=1000, help="fit requests (the zoo's)")
    a = p.parse_args(argv)
    return emit(a, measure(a.config, a.seeds, a.n, a.n_cal, a.n_fit, a.zoo), _print)


def cli(argv: list[str]) -> None:
    main(argv)


if __name__ == "__main__":
    cli(sys.argv[1:])
