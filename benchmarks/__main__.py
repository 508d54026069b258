"""All benchmarks, printed as tables: `make bench` (python -m benchmarks [--quick])."""

from __future__ import annotations

import sys

from benchmarks import bench_agreement, bench_feedback, bench_serving


def main() -> None:
    quick = "--quick" in sys.argv[1:]
    print("== feedback signal ==", flush=True)
    bench_feedback.main(["--repeat", "500"] if quick else [])
    print("\n== serving graph ==", flush=True)
    bench_serving.main(["--quick"] if quick else [])
    print("\n== serving vs offline evaluation ==", flush=True)
    bench_agreement.main(["--n", "100"] if quick else [])


if __name__ == "__main__":
    main()
