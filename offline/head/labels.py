"""Labels for the confidence head: was the router's policy the right one, query by query?

For each query of a split: the router's policy (and its pooled last hidden state and logits),
the cheap ("medium") and strong ("large") tiers' greedy answers, both judged (correct / partial
/ incorrect), and the pair mapped through the 9-cell oracle matrix to the true policy.
`is_correct = router_policy == true_policy` is the head's 0/1 target.

Two files per (split, seed, n), so training never reruns any model:

    artifacts/labels/calibration-seed0-n4000.jsonl         # one LabelRecord per line
    artifacts/labels/calibration-seed0-n4000.safetensors   # hidden (N, H), logits (N, C), meta

The cache is reused only when its fingerprint (the three checkpoints' bytes and the oracle
matrix) matches, so a rebuilt zoo is relabelled.

    python -m calibration labels --split calibration --n 4000 --seed 0
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

import torch
from pydantic import BaseModel, Field
from safetensors.torch import load_file, save_file
from tqdm import tqdm

from models.oracle import ORACLE_MATRIX, Policy, true_policy
from models.tasks import SPLITS, Judgement, Task, judge, sample

__all__ = [
    "LABELS_VERSION",
    "LabelModels",
    "LabelRecord",
    "LabelSet",
    "build_labels",
    "label_split",
    "labels_path",
    "load_labels",
    "load_oracle_matrix",
    "save_labels",
    "zoo_fingerprint",
]

LABELS_VERSION = 1
OracleMatrix = dict[tuple[Judgement, Judgement], Policy]


class LabelRecord(BaseModel):
    """One labelled query: a JSONL line."""

    query: str = Field(description="the raw task prompt the router read")
    family: str
    difficulty: int
    router_policy: Policy = Field(description="argmax of the router")
    p_complex: float = Field(description="the router's P(complex)")
    cheap_judgement: Judgement
    strong_judgement: Judgement
    true_policy: Policy = Field(description="oracle matrix of the two judgements")
    is_correct: bool = Field(description="router_policy == true_policy")
    target_confidence: float = Field(description="the head's target: 1.0 if is_correct else 0.0")


@dataclass
class LabelSet:
    """Records plus the router's cached tensors, row-aligned."""

    records: list[LabelRecord]
    hidden: torch.Tensor  # (N, H) pooled last hidden state of the router
    logits: torch.Tensor  # (N, C) router logits (for the max-prob / entropy / TS baselines)
    meta: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        n = len(self.records)
        if n == 0:
            raise ValueError(f"empty label set {self.meta.get('name', '')!r}: no records")
        if self.hidden.ndim != 2 or self.hidden.shape[0] != n:
            raise ValueError(f"hidden must be (N={n}, H), got {tuple(self.hidden.shape)}")
        if self.logits.ndim != 2 or self.logits.shape[0] != n:
            raise ValueError(f"logits must be (N={n}, C), got {tuple(self.logits.shape)}")

    @property
    def n(self) -> int:
        return len(self.records)

    @property
    def correct(self) -> torch.Tensor:
        """(N,) float 0/1 target: the router's policy was the right one."""
        return torch.tensor([r.target_confidence for r in self.records], dtype=torch.float32)

    @property
    def router_accuracy(self) -> float:
        return float(self.correct.mean())

    @property
    def true_labels(self) -> torch.Tensor:
        """(N,) class index of the true policy, in the router's label order."""
        order = self.meta.get("labels", [Policy.standard.value, Policy.complex.value])
        return torch.tensor([order.index(r.true_policy.value) for r in self.records])


# --- configuration ----------------------------------------------------------------------------


def load_oracle_matrix(path: str | Path | None) -> OracleMatrix:
    """The 9-cell matrix from JSON {"cheap/strong": "standard"|"complex"}, or the default.

    Example cell: {"partial/correct": "complex"}. All nine cells must be present.
    """
    if path is None:
        return dict(ORACLE_MATRIX)
    try:
        raw = json.loads(Path(path).read_text())
    except (OSError, ValueError) as e:
        raise ValueError(f"cannot read oracle matrix {path}: {e}") from e
    matrix: OracleMatrix = {}
    for key, value in raw.items():
        try:
            cheap, strong = key.split("/")
            matrix[(Judgement(cheap), Judgement(strong))] = Policy(value)
        except ValueError as e:
            raise ValueError(f"bad oracle matrix cell {key!r}: {value!r} in {path}: {e}") from e
    if len(matrix) != 9:
        missing = sorted(f"{c.value}/{s.value}" for c, s in set(ORACLE_MATRIX) - set(matrix))
        raise ValueError(f"oracle matrix {path} must give all 9 cells; missing {missing}")
    return matrix


def _matrix_key(matrix: OracleMatrix) -> str:
    return json.dumps(sorted((f"{c.value}/{s.value}", p.value) for (c, s), p in matrix.items()))


@dataclass(frozen=True)
class LabelModels:
    """The three checkpoints a label needs: the router, the cheapest and the top tier.

    From a zoo folder (`of_zoo`), or from the served application's typed config
    (`of_config`: its router and its ladder's two ends, each resolved as serving resolves it),
    so the head is trained for the router and tiers that will serve, on the config's
    `router.device`/`router.dtype`: the hidden states the head learns from are serving's)."""

    router: Path
    cheap: Path
    strong: Path
    router_device: str = "auto"
    router_dtype: str = "auto"

    @classmethod
    def of_zoo(cls, root: str | Path) -> LabelModels:
        root = Path(root)
        return cls(root / "router", root / "cheap", root / "strong")

    @classmethod
    def of_config(cls, app) -> LabelModels:
        """`app`: a `calibration.config.AppArgs`."""
        from models.zoo import resolve

        return cls(
            Path(resolve(app.router.model)),
            Path(resolve(app.tiers[0].model)),
            Path(resolve(app.tiers[-1].model)),
            app.router.device,
            app.router.dtype,
        )

    @classmethod
    def of(cls, where: str | Path | LabelModels) -> LabelModels:
        return where if isinstance(where, LabelModels) else cls.of_zoo(where)


def zoo_fingerprint(zoo_root: str | Path | LabelModels, matrix: OracleMatrix | None = None) -> str:
    """Hash of the router/cheap/strong checkpoints' config and weights, and the matrix."""
    models = LabelModels.of(zoo_root)
    h = hashlib.sha256(f"labels-v{LABELS_VERSION}".encode())
    for name in ("router", "cheap", "strong"):
        for fname in ("config.json", "model.safetensors"):
            f = getattr(models, name) / fname
            if not f.is_file():
                raise FileNotFoundError(f"no {name}/{fname}: {f} is missing")
            h.update(f"{name}/{fname}".encode())
            h.update(f.read_bytes())
    h.update(_matrix_key(matrix or ORACLE_MATRIX).encode())
    from models.router_device import resolve_device_dtype

    where, dtype = resolve_device_dtype(models.router_device, models.router_dtype)
    if (where.type, str(dtype)) != ("cpu", "torch.float32"):  # cpu/float32 keeps older keys
        h.update(f"router on {where.type} in {dtype}".encode())
    return h.hexdigest()[:16]


# --- labelling ----------------------------------------------------------------------------------


def build_labels(
    zoo_root: str | Path | LabelModels,
    tasks: list[Task],
    matrix: OracleMatrix | None = None,
    batch: int = 512,
    progress: bool | None = None,
    meta: dict | None = None,
) -> LabelSet:
    """Run router, cheap and strong tiers on `tasks` and label each query (no caching here).

    `progress`: None shows a bar on a terminal only, True always, False never.
    """
    from models.router_model import RouterWithHead
    from models.zoo import answer_queries

    if not tasks:
        raise ValueError("no tasks to label (empty split sample)")
    matrix = matrix or ORACLE_MATRIX
    models = LabelModels.of(zoo_root)
    place = {"device": models.router_device, "dtype": models.router_dtype}  # serving's
    router = RouterWithHead(models.router, batch_size=batch, load_head=False, **place)
    records, hidden, logits = [], [], []
    bar = tqdm(
        total=len(tasks),
        desc="labelling",
        unit="q",
        disable=None if progress is None else not progress,
    )
    for i in range(0, len(tasks), batch):
        chunk = tasks[i : i + batch]
        chunk_logits, chunk_hidden = router.encode([t.prompt for t in chunk])  # (b, C), (b, H)
        cheap = answer_queries(models.cheap, chunk, batch=batch)
        strong = answer_queries(models.strong, chunk, batch=batch)
        probs = chunk_logits.softmax(-1)  # (b, C)
        for t, p, c, s in zip(chunk, probs, cheap, strong, strict=True):
            cj, sj = judge(c.text, t.answer), judge(s.text, t.answer)
            routed = Policy(router.labels[int(p.argmax())])
            truth = true_policy(cj, sj, matrix)
            records.append(
                LabelRecord(
                    query=t.prompt,
                    family=t.family,
                    difficulty=t.difficulty,
                    router_policy=routed,
                    p_complex=float(p[router.labels.index(Policy.complex.value)]),
                    cheap_judgement=cj,
                    strong_judgement=sj,
                    true_policy=truth,
                    is_correct=routed == truth,
                    target_confidence=float(routed == truth),
                )
            )
        hidden.append(chunk_hidden)
        logits.append(chunk_logits)
        bar.update(len(chunk))
    bar.close()
    info = {"labels": list(router.labels), **(meta or {})}
    return LabelSet(records, torch.cat(hidden), torch.cat(logits), meta=info)


def labels_path(out_dir: str | Path, split: str, seed: int, n: int) -> Path:
    """The stem shared by the .jsonl and .safetensors files of one labelled sample."""
    return Path(out_dir) / f"{split}-seed{seed}-n{n}"


def save_labels(labels: LabelSet, stem: str | Path) -> Path:
    """Write `stem`.jsonl and `stem`.safetensors (tensors + meta); returns the .jsonl path."""
    stem = Path(stem)
    stem.parent.mkdir(parents=True, exist_ok=True)
    tensors = {"hidden": labels.hidden.contiguous(), "logits": labels.logits.contiguous()}
    save_file(tensors, f"{stem}.safetensors", metadata={"meta": json.dumps(labels.meta)})
    jsonl = Path(f"{stem}.jsonl")
    tmp = jsonl.with_suffix(".jsonl.tmp")
    tmp.write_text("".join(r.model_dump_json() + "\n" for r in labels.records))
    tmp.replace(jsonl)  # written last: its presence means the pair is complete
    return jsonl


def load_labels(stem: str | Path) -> LabelSet:
    """Read a pair written by `save_labels` (`stem` with or without an extension)."""
    stem = Path(stem)
    if stem.suffix in (".jsonl", ".safetensors"):
        stem = stem.with_suffix("")
    jsonl, tens = Path(f"{stem}.jsonl"), Path(f"{stem}.safetensors")
    if not jsonl.is_file() or not tens.is_file():
        raise FileNotFoundError(f"labels {stem}: need both {jsonl.name} and {tens.name}")
    records = [
        LabelRecord.model_validate_json(line) for line in jsonl.read_text().splitlines() if line
    ]
    from safetensors import safe_open

    with safe_open(str(tens), framework="pt") as f:
        meta = json.loads((f.metadata() or {}).get("meta", "{}"))
    t = load_file(tens)
    return LabelSet(records, t["hidden"], t["logits"], meta=meta)


def label_split(
    zoo_root: str | Path | LabelModels,
    split: str,
    n: int,
    seed: int = 0,
    out_dir: str | Path = "artifacts/labels",
    matrix: OracleMatrix | None = None,
    refresh: bool = False,
    progress: bool | None = None,
) -> LabelSet:
    """Labels of `sample(split, n, seed)`, from the cache when its fingerprint matches."""
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; choose from {sorted(SPLITS)}")
    if n < 1:
        raise ValueError(f"n must be >= 1 to label a split, got {n}")
    fp = zoo_fingerprint(zoo_root, matrix)
    stem = labels_path(out_dir, split, seed, n)
    if not refresh:
        try:
            cached = load_labels(stem)
            if cached.meta.get("fingerprint") == fp:
                return cached
        except (FileNotFoundError, ValueError):
            pass
    where = str(zoo_root if not isinstance(zoo_root, LabelModels) else zoo_root.router.parent)
    meta = {"split": split, "seed": seed, "n": n, "fingerprint": fp, "zoo": where}
    labels = build_labels(zoo_root, sample(split, n, seed), matrix, progress=progress, meta=meta)
    save_labels(labels, stem)
    return labels
