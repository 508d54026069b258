"""The router plus its confidence head: policy, probabilities, pooled hidden state, confidence.

The router (a `*ForSequenceClassification` checkpoint, e.g. the zoo's Gemma) reads the raw query
and says `standard` (the cheap tier will do) or `complex`. The `ConfidenceHead` is a 2-layer MLP
on the hidden state the router's classifier reads (the last non-pad token, after the final norm)
and predicts P(the router's policy is the right one). It is trained offline by
`offline.head.training` and saved beside the router's files:

    router/confidence_head.safetensors   # weights + input standardisation
    router/confidence_head.json          # ConfidenceHeadConfig + provenance

`RouterWithHead` is what the serving deployment calls; it has no Ray in it. Without a head file it
still answers, with the router's max class probability as the confidence, labelled as such:

    from models.router_model import RouterWithHead
    out = RouterWithHead("~/.cache/cascade-router/zoo/router")(["12+7", "rev abcdefg"])
    out.policies, out.confidence, out.confidence_source   # [...], (2,), "confidence_head"

`device`/`dtype` (the config's `router.device`/`router.dtype`, resolved by
`models.router_device`) place the router, e.g. on cuda in bfloat16; the head always runs in
float32 beside it, and what callers get back is float32 on the CPU either way.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

import torch
import torch.nn as nn
import torch.nn.functional as F
from pydantic import Field, TypeAdapter, field_validator
from pydantic.dataclasses import dataclass as pydantic_dataclass
from safetensors.torch import load_file, save_file

from calibration.identity import IdentityMismatch
from models.router_device import resolve_device_dtype

__all__ = [
    "HEAD_CONFIG_FILE",
    "HEAD_WEIGHTS_FILE",
    "ConfidenceHead",
    "ConfidenceHeadConfig",
    "RouterOutput",
    "RouterWithHead",
    "check_head",
    "router_checksum",
]

logger = logging.getLogger(__name__)

HEAD_WEIGHTS_FILE = "confidence_head.safetensors"
HEAD_CONFIG_FILE = "confidence_head.json"
HEAD_FORMAT = 1
ConfidenceSource = Literal["confidence_head", "max_probability"]


@pydantic_dataclass(frozen=True)
class ConfidenceHeadConfig:
    """Shape of the head; a (validated) dataclass because it is written to and read from JSON."""

    in_dim: int = Field(description="router hidden size H (the pooled state's width)")
    width: int = Field(default=64, description="hidden units of the MLP")
    dropout: float = Field(default=0.1, description="dropout between the two layers (training)")
    init_concentration: float = Field(
        default=20.0, description="alpha + beta of the Beta at init; RL learns it from there"
    )

    @field_validator("in_dim", "width")
    @classmethod
    def _positive(cls, v: int) -> int:
        if v < 1:
            raise ValueError(f"must be >= 1, got {v}")
        return v

    @field_validator("dropout")
    @classmethod
    def _prob(cls, v: float) -> float:
        if not 0.0 <= v < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {v}")
        return v

    @field_validator("init_concentration")
    @classmethod
    def _conc(cls, v: float) -> float:
        if v <= 0:
            raise ValueError(f"init_concentration must be > 0, got {v}")
        return v


class ConfidenceHead(nn.Module):
    """h (B, H) -> Beta(mean * k, (1 - mean) * k) over the confidence that the router is right.

    SFT trains `mean` (the served confidence) with a Brier loss; RL samples from the Beta and
    also learns the concentration k. Inputs are standardised with statistics of the training
    hidden states, stored as buffers so they travel with the weights.
    """

    EPS = 1e-4  # keeps the Beta's parameters away from 0 so log_prob stays finite

    def __init__(self, config: ConfidenceHeadConfig):
        super().__init__()
        self.config = config
        self.register_buffer("shift", torch.zeros(config.in_dim))  # (H,)
        self.register_buffer("scale", torch.ones(config.in_dim))  # (H,)
        self.fc1 = nn.Linear(config.in_dim, config.width)
        self.drop = nn.Dropout(config.dropout)
        self.fc2 = nn.Linear(config.width, 2)  # (mean logit, concentration pre-activation)
        with torch.no_grad():  # start with one shared concentration, learned later by RL
            self.fc2.weight[1].zero_()
            self.fc2.bias[1] = math.log(math.expm1(config.init_concentration))

    def fit_standardizer(self, hidden: torch.Tensor) -> None:
        """Set shift/scale from the training hidden states (N, H)."""
        self._check(hidden)
        self.shift.copy_(hidden.mean(0))
        self.scale.copy_(hidden.std(0).clamp(min=1e-6))

    def forward(self, hidden: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        self._check(hidden)
        x = (hidden - self.shift) / self.scale  # (B, H)
        z = self.fc2(self.drop(F.gelu(self.fc1(x))))  # (B, 2)
        mean = torch.sigmoid(z[:, 0])  # (B,) the served confidence
        concentration = F.softplus(z[:, 1]) + self.EPS  # (B,) alpha + beta
        return mean, concentration

    def distribution(self, hidden: torch.Tensor) -> torch.distributions.Beta:
        mean, k = self(hidden)
        mean = mean.clamp(self.EPS, 1 - self.EPS)
        return torch.distributions.Beta(mean * k, (1 - mean) * k)

    @torch.no_grad()
    def confidence(self, hidden: torch.Tensor) -> torch.Tensor:
        """(B, H) -> (B,) confidence in [0, 1], in eval mode (no dropout)."""
        was_training = self.training
        self.eval()
        mean, _ = self(hidden)
        self.train(was_training)
        return mean

    def _check(self, hidden: torch.Tensor) -> None:
        if hidden.ndim != 2 or hidden.shape[1] != self.config.in_dim:
            raise ValueError(
                f"confidence head expects hidden states of shape (B, {self.config.in_dim}), "
                f"got {tuple(hidden.shape)}"
            )

    # --- files beside the router ----------------------------------------------------------

    @staticmethod
    def exists(directory: str | Path) -> bool:
        d = Path(directory)
        return (d / HEAD_WEIGHTS_FILE).is_file() and (d / HEAD_CONFIG_FILE).is_file()

    def save(self, directory: str | Path, meta: dict | None = None) -> Path:
        """Write weights and config (+ free-form provenance `meta`) into `directory`."""
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        tensors = {k: v.detach().cpu().contiguous() for k, v in self.state_dict().items()}
        save_file(tensors, d / HEAD_WEIGHTS_FILE)
        doc = {"format": HEAD_FORMAT, "config": asdict(self.config), "meta": meta or {}}
        (d / HEAD_CONFIG_FILE).write_text(json.dumps(doc, indent=2))
        return d

    @classmethod
    def load(cls, directory: str | Path) -> ConfidenceHead:
        d = Path(directory)
        if not cls.exists(d):
            raise FileNotFoundError(f"no {HEAD_WEIGHTS_FILE} + {HEAD_CONFIG_FILE} in {d}")
        try:
            doc = json.loads((d / HEAD_CONFIG_FILE).read_text())
            if doc.get("format") != HEAD_FORMAT:
                raise ValueError(f"unsupported head format {doc.get('format')!r}")
            config = TypeAdapter(ConfidenceHeadConfig).validate_python(doc["config"])
        except (ValueError, KeyError, TypeError) as e:
            raise ValueError(f"bad {HEAD_CONFIG_FILE} in {d}: {e}") from e
        head = cls(config)
        head.load_state_dict(load_file(d / HEAD_WEIGHTS_FILE))
        head.meta = doc.get("meta", {})
        return head.eval()

    @staticmethod
    def read_meta(directory: str | Path) -> dict:
        return json.loads((Path(directory) / HEAD_CONFIG_FILE).read_text()).get("meta", {})


# --- the router with its head ---------------------------------------------------------------


def router_checksum(router_dir: str | Path) -> str:
    """Short hash of the router's weights: a head records it to say which router it fits."""
    files = sorted(Path(router_dir).glob("*.safetensors"))
    files = [f for f in files if f.name != HEAD_WEIGHTS_FILE]
    if not files:
        raise FileNotFoundError(f"no router weights (*.safetensors) in {router_dir}")
    h = hashlib.sha256()
    for f in files:
        h.update(f.read_bytes())
    return h.hexdigest()[:16]


def check_head(
    router_dir: str | Path, head_dir: str | Path | None = None, *, allow_mismatch: bool = False
) -> str | None:
    """Whether the head in `head_dir` (default: the router folder) was trained for this router.

    Its confidence describes the router whose checksum its meta records (`router_checksum`);
    on another router it is a number about something else. None when it fits, when there is no
    head, or when the meta records no checksum (a head from before checksums were recorded:
    accepted, as there is no evidence against it). Otherwise raises
    `calibration.identity.IdentityMismatch` naming both sides, or, under `allow_mismatch`,
    returns the description for the caller to report loudly. Reads files only (no model), so
    a cached replay checks the same way as a fresh one."""
    router_dir = Path(router_dir).expanduser()
    head_dir = Path(head_dir).expanduser() if head_dir else router_dir
    if not ConfidenceHead.exists(head_dir):
        return None
    trained_for = ConfidenceHead.read_meta(head_dir).get("router_checksum")
    current = router_checksum(router_dir)
    if trained_for is None or trained_for == current:
        return None
    problem = (
        f"router: the confidence head in {head_dir} was trained for router {trained_for}, "
        f"the router in {router_dir} is {current}"
    )
    if not allow_mismatch:
        raise IdentityMismatch(
            f"{problem}\nRetrain the head for this router (python -m calibration train, or "
            "`make zoo` for the zoo), or set `allow_mismatch: true` under calibration to serve "
            "it anyway."
        )
    return problem


@dataclass(frozen=True)
class RouterOutput:
    """One batch of routing decisions; tensors are on the CPU, rows follow the prompts."""

    policies: list[str]  # argmax label per prompt, e.g. "standard" / "complex"
    probabilities: torch.Tensor  # (B, C) softmax of the router's logits
    logits: torch.Tensor  # (B, C)
    hidden: torch.Tensor  # (B, H) pooled last hidden state (what the classifier reads)
    confidence: torch.Tensor  # (B,) P(policy is right) from the head, else max probability
    confidence_source: ConfidenceSource
    labels: tuple[str, ...]  # class index -> label

    def to_dicts(self) -> list[dict]:
        """JSON-ready rows for a response body."""
        return [
            {
                "policy": p,
                "probabilities": dict(zip(self.labels, probs, strict=True)),
                "confidence": conf,
                "confidence_source": self.confidence_source,
            }
            for p, probs, conf in zip(
                self.policies, self.probabilities.tolist(), self.confidence.tolist(), strict=True
            )
        ]


class RouterWithHead:
    """A saved sequence-classification router plus (if present) its confidence head.

    `head_dir` defaults to the router folder itself; `load_head=False` ignores any head. A head
    whose metadata names another router checkpoint (`router_checksum`) is refused
    (`IdentityMismatch`, see `check_head`): its confidence would describe a different router.
    With `allow_mismatch` (the config's `calibration.allow_mismatch`) it is served anyway, with
    a WARNING, and `head_mismatch` says how it differs (None otherwise). A head whose meta
    records no checksum is accepted. `trust_remote_code` stays off unless the
    checkpoint is known and needs it. `device`/`dtype` ("auto", "cpu"/"cuda",
    "float32"/"bfloat16"/"float16") are the config's; `self.device`/`self.dtype` what they
    resolved to here.
    """

    def __init__(
        self,
        router_dir: str | Path,
        head_dir: str | Path | None = None,
        trust_remote_code: bool = False,
        batch_size: int = 256,
        load_head: bool = True,
        device: str = "auto",
        dtype: str = "auto",
        allow_mismatch: bool = False,
    ):
        self.router_dir = Path(router_dir).expanduser()
        if not (self.router_dir / "config.json").is_file():
            raise FileNotFoundError(f"no router checkpoint (config.json) in {self.router_dir}")
        from transformers import AutoModelForSequenceClassification, AutoTokenizer  # heavy: lazy

        self.device, self.dtype = resolve_device_dtype(device, dtype)  # refuses before loading
        kw = {"trust_remote_code": trust_remote_code}
        self.tokenizer = AutoTokenizer.from_pretrained(self.router_dir, **kw)
        self.model = AutoModelForSequenceClassification.from_pretrained(
            self.router_dir, dtype=self.dtype, **kw
        )
        self.model.to(self.device).eval()
        if not isinstance(getattr(self.model, "score", None), nn.Linear):
            raise ValueError(
                f"{type(self.model).__name__} has no last-token `score` classifier; "
                "RouterWithHead supports decoder-style routers (Gemma, Llama, ...)"
            )
        cfg = self.model.config
        self.labels = tuple(cfg.id2label[i] for i in range(cfg.num_labels))
        self.batch_size = batch_size
        head_dir = Path(head_dir).expanduser() if head_dir else self.router_dir
        self.head = None
        self.head_mismatch: str | None = None  # set when a mismatched head is served anyway
        if load_head and ConfidenceHead.exists(head_dir):
            self.head = ConfidenceHead.load(head_dir).float().to(self.device)
            if self.head.config.in_dim != cfg.hidden_size:
                raise ValueError(
                    f"confidence head in {head_dir} expects hidden size "
                    f"{self.head.config.in_dim}, the router has {cfg.hidden_size}"
                )
            self.head_mismatch = check_head(
                self.router_dir, head_dir, allow_mismatch=allow_mismatch
            )
            if self.head_mismatch:
                logger.warning(
                    "confidence head served anyway (allow_mismatch): %s", self.head_mismatch
                )

    @property
    def confidence_source(self) -> ConfidenceSource:
        return "confidence_head" if self.head is not None else "max_probability"

    @property
    def placement(self) -> dict[str, str]:
        """Where the router runs, for logs and /stats: {"device": "cuda", "dtype": "bfloat16"}."""
        return {"device": str(self.device), "dtype": str(self.dtype).removeprefix("torch.")}

    def encode(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """prompts -> (logits (B, C), pooled hidden (B, H)), float32 on the CPU, in batches of
        `batch_size`."""
        logits, hidden = self._encode(prompts)
        return logits.cpu(), hidden.cpu()

    @torch.no_grad()  # not inference_mode: callers may train on the returned tensors
    def _encode(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """`encode` on the router's device: float32 logits and hidden states, left there for
        the head."""
        if isinstance(prompts, str) or not prompts:
            raise ValueError(f"prompts must be a non-empty list of strings, got {prompts!r:.80}")
        if not all(isinstance(p, str) for p in prompts):
            bad = next(p for p in prompts if not isinstance(p, str))
            raise ValueError(f"every prompt must be a string, got {type(bad).__name__}: {bad!r}")
        logits, hidden = [], []
        for i in range(0, len(prompts), self.batch_size):
            enc = self.tokenizer(
                prompts[i : i + self.batch_size], return_tensors="pt", padding=True
            ).to(self.device)
            h = self.model.base_model(**enc).last_hidden_state  # (B, T, H), after the final norm
            mask = enc["attention_mask"]  # (B, T), 1 on real tokens, left or right padded
            positions = torch.arange(mask.shape[1], device=self.device)  # (T,)
            last = (positions * mask).argmax(-1)  # (B,) index of the last real token
            pooled = h[torch.arange(h.shape[0], device=self.device), last]  # (B, H), model dtype
            logits.append(self.model.score(pooled).float())  # (B, C), as the classifier does
            hidden.append(pooled.float())  # float32: the head's standardisation expects it
        return torch.cat(logits), torch.cat(hidden)

    def __call__(self, prompts: list[str]) -> RouterOutput:
        logits, hidden = self._encode(prompts)  # (B, C), (B, H), float32 on self.device
        probs = logits.softmax(-1)  # (B, C)
        # (B,) the head's P(right), else the router's own max probability
        head = self.head
        confidence = head.confidence(hidden) if head is not None else probs.max(-1).values
        return RouterOutput(
            policies=[self.labels[i] for i in probs.argmax(-1).tolist()],
            probabilities=probs.cpu(),
            logits=logits.cpu(),
            hidden=hidden.cpu(),
            confidence=confidence.cpu(),
            confidence_source=self.confidence_source,
            labels=self.labels,
        )
