"""Shared fixtures: the embedded zoo (built once by `make zoo`, or here on first use)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

os.environ.setdefault("RAY_AUTH_MODE", "disabled")

_EXIT_STATUS: list[int] = []


def pytest_sessionfinish(session, exitstatus) -> None:
    _EXIT_STATUS.append(int(exitstatus))


@pytest.hookimpl(trylast=True)
def pytest_unconfigure(config) -> None:
    """Leave without the interpreter's teardown once pytest has reported.

    Why: after a session that loaded torch, vLLM's CPU kernels and Ray's core worker in one
    process, CPython's finalisation can crash in their native threads (CI once printed
    "476 passed" and then make reported a segmentation fault, exit 2). Every result, the
    summary and the cache are written by now, so `os._exit` with pytest's own status loses
    nothing and makes the status the tests' verdict, not the teardown's luck.
    CASCADE_TEST_SOFT_EXIT=1 keeps the normal teardown (to hunt the crash itself).
    """
    if _EXIT_STATUS and os.environ.get("CASCADE_TEST_SOFT_EXIT") != "1":
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(_EXIT_STATUS[-1])


@pytest.fixture(scope="session")
def zoo() -> Path:
    """The built default zoo folder (cheap/, mid/, strong/, router/ and the derived artifacts),
    built here (only what is missing) when `make zoo` has not run."""
    from offline.zoo_cli import ensure_zoo

    return ensure_zoo()


@pytest.fixture(scope="session")
def logprobs_only_artifact(zoo, tmp_path_factory) -> Path:
    """The zoo's artifact made the same way, but with quality estimators on the logprobs alone
    (no router evidence): for graphs that run with the router off."""
    from offline.zoo_artifacts import build_zoo_calibration

    out = tmp_path_factory.mktemp("logprobs_only") / "calibration.json"
    build_zoo_calibration(zoo, router_evidence=False, out=out)
    return out


@pytest.fixture(scope="session")
def hf_cheap(zoo):
    from models.hf_engine import HFEngine

    return HFEngine(str(zoo / "cheap"))


# A zoo small enough to build in seconds: for tests of code that needs real checkpoints of the
# zoo's shape, not its accuracy. `ensure_models(folder, spec)` builds it (no derived artifacts).
def _tiny_zoo_spec():
    from models.zoo_build import LMSpec, RouterSpec, ZooSpec

    return ZooSpec(
        seed=3,
        cheap=LMSpec(hidden=32, layers=1, heads=1, intermediate=64, steps=30, batch=16, lr=3e-3),
        strong=LMSpec(hidden=64, layers=1, heads=2, intermediate=64, steps=40, batch=16, lr=3e-3),
        router=RouterSpec(
            hidden=32, layers=1, heads=1, intermediate=64, label_queries=64, epochs=1
        ),
        mid=LMSpec(hidden=64, layers=1, heads=2, intermediate=32, steps=30, batch=16, lr=3e-3),
    )


@pytest.fixture(scope="module")
def tiny_zoo_spec():
    return _tiny_zoo_spec()


@pytest.fixture(scope="module")
def tiny_zoo(tmp_path_factory, tiny_zoo_spec):
    """A tiny zoo per test module (modules may copy or extend it); models only, so tests of
    `models/` need nothing from `offline/`."""
    from models.zoo_build import ensure_models

    root = tmp_path_factory.mktemp("zoo")
    ensure_models(root, tiny_zoo_spec)
    return root


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models gain nothing from threads; on a shared 2-core box 2 threads cost 40x.
    Use with `pytestmark = pytest.mark.usefixtures("one_thread")`."""
    import torch

    prev = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(prev)
