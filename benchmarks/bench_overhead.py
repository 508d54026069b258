"""What the cascade graph adds to one request, against the bare reference in the same run:

    python -m benchmarks overhead [--rounds 3] [--n 40] [--engine auto] [--quick] [--json]

Arms, one client, interleaved prompt by prompt (the order rotates each prompt) for `--rounds`
rounds: `bare` (the cheap model in a one-deployment app), `forced` (the graph, model=cheap:
proxy, ingress, tier), `forced_strong` (model=strong: the strong tier's own time) and
`cascade` (model=cascade), whose requests are told apart by their routing record into
`cascade_accept` (the cheap answer kept), `cascade_escalate` (cheap, then strong) and
`cascade_direct` (the router sent it straight to the top). `--json` prints each arm's
`p50_ms`, `p95_ms`, `n` over all rounds, and per round the p50 differences against `bare`.
"""

from __future__ import annotations

import time

import httpx

from benchmarks.side_by_side import Arms, arms_parser, chat, percentiles, report, spread
from benchmarks.tables import table
from models.tasks import sample

__all__ = ["cli", "main"]

SENT = {"bare": "bare", "forced": "cheap", "forced_strong": "strong", "cascade": "cascade"}
REPORTED = ("bare", "forced", "forced_strong", "cascade_accept", "cascade_escalate")


def _cascade_arm(body: dict) -> str:
    visited = body["routing"]["tiers_visited"]
    if visited == ["cheap"]:
        return "cascade_accept"
    return "cascade_escalate" if visited[0] == "cheap" else "cascade_direct"


def _one_round(client: httpx.Client, arms: Arms, prompts: list[str], k: int) -> dict[str, list]:
    """Every prompt once through every arm, the arm order rotated by prompt."""
    lat: dict[str, list[float]] = {}
    order = list(SENT)
    for i, prompt in enumerate(prompts):
        for arm in order[(i + k) % len(order) :] + order[: (i + k) % len(order)]:
            t0 = time.perf_counter()
            r = client.post(arms.url(arm), json=chat(SENT[arm], prompt))
            dt = time.perf_counter() - t0
            r.raise_for_status()
            name = _cascade_arm(r.json()) if arm == "cascade" else arm
            lat.setdefault(name, []).append(dt)
    return lat


def measure(arms: Arms, rounds: int, n: int) -> dict:
    prompts = [t.prompt for t in sample("test", n, seed=21)]
    per_round, pooled = [], {}
    with httpx.Client(timeout=120) as client:
        _one_round(client, arms, prompts[:5], 0)  # warm every path once, not measured
        for k in range(rounds):
            lat = _one_round(client, arms, prompts, k)
            for name, xs in lat.items():
                pooled.setdefault(name, []).extend(xs)
            stats = {name: percentiles(xs) for name, xs in lat.items()}
            bare = stats["bare"]["p50_ms"]
            per_round.append(
                {
                    "round": k,
                    **{name: s for name, s in stats.items()},
                    "p50_minus_bare_ms": {
                        name: round(s["p50_ms"] - bare, 2) for name, s in stats.items()
                    },
                }
            )
    out = {"engine": arms.engine, "rounds": rounds, "prompts": n}
    out.update({name: percentiles(xs) for name, xs in sorted(pooled.items())})
    out["per_round"] = per_round
    return out


def _print(result: dict) -> None:
    rows = []
    for name in (*REPORTED, "cascade_direct"):
        if name not in result:
            continue
        diffs = [r["p50_minus_bare_ms"][name] for r in result["per_round"] if name in r]
        s = result[name]
        rows.append(
            [name, s["n"], s["p50_ms"], s["p95_ms"], spread(diffs) if name != "bare" else "-"]
        )
    title = (
        f"overhead: engine {result['engine']}, {result['rounds']} interleaved rounds of "
        f"{result['prompts']} prompts, 1 client"
    )
    header = ["arm", "n", "p50 ms", "p95 ms", "p50 - bare, ms: median (range) over rounds"]
    print(table(title, header, rows))


def main(argv: list[str] | None = None) -> dict:
    p = arms_parser("python -m benchmarks overhead", __doc__, "2 rounds of 15 prompts")
    p.add_argument("--n", type=int, default=40, help="prompts per round (default 40)")
    a = p.parse_args(argv)
    rounds, n = (2, 15) if a.quick else (a.rounds, a.n)
    return report(a, lambda arms: measure(arms, rounds, n), _print)


def cli(argv: list[str]) -> None:
    main(argv)
