"""What the cascade graph adds to one request, against the bare reference in the same run:

    python -m benchmarks overhead [--rounds 3] [--n 40] [--engine auto] [--quick] [--json]

Arms, one client, interleaved prompt by prompt (the order rotates each prompt) for `--rounds`
rounds: `bare` (the cheap model in a one-deployment app), `forced` (the graph, model=cheap:
proxy, ingress, tier), `forced_strong` (model=strong: the strong tier's own time) and
`cascade` (model=cascade), whose requests are told apart by their routing record into
`cascade_accept` (the cheap answer kept), `cascade_escalate` (cheap, then strong) and
`cascade_direct` (the router sent it straight to the top); and the floor, `hop0` and `hop1`
(`benchmarks.hop_floor`: no model, no hop and one Serve hop). `--json` prints each arm's
`p50_ms`, `p95_ms`, `n` over all rounds, and per round the p50 differences against `bare`,
one hop's price (`hop_ms`: hop1 - hop0) and what each graph arm adds beyond the hops its path
crosses that the bare app's does not (`beyond_hops_ms`: p50 - bare - hops x hop_ms).
"""

from __future__ import annotations

import time

import httpx

from benchmarks.side_by_side import Arms, arms_parser, chat, percentiles, report, spread
from benchmarks.tables import table
from models.tasks import sample

__all__ = ["cli", "main"]

SENT = {
    "bare": "bare",
    "forced": "cheap",
    "forced_strong": "strong",
    "cascade": "cascade",
    "hop0": "hop0",
    "hop1": "hop1",
}
REPORTED = ("bare", "forced", "forced_strong", "cascade_accept", "cascade_escalate")
# Serve hops each arm's path crosses beyond the bare app's proxy -> replica: the ingress's
# call to each tier it visits and, for model=cascade, to the router first.
EXTRA_HOPS = {
    "forced": 1,
    "forced_strong": 1,
    "cascade_accept": 2,
    "cascade_escalate": 3,
    "cascade_direct": 2,
}


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
            hop = stats["hop1"]["p50_ms"] - stats["hop0"]["p50_ms"]
            over = {name: s["p50_ms"] - bare for name, s in stats.items()}
            per_round.append(
                {
                    "round": k,
                    **{name: s for name, s in stats.items()},
                    "p50_minus_bare_ms": {name: round(d, 2) for name, d in over.items()},
                    "hop_ms": round(hop, 2),
                    "beyond_hops_ms": {
                        name: round(over[name] - hops * hop, 2)
                        for name, hops in EXTRA_HOPS.items()
                        if name in over
                    },
                }
            )
    out = {"engine": arms.engine, "rounds": rounds, "prompts": n}
    out.update({name: percentiles(xs) for name, xs in sorted(pooled.items())})
    out["per_round"] = per_round
    return out


def _print(result: dict) -> None:
    rows = []
    rounds = result["per_round"]
    for name in (*REPORTED, "cascade_direct", "hop0", "hop1"):
        if name not in result:
            continue
        diffs = [r["p50_minus_bare_ms"][name] for r in rounds if name in r]
        beyond = [r["beyond_hops_ms"][name] for r in rounds if name in r["beyond_hops_ms"]]
        s = result[name]
        rows.append(
            [
                name,
                s["n"],
                s["p50_ms"],
                s["p95_ms"],
                spread(diffs) if name != "bare" else "-",
                EXTRA_HOPS.get(name, "-"),
                spread(beyond) if beyond else "-",
            ]
        )
    title = (
        f"overhead: engine {result['engine']}, {result['rounds']} interleaved rounds of "
        f"{result['prompts']} prompts, 1 client; one Serve hop (hop1 - hop0) "
        f"{spread([r['hop_ms'] for r in rounds])} ms"
    )
    header = [
        "arm",
        "n",
        "p50 ms",
        "p95 ms",
        "p50 - bare, ms: median (range) over rounds",
        "hops beyond bare",
        "beyond those hops, ms",
    ]
    print(table(title, header, rows))


def main(argv: list[str] | None = None) -> dict:
    p = arms_parser("python -m benchmarks overhead", __doc__, "2 rounds of 15 prompts")
    p.add_argument("--n", type=int, default=40, help="prompts per round (default 40)")
    a = p.parse_args(argv)
    rounds, n = (2, 15) if a.quick else (a.rounds, a.n)
    return report(a, lambda arms: measure(arms, rounds, n), _print)


def cli(argv: list[str]) -> None:
    main(argv)
