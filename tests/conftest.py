"""Shared fixtures: the embedded zoo (built once by `make zoo`, or here on first use)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("RAY_AUTH_MODE", "disabled")


@pytest.fixture(scope="session")
def zoo() -> Path:
    """The built zoo folder (cheap/, strong/, router/)."""
    from models.zoo import ensure_zoo

    return ensure_zoo()


@pytest.fixture(scope="session")
def hf_cheap(zoo):
    from models.hf_engine import HFEngine

    return HFEngine(str(zoo / "cheap"))
