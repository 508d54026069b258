"""Run the real Serve graph in-process on a local Ray instance (tests and benchmarks).

    with running_app(AppArgs.from_serve_config("serve_config.yaml")) as (base_url, metrics):

The args carry the file's `deployments:` list (`deployment_options`), so the graph started
here is the one `serve run` would start.

`serve.run` in-process (not a backgrounded `serve run`, which inherits an ignored SIGINT and
cannot be stopped cleanly), Ray's token auth off, and Ray's files under a temp folder.
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

__all__ = ["free_port", "running_app"]


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
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    port, metrics_port = free_port(), free_port()
    ray.init(
        address="local",
        num_cpus=num_cpus,
        include_dashboard=False,
        _metrics_export_port=metrics_port,
        _system_config={"metrics_report_interval_ms": 1000},
        runtime_env={
            "env_vars": {
                "TORCHDYNAMO_DISABLE": "1",
                "OMP_NUM_THREADS": "1",
                "TOKENIZERS_PARALLELISM": "false",
            }
        },
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
