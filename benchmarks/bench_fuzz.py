"""API fuzzing of the running graph: at least `--n` generated requests, and no 5xx allowed.

    python -m benchmarks.bench_fuzz [--n 2000] [--config serve_config.yaml] [--json [PATH]]
    python -m benchmarks fuzz ...                       (the same)

Starts the graph of serve_config.yaml (vLLM tiers, the router) on a local Ray instance, then:

1. schemathesis, from the ingress's own /openapi.json (which carries this deployment's limits):
   valid and invalid requests for every operation, about half of `--n`;
2. hypothesis strategies for what no schema describes (`fuzz_cases`): edge values in valid
   bodies, non-object JSON, broken and deeply nested JSON, raw bytes under any content type,
   odd methods and paths, until `--n` requests in all.

Reports counts by status, by source, every 5xx (and every transport error) with its request,
and 4xx answers that are not an OpenAI error object. Exit status 1 when any request got a 5xx
or no response. Bounded by `--n` and `--max-minutes`.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import time
from collections import Counter
from pathlib import Path

import httpx

from benchmarks.fuzz_cases import RawRequest, raw_requests
from benchmarks.tables import table
from calibration.config import AppArgs
from deployments.local import REPO, running_app

__all__ = ["FuzzLog", "cli", "main"]


class FuzzLog:
    """Every request's source and status; the failures with their request, in full."""

    def __init__(self, deadline: float) -> None:
        self.deadline = deadline
        self.counts: Counter[tuple[str, str]] = Counter()  # (source, status)
        self.failures: list[dict] = []  # 5xx and transport errors
        self.not_openai: list[dict] = []  # 4xx without {"error": {...}}

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def out_of_time(self) -> bool:
        return time.perf_counter() > self.deadline

    def add(
        self, source: str, status: int | None, request: str, text: str, body: bool = True
    ) -> None:
        """One response; `body`: one is expected (a HEAD response has none)."""
        self.counts[(source, str(status) if status is not None else "no response")] += 1
        if status is None or status >= 500:
            self.failures.append(
                {"source": source, "status": status, "request": request, "response": text[:600]}
            )
        elif status >= 400 and body and len(self.not_openai) < 50 and not _is_error_object(text):
            self.not_openai.append(
                {"source": source, "status": status, "request": request, "response": text[:300]}
            )


def _is_error_object(text: str) -> bool:
    from deployments.protocol import ErrorResponse

    try:
        ErrorResponse.model_validate_json(text)
    except ValueError:
        return False
    return True


def _hypothesis_run(test, examples: int, seed: int) -> None:
    """Run a @given test for `examples` examples, generation only (no shrinking: a failure is
    logged, never raised), with a fresh seed per round."""
    from hypothesis import HealthCheck, Phase, settings
    from hypothesis import seed as with_seed

    configured = settings(
        max_examples=examples,
        deadline=None,
        database=None,
        phases=[Phase.generate],
        suppress_health_check=list(HealthCheck),
    )(test)
    with_seed(seed)(configured)()


def fuzz_schema(base: str, log: FuzzLog, budget: int, timeout: float) -> None:
    """schemathesis on /openapi.json: `budget` requests over the operations and both modes
    (operations without parameters have one form each and are asked only a few times)."""
    import schemathesis
    from hypothesis import given
    from hypothesis.errors import Unsatisfiable
    from schemathesis.generation import GenerationMode

    doc = httpx.get(f"{base}/openapi.json", timeout=30).json()
    ops = [r.ok() for r in schemathesis.openapi.from_dict(doc).get_all_operations()]
    bodies = [op for op in ops if op.method.upper() == "POST"]
    plan = [(op, mode) for op in ops for mode in GenerationMode]
    per = max(1, (budget - 4 * (len(ops) - len(bodies))) // max(1, 2 * len(bodies)))
    for op, mode in plan:
        want = per if op in bodies else 2
        source = f"schemathesis {mode.value} {op.method.upper()} {op.path}"
        for round_ in range(20):  # fresh seeds until `want` requests (or the space is exhausted)
            before = sum(v for (s, _), v in log.counts.items() if s == source)
            if before >= want or log.out_of_time():
                break

            check = given(case=op.as_strategy(generation_mode=mode))(
                _caller(base, log, source, timeout)
            )
            with contextlib.suppress(Unsatisfiable):  # a GET without parameters has no bad form
                _hypothesis_run(check, want - before, seed=round_)
            if sum(v for (s, _), v in log.counts.items() if s == source) == before:
                break


def _caller(base: str, log: FuzzLog, source: str, timeout: float):
    """The test body for one operation's cases: call, log, never raise."""

    def check(case) -> None:
        request = case.as_curl_command()
        try:
            r = case.call(base_url=base, timeout=timeout)
        except Exception as e:  # the server dropped the connection
            log.add(source, None, request, repr(e))
            return
        log.add(source, r.status_code, request, r.text)

    return check


def fuzz_raw(base: str, log: FuzzLog, n: int, timeout: float) -> None:
    """`fuzz_cases.raw_requests` until the log holds `n` requests in all."""
    from hypothesis import given

    with httpx.Client(timeout=timeout) as client:

        @given(req=raw_requests())
        def check(req: RawRequest) -> None:
            if log.total >= n or log.out_of_time():
                return
            try:
                r = client.request(
                    req.method, base + req.path, headers=req.headers, content=req.content
                )
            except httpx.HTTPError as e:
                log.add(f"raw {req.family}", None, req.describe(), repr(e))
                return
            source, head = f"raw {req.family}", req.method == "HEAD"
            log.add(source, r.status_code, req.describe(), r.text, body=not head)

        for round_ in range(50):
            if log.total >= n or log.out_of_time():
                break
            _hypothesis_run(check, n - log.total, seed=1000 + round_)


def report(log: FuzzLog, wall: float) -> dict:
    statuses = Counter()
    sources: dict[str, Counter] = {}
    for (source, status), v in log.counts.items():
        statuses[status] += v
        sources.setdefault(source, Counter())[status] += v
    return {
        "requests": log.total,
        "wall_s": wall,
        "statuses": dict(sorted(statuses.items())),
        "by_source": {s: dict(sorted(c.items())) for s, c in sorted(sources.items())},
        "server_errors": log.failures,
        "not_openai_4xx": log.not_openai,
    }


def render(r: dict) -> str:
    codes = sorted(r["statuses"])
    rows = [[s, sum(c.values()), *(c.get(k, 0) for k in codes)] for s, c in r["by_source"].items()]
    rows.append(["all", r["requests"], *(r["statuses"][k] for k in codes)])
    out = [
        table(
            f"API fuzzing: {r['requests']} requests in {r['wall_s']:.0f} s, by status",
            ["source", "requests", *codes],
            rows,
        )
    ]
    bad = r["server_errors"]
    out.append(f"\n5xx or no response: {len(bad)}" + ("" if bad else " (none)"))
    out += [
        f"- {f['status']} from {f['source']}: {f['request']}\n  -> {f['response'][:300]}"
        for f in bad
    ]
    if r["not_openai_4xx"]:
        out.append(f"4xx without an OpenAI error object: {len(r['not_openai_4xx'])}")
        out += [
            f"- {f['status']} {f['request'][:200]} -> {f['response'][:120]}"
            for f in r["not_openai_4xx"][:10]
        ]
    return "\n".join(out)


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--n", type=int, default=2000, help="generated requests, at least")
    p.add_argument("--schema-share", type=float, default=0.5, help="share from schemathesis")
    p.add_argument("--config", type=Path, default=REPO / "serve_config.yaml")
    p.add_argument("--timeout", type=float, default=60.0, help="per request, s")
    p.add_argument("--max-minutes", type=float, default=60.0)
    p.add_argument("--url", default=None, help="a running service; default: start one here")
    p.add_argument("--json", nargs="?", const="-", default=None, help="JSON to PATH (- stdout)")
    a = p.parse_args(argv)
    app = AppArgs.from_serve_config(a.config)
    started = (
        contextlib.nullcontext((a.url, None)) if a.url else running_app(app, wait_s=400, quiet=True)
    )
    with started as (base, _):
        t0 = time.perf_counter()
        log = FuzzLog(t0 + a.max_minutes * 60)
        fuzz_schema(base, log, int(a.n * a.schema_share), a.timeout)
        fuzz_raw(base, log, a.n, a.timeout)
        r = report(log, time.perf_counter() - t0)
        r["healthz_after"] = httpx.get(f"{base}/healthz", timeout=30).status_code
    print(render(r), flush=True)
    if a.json == "-":
        print(json.dumps(r, indent=2))
    elif a.json:
        Path(a.json).write_text(json.dumps(r, indent=2) + "\n")
    return r


def cli(argv: list[str]) -> None:
    """As a program: exit status 1 when any request got a 5xx or no response."""
    result = main(argv)
    sys.exit(1 if result["server_errors"] else 0)


if __name__ == "__main__":
    cli(sys.argv[1:])
