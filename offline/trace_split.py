"""The user's labelled traces as the evaluation's `EvalSplit`s: fit, calibration, held-out.

Everything downstream (the quality estimator's fit, the per-tier router-conditional conformal
calibration, the served replay, the cost-quality table) takes an `EvalSplit`, so the user's
data goes through the code the zoo goes through: the zoo's splits are one source of
`EvalSplit`s, collected traces another.

Items are assigned to parts by a hash of (seed, id): stable when the file grows or is
reordered, independent of the content, and a different seed draws a different partition.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from calibration.config import AppArgs
from calibration.dataset import DatasetItem
from calibration.identity import TierIdentity, check_identities
from models.identity import configured_identities
from models.tasks import Judgement, Task
from offline.replay import EvalSplit, RouterRows, router_rows
from offline.traces import TraceStore

__all__ = ["PARTS", "TraceSplits", "part_of", "trace_splits"]

PARTS = ("fit", "calibration", "holdout")
DEFAULT_FRACTIONS = (0.4, 0.4, 0.2)


@dataclass(frozen=True)
class TraceSplits:
    fit: EvalSplit
    calibration: EvalSplit
    holdout: EvalSplit
    identities: dict[str, TierIdentity]
    mismatches: list[str]  # non-empty only under allow_mismatch


def part_of(item_id: str, seed: int, fractions: tuple[float, float, float]) -> str:
    h = hashlib.blake2b(f"{seed}:{item_id}".encode(), digest_size=8).digest()
    u = int.from_bytes(h, "big") / 2**64
    edge = 0.0
    for name, frac in zip(PARTS, fractions, strict=True):
        edge += frac
        if u < edge:
            return name
    return PARTS[-1]


def trace_splits(
    store: TraceStore,
    items: list[DatasetItem],
    app: AppArgs,
    *,
    seed: int = 0,
    fractions: tuple[float, float, float] = DEFAULT_FRACTIONS,
    allow_mismatch: bool = False,
) -> TraceSplits:
    """The labelled items every configured tier answered, in three parts. The traces must
    have been collected for the configured models (identity checked, IdentityMismatch)."""
    manifest = store.manifest()
    current = configured_identities(app)
    missing = [t for t in current if t not in manifest.tiers]
    if missing:
        raise ValueError(
            f"{store.root} has no traces of tier(s) {missing}; run collect with this config"
        )
    problems = check_identities(
        manifest.tiers,
        current,
        what=f"the trace set in {store.root}",
        allow_mismatch=allow_mismatch,
    )
    names = [t.name for t in app.tiers]
    answers = {t: store.answers(t, manifest.tiers[t]) for t in names}
    labels = {t: store.labels(t, manifest.tiers[t]) for t in names}
    usable = [i for i in items if all(i.id in answers[t] and i.id in labels[t] for t in names)]
    if not usable:
        raise ValueError(f"no item of the data set has answers and labels for every tier {names}")
    parts = {p: [i for i in usable if part_of(i.id, seed, fractions) == p] for p in PARTS}  # type: ignore[arg-type]
    router = _router_rows(app, usable, allow_mismatch or app.calibration.allow_mismatch)
    splits = {
        p: _split(p, seed, chosen, names, answers, labels, router, usable)
        for p, chosen in parts.items()
    }
    return TraceSplits(**splits, identities=current, mismatches=problems)


def _split(part, seed, chosen, names, answers, labels, router, usable) -> EvalSplit:
    index = {item.id: k for k, item in enumerate(usable)}
    rows = [index[i.id] for i in chosen]
    return EvalSplit(
        split=part,
        seed=seed,
        tasks=[_task(i) for i in chosen],
        tiers=names,
        answers={t: [answers[t][i.id] for i in chosen] for t in names},
        judgements={
            t: [Judgement.correct if labels[t][i.id].right else Judgement.incorrect for i in chosen]
            for t in names
        },
        router=None
        if router is None
        else RouterRows(
            [router.policy[k] for k in rows],
            router.p_complex[rows],
            router.confidence[rows],
            router.source,
        ),
    )


def _task(item: DatasetItem) -> Task:
    """The evaluation's record of a query; `family` carries the task type (floors, per-type
    guarantees), difficulty is unknown for user data."""
    return Task(
        prompt=item.query,
        answer=item.reference or "",
        family=item.task_type or "default",
        difficulty=0,
    )


def _router_rows(app: AppArgs, items: list[DatasetItem], allow: bool) -> RouterRows | None:
    """The configured router (and its confidence head) on every query: the Router
    deployment's own inference code; a head trained for another router is refused unless
    `allow` (IdentityMismatch)."""
    if not app.router.enabled:
        return None
    from models.zoo import resolve

    r = app.router
    return router_rows(resolve(r.model), [i.query for i in items], r.device, r.dtype, allow)
