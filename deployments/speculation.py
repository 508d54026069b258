"""The cheapest tier's call, started while the router decides.

Why: the router's forward pass and its handle call sit in front of every cascade request
(about 11 ms of the 17 ms a kept cheap answer cost over a bare app, `benchmarks overhead`).
Most requests start at the cheapest tier anyway, so its call starts at once, beside the
router's; when the router (or a task floor) starts the request higher, the call is cancelled and
its answer never used. What it costs: the cheap tier's work on the requests the router sends up
(counted in `cascade_speculative_calls{outcome="dropped"}`, not charged in `routing.cost`, which
prices the calls whose answers the cascade used, as the offline evaluation does). Decisions are
unchanged: the same request reaches the same tier, only earlier. `router.speculate: true` turns
it on; it is off by default because it couples the tiers' autoscaling: every cascade request
reaches the cheap tier, so a load the router sends to the top tier scales the cheap tier too
(`tests/test_reload_autoscale_e2e.py` caught exactly that with it on).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable
from dataclasses import dataclass, field
from typing import Any

__all__ = ["Speculation"]


@dataclass
class Speculation:
    """A started call: keep it (await its answer) or drop it (cancel, never raise)."""

    call: asyncio.Future
    started: float = field(default_factory=time.perf_counter)

    @classmethod
    def start(cls, call: Awaitable[Any]) -> Speculation:
        return cls(asyncio.ensure_future(call))

    async def kept(self) -> tuple[Any, float]:
        """The call's result (or exception: the caller's own convention) and when it began."""
        return await self.call, self.started

    def drop(self) -> None:
        """Cancel it; an answer or error that arrives anyway is retrieved and ignored."""
        self.call.cancel()
        self.call.add_done_callback(_retrieve)


def _retrieve(call: asyncio.Future) -> None:
    with contextlib.suppress(BaseException):
        call.exception()
