"""Confidence methods behind one interface, so the report and the ablation loop over a registry.

A method is fitted on the head's training split (the calibration split) and the validation
split, then gives every labelled query a confidence that the router's policy is right:

    method = get_method("temperature_scaling").fit(train, val)
    conf = method.confidence(test)          # (N,) numpy, in [0, 1]

- `max_probability`: the router's max class probability.
- `entropy`: 1 - H(p) / log C of the router's policy distribution (a score, not a probability).
- `temperature_scaling`: max probability of softmax(logits / T), T fitted by NLL of the true
  policy on the validation split.
- `sft`, `sft_rl_linear`, `sft_rl_brier`, `sft_rl_log`: the confidence head after SFT, or
  after SFT + RL with that reward (`offline.head.training`).

Head methods save their trained head under `cache_dir/<name>/` with a key of their data and
configs, and reuse it on the next fit with the same key.
"""

from __future__ import annotations

import abc
import hashlib
import json
import math
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

from models.router_model import ConfidenceHead
from offline.head.fitting import fit_rl, fit_sft
from offline.head.labels import LabelSet
from offline.head.training import RLConfig, SFTConfig

__all__ = [
    "METHODS",
    "ConfidenceMethod",
    "HeadMethod",
    "LoadedHead",
    "MaxProbability",
    "NormalisedEntropy",
    "TemperatureScaling",
    "fit_methods",
    "get_method",
]


class ConfidenceMethod(abc.ABC):
    """fit(train, val) once, then confidence(data) -> (N,) probabilities the router is right."""

    name: str = ""

    def fit(self, train: LabelSet, val: LabelSet) -> ConfidenceMethod:
        return self  # nothing to fit by default

    @abc.abstractmethod
    def confidence(self, data: LabelSet) -> np.ndarray: ...

    def info(self) -> dict:
        """What was fitted (shown in the report)."""
        return {}


class MaxProbability(ConfidenceMethod):
    name = "max_probability"

    def confidence(self, data: LabelSet) -> np.ndarray:
        return data.logits.float().softmax(-1).max(-1).values.numpy()  # (N,)


class NormalisedEntropy(ConfidenceMethod):
    name = "entropy"

    def confidence(self, data: LabelSet) -> np.ndarray:
        logp = data.logits.float().log_softmax(-1)  # (N, C)
        h = -(logp.exp() * logp).sum(-1)  # (N,) nats
        return (1 - h / math.log(data.logits.shape[1])).clamp(0, 1).numpy()


class TemperatureScaling(ConfidenceMethod):
    name = "temperature_scaling"

    def __init__(self) -> None:
        self.temperature: float | None = None

    def fit(self, train: LabelSet, val: LabelSet) -> TemperatureScaling:
        """T minimising the NLL of the true policy on `val` (log T searched in [-4, 4])."""
        from scipy.optimize import minimize_scalar

        logits, target = val.logits.double(), val.true_labels  # (M, C), (M,)

        def nll(log_t: float) -> float:
            return torch.nn.functional.cross_entropy(logits / math.exp(log_t), target).item()

        res = minimize_scalar(nll, bounds=(-4.0, 4.0), method="bounded")
        self.temperature = math.exp(res.x)
        return self

    def confidence(self, data: LabelSet) -> np.ndarray:
        if self.temperature is None:
            raise RuntimeError("temperature_scaling: call fit(train, val) before confidence()")
        scaled = data.logits.float() / self.temperature  # (N, C)
        return scaled.softmax(-1).max(-1).values.numpy()

    def info(self) -> dict:
        return {"temperature": self.temperature}


class HeadMethod(ConfidenceMethod):
    """The confidence head: SFT only (`rl=None`) or SFT + RL from the SFT checkpoint.

    `sft_method` (a fitted or fittable SFT-only HeadMethod) lets several RL variants share one
    SFT run; `cache_dir` keeps trained heads between runs.
    """

    def __init__(
        self,
        name: str,
        sft: SFTConfig = SFTConfig(),
        rl: RLConfig | None = None,
        cache_dir: str | Path | None = None,
        num_workers: int = 1,
        sft_method: HeadMethod | None = None,
    ):
        if sft_method is not None and (sft_method.rl is not None or sft_method.sft != sft):
            raise ValueError(f"{name}: sft_method must be SFT-only with the same SFTConfig")
        self.name, self.sft, self.rl = name, sft, rl
        self.cache_dir = Path(cache_dir) if cache_dir else None
        self.num_workers, self.sft_method = num_workers, sft_method
        self.head: ConfidenceHead | None = None
        self.summary: dict = {}
        self.from_cache = False

    def _key(self, train: LabelSet, val: LabelSet) -> str:
        h = hashlib.sha256()
        for data in (train, val):
            h.update(data.hidden.float().numpy().tobytes())
            h.update(data.correct.numpy().tobytes())
        cfgs = [asdict(self.sft), self.rl and asdict(self.rl), self.num_workers]
        h.update(json.dumps(cfgs).encode())
        return h.hexdigest()[:16]

    def fit(self, train: LabelSet, val: LabelSet) -> HeadMethod:
        key = self._key(train, val)
        d = self.cache_dir / self.name if self.cache_dir else None
        if d is not None and ConfidenceHead.exists(d):
            meta = ConfidenceHead.read_meta(d)
            if meta.get("key") == key:
                self.head, self.summary, self.from_cache = ConfidenceHead.load(d), meta, True
                return self
        if self.rl is None:
            self.head, summary = fit_sft(train, val, self.sft, self.num_workers)
            summary = {"sft": summary}
        else:
            sft = self.sft_method or HeadMethod(f"{self.name}_sft", self.sft, None)
            if sft.head is None:
                sft.fit(train, val)
            self.head, rl_summary = fit_rl(sft.head, train, val, self.rl, self.num_workers)
            summary = {"sft": sft.summary["sft"], "rl": rl_summary}
        self.summary = {"method": self.name, "key": key, **summary}
        self.from_cache = False
        if d is not None:
            self.head.save(d, meta=self.summary)
        return self

    def confidence(self, data: LabelSet) -> np.ndarray:
        if self.head is None:
            raise RuntimeError(f"{self.name}: call fit(train, val) before confidence()")
        return self.head.confidence(data.hidden.float()).numpy()

    def info(self) -> dict:
        out = {"from_cache": self.from_cache}
        for stage in ("sft", "rl"):
            if stage in self.summary:
                out[f"{stage}_validation"] = self.summary[stage]["validation"]
        return out


class LoadedHead(ConfidenceMethod):
    """A head already trained and saved, e.g. the one served beside the zoo's router."""

    def __init__(self, directory: str | Path, name: str = "served_head"):
        self.name, self.directory = name, Path(directory)
        self.head = ConfidenceHead.load(self.directory)

    def confidence(self, data: LabelSet) -> np.ndarray:
        return self.head.confidence(data.hidden.float()).numpy()

    def info(self) -> dict:
        return {"directory": str(self.directory), "method": self.head.meta.get("method")}


HEAD_REWARDS = ("linear", "brier", "log")


def _head_factory(name: str, reward: str | None) -> Callable[..., ConfidenceMethod]:
    def make(sft: SFTConfig = SFTConfig(), rl: RLConfig = RLConfig(), **kw) -> ConfidenceMethod:
        return HeadMethod(name, sft, None if reward is None else _with_reward(rl, reward), **kw)

    return make


def _with_reward(rl: RLConfig, reward: str) -> RLConfig:
    return RLConfig(**{**asdict(rl), "reward": reward})


# name -> factory(**options); baselines ignore the head options (sft, rl, cache_dir, ...)
METHODS: dict[str, Callable[..., ConfidenceMethod]] = {
    "max_probability": lambda **_: MaxProbability(),
    "entropy": lambda **_: NormalisedEntropy(),
    "temperature_scaling": lambda **_: TemperatureScaling(),
    "sft": _head_factory("sft", None),
    **{f"sft_rl_{r}": _head_factory(f"sft_rl_{r}", r) for r in HEAD_REWARDS},
}


def get_method(name: str, **options) -> ConfidenceMethod:
    """A fresh, unfitted method from the registry."""
    if name not in METHODS:
        raise ValueError(f"unknown confidence method {name!r}; choose from {list(METHODS)}")
    return METHODS[name](**options)


def fit_methods(
    names: list[str], train: LabelSet, val: LabelSet, **options
) -> dict[str, ConfidenceMethod]:
    """Fit several methods; head variants share one SFT run (and `cache_dir`, if given)."""
    methods = {name: get_method(name, **options) for name in names}
    sft = methods.get("sft")
    if sft is None and any(isinstance(m, HeadMethod) and m.rl for m in methods.values()):
        sft = get_method("sft", **options)
    if sft is not None:
        sft.fit(train, val)  # once, before the RL variants that start from it
    for m in methods.values():
        if isinstance(m, HeadMethod) and m.rl is not None:
            m.sft_method = sft
        if m is not sft:
            m.fit(train, val)
    return methods
