"""`collect`: every tier of a config answers every data set item once, through the engines
serving uses, with the top-k logprobs the cascade decides from.

    python -m calibration collect --config serve_config.yaml --data items.jsonl --out traces/
    python -m calibration collect --config serve_config.yaml --data items.jsonl --out traces/ \
        --endpoint http://127.0.0.1:8000 [--api-key-env CASCADE_API_KEY]

Same engine (`models.loading.load_engine`), same rendering (`models.prompting`), same decoding
(greedy, `limits.default_max_tokens`, `limits.top_logprobs`) as a served request without
sampling options, so the scores calibrated on these traces are the scores serving computes.
Batches go to the engine whole (vLLM schedules them continuously, transformers pads them into
one forward pass); each finished batch is appended to disk, so an interrupted run resumes
where it stopped.

With `--endpoint` nothing is loaded here: each tier answers through a running service (this
project's ingress, each tier forced by `model=<tier>`, or any OpenAI-compatible server), for
tiers that exist only behind an API; `offline.collect_endpoint` says how the identity recorded
with those answers is obtained and checked.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tqdm import tqdm

from calibration.config import AppArgs, TierArgs
from calibration.dataset import DatasetItem
from calibration.identity import TierIdentity
from models.engine import Engine, SamplingSettings
from models.identity import served_settings, tier_identity
from models.loading import engine_kind, load_engine
from models.prompting import render_prompt
from offline.traces import TraceStore

__all__ = ["CollectReport", "TierSource", "collect"]


@dataclass(frozen=True)
class CollectReport:
    tier: str
    identity: TierIdentity
    collected: int
    reused: int
    seconds: float

    @property
    def items_per_s(self) -> float:
        return self.collected / self.seconds if self.seconds > 0 else float("nan")


@dataclass(frozen=True)
class TierSource:
    """Where one tier's answers come from: its identity, how to open its engine, and how an
    item becomes that engine's request (a rendered prompt here; chat or prompt at an API)."""

    name: str
    identity: TierIdentity
    open: Callable[[], Engine]
    render: Callable[[Engine, DatasetItem], Any]


def collect(
    args: AppArgs,
    items: list[DatasetItem],
    out: str | Path,
    *,
    data: str,
    batch: int = 32,
    tiers: list[str] | None = None,
    progress: bool = True,
    sources: list[TierSource] | None = None,
) -> list[CollectReport]:
    """Answer every item with every (chosen) tier; returns per-tier counts and throughput.

    `sources` replaces the local engines (`offline.collect_endpoint.collect_through` passes
    a running service's tiers, their identities already checked)."""
    store = TraceStore(out)
    settings = served_settings(args)
    ladder = [t.name for t in args.tiers]
    if sources is None:
        chosen = [t for t in args.tiers if not tiers or t.name in tiers]
        sources = [_local_source(args, t, settings) for t in chosen]
    reports = []
    for source in sources:
        store.record(data, source.name, source.identity, ladder)
        todo = _missing(store, source.name, source.identity, items)
        seconds = _answer(store, source, todo, settings, batch, progress) if todo else 0.0
        reports.append(
            CollectReport(source.name, source.identity, len(todo), len(items) - len(todo), seconds)
        )
    return reports


def _local_source(args: AppArgs, tier: TierArgs, settings: SamplingSettings) -> TierSource:
    kwargs = args.engine_kwargs(tier.name)
    return TierSource(
        name=tier.name,
        identity=tier_identity(tier, settings, engine_kind(tier.engine)),
        open=lambda: load_engine(tier.engine, tier.model, **kwargs),
        render=_render,
    )


def _answer(
    store: TraceStore,
    source: TierSource,
    todo: list[DatasetItem],
    settings: SamplingSettings,
    batch: int,
    progress: bool,
) -> float:
    """Open the tier's engine, answer `todo` batch by batch (each appended as it is done)."""
    engine = source.open()
    loop = asyncio.new_event_loop()  # an AsyncLLM lives on the loop of its first request
    try:
        started = time.perf_counter()
        with tqdm(total=len(todo), desc=f"collect {source.name}", disable=not progress) as bar:
            for i in range(0, len(todo), batch):
                chunk = todo[i : i + batch]
                requests = [source.render(engine, item) for item in chunk]
                gens = loop.run_until_complete(engine.generate(requests, settings))
                store.append_answers(
                    source.name, source.identity, zip((c.id for c in chunk), gens, strict=True)
                )
                bar.update(len(chunk))
        return time.perf_counter() - started
    finally:
        close_engine(engine, loop)


def _missing(
    store: TraceStore, tier: str, identity: TierIdentity, items: list[DatasetItem]
) -> list[DatasetItem]:
    done = store.done_ids(tier, identity)
    return [item for item in items if item.id not in done]


def close_engine(engine: Engine, loop: asyncio.AbstractEventLoop) -> None:
    """Stop the engine, then let its loop's leftover tasks (vLLM's output handler) finish."""
    shutdown = getattr(engine, "shutdown", None)
    if shutdown is not None:
        shutdown()
    pending = asyncio.all_tasks(loop)
    for task in pending:
        task.cancel()
    if pending:
        loop.run_until_complete(asyncio.wait(pending))
    loop.close()


def _render(engine: Engine, item: DatasetItem) -> str:
    messages = [m.model_dump() for m in item.messages] if item.messages else None
    return render_prompt(engine.tokenizer, prompt=item.prompt, messages=messages)
