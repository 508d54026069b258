"""Run the real Serve graph in-process on a local Ray instance (tests and benchmarks).

    with running_app(AppArgs.from_serve_config("serve_config.yaml")) as (base_url, metrics):

The args carry the file's `deployments:` list (`deployment_options`), so the graph started
here is the one `serve run` would start.

`serve.run` in-process (not a backgrounded `serve run`, which inherits an ignored SIGINT and
cannot be stopped cleanly), with `RAY_ENV` (token auth off, Serve's throughput mode).
"""

from __future__ import annotations

import os
import socket
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx

from calibration.config import AppArgs

REPO = Path(__file__).resolve().parents[1]

__all__ = ["RAY_ENV", "WORKER_ENV", "free_port", "ray_env", "running_app"]

# What the replicas' processes get (torch.compile off and one thread each: two cores shared by
# every replica), in `running_app`'s runtime_env and in the two-node cluster's environment.
WORKER_ENV = {
    "TORCHDYNAMO_DISABLE": "1",
    "OMP_NUM_THREADS": "1",
    "TOKENIZERS_PARALLELISM": "false",
}

# What every Ray process this project starts gets (tests, benchmarks, `make serve`, the
# two-node cluster): token auth off (Ray 2.60 turns it on by default; these clusters are
# local), and Serve's throughput-optimized mode (user code on each replica's own event loop,
# handle calls between replicas over gRPC, no separate router loop), less its direct ingress:
# with that on, `serve.shutdown()` waited 30 s for the controller every time (5 s without).
# Side by side with the bare app (`benchmarks overhead --quick`, 10 rounds each way, README)
# the median p50 over bare fell from +7.5 to +4.9 ms for model=cheap and from +14.8 to +11.8
# ms for an accepted cascade request, with overlapping ranges. Set before Ray starts: the
# proxy and the controller read it too, which no application runtime_env reaches.
RAY_ENV = {
    "RAY_AUTH_MODE": "disabled",
    "RAY_SERVE_THROUGHPUT_OPTIMIZED": "1",
    "RAY_SERVE_ENABLE_DIRECT_INGRESS": "0",
}


def ray_env() -> None:
    """`RAY_ENV` set in this process's environment (unless the caller set those names
    already), so a Ray started from here inherits it."""
    for name, value in RAY_ENV.items():
        os.environ.setdefault(name, value)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def running_app(
    args: AppArgs | dict,
    num_cpus: int = 2,
    wait_s: float = 240,
    quiet: bool = False,
    extra_apps: dict[str, tuple[Any, str]] | None = None,
):
    """Yield (base_url, metrics_url) of the graph built from `args`; shut everything down after.

    Ray's own files go where Ray puts them (/tmp/ray); pass RAY_TMPDIR to move them. `quiet`
    keeps the replicas' logs out of this process's output (they stay in Ray's log files), for
    benchmarks whose tables should not drown in engine start-up lines. `extra_apps` ({name:
    (bound application, route prefix)}) run beside the graph in the same cluster, behind the
    same proxy: a benchmark's bare reference, measured side by side."""
    import ray
    from ray import serve

    from deployments.app import build_app

    args = args if isinstance(args, AppArgs) else AppArgs.model_validate(args)
    ray_env()
    port, metrics_port = free_port(), free_port()
    ray.init(
        address="local",
        num_cpus=num_cpus,
        include_dashboard=False,
        _metrics_export_port=metrics_port,
        _system_config={"metrics_report_interval_ms": 1000},
        runtime_env={"env_vars": dict(WORKER_ENV)},
        logging_level="WARNING",
        log_to_driver=not quiet,
    )
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        serve.run(build_app(args), name="cascade", route_prefix="/", blocking=False)
        for name, (app, prefix) in (extra_apps or {}).items():
            serve.run(app, name=name, route_prefix=prefix, blocking=False)
        base = f"http://127.0.0.1:{port}"
        deadline = time.time() + wait_s
        while True:
            try:
                if httpx.get(f"{base}/healthz", timeout=5).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.time() > deadline:
                raise TimeoutError(f"the app did not become healthy in {wait_s} s")
            time.sleep(1)
        yield base, f"http://127.0.0.1:{metrics_port}/metrics"
    finally:
        serve.shutdown()
        ray.shutdown()
