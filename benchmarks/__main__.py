"""All benchmarks, printed as tables: `make bench` (python -m benchmarks [--quick]
[--soak-minutes M]). The soak runs 5 minutes here (2 with --quick); `--soak-minutes 30` is
issue 12's full soak (a replica killed every 5 minutes). One benchmark alone, with its own
options: `python -m benchmarks <name>`, name one of soak, fuzz, overhead, throughput, cluster,
head-value, frontier, gpu-router, gpu-vllm (see `SUBCOMMANDS`; the last two are GPU checks,
run by scripts/gpu_check.sh)."""

from __future__ import annotations

import importlib
import sys

from benchmarks import bench_agreement, bench_drift, bench_feedback, bench_serving

# `python -m benchmarks <name> [options]`: that module's `cli(options)` alone.
SUBCOMMANDS = {
    "soak": "benchmarks.bench_soak",
    "fuzz": "benchmarks.bench_fuzz",
    "overhead": "benchmarks.bench_overhead",
    "throughput": "benchmarks.bench_throughput",
    "cluster": "benchmarks.bench_cluster",
    "head-value": "benchmarks.bench_head_value",
    "frontier": "benchmarks.bench_frontier",
    # not in `make bench`: sized for a GPU (scripts/gpu_check.sh); `--size tiny` runs on a CPU
    "gpu-router": "benchmarks.bench_gpu_router",
    "gpu-vllm": "benchmarks.bench_gpu_vllm",
}


def _soak_and_fuzz(quick: bool) -> None:
    """The soak (minutes from --soak-minutes; a kill every 5 minutes at 30, proportionally
    more often in shorter runs) and the API fuzzing; a 5xx from the fuzzing fails the run."""
    argv = sys.argv[1:]
    minutes = float(argv[argv.index("--soak-minutes") + 1]) if "--soak-minutes" in argv else 0
    minutes = minutes or (2.0 if quick else 5.0)
    kill_every = min(300.0, max(30.0, minutes * 12))
    print(f"\n== soak: {minutes:g} min of mixed load, a replica killed every {kill_every:g} s ==")
    soak = importlib.import_module("benchmarks.bench_soak")
    soak.main(["--minutes", f"{minutes:g}", "--kill-every", f"{kill_every:g}"])
    print("\n== API fuzzing ==", flush=True)
    fuzz = importlib.import_module("benchmarks.bench_fuzz").main(
        ["--n", "500" if quick else "2000"]
    )
    if fuzz["server_errors"]:
        sys.exit(f"API fuzzing: {len(fuzz['server_errors'])} request(s) got a 5xx (listed above)")


def main() -> None:
    if sys.argv[1:] and sys.argv[1] in SUBCOMMANDS:
        importlib.import_module(SUBCOMMANDS[sys.argv[1]]).cli(sys.argv[2:])
        return
    quick = "--quick" in sys.argv[1:]
    print("== feedback signal ==", flush=True)
    bench_feedback.main(["--repeat", "500"] if quick else [])
    print("\n== serving graph ==", flush=True)
    bench_serving.main(["--quick"] if quick else [])
    print("\n== the graph against a bare Ray Serve app, same engine, interleaved ==", flush=True)
    importlib.import_module("benchmarks.bench_overhead").main(["--quick"] if quick else [])
    importlib.import_module("benchmarks.bench_throughput").main(["--quick"] if quick else [])
    print("\n== past one machine: a two-node cluster, serve deploy ==", flush=True)
    importlib.import_module("benchmarks.bench_cluster").main(["--rounds", "1" if quick else "2"])
    print("\n== the confidence head's value: head vs the router's verdict alone ==", flush=True)
    importlib.import_module("benchmarks.bench_head_value").main(["--seeds", "0"] if quick else [])
    print("\n== how close a threshold gets to the oracle, every seed at once ==", flush=True)
    importlib.import_module("benchmarks.bench_frontier").main([])
    print("\n== serving vs offline evaluation ==", flush=True)
    bench_agreement.main(["--n", "100"] if quick else [])
    print("\n== drift monitor on replayed traffic ==", flush=True)
    bench_drift.main(["--quick"] if quick else [])
    print("\n== adaptive conformal on shifted replays ==", flush=True)
    importlib.import_module("benchmarks.bench_adaptive").main(["--quick"] if quick else [])
    _soak_and_fuzz(quick)


if __name__ == "__main__":
    main()
