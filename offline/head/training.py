"""Train the confidence head on cached router hidden states: SFT, then RL from the SFT checkpoint.

SFT: Brier (MSE) of the head's mean confidence to the 0/1 target "the router was right", with
early stopping on the validation split's Brier.

RL: the head's Beta(mean * k, (1 - mean) * k) is a stochastic policy over confidences. For each
query K confidences are sampled, each earns a reward from a scoring rule, and REINFORCE with a
leave-one-out baseline (the mean reward of the other K - 1 samples) follows it, plus the design's
calibration loss |mean confidence - accuracy| (weight 0.3) and ranking-margin loss
mean relu(margin - (c_right - c_wrong)) over (right, wrong) pairs of a batch (weight 0.5).
The served confidence is the Beta's mean.

Rewards (`REWARDS`), with p = P(router right | query) and c the sampled confidence:

- `linear` (the seed's): c if right else 1 - c. Its expectation p c + (1 - p)(1 - c) is linear
  in c, so it is maximised at c = 1 whenever p > 1/2 and at c = 0 whenever p < 1/2, not at
  c = p: an *improper* scoring rule. Followed long enough it drives every confidence to 0 or 1
  (1 where p > 1/2, 0 where p < 1/2), so calibration gets worse the longer RL runs: the head
  grows overconfident and ECE tends to E[min(p, 1 - p)], the error of that hard guess. Since
  the router is mostly right, the push is mostly upwards. The calibration loss can pull the
  *mean* back to the accuracy, but not the spread. The ablation measures this.
- `brier`: 1 - (c - y)^2; expectation 1 - (c - p)^2 - p(1 - p), maximised at c = p (proper).
- `log`: y log c + (1 - y) log(1 - c) (c clipped to [1e-4, 1 - 1e-4]); maximised at c = p
  (strictly proper), but unbounded, so its gradient is noisier.

Under a Beta the proper rules also reward a large concentration k (less sampling noise); the
linear rule's expected reward depends only on the mean, so k gets no signal from it.

This module is the plain-torch part: configs, rewards, losses and the two loops (`train_sft`,
`train_rl`), which take tensors and may be handed a DDP-wrapped model. From label sets to a
trained head, in-process or on Ray Train, and the zoo's default head: `offline.head.fitting`.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn as nn

from models.router_model import ConfidenceHead
from offline.head.metrics import summarize

__all__ = [
    "LOOPS",
    "REWARDS",
    "RLConfig",
    "SFTConfig",
    "calibration_loss",
    "ranking_loss",
    "train_rl",
    "train_sft",
]

CLIP = 1e-4  # sampled confidences are clipped to [CLIP, 1 - CLIP] (log reward, log_prob)


@dataclass(frozen=True)
class SFTConfig:
    width: int = 64  # hidden units of the head's MLP
    dropout: float = 0.1
    lr: float = 1e-3
    weight_decay: float = 1e-2
    batch_size: int = 256
    max_epochs: int = 200
    patience: int = 15  # epochs without a better validation Brier before stopping
    seed: int = 0


@dataclass(frozen=True)
class RLConfig:
    reward: str = "brier"  # a key of REWARDS: linear | brier | log
    steps: int = 300  # optimiser steps (fixed budget: no checkpoint picking, so harm shows)
    batch_size: int = 256
    samples: int = 4  # K confidences per query; the baseline is the other K - 1's mean
    lr: float = 3e-4
    calibration_weight: float = 0.3  # weight of |mean confidence - accuracy|
    ranking_weight: float = 0.5  # weight of the ranking-margin loss
    ranking_margin: float = 0.3  # the seed design's margin (issue 13)
    seed: int = 0

    def __post_init__(self) -> None:
        if self.reward not in REWARDS:
            raise ValueError(f"unknown reward {self.reward!r}; choose from {sorted(REWARDS)}")
        if self.samples < 2:
            raise ValueError(
                f"samples must be >= 2 for a leave-one-out baseline, got {self.samples}"
            )


# --- rewards and auxiliary losses ---------------------------------------------------------------


def _linear(c: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return y * c + (1 - y) * (1 - c)


def _brier(c: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return 1 - (c - y) ** 2


def _log(c: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    c = c.clamp(CLIP, 1 - CLIP)
    return y * c.log() + (1 - y) * (1 - c).log()


# (K, B) sampled confidences, (B,) 0/1 targets -> (K, B) rewards; higher is better
REWARDS: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {
    "linear": _linear,
    "brier": _brier,
    "log": _log,
}


def calibration_loss(conf: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """|mean confidence - accuracy| over the batch (the design's calibration term)."""
    return (conf.mean() - y.mean()).abs()


def ranking_loss(conf: torch.Tensor, y: torch.Tensor, margin: float) -> torch.Tensor:
    """mean over (right i, wrong j) pairs of relu(margin - (c_i - c_j)); 0 without pairs."""
    right, wrong = conf[y > 0.5], conf[y <= 0.5]  # (P,), (Q,)
    if right.numel() == 0 or wrong.numel() == 0:
        return conf.sum() * 0.0
    gap = right[:, None] - wrong[None, :]  # (P, Q)
    return torch.relu(margin - gap).mean()


# --- the two training loops (plain torch; `model` may be the DDP-wrapped head) ----------------


def _check_data(head: ConfidenceHead, x: torch.Tensor, y: torch.Tensor, name: str) -> None:
    if x.ndim != 2 or x.shape[1] != head.config.in_dim:
        raise ValueError(
            f"{name} hidden states must be (N, {head.config.in_dim}), got {tuple(x.shape)}"
        )
    if y.ndim != 1 or y.shape[0] != x.shape[0]:
        raise ValueError(f"{name} targets must be (N={x.shape[0]},), got {tuple(y.shape)}")
    if x.shape[0] == 0:
        raise ValueError(f"{name} split is empty")
    if not torch.isin(y, torch.tensor([0.0, 1.0])).all():
        raise ValueError(f"{name} targets must be 0/1, got {y.unique()[:5].tolist()}")


def _val_metrics(head: ConfidenceHead, x_val: torch.Tensor, y_val: torch.Tensor) -> dict:
    m = summarize(head.confidence(x_val).numpy(), y_val.numpy())
    return {k: m[k] for k in ("ece", "brier", "auroc", "mean_confidence")}


def _shard(n: int, rank: int, world: int, gen: torch.Generator) -> torch.Tensor:
    """This rank's slice of a fresh permutation; every rank gets the same length (DDP)."""
    per_rank = n // world
    if per_rank == 0:
        raise ValueError(f"{n} training rows cannot be split over {world} workers")
    return torch.randperm(n, generator=gen)[: per_rank * world][rank::world]  # (per_rank,)


def train_sft(
    head: ConfidenceHead,
    x: torch.Tensor,  # (N, H) training hidden states
    y: torch.Tensor,  # (N,) 0/1: the router was right
    x_val: torch.Tensor,  # (M, H)
    y_val: torch.Tensor,  # (M,)
    cfg: SFTConfig = SFTConfig(),
    model: nn.Module | None = None,
    rank: int = 0,
    world: int = 1,
) -> list[dict]:
    """Brier loss on the head's mean; keeps the epoch with the best validation Brier."""
    _check_data(head, x, y, "training")
    _check_data(head, x_val, y_val, "validation")
    model = model or head
    torch.manual_seed(cfg.seed * 1000 + rank)  # dropout masks differ per rank
    gen = torch.Generator().manual_seed(cfg.seed)  # the same permutation on every rank
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    best, best_state, stale, history = math.inf, copy.deepcopy(head.state_dict()), 0, []
    for epoch in range(cfg.max_epochs):
        model.train()
        for idx in _shard(len(x), rank, world, gen).split(cfg.batch_size):
            mean, _ = model(x[idx])  # (b,)
            loss = torch.nn.functional.mse_loss(mean, y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        val = _val_metrics(head, x_val, y_val)
        history.append({"epoch": epoch, "train_brier": loss.item(), **val})
        if val["brier"] < best - 1e-6:
            best, best_state, stale = val["brier"], copy.deepcopy(head.state_dict()), 0
        else:
            stale += 1
            if stale >= cfg.patience:
                break
    head.load_state_dict(best_state)
    head.eval()
    return history


def train_rl(
    head: ConfidenceHead,
    x: torch.Tensor,  # (N, H)
    y: torch.Tensor,  # (N,)
    x_val: torch.Tensor,  # (M, H)
    y_val: torch.Tensor,  # (M,)
    cfg: RLConfig = RLConfig(),
    model: nn.Module | None = None,
    rank: int = 0,
    world: int = 1,
) -> list[dict]:
    """REINFORCE on the head's Beta (leave-one-out baseline) + calibration + ranking losses.

    Runs a fixed number of steps from the head as given (the SFT checkpoint) and keeps the
    last state, so an improper reward's effect is not hidden by checkpoint picking.
    """
    _check_data(head, x, y, "training")
    _check_data(head, x_val, y_val, "validation")
    model = model or head
    reward_fn = REWARDS[cfg.reward]
    torch.manual_seed(cfg.seed * 1000 + rank)  # Beta samples and dropout differ per rank
    gen = torch.Generator().manual_seed(cfg.seed)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    history = [{"step": 0, **_val_metrics(head, x_val, y_val)}]
    order, pos = _shard(len(x), rank, world, gen), 0
    for step in range(1, cfg.steps + 1):
        if pos + cfg.batch_size > len(order):
            order, pos = _shard(len(x), rank, world, gen), 0
        idx = order[pos : pos + cfg.batch_size]  # (B,)
        pos += cfg.batch_size
        model.train()
        mean, k = model(x[idx])  # (B,), (B,)
        m = mean.clamp(ConfidenceHead.EPS, 1 - ConfidenceHead.EPS)
        beta = torch.distributions.Beta(m * k, (1 - m) * k)
        c = beta.sample((cfg.samples,)).clamp(CLIP, 1 - CLIP)  # (K, B)
        r = reward_fn(c, y[idx])  # (K, B)
        baseline = (r.sum(0, keepdim=True) - r) / (cfg.samples - 1)  # (K, B) leave-one-out
        pg = -((r - baseline) * beta.log_prob(c)).mean()
        loss = (
            pg
            + cfg.calibration_weight * calibration_loss(mean, y[idx])
            + cfg.ranking_weight * ranking_loss(mean, y[idx], cfg.ranking_margin)
        )
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        if step % max(1, cfg.steps // 10) == 0 or step == cfg.steps:
            val = _val_metrics(head, x_val, y_val)
            history.append({"step": step, "reward": r.mean().item(), "k": k.mean().item(), **val})
    head.eval()
    return history


# a stage name of `fitting.fit_head` -> its loop
LOOPS = {"sft": train_sft, "rl": train_rl}
