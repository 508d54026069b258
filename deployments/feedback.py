"""POST /v1/feedback: verdicts on served answers, and what they change (`calibration.adaptive`).

The ingress remembers each answer it returns, under its response id (`FeedbackStore`): what
each tier decided (score, threshold, accepted or escalated), the answer, and the request, so a
'strong' verdict can ask the top tier the same thing. A verdict takes the record once: a second
is a 409; an id never served here, expired or evicted is a 404 that says which. Labels are
always counted (/stats, `cascade_feedback`); with `adaptive.enabled` they also step adaptive
conformal inference, which moves the thresholds serving compares scores with.

Bounded: at most `max_entries` records and `max_bytes` of them (oldest evicted first), each open
for `ttl_s`; ids that left (labelled, expired, evicted) are kept, ids only, as many again, to
say why a late verdict is refused. The store is per ingress replica: with several, a verdict
must reach the replica that served the answer (serve_config.yaml runs one).
"""

from __future__ import annotations

import dataclasses
import math
import threading
import time
import uuid
from collections import Counter, OrderedDict, defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from fastapi.responses import JSONResponse
from ray.serve.metrics import Counter as MetricCounter
from ray.serve.metrics import Gauge

from calibration.adaptive import TierDecision, TierUpdate, tier_decisions
from calibration.config import AdaptiveArgs
from calibration.policy import request_cost
from deployments.feedback_protocol import (
    FeedbackRequest,
    FeedbackResponse,
    JudgeReport,
    ThresholdUpdate,
)
from deployments.llm import TierRequest
from deployments.protocol import ErrorBody, ErrorResponse, json_float

if TYPE_CHECKING:
    from deployments.serving import CascadeResult, CascadeServer

__all__ = [
    "AnswerRecord",
    "FeedbackDesk",
    "FeedbackRejected",
    "FeedbackStore",
    "json_safe",
    "same_answer",
]

_OVERHEAD_BYTES = 1024  # a record's fixed part: ids, decisions, settings, dict slots


def same_answer(a: str, b: str) -> bool:
    """The 'strong' verdict's match: equal up to surrounding and repeated whitespace and case."""
    return " ".join(a.split()).casefold() == " ".join(b.split()).casefold()


def json_safe(obj):
    """`obj` with every infinite float written as `protocol.json_float` writes it (/stats)."""
    if isinstance(obj, dict):
        return {k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [json_safe(v) for v in obj]
    return json_float(obj)


@dataclass(frozen=True)
class AnswerRecord:
    """One served answer, as a verdict on it needs it."""

    id: str
    final_tier: str
    answer: str
    decisions: tuple[TierDecision, ...]
    epochs: dict[str, int]  # adaptive calibration epochs when served (calibration.adaptive)
    request: TierRequest
    forced: bool
    created: float = 0.0

    @property
    def size(self) -> int:
        """Bytes it holds, roughly: its texts (up to 4 bytes a character) plus a fixed part."""
        r = self.request
        chars = len(r.prompt or "") + sum(len(m.get("content", "")) for m in r.messages or ())
        return _OVERHEAD_BYTES + 4 * (chars + len(self.answer)) + 64 * len(self.decisions)


class FeedbackRejected(Exception):
    """A verdict that cannot be taken: its status, a code for stats and clients, and why."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message

    def response(self) -> JSONResponse:
        kind = {404: "not_found_error", 503: "service_unavailable"}.get(self.status)
        body = ErrorBody(
            message=self.message, type=kind or "invalid_request_error", param="id", code=self.code
        )
        return JSONResponse(status_code=self.status, content=ErrorResponse(error=body).model_dump())


class FeedbackStore:
    """Open answers by id, bounded in count, bytes and age; see the module docstring."""

    def __init__(
        self,
        ttl_s: float,
        max_entries: int,
        max_bytes: int,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.ttl_s, self.max_entries, self.max_bytes = ttl_s, max_entries, max_bytes
        self.clock = clock
        self._open: OrderedDict[str, AnswerRecord] = OrderedDict()  # oldest first
        self._pending: dict[str, AnswerRecord] = {}  # claimed, verdict being judged
        self._gone: OrderedDict[str, tuple[str, float, str]] = OrderedDict()  # why, when, label
        self.bytes = 0
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._open)

    def add(self, record: AnswerRecord) -> AnswerRecord:
        """Keep `record` open, stamped now; expire and evict the oldest to stay in bounds."""
        with self._lock:
            record = dataclasses.replace(record, created=self.clock())
            self._open[record.id] = record
            self.bytes += record.size
            now = record.created
            while self._open:
                oldest = next(iter(self._open.values()))
                if now - oldest.created > self.ttl_s:
                    self._drop(oldest.id, "expired", oldest.created + self.ttl_s)
                elif len(self._open) > self.max_entries or self.bytes > self.max_bytes:
                    self._drop(oldest.id, "evicted", now)
                else:
                    break
            return record

    def _drop(self, rid: str, why: str, when: float, label: str = "") -> None:
        record = self._open.pop(rid, None) or self._pending.pop(rid)
        self.bytes -= record.size
        self._gone[rid] = (why, when, label)
        while len(self._gone) > self.max_entries:
            self._gone.popitem(last=False)

    def claim(self, rid: str) -> AnswerRecord:
        """Take the open record of `rid` for a verdict, or raise why there is none."""
        with self._lock:
            now = self.clock()
            record = self._open.get(rid)
            if record is not None and now - record.created > self.ttl_s:
                self._drop(rid, "expired", record.created + self.ttl_s)
                record = None
            if record is not None:
                self._pending[rid] = self._open.pop(rid)
                return record
            raise self._refusal(rid, now)

    def _refusal(self, rid: str, now: float) -> FeedbackRejected:
        if rid in self._pending:
            return FeedbackRejected(
                409, "feedback_pending", f"a verdict on {rid!r} is being judged; one per answer"
            )
        why, when, label = self._gone.get(rid, ("unknown", now, ""))
        ago = f"{now - when:.0f} s ago"
        if why == "labelled":
            msg = f"the answer {rid!r} already has a verdict ({label}, {ago}); one per answer"
            return FeedbackRejected(409, "feedback_duplicate", msg)
        if why == "expired":
            msg = (
                f"the answer {rid!r} expired {ago}: answers are open for feedback for "
                f"{self.ttl_s:g} s after they are served (adaptive.ttl_s)"
            )
        elif why == "evicted":
            msg = (
                f"the answer {rid!r} was evicted {ago}, before a verdict came, to keep the "
                f"feedback store within adaptive.max_entries={self.max_entries} / "
                f"max_bytes={self.max_bytes}"
            )
        else:
            msg = (
                f"no answer with id {rid!r} was served by this replica (or it left the store "
                f"long ago); send the `id` of a chat or text completion this service returned"
            )
        return FeedbackRejected(404, f"feedback_id_{why}", msg)

    def settle(self, record: AnswerRecord, label: str) -> None:
        """The verdict on a claimed record is in: a second one will be a 409."""
        with self._lock:
            self._drop(record.id, "labelled", self.clock(), label)

    def release(self, record: AnswerRecord) -> None:
        """A claimed record whose verdict failed (the judge was down) opens again."""
        with self._lock:
            if self._pending.pop(record.id, None) is not None:
                self._open[record.id] = record

    def as_dict(self) -> dict:
        with self._lock:
            return {
                "open": len(self._open),
                "pending": len(self._pending),
                "bytes": self.bytes,
                "ids_remembered": len(self._gone),
                "max_entries": self.max_entries,
                "max_bytes": self.max_bytes,
                "ttl_s": self.ttl_s,
            }


class FeedbackMetrics:
    """Prometheus series of the feedback loop (Ray Serve's metrics API, per ingress replica)."""

    def __init__(self) -> None:
        self.verdicts = MetricCounter(
            "cascade_feedback",
            "Verdicts on served answers: by verdict, and outcome (applied = a threshold state "
            "took it, recorded = counted only, else the rejection's code).",
            tag_keys=("verdict", "outcome"),
        )
        self.alpha = Gauge(
            "cascade_adaptive_alpha", "Adaptive conformal level alpha_t.", tag_keys=("tier",)
        )
        self.threshold = Gauge(
            "cascade_adaptive_threshold",
            "Threshold served after the last label (finite values only).",
            tag_keys=("tier",),
        )


class FeedbackDesk:
    """The ingress's half of feedback: remember answers, take verdicts, count both."""

    def __init__(
        self, server: CascadeServer, args: AdaptiveArgs, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.server = server
        self.store = FeedbackStore(args.ttl_s, args.max_entries, args.max_bytes, clock)
        self.metrics = FeedbackMetrics()
        self.counts: Counter = Counter()
        self.rejected: Counter = Counter()
        self.labels: defaultdict[str, Counter] = defaultdict(Counter)  # final tier -> labels
        self.judge_cost = 0.0

    def remember(self, result: CascadeResult, request: TierRequest, prefix: str) -> str:
        """Record a served answer under a new id (also put in its routing) and return the id."""
        rid = f"{prefix}-{uuid.uuid4().hex[:24]}"
        result.routing.feedback_id = rid
        outcome = result.outcome
        names = self.server.policy.tier_names
        decisions = tier_decisions(outcome, names) if outcome is not None else ()
        epochs = self.server.adaptive.epochs()
        forced = result.routing.forced
        text = result.generation.text
        self.store.add(AnswerRecord(rid, result.tier, text, decisions, epochs, request, forced))
        return rid

    async def apply(self, body: FeedbackRequest) -> FeedbackResponse:
        """Take one verdict; raises `FeedbackRejected` (404, 409, 503) without losing it
        silently: every refusal is counted by its code."""
        self.counts["received"] += 1
        self.counts[f"verdict_{body.verdict}"] += 1
        try:
            record = self.store.claim(body.id)
            judge = await self._judge(record) if body.verdict == "strong" else None
        except FeedbackRejected as e:
            self._refused(body.verdict, e.code)
            raise
        wrong = (not judge.agrees) if judge is not None else body.verdict == "wrong"
        label = "wrong" if wrong else "right"
        self.store.settle(record, label)
        self.labels[record.final_tier][label] += 1
        aci = self.server.adaptive
        updates = aci.feedback(record.decisions, wrong=wrong, epochs=record.epochs)
        applied = any(u.applied for u in updates)
        outcome = "applied" if applied else "recorded"
        self.counts[outcome] += 1
        self.metrics.verdicts.inc(tags={"verdict": body.verdict, "outcome": outcome})
        for u in updates:
            self._gauges(u)
        return FeedbackResponse(
            id=record.id,
            verdict=body.verdict,
            label=label,
            final_tier=record.final_tier,
            adaptive=aci.settings.enabled,
            applied=applied,
            updates=[_update(u) for u in updates],
            judge=judge,
            note=_note(record, aci.settings.enabled, updates),
        )

    def _refused(self, verdict: str, code: str) -> None:
        self.rejected[code] += 1
        self.metrics.verdicts.inc(tags={"verdict": verdict, "outcome": code})

    async def _judge(self, record: AnswerRecord) -> JudgeReport:
        """The top tier's answer to the same request, compared with the served one. A failed
        call reopens the record (the verdict can be sent again) and is a 503."""
        policy = self.server.policy
        top = policy.tiers[policy.top]
        if record.final_tier == top.name:
            return JudgeReport(
                tier=top.name, answer=record.answer, agrees=True, called=False, cost=0
            )
        try:
            gen = await self.server.call_tier(policy.top, record.request)
        except Exception as e:
            self.store.release(record)
            raise FeedbackRejected(
                503, "judge_unavailable", f"the top tier {top.name!r} could not judge: {e!r}"
            ) from e
        cost = request_cost(top, gen.completion_tokens)
        self.judge_cost += cost
        self.counts["judge_calls"] += 1
        self.server.metrics.cost.inc(cost, tags={"tier": top.name})
        agrees = same_answer(gen.text, record.answer)
        return JudgeReport(tier=top.name, answer=gen.text, agrees=agrees, called=True, cost=cost)

    def _gauges(self, u: TierUpdate) -> None:
        if u.alpha_after is not None:
            self.metrics.alpha.set(u.alpha_after, tags={"tier": u.tier})
        if math.isfinite(u.threshold_after):
            self.metrics.threshold.set(u.threshold_after, tags={"tier": u.tier})

    def as_dict(self) -> dict:
        """For /stats: verdicts received, applied, counted only, refused by code, labels."""
        c = self.counts
        return {
            "received": c["received"],
            "applied": c["applied"],
            "recorded_only": c["recorded"],
            "rejected": dict(self.rejected),
            "verdicts": {v: c[f"verdict_{v}"] for v in ("right", "wrong", "strong")},
            "labels": {tier: dict(n) for tier, n in self.labels.items()},
            "judge_calls": c["judge_calls"],
            "judge_cost": self.judge_cost,
            "store": self.store.as_dict(),
        }


def _update(u: TierUpdate) -> ThresholdUpdate:
    d = u.as_dict()
    d.pop("applied")
    return ThresholdUpdate(**d)


def _note(record: AnswerRecord, enabled: bool, updates: list[TierUpdate]) -> str:
    """What the label changed, in words."""
    if record.forced:
        return "the request forced a tier: no threshold decided this answer; label recorded"
    if not updates:
        return "no tier below the top decided this answer (it started at the top); label recorded"
    if not enabled:
        return "adaptive.enabled is false: the label is recorded (/stats), thresholds stay"
    moved = [
        f"{u.tier} {u.threshold_before:.4g} -> {u.threshold_after:.4g}" for u in updates if u.moved
    ]
    return f"threshold moved: {', '.join(moved)}" if moved else "no threshold moved"
