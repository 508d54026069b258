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

    python -m calibration train --reward brier log linear    # heads under artifacts/heads/
    python -m calibration train --num-workers 2              # the same, on Ray Train

`train_default_head(zoo_root)` is what the zoo build calls: labels, SFT, RL, saved beside the
router.
"""

from __future__ import annotations

import contextlib
import copy
import math
import os
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn as nn

from calibration.labels import LabelSet
from calibration.metrics import summarize
from models.router_model import ConfidenceHead, ConfidenceHeadConfig, router_checksum

__all__ = [
    "DEFAULT_HEAD_REWARD",
    "REWARDS",
    "RLConfig",
    "SFTConfig",
    "calibration_loss",
    "fit_head",
    "fit_rl",
    "fit_sft",
    "ranking_loss",
    "ray_session",
    "train_default_head",
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
    ranking_margin: float = 0.1
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


_LOOPS = {"sft": train_sft, "rl": train_rl}


# --- from label sets to a trained head (in-process or on Ray Train) ---------------------------


def _tensors(train: LabelSet, val: LabelSet) -> tuple[torch.Tensor, ...]:
    return train.hidden.float(), train.correct, val.hidden.float(), val.correct


def _new_head(train: LabelSet, cfg: SFTConfig) -> ConfidenceHead:
    torch.manual_seed(cfg.seed)
    head_cfg = ConfidenceHeadConfig(
        in_dim=train.hidden.shape[1], width=cfg.width, dropout=cfg.dropout
    )
    head = ConfidenceHead(head_cfg)
    head.fit_standardizer(train.hidden.float())  # statistics of the training split only
    return head


def _summaries(stages: list, histories: list[list[dict]], num_workers: int) -> dict:
    out = {}
    for (stage, cfg), history in zip(stages, histories, strict=True):
        if stage == "sft":
            best = min(history, key=lambda h: h["brier"])  # the state train_sft restored
            validation = {k: v for k, v in best.items() if k not in ("epoch", "train_brier")}
            extra = {"epochs": len(history), "best_epoch": best["epoch"]}
        else:
            validation = {k: v for k, v in history[-1].items() if k not in ("step", "reward", "k")}
            extra = {"validation_start": history[0], "final_concentration": history[-1]["k"]}
        out[stage] = {
            "stage": stage,
            "config": asdict(cfg),
            "validation": validation,
            "num_workers": num_workers,
            **extra,
        }
    return out


def fit_head(
    train: LabelSet,
    val: LabelSet,
    sft: SFTConfig = SFTConfig(),
    rl: RLConfig | None = RLConfig(),
    num_workers: int = 1,
) -> tuple[ConfidenceHead, dict]:
    """A fresh head (standardised on `train`): SFT with early stopping on `val`, then (unless
    `rl` is None) RL from the SFT checkpoint; both stages in one Ray Train run if N > 1."""
    head = _new_head(train, sft)
    stages = [("sft", sft)] + ([("rl", rl)] if rl is not None else [])
    t0 = time.time()
    histories = _train_stages(head, stages, _tensors(train, val), num_workers)
    return head, {
        **_summaries(stages, histories, num_workers),
        "seconds": round(time.time() - t0, 2),
    }


def fit_sft(
    train: LabelSet, val: LabelSet, cfg: SFTConfig = SFTConfig(), num_workers: int = 1
) -> tuple[ConfidenceHead, dict]:
    """SFT only; returns (head, the "sft" summary)."""
    head, summary = fit_head(train, val, cfg, None, num_workers)
    return head, {**summary["sft"], "seconds": summary["seconds"]}


def fit_rl(
    sft_head: ConfidenceHead,
    train: LabelSet,
    val: LabelSet,
    cfg: RLConfig = RLConfig(),
    num_workers: int = 1,
) -> tuple[ConfidenceHead, dict]:
    """RL from a copy of the SFT checkpoint (the SFT head itself is left untouched)."""
    head = copy.deepcopy(sft_head)
    t0 = time.time()
    histories = _train_stages(head, [("rl", cfg)], _tensors(train, val), num_workers)
    summary = _summaries([("rl", cfg)], histories, num_workers)["rl"]
    return head, {**summary, "seconds": round(time.time() - t0, 2)}


def _train_stages(head: ConfidenceHead, stages: list, data: tuple, num_workers: int) -> list:
    """Run [("sft" | "rl", config), ...] on `head` in place; one validation history per stage.

    N = 1 runs in this process; N > 1 runs data-parallel on Ray Train (imported only here).
    """
    if num_workers < 1:
        raise ValueError(f"num_workers must be >= 1, got {num_workers}")
    if num_workers == 1:
        return [_LOOPS[stage](head, *data, cfg) for stage, cfg in stages]
    return _run_on_ray(head, stages, data, num_workers)


def _ray_worker(config: dict) -> None:
    """Runs on every Ray Train worker: DDP-wrap the head, train its shard, rank 0 reports."""
    import ray.train
    import ray.train.torch

    torch.set_num_threads(1)
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    head = ConfidenceHead(config["head_config"])
    head.load_state_dict(config["state"])
    model = ray.train.torch.prepare_model(head)  # DistributedDataParallel over gloo on CPU
    histories = [
        _LOOPS[stage](head, *config["data"], cfg, model=model, rank=rank, world=world)
        for stage, cfg in config["stages"]
    ]
    with tempfile.TemporaryDirectory() as d:
        checkpoint = None
        if rank == 0:
            head.save(d, meta={"histories": histories})
            checkpoint = ray.train.Checkpoint.from_directory(d)
        ray.train.report({"stages": len(histories)}, checkpoint=checkpoint)


@contextlib.contextmanager
def ray_session(num_workers: int):
    """A local Ray (2 CPUs, no dashboard) for the block when N > 1 and none is running, so
    several trainings share one start-up; a no-op for N = 1."""
    if num_workers <= 1:
        yield
        return
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    import ray

    started = not ray.is_initialized()
    if started:
        ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        yield
    finally:
        if started:
            ray.shutdown()


def _run_on_ray(head: ConfidenceHead, stages: list, data: tuple, num_workers: int) -> list:
    """TorchTrainer with N CPU workers, inside `ray_session` (which starts Ray if needed)."""
    with ray_session(num_workers), tempfile.TemporaryDirectory() as storage:
        from ray.train import RunConfig, ScalingConfig
        from ray.train.torch import TorchTrainer

        trainer = TorchTrainer(
            _ray_worker,
            train_loop_config={
                "stages": stages,
                "head_config": head.config,
                "state": head.state_dict(),
                "data": data,
            },
            scaling_config=ScalingConfig(
                num_workers=num_workers,
                use_gpu=False,
                resources_per_worker={"CPU": min(1.0, 2.0 / num_workers)},
            ),
            run_config=RunConfig(storage_path=storage, name="confidence-head"),
        )
        result = trainer.fit()
        if result.checkpoint is None:
            raise RuntimeError(f"Ray Train run returned no checkpoint: {result.error}")
        with result.checkpoint.as_directory() as d:
            trained = ConfidenceHead.load(d)
    head.load_state_dict(trained.state_dict())
    return trained.meta["histories"]


# --- the zoo's default head -------------------------------------------------------------------

DEFAULT_LABELS = {"calibration": 2000, "validation": 1000}  # queries labelled per split
# The reward of the head the zoo serves: log, chosen on the validation split, where its RL stage
# reached ECE 0.027 against Brier's 0.034 (`python -m calibration report`, fitted.*.rl_validation).
DEFAULT_HEAD_REWARD = "log"


def train_default_head(zoo_root: Path, seed: int = 0) -> dict:
    """Label the calibration and validation splits, SFT + RL (default configs), and save the
    head beside the router (`zoo_root/router/confidence_head.*`); returns the summary.

    Meant for the end of the zoo build (about a minute on 2 CPU cores); labels are not cached.
    Runs on one torch thread (restored after): the models are tiny, and on a busy 2-core
    machine more threads only contend.
    """
    prev_threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _train_default_head(Path(zoo_root), seed)
    finally:
        torch.set_num_threads(prev_threads)


def _train_default_head(zoo_root: Path, seed: int) -> dict:
    from calibration.labels import build_labels, zoo_fingerprint
    from models.tasks import sample

    t0 = time.time()
    data = {
        split: build_labels(zoo_root, sample(split, n, seed=seed), progress=False)
        for split, n in DEFAULT_LABELS.items()
    }
    train, val = data["calibration"], data["validation"]
    rl = RLConfig(seed=seed, reward=DEFAULT_HEAD_REWARD)
    head, summary = fit_head(train, val, SFTConfig(seed=seed), rl)
    summary = {
        "method": f"sft_rl_{rl.reward}",
        "labels": {s: {"n": d.n, "router_accuracy": d.router_accuracy} for s, d in data.items()},
        "label_seed": seed,
        "fingerprint": zoo_fingerprint(zoo_root),
        "router_checksum": router_checksum(zoo_root / "router"),
        **summary,
    }
    head.save(zoo_root / "router", meta=summary)
    summary["seconds"] = round(time.time() - t0, 1)
    return summary
