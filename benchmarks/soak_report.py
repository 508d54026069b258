"""The soak's report: outcomes, kills and memory samples summed up (a JSON-able dict), and the
same as markdown tables.

An error or a lost request is marked `during_kill_of` (the killed deployment) when its time
span overlaps a kill window: from the kill to `KILL_GRACE_S` after the replacement was running
(to the end of the run when it never was). Nothing is dropped from the counts because of it;
the mark only says which failures the kills explain.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from typing import Any

import numpy as np

from benchmarks.replicas import still_running
from benchmarks.soak_workload import Outcome
from benchmarks.tables import table

__all__ = ["render", "summarize"]

KILL_GRACE_S = 10.0


def _pct(xs: list[float], q: float) -> float | None:
    return float(np.percentile(np.asarray(xs) * 1000, q)) if xs else None


def _windows(kills: list[dict], wall: float) -> list[tuple[float, float, str]]:
    out = []
    for k in kills:
        if "skipped" in k:
            continue
        done = k["replaced_after_s"]
        end = k["t"] + done + KILL_GRACE_S if done is not None else wall
        out.append((k["t"], end, k["deployment"]))
    return out


def _cut(o: Outcome) -> bool:
    return o.kind == "stream_cut" and o.verdict == "disconnected"


def _kinds(outcomes: list[Outcome]) -> dict[str, dict]:
    by: dict[str, list[Outcome]] = defaultdict(list)
    for o in outcomes:
        by[o.kind].append(o)
    rows = {}
    for kind, os_ in sorted(by.items()):
        verdicts = Counter(o.verdict for o in os_)
        # answered: ok, and the streams cut after their first chunk (time to that chunk)
        answered = [o.latency_s for o in os_ if o.verdict == "ok" or _cut(o)]
        rows[kind] = {
            "sent": len(os_),
            **{v: verdicts.get(v, 0) for v in ("ok", "error", "lost", "disconnected")},
            "p50_ms": _pct(answered, 50),
            "p99_ms": _pct(answered, 99),
            "statuses": dict(Counter(str(o.status) for o in os_ if o.status is not None)),
        }
    return rows


def _failures(outcomes: list[Outcome], windows: list[tuple[float, float, str]], t0: float):
    """Every error and lost request grouped by (kind, verdict, detail, the deployments whose
    kill windows it overlaps, joined by '+'; None outside every window)."""
    groups: Counter[tuple[str, str, str, str]] = Counter()
    for o in outcomes:
        if o.verdict not in ("error", "lost"):
            continue
        a, b = o.t0 - t0, o.t1 - t0
        during = [d for lo, hi, d in windows if a <= hi and b >= lo]
        groups[(o.kind, o.verdict, o.detail, "+".join(dict.fromkeys(during)))] += 1
    return [
        {"kind": k, "verdict": v, "detail": d, "during_kill_of": w or None, "n": n}
        for (k, v, d, w), n in sorted(groups.items())
    ]


def _memory(memory: dict[str, dict], t0: float, wall: float) -> tuple[list[dict], list[dict]]:
    """Per actor: RSS (its process + children) at its first and last sample, growth, peak, how
    its life relates to the run; and the children of killed replicas still running."""
    rows, orphans = [], []
    final = max((rec["last"].t - t0 for rec in memory.values()), default=wall)
    for _, rec in sorted(memory.items(), key=lambda kv: (kv[1]["actor"].deployment, kv[0])):
        first, last, actor = rec["first"], rec["last"], rec["actor"]
        start, end = first.t - t0, last.t - t0
        parts = [f"running from {start:.0f} s"] if start > 1.0 else []
        if rec["killed_at"] is not None:
            parts.append(f"killed at {rec['killed_at']:.0f} s")
        elif end < final - 1.0:
            parts.append(f"gone at {end:.0f} s, not killed")
        life = ", ".join(parts) or "whole run"
        rows.append(
            {
                "deployment": actor.deployment,
                "replica": actor.short,
                "pid": actor.pid,
                "seen_s": [round(start, 1), round(end, 1)],
                "rss_first_mib": round(first.total_mib, 1),
                "rss_last_mib": round(last.total_mib, 1),
                "growth_mib": round(last.total_mib - first.total_mib, 1),
                "peak_mib": round(rec["peak"], 1),
                "children_last_mib": round(last.children_mib, 1),
                "life": life,
            }
        )
        if rec["killed_at"] is not None:
            for pid, rss in still_running(last.children):
                orphans.append({"replica": actor.short, "pid": pid, "rss_mib": round(rss, 1)})
    return rows, orphans


def _lifecycle(seen: dict[str, dict], kills: list[dict]) -> dict[str, dict[str, int]]:
    """Replicas per deployment: there at the start, started during the run (replacements and
    autoscaling), killed here, and gone without a kill (downscaled, or replaced by Serve
    after failing health checks)."""
    killed = {k.get("name") for k in kills}
    final = max((s["last_s"] for s in seen.values()), default=0.0)
    out: dict[str, Counter] = defaultdict(Counter)
    for name, s in seen.items():
        c = out[s["deployment"]]
        c["at start"] += s["at_start"]
        c["started"] += not s["at_start"]
        c["never running"] += "running_s" not in s
        c["killed"] += name in killed
        c["gone, not killed"] += name not in killed and s["last_s"] < final - 1.0
    return {d: {k: c[k] for k in LIFE} for d, c in sorted(out.items())}


LIFE = ["at start", "started", "never running", "killed", "gone, not killed"]


def summarize(
    outcomes: list[Outcome],
    kills: list[dict],
    memory: dict[str, dict],
    seen: dict[str, dict],
    t0: float,
    wall: float,
    params: dict[str, Any],
) -> dict:
    windows = _windows(kills, wall)
    verdicts = Counter(o.verdict for o in outcomes)
    statuses = Counter(str(o.status) if o.status is not None else "none" for o in outcomes)
    five = [o for o in outcomes if o.status is not None and o.status >= 500]
    answered = [o.latency_s for o in outcomes if o.verdict == "ok" and o.kind != "bad"]
    mem_rows, orphans = _memory(memory, t0, wall)
    return {
        "params": {
            k: (str(v) if not isinstance(v, int | float | list) else v) for k, v in params.items()
        },
        "wall_s": wall,
        "requests": len(outcomes),
        "verdicts": {v: verdicts.get(v, 0) for v in ("ok", "error", "lost", "disconnected")},
        "statuses": dict(sorted(statuses.items())),
        "server_errors_5xx": len(five),
        "p50_ms": _pct(answered, 50),
        "p99_ms": _pct(answered, 99),
        "kinds": _kinds(outcomes),
        "failures": _failures(outcomes, windows, t0),
        "kills": [{k: v for k, v in e.items() if k != "running_names"} for e in kills],
        "replicas": _lifecycle(seen, kills),
        "memory": mem_rows,
        "orphans": orphans,
    }


def _ms(x: float | None) -> str:
    return "-" if x is None else f"{x:.0f}"


def _statuses(counts: dict[str, int]) -> str:
    return " ".join(f"{a}:{b}" for a, b in sorted(counts.items()))


def _kind_row(kind: str, s: dict) -> list:
    return [
        kind,
        s["sent"],
        s["ok"],
        s["error"],
        s["lost"],
        s["disconnected"],
        _ms(s["p50_ms"]),
        _ms(s["p99_ms"]),
        _statuses(s["statuses"]),
    ]


def _kill_row(k: dict) -> list:
    after = k.get("replaced_after_s")
    return [
        f"{k['t']:.0f}",
        k["deployment"],
        k.get("replica", k.get("skipped")),
        "-" if "skipped" in k else "never" if after is None else f"{after:.1f}",
        k.get("new_replica") or "-",
    ]


def _memory_row(m: dict) -> list:
    return [
        m["deployment"],
        m["replica"],
        m["pid"],
        f"{m['seen_s'][0]:.0f}-{m['seen_s'][1]:.0f}",
        m["rss_first_mib"],
        m["rss_last_mib"],
        f"{m['growth_mib']:+.1f}",
        m["peak_mib"],
        m["life"],
    ]


def _summary_tables(r: dict) -> list[str]:
    p, v = r["params"], r["verdicts"]
    during = sum(f["n"] for f in r["failures"] if f["during_kill_of"])
    head = ["requests", "ok", "errors", "lost", "disconnected on purpose", "5xx"]
    head += ["errors+lost during kills", "req/s", "p50 ms", "p99 ms"]
    row = [r["requests"], v["ok"], v["error"], v["lost"], v["disconnected"]]
    drain = max(0.0, r["wall_s"] - 60 * p["minutes"])
    row += [r["server_errors_5xx"], during, f"{r['requests'] / (60 * p['minutes']):.1f}"]
    row += [_ms(r["p50_ms"]), _ms(r["p99_ms"])]
    title = (
        f"Soak: {p['clients']} clients x {p['minutes']:g} min of load (+{drain:.0f} s for the "
        f"last requests), a replica killed every {p['kill_every']:g} s "
        f"({_file_name(p['config'])}); latency: ok answers, bad input aside"
    )
    kinds = [_kind_row(k, s) for k, s in r["kinds"].items()]
    out = [
        table(title, head, [row]),
        table(
            "Requests by kind (latency: ok answers; stream_cut: to the first chunk)",
            [
                "kind",
                "sent",
                "ok",
                "errors",
                "lost",
                "disconnected",
                "p50 ms",
                "p99 ms",
                "statuses",
            ],
            kinds,
        ),
        f"\nresponses by status: {_statuses(r['statuses'])}",
    ]
    if r["failures"]:
        rows = [
            [f["kind"], f["verdict"], f["n"], f["during_kill_of"] or "-", f["detail"]]
            for f in r["failures"]
        ]
        out.append(
            table(
                "Errors and lost requests (during kill of: overlapping that kill's window)",
                ["kind", "verdict", "requests", "during kill of", "detail"],
                rows,
            )
        )
    return out


def _replica_tables(r: dict) -> list[str]:
    kills = [_kill_row(k) for k in r["kills"]]
    memory = [_memory_row(m) for m in r["memory"]]
    orphans = r["orphans"]
    left = f"\nprocesses left running by killed replicas: {len(orphans)}"
    if orphans:
        left += f" ({sum(o['rss_mib'] for o in orphans):.0f} MiB): {orphans}"
    return [
        table(
            "Replica kills",
            ["t (s)", "deployment", "killed", "replaced after (s)", "new replica"],
            kills or [["-"] * 5],
        ),
        table(
            "Replicas per deployment (started: replacements and autoscaling; gone, not "
            "killed: downscaled, or replaced by Serve after failed health checks)",
            ["deployment", *LIFE],
            [[d, *(c[k] for k in LIFE)] for d, c in r["replicas"].items()],
        ),
        table(
            "Memory per Serve actor: RSS of its process + children (MiB), first and last sample",
            ["deployment", "replica", "pid", "seen (s)", "first", "last", "growth", "peak", "life"],
            memory,
        ),
        left,
    ]


def render(r: dict) -> str:
    out = _summary_tables(r) + _replica_tables(r)
    if "after" in r:
        a = r["after"]
        out.append(f"after the soak: /readyz {a['readyz']}, a cascade request {a['cascade']}")
    return "\n".join(out)


def _file_name(path: str) -> str:
    return str(path).rsplit("/", 1)[-1]
