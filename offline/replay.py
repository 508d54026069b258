"""Every tier's answers on a split, generated once and cached, for replaying strategies.

Offline evaluation compares dozens of strategies on the same requests; generating answers is
the only slow part, so each (model, split, seed, n) is generated once through
`models.zoo.answer_queries` and stored as JSON under `$CASCADE_CACHE_DIR` (default
`~/.cache/cascade-router/eval`). The key includes the model's fingerprint (a hash of its
checkpoint files), so a rebuilt model never replays stale answers.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from calibration.feedback import (
    ROUTER_FEATURES,
    FeedbackConfig,
    feature_matrix,
    feature_names,
    router_evidence,
)
from calibration.generation import generation_from_dict, generation_to_dict
from calibration.policy import TierConfig
from models.engine import Generation
from models.oracle import Policy, true_policy
from models.tasks import Judgement, Task, judge, sample

__all__ = [
    "CACHE_VERSION",
    "EvalSplit",
    "RouterRows",
    "cache_dir",
    "load_split",
    "model_fingerprint",
    "param_count",
    "router_rows",
    "zoo_tiers",
]

CACHE_VERSION = 1
_HASH_CONTENT_BYTES = 64 << 20


def cache_dir() -> Path:
    """$CASCADE_CACHE_DIR, else ~/.cache/cascade-router/eval."""
    default = Path.home() / ".cache" / "cascade-router" / "eval"
    return Path(os.environ.get("CASCADE_CACHE_DIR", default))


def model_fingerprint(model_dir: str | Path) -> str:
    """A short hash that changes whenever the model does, and only then.

    It hashes the checkpoint folder's own files: contents for files up to 64 MiB (configs,
    tokenizers, small weights such as the zoo's), name + size + mtime for larger ones (real
    checkpoints, where reading gigabytes per call would cost more than it protects). Files
    outside the folder (the zoo's manifest, rewritten when artifacts are derived) do not
    count, so an artifact's recorded fingerprint stays valid after such rewrites.
    """
    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        raise FileNotFoundError(f"no model folder at {model_dir}")
    h = hashlib.sha256()
    for f in sorted(p for p in model_dir.rglob("*") if p.is_file()):
        st = f.stat()
        h.update(f"{f.relative_to(model_dir)}:{st.st_size}".encode())
        if st.st_size <= _HASH_CONTENT_BYTES:
            h.update(f.read_bytes())
        else:
            h.update(str(st.st_mtime_ns).encode())
    return h.hexdigest()[:16]


def param_count(model_dir: str | Path) -> int:
    """Parameters in a safetensors checkpoint, read from the file headers (no torch needed)."""
    total = 0
    files = sorted(Path(model_dir).glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"no *.safetensors in {model_dir}")
    for f in files:
        with f.open("rb") as fh:
            (size,) = struct.unpack("<Q", fh.read(8))
            header = json.loads(fh.read(size))
        for name, meta in header.items():
            if name != "__metadata__":
                total += int(np.prod(meta["shape"]))
    return total


def zoo_tiers(root: str | Path, names: Sequence[str] = ("cheap", "strong")) -> list[TierConfig]:
    """Tier costs for the zoo: cost per request proportional to parameters (FLOPs per token
    for these dense models at equal lengths), normalised so the top tier costs 1.0."""
    counts = [param_count(Path(root) / n) for n in names]
    return [
        TierConfig(name=n, cost_per_request=round(c / counts[-1], 4))
        for n, c in zip(names, counts, strict=True)
    ]


_to_json = generation_to_dict
_from_json = generation_from_dict


def _cache_path(kind: str, model_dir: Path, split: str, seed: int, n: int) -> Path:
    key = json.dumps(
        [CACHE_VERSION, kind, model_fingerprint(model_dir), str(model_dir), split, seed, n]
    )
    digest = hashlib.sha256(key.encode()).hexdigest()[:20]
    return cache_dir() / f"{kind}-{model_dir.name}-{split}-s{seed}-n{n}-{digest}.json"


def _write_atomic(path: Path, payload) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    tmp.write_text(json.dumps(payload))
    tmp.replace(path)  # readers never see half a file


def cached_answers(
    model_dir: str | Path, tasks: list[Task], split: str, seed: int
) -> list[Generation]:
    """A model's greedy answers to `tasks` (= sample(split, len(tasks), seed)), cached."""
    model_dir = Path(model_dir)
    path = _cache_path("answers", model_dir, split, seed, len(tasks))
    if path.is_file():
        rows = json.loads(path.read_text())
        if len(rows) == len(tasks):
            return [_from_json(r) for r in rows]
    from models.zoo import answer_queries

    gens = answer_queries(model_dir, tasks)
    _write_atomic(path, [_to_json(g) for g in gens])
    return gens


@dataclass(frozen=True)
class RouterRows:
    """The served router's verdict per request: label, P(complex), and the confidence serving
    uses (the confidence head's, else the max probability; `source` says which)."""

    policy: list[str]
    p_complex: np.ndarray
    confidence: np.ndarray
    source: str


def router_rows(
    router_dir: str | Path,
    prompts: list[str],
    device: str = "auto",
    dtype: str = "auto",
    allow_mismatch: bool = False,
) -> RouterRows:
    """`models.router_model.RouterWithHead` on every prompt (the only router inference, the
    one the Router deployment runs, on the config's `router.device`/`router.dtype`), as the
    evaluation's rows. A head trained for another router raises `IdentityMismatch` unless
    `allow_mismatch` (the config's `calibration.allow_mismatch`), as serving does."""
    from models.oracle import Policy
    from models.router_model import RouterWithHead

    out = RouterWithHead(router_dir, device=device, dtype=dtype, allow_mismatch=allow_mismatch)(
        prompts
    )
    complex_id = out.labels.index(Policy.complex.value)
    return RouterRows(
        list(out.policies),
        out.probabilities[:, complex_id].numpy().astype(float),
        out.confidence.numpy().astype(float),
        out.confidence_source,
    )


def cached_router_outputs(
    router_dir: str | Path,
    tasks: list[Task],
    split: str,
    seed: int,
    device: str = "auto",
    dtype: str = "auto",
    allow_mismatch: bool = False,
) -> RouterRows:
    """`models.router_model.RouterWithHead` on every task prompt (the only router inference,
    the one the Router deployment runs), cached like the answers. The key hashes the router
    folder, the confidence head inside it included, so a retrained head is never replayed,
    and names the resolved device/dtype unless it is cpu/float32 (the keys from before)."""
    from models.router_device import resolve_device_dtype
    from models.router_model import check_head

    router_dir = Path(router_dir)
    check_head(router_dir, allow_mismatch=allow_mismatch)  # a cached replay is checked too
    where, precision = resolve_device_dtype(device, dtype)
    tag = f"{where.type}-{str(precision).removeprefix('torch.')}"
    kind = "router-head" if tag == "cpu-float32" else f"router-head-{tag}"
    path = _cache_path(kind, router_dir, split, seed, len(tasks))
    if path.is_file():
        d = json.loads(path.read_text())
        if len(d["policy"]) == len(tasks):
            return RouterRows(
                d["policy"], np.asarray(d["p_complex"]), np.asarray(d["confidence"]), d["source"]
            )
    rows = router_rows(router_dir, [t.prompt for t in tasks], device, dtype, allow_mismatch)
    _write_atomic(
        path,
        {
            "policy": rows.policy,
            "p_complex": rows.p_complex.tolist(),
            "confidence": rows.confidence.tolist(),
            "source": rows.source,
        },
    )
    return rows


@dataclass
class EvalSplit:
    """One split's requests and every tier's recorded answers, judged and featurised.

    Arrays are indexed by request; per-tier dicts are keyed by tier name, ladder order.
    """

    split: str
    seed: int
    tasks: list[Task]
    tiers: list[str]
    answers: dict[str, list[Generation]]
    judgements: dict[str, list[Judgement]]
    feedback: FeedbackConfig = field(default_factory=FeedbackConfig)
    router: RouterRows | None = None
    features: dict[str, np.ndarray] = field(init=False)
    correct: dict[str, np.ndarray] = field(init=False)
    output_tokens: dict[str, np.ndarray] = field(init=False)

    def __post_init__(self) -> None:
        # each tier's answer features, then the router's (the same for every tier: it saw the
        # prompt, not the answer), so one named matrix serves any scorer, with or without them
        extra = [] if self.router is None else [self.router.p_complex[:, None]]
        self.features = {
            t: np.concatenate([feature_matrix(self.answers[t], self.feedback), *extra], axis=1)
            for t in self.tiers
        }
        self.correct = {
            t: np.array([j == Judgement.correct for j in self.judgements[t]]) for t in self.tiers
        }
        self.output_tokens = {
            t: np.array([len(g.token_ids) for g in self.answers[t]]) for t in self.tiers
        }

    @property
    def n(self) -> int:
        return len(self.tasks)

    @property
    def router_p(self) -> np.ndarray | None:
        """The router's P(complex) per request, or None without a router."""
        return None if self.router is None else self.router.p_complex

    @property
    def feature_names(self) -> tuple[str, ...]:
        """The columns of `features`: the answer's, then `ROUTER_FEATURES` with a router."""
        return feature_names(self.feedback) + (() if self.router is None else ROUTER_FEATURES)

    def context(self, i: int) -> dict[str, float]:
        """Request i's router evidence as serving passes it to the signal (NaN: no router)."""
        return router_evidence(None if self.router is None else float(self.router.p_complex[i]))

    @property
    def wrong(self) -> np.ndarray:
        """The cheapest tier's answer is not exactly right (partial counts as wrong)."""
        return ~self.correct[self.tiers[0]]

    @property
    def strong_right(self) -> np.ndarray:
        """The top tier's answer is exactly right."""
        return self.correct[self.tiers[-1]]

    @property
    def needs_escalation(self) -> np.ndarray:
        """The oracle matrix's verdict between the cheapest and the top tier: 'complex'."""
        cheap, top = self.judgements[self.tiers[0]], self.judgements[self.tiers[-1]]
        return np.array(
            [true_policy(c, s) == Policy.complex for c, s in zip(cheap, top, strict=True)]
        )


def load_split(
    split: str,
    n: int,
    seed: int = 0,
    *,
    root: str | Path | None = None,
    tiers: Sequence[str] = ("cheap", "strong"),
    router: str | None = "router",
    feedback: FeedbackConfig | None = None,
    router_device: str = "auto",
    router_dtype: str = "auto",
    allow_mismatch: bool = False,
) -> EvalSplit:
    """Sample a split, answer it with every tier (cached) and judge the answers.

    `root` is the zoo folder (default: `models.zoo.zoo_dir()`, built by `make zoo`); tier and
    router names are subfolders of it. `router_device`/`router_dtype`: the config's
    `router.device`/`router.dtype`, so the router is the one serving runs. A confidence head
    trained for another router raises `IdentityMismatch` unless `allow_mismatch`.
    """
    if root is None:
        from models.zoo import zoo_dir

        root = zoo_dir()
    root = Path(root)
    if router is not None:  # refuse a mismatched head before minutes of answering
        from models.router_model import check_head

        check_head(root / router, allow_mismatch=allow_mismatch)
    tasks = sample(split, n, seed)
    answers = {t: cached_answers(root / t, tasks, split, seed) for t in tiers}
    judgements = {
        t: [judge(g.text, task.answer) for g, task in zip(answers[t], tasks, strict=True)]
        for t in tiers
    }
    rows = (
        None
        if router is None
        else cached_router_outputs(
            root / router, tasks, split, seed, router_device, router_dtype, allow_mismatch
        )
    )
    return EvalSplit(
        split=split,
        seed=seed,
        tasks=tasks,
        tiers=list(tiers),
        answers=answers,
        judgements=judgements,
        feedback=feedback or FeedbackConfig(),
        router=rows,
    )
