"""Confidence-head labels from the user's collected, judged traces (no language model runs).

The zoo's labels (`offline.head.labels`) answer the synthetic splits with the zoo's cheap and
strong checkpoints; a user's deployment has its own traffic and tiers, already answered by
`python -m calibration collect` and graded by `python -m calibration judge`. Here each item
with labels for the config's cheapest and top tiers becomes one `LabelRecord`: the judge's
verdicts (right -> correct, else incorrect) mapped through the oracle matrix to the true
policy, and the configured router (on the config's device/dtype, as serving places it) read
on the exact text serving hands it (`DatasetItem.query`: the last user message, or the
prompt), giving its policy, pooled hidden state and logits.

Items are split by `offline.trace_split.part_of` with `calibrate`'s defaults: the fit part
trains the head, the calibration part validates it (early stopping), and the held-out part,
on which `calibrate` measures the guarantee, is never seen. Two cached label sets:

    artifacts/labels/traces-fit-seed0.{jsonl,safetensors}
    artifacts/labels/traces-calibration-seed0.{jsonl,safetensors}

reused only while their fingerprint (router checkpoint and placement, both tiers' label
files, the queries, the oracle matrix, the split) matches.

    python -m calibration labels --config serve_config.yaml --traces traces/
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from calibration.config import AppArgs
from calibration.dataset import DatasetItem
from calibration.identity import check_identities
from calibration.judges import Label
from models.identity import configured_identities
from models.oracle import ORACLE_MATRIX, Policy, true_policy
from models.tasks import Judgement
from offline.head.labels import (
    LABELS_VERSION,
    LabelRecord,
    LabelSet,
    OracleMatrix,
    _matrix_key,
    load_labels,
    save_labels,
)
from offline.trace_split import DEFAULT_FRACTIONS, part_of
from offline.traces import TraceStore

__all__ = [
    "TRAINED_PARTS",
    "labels_of_traces",
    "summarize",
    "trace_labels",
    "trace_labels_path",
    "trace_router",
]

# part of the trace split -> its role for the head; the held-out part is never labelled here
TRAINED_PARTS = {"fit": "train", "calibration": "validation"}


def trace_router(app: AppArgs) -> Path:
    """The configured router's folder (zoo names resolved as serving resolves them)."""
    from models.zoo import resolve

    if not app.router.enabled:
        raise ValueError("the config's router is disabled: there is no router to train a head for")
    path = Path(resolve(app.router.model)).expanduser()
    if not (path / "config.json").is_file():
        raise FileNotFoundError(
            f"the router checkpoint {path} has no config.json (head labels need a local router)"
        )
    return path


def trace_labels_path(out_dir: str | Path, part: str, seed: int) -> Path:
    return Path(out_dir) / f"traces-{part}-seed{seed}"


def _end_labels(store: TraceStore, app: AppArgs) -> tuple[dict[str, Label], dict[str, Label]]:
    """The judged labels of the cheapest and top tiers, their identities checked against the
    config as `offline.trace_split` checks them (IdentityMismatch names both sides)."""
    manifest = store.manifest()
    ends = [app.tiers[0].name, app.tiers[-1].name]
    current = configured_identities(app)
    missing = [t for t in ends if t not in manifest.tiers]
    if missing:
        raise ValueError(
            f"{store.root} has no traces of tier(s) {missing}; run collect with this config"
        )
    check_identities(
        {t: manifest.tiers[t] for t in ends},
        {t: current[t] for t in ends},
        what=f"the trace set in {store.root}",
    )
    cheap, strong = (store.labels(t, manifest.tiers[t]) for t in ends)
    return cheap, strong


def _fingerprint(
    store: TraceStore, app: AppArgs, router: Path, items: list[DatasetItem], key: str
) -> str:
    """Router weights, config and placement; both end tiers' label files; the queries; `key`
    (matrix and split)."""
    h = hashlib.sha256(f"trace-labels-v{LABELS_VERSION}".encode())
    for f in [router / "config.json", *sorted(router.glob("*.safetensors"))]:
        if f.name.startswith("confidence_head"):
            continue  # the head trained from these labels must not invalidate them
        h.update(f.name.encode())
        h.update(f.read_bytes())
    h.update(f"{app.router.device}/{app.router.dtype}".encode())
    manifest = store.manifest()
    for t in (app.tiers[0].name, app.tiers[-1].name):
        h.update(store._file("labels", t, manifest.tiers[t]).read_bytes())
    for item in items:
        h.update(f"{item.id}\x00{item.query}\x00".encode())
    h.update(key.encode())
    return h.hexdigest()[:16]


def _judgement(label: Label) -> Judgement:
    return Judgement.correct if label.right else Judgement.incorrect


def _label_set(
    router,
    items: list[DatasetItem],
    cheap: dict[str, Label],
    strong: dict[str, Label],
    matrix: OracleMatrix,
    meta: dict,
) -> LabelSet:
    """Read the router on the items' queries and label each one; the router is the caller's
    `RouterWithHead` (loaded once for both parts)."""
    logits, hidden = router.encode([i.query for i in items])  # (N, C), (N, H)
    probs = logits.softmax(-1)
    complex_col = router.labels.index(Policy.complex.value)
    records = []
    for item, p in zip(items, probs, strict=True):
        cj, sj = _judgement(cheap[item.id]), _judgement(strong[item.id])
        routed = Policy(router.labels[int(p.argmax())])
        truth = true_policy(cj, sj, matrix)
        records.append(
            LabelRecord(
                query=item.query,
                family=item.task_type or "default",
                difficulty=0,
                router_policy=routed,
                p_complex=float(p[complex_col]),
                cheap_judgement=cj,
                strong_judgement=sj,
                true_policy=truth,
                is_correct=routed == truth,
                target_confidence=float(routed == truth),
            )
        )
    info = {"labels": list(router.labels), "ids": [i.id for i in items], **meta}
    return LabelSet(records, hidden, logits, meta=info)


def trace_labels(
    store: TraceStore,
    items: list[DatasetItem],
    app: AppArgs,
    *,
    out_dir: str | Path = "artifacts/labels",
    matrix: OracleMatrix | None = None,
    seed: int = 0,
    fractions: tuple[float, float, float] = DEFAULT_FRACTIONS,
    refresh: bool = False,
) -> dict[str, LabelSet]:
    """{"fit": training labels, "calibration": validation labels} of the judged traces, from
    the cache when its fingerprint matches. Raises IdentityMismatch for traces of other
    models, ValueError when a part would be empty, FileNotFoundError for unjudged traces."""
    matrix = matrix or dict(ORACLE_MATRIX)
    router_dir = trace_router(app)
    cheap, strong = _end_labels(store, app)
    usable = [i for i in items if i.id in cheap and i.id in strong]
    parts = {p: [i for i in usable if part_of(i.id, seed, fractions) == p] for p in TRAINED_PARTS}
    empty = [p for p, chosen in parts.items() if not chosen]
    if empty:
        raise ValueError(
            f"no judged item of {store.root} falls in the {empty} part(s) "
            f"({len(usable)} items judged for tiers {app.tiers[0].name!r} and "
            f"{app.tiers[-1].name!r}); collect and judge more items"
        )
    key = f"{_matrix_key(matrix)}|seed={seed}|fractions={list(fractions)}"
    fp = _fingerprint(store, app, router_dir, parts["fit"] + parts["calibration"], key)
    stems = {p: trace_labels_path(out_dir, p, seed) for p in parts}
    if not refresh:
        try:
            cached = {p: load_labels(stem) for p, stem in stems.items()}
            if all(c.meta.get("fingerprint") == fp for c in cached.values()):
                return cached
        except (FileNotFoundError, ValueError):
            pass
    from models.router_model import RouterWithHead

    place = {"device": app.router.device, "dtype": app.router.dtype}  # serving's placement
    router = RouterWithHead(router_dir, load_head=False, **place)
    out = {}
    for p, chosen in parts.items():
        meta = {"part": p, "seed": seed, "fractions": list(fractions), "fingerprint": fp}
        meta |= {"traces": str(store.root), "router": str(router_dir), "n": len(chosen)}
        out[p] = _label_set(router, chosen, cheap, strong, matrix, meta)
        save_labels(out[p], stems[p])
    return out


def labels_of_traces(
    config: str | Path | None,
    traces: str | Path,
    data: str | Path | None = None,
    **options,
) -> tuple[AppArgs, dict[str, LabelSet]]:
    """The serve config's `AppArgs` and `trace_labels` of the traces folder, the items read
    from `data` (default: the data file the traces' manifest records); what the CLI's
    `labels --traces` and `train --traces` run. Raises ValueError (IdentityMismatch and
    DatasetError among them) or FileNotFoundError with the reason."""
    from calibration.dataset import load_dataset

    app = AppArgs.from_serve_config(config)
    store = TraceStore(traces)
    items = load_dataset(data or Path(store.manifest().data))
    return app, trace_labels(store, items, app, **options)


def summarize(labels: dict[str, LabelSet], out_dir: str | Path, seed: int, traces: str) -> dict:
    """What `labels --traces` prints: per part its size, router accuracy, true complex rate
    and files, and the labels' fingerprint."""
    summary: dict = {"traces": traces, "split_seed": seed}
    for part, ls in labels.items():
        stem = trace_labels_path(out_dir, part, seed)
        summary[part] = {
            "n": ls.n,
            "router_accuracy": ls.router_accuracy,
            "true_complex_rate": sum(r.true_policy == Policy.complex for r in ls.records) / ls.n,
            "hidden_shape": list(ls.hidden.shape),
            "jsonl": f"{stem}.jsonl",
            "tensors": f"{stem}.safetensors",
        }
    summary["fingerprint"] = labels["fit"].meta["fingerprint"]
    return summary
