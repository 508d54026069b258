"""From label sets to a trained confidence head: SFT then RL (`offline.head.training`'s loops),
in this process or data-parallel on Ray Train, and the head the zoo serves.

- `fit_head(train, val, sft, rl, num_workers)`: a fresh head standardised on `train`, SFT with
  early stopping on `val`, then RL from the SFT checkpoint; `fit_sft` / `fit_rl` run one stage.
- N = 1 worker trains in-process; N > 1 (or `use_gpu`) runs both stages in one Ray Train
  `TorchTrainer` run (`_run_on_ray`: `ScalingConfig(num_workers=N, use_gpu=...)`, DDP over
  gloo on CPU, NCCL on GPUs), inside `ray_session`, which joins the Ray cluster already
  running (RAY_ADDRESS, or a `ray.init` of the caller) unchanged, else starts a local Ray, so
  several trainings share one start-up. `use_gpu` without a GPU is refused (`NoGPU`) before
  any Ray starts.
- `train_default_head(zoo_root)` is what the zoo build calls: labels, SFT, RL, saved beside the
  router.

    python -m calibration train --reward brier log linear    # heads under artifacts/heads/
    python -m calibration train --workers 2                  # the same, on Ray Train
    python -m calibration train --workers 2 --gpu            # on 2 GPU workers
"""

from __future__ import annotations

import contextlib
import contextvars
import copy
import os
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

import torch

from models.router_model import ConfidenceHead, ConfidenceHeadConfig, router_checksum
from offline.head.labels import LabelSet
from offline.head.training import LOOPS, RLConfig, SFTConfig

__all__ = [
    "DEFAULT_HEAD_REWARD",
    "DEFAULT_LABELS",
    "NoGPU",
    "check_gpu",
    "fit_head",
    "fit_rl",
    "fit_sft",
    "ray_session",
    "train_default_head",
]

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

    N = 1 on CPU runs in this process; N > 1, or GPU workers (`ray_session(use_gpu=True)`),
    run data-parallel on Ray Train (imported only here).
    """
    if num_workers < 1:
        raise ValueError(f"num_workers must be >= 1, got {num_workers}")
    if num_workers == 1 and not _USE_GPU.get():
        return [LOOPS[stage](head, *data, cfg) for stage, cfg in stages]
    return _run_on_ray(head, stages, data, num_workers)


class _DeviceHead(ConfidenceHead):
    """The head on a GPU worker: its inputs go to its device, its outputs come back to the
    CPU, so the training loops (and their numpy validation metrics) see CPU tensors whatever
    device the weights are on."""

    def forward(self, hidden: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mean, concentration = super().forward(hidden.to(self.shift.device))
        return mean.cpu(), concentration.cpu()


def _ray_worker(config: dict) -> None:
    """Runs on every Ray Train worker: DDP-wrap the head, train its shard, rank 0 reports."""
    import ray.train
    import ray.train.torch

    torch.set_num_threads(1)
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    head = _DeviceHead(config["head_config"])
    head.load_state_dict(config["state"])
    model = ray.train.torch.prepare_model(head)  # DDP: gloo on CPU, on its GPU with use_gpu
    histories = [
        LOOPS[stage](head, *config["data"], cfg, model=model, rank=rank, world=world)
        for stage, cfg in config["stages"]
    ]
    with tempfile.TemporaryDirectory() as d:
        checkpoint = None
        if rank == 0:
            head.save(d, meta={"histories": histories})
            checkpoint = ray.train.Checkpoint.from_directory(d)
        ray.train.report({"stages": len(histories)}, checkpoint=checkpoint)


class NoGPU(RuntimeError):
    """GPU workers were asked for where neither torch nor the Ray cluster sees a GPU."""


# Whether this `ray_session`'s trainings use GPU workers: set by the session, so callers that
# pass only `num_workers` down (the confidence methods) train where the session says.
_USE_GPU: contextvars.ContextVar[bool] = contextvars.ContextVar("head_use_gpu", default=False)


def _no_gpu(where: str) -> NoGPU:
    return NoGPU(
        f"--gpu: no GPU is visible to {where}, so Ray Train cannot place GPU workers; "
        "drop --gpu to train on CPU workers, or run where a GPU (or a Ray cluster with GPUs) is"
    )


def check_gpu(use_gpu: bool) -> None:
    """NoGPU when GPU workers are asked for, torch sees no GPU and no Ray cluster is running
    (RAY_ADDRESS, or an initialised Ray) whose GPUs could serve: checked before Ray starts, and
    by callers before work that would be wasted (labelling)."""
    if not use_gpu or torch.cuda.is_available() or os.environ.get("RAY_ADDRESS"):
        return
    import ray

    if not ray.is_initialized():
        raise _no_gpu("torch (torch.cuda.is_available() is False) and no Ray cluster is running")


@contextlib.contextmanager
def ray_session(num_workers: int, use_gpu: bool = False):
    """Ray for the block when N > 1 or `use_gpu`: the cluster already running (RAY_ADDRESS, or
    an initialised Ray) used unchanged, else a local one (2 CPUs, no dashboard) started and
    shut down here, so several trainings share one start-up; a no-op for N = 1 on CPU.
    `use_gpu` with no GPU in sight raises NoGPU, before Ray starts when none is running."""
    if num_workers <= 1 and not use_gpu:
        yield
        return
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    import ray

    check_gpu(use_gpu)
    joined = ray.is_initialized() or bool(os.environ.get("RAY_ADDRESS"))
    started = not ray.is_initialized()
    if started and joined:
        ray.init(log_to_driver=False)  # connects to RAY_ADDRESS; the cluster stays as it is
    elif started:
        ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    token = _USE_GPU.set(use_gpu)
    try:
        if use_gpu and ray.cluster_resources().get("GPU", 0) < 1:
            raise _no_gpu("the Ray cluster (it has no GPU resource)")
        yield
    finally:
        _USE_GPU.reset(token)
        if started:
            ray.shutdown()  # from a joined cluster this only disconnects


def _scaling(num_workers: int, use_gpu: bool):
    """Ray Train's ScalingConfig: N workers, one GPU each with `use_gpu`, else a CPU share
    that fits N workers on the 2 CPUs of the local Ray."""
    from ray.train import ScalingConfig

    if use_gpu:
        return ScalingConfig(num_workers=num_workers, use_gpu=True)
    return ScalingConfig(
        num_workers=num_workers,
        use_gpu=False,
        resources_per_worker={"CPU": min(1.0, 2.0 / num_workers)},
    )


def _run_on_ray(head: ConfidenceHead, stages: list, data: tuple, num_workers: int) -> list:
    """TorchTrainer with N workers (GPU ones inside `ray_session(use_gpu=True)`), inside
    `ray_session` (which starts Ray if needed)."""
    use_gpu = _USE_GPU.get()
    with ray_session(num_workers, use_gpu), tempfile.TemporaryDirectory() as storage:
        from ray.train import RunConfig
        from ray.train.torch import TorchTrainer

        trainer = TorchTrainer(
            _ray_worker,
            train_loop_config={
                "stages": stages,
                "head_config": head.config,
                "state": head.state_dict(),
                "data": data,
            },
            scaling_config=_scaling(num_workers, use_gpu),
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
    from models.tasks import sample
    from offline.head.labels import build_labels, zoo_fingerprint

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
