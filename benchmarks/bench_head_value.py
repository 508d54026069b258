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

import argparse
import json
import sys
from pathlib import Path

from benchmarks.tables import table
from calibration.config import SERVE_CONFIG, AppArgs

__all__ = ["cli", "main", "measure"]


def measure(
    config: Path, seeds: list[int], n: int, n_cal: int, n_fit: int, zoo: Path | None
) -> dict:
    """`offline.head_value.head_value` on the served config over the test split's seeds."""
    from models.served_calibration import served_artifact
    from offline.head_value import head_value
    from offline.replay import load_split
    from offline.zoo_cli import ensure_zoo

    root = ensure_zoo(zoo)
    app = AppArgs.from_serve_config(config)
    names = app.tier_names
    kw = {"root": root, "tiers": names, "allow_mismatch": app.calibration.allow_mismatch}
    fit = load_split("validation", n_fit, 0, **kw)
    cal = load_split("calibration", n_cal, 0, **kw)
    tests = [load_split("test", n, s, **kw) for s in seeds]
    result = head_value(app.policy(), served_artifact(app, root), fit, cal, tests)
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
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="test split seeds")
    p.add_argument("--n", type=int, default=1000, help="test requests per seed (default 1000)")
    p.add_argument("--n-cal", type=int, default=2000, help="calibration requests (the zoo's)")
    p.add_argument("--n-fit", type=int, default=1000, help="fit requests (the zoo's)")
    p.add_argument("--config", type=Path, default=SERVE_CONFIG, help="the served config")
    p.add_argument("--zoo", type=Path, default=None, help="zoo folder (default: models.zoo)")
    p.add_argument("--json", action="store_true")
    a = p.parse_args(argv)
    result = measure(a.config, a.seeds, a.n, a.n_cal, a.n_fit, a.zoo)
    if a.json:
        print(json.dumps(result, indent=2))
    else:
        _print(result)
    return result


def cli(argv: list[str]) -> None:
    main(argv)


if __name__ == "__main__":
    cli(sys.argv[1:])
