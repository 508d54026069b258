"""SFT and RL of the confidence head on synthetic hidden states where the truth is known."""

import copy

import pytest
import torch

import offline.head.fitting as hf
from models.router_model import ConfidenceHead, ConfidenceHeadConfig, RouterWithHead
from models.zoo_build import ensure_models
from offline.head.fitting import fit_head, train_default_head
from offline.head.labels import LabelRecord, LabelSet
from offline.head.metrics import ece
from offline.head.training import (
    REWARDS,
    RLConfig,
    SFTConfig,
    calibration_loss,
    ranking_loss,
    train_rl,
    train_sft,
)

DIM = 16


pytestmark = pytest.mark.usefixtures("one_thread")


def synthetic(n: int, seed: int, shift: float = 1.6):
    """Hidden states x (n, DIM) and y ~ Bernoulli(sigmoid(w.x + shift)): the router is right
    about 70% of the time, and x tells how likely."""
    w = torch.randn(DIM, generator=torch.Generator().manual_seed(99)) * 0.6
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, DIM, generator=g)
    y = (torch.rand(n, generator=g) < torch.sigmoid(x @ w + shift)).float()
    return x, y


def as_label_set(x: torch.Tensor, y: torch.Tensor) -> LabelSet:
    records = [
        LabelRecord(
            query=f"q{i}",
            family="add",
            difficulty=1,
            router_policy="standard",
            p_complex=0.2,
            cheap_judgement="correct" if ok else "incorrect",
            strong_judgement="correct",
            true_policy="standard" if ok else "complex",
            is_correct=bool(ok),
            target_confidence=float(ok),
        )
        for i, ok in enumerate(y.tolist())
    ]
    return LabelSet(records, x, torch.zeros(len(x), 2))


@pytest.fixture(scope="module")
def data():
    return synthetic(3000, 0), synthetic(1500, 1), synthetic(3000, 2)


@pytest.fixture(scope="module")
def sft_head(data):
    (x, y), (xv, yv), _ = data
    head = ConfidenceHead(ConfidenceHeadConfig(in_dim=DIM))
    head.fit_standardizer(x)
    history = train_sft(head, x, y, xv, yv, SFTConfig(max_epochs=60, patience=10))
    return head, history


def _ece(head, xy):
    x, y = xy
    return ece(head.confidence(x).numpy(), y.numpy())


def test_sft_loss_falls(data):
    (x, y), (xv, yv), _ = data
    x, y = x[:400], y[:400]  # a small split
    head = ConfidenceHead(ConfidenceHeadConfig(in_dim=DIM))
    head.fit_standardizer(x)
    before = torch.mean((head.confidence(x) - y) ** 2).item()
    history = train_sft(head, x, y, xv, yv, SFTConfig(max_epochs=30, patience=30))
    after = torch.mean((head.confidence(x) - y) ** 2).item()
    assert after < before - 0.02
    assert min(h["brier"] for h in history) < history[0]["brier"]


def test_sft_is_calibrated_and_keeps_its_best_epoch(sft_head, data):
    head, history = sft_head
    best = min(history, key=lambda h: h["brier"])
    (_, _), (xv, yv), test = data
    assert torch.mean((head.confidence(xv) - yv) ** 2).item() == pytest.approx(best["brier"])
    assert _ece(head, test) < 0.05


def test_rl_repairs_a_deliberately_miscalibrated_sft(sft_head, data):
    (x, y), (xv, yv), test = data
    bad = copy.deepcopy(sft_head[0])
    with torch.no_grad():
        bad.fc2.bias[0] += 1.5  # overconfident: every logit shifted up
    before = _ece(bad, test)
    history = train_rl(bad, x, y, xv, yv, RLConfig(reward="brier"))
    after = _ece(bad, test)
    assert before > 0.08
    assert after <= before and after < 0.05
    assert history[-1]["ece"] < history[0]["ece"]


def test_rl_keeps_a_calibrated_sft_calibrated(sft_head, data):
    (x, y), (xv, yv), test = data
    head = copy.deepcopy(sft_head[0])
    before = _ece(head, test)
    train_rl(head, x, y, xv, yv, RLConfig(reward="brier"))
    assert _ece(head, test) <= before + 0.01


def test_linear_reward_pushes_confidences_to_the_extremes(sft_head, data):
    """The improper rule: without the auxiliary losses it sharpens past the truth."""
    (x, y), (xv, yv), test = data
    runs = {}
    for reward in ("linear", "brier"):
        head = copy.deepcopy(sft_head[0])
        cfg = RLConfig(reward=reward, steps=600, calibration_weight=0.0, ranking_weight=0.0)
        train_rl(head, x, y, xv, yv, cfg)
        runs[reward] = head
    spread = {r: (h.confidence(test[0]) - 0.5).abs().mean().item() for r, h in runs.items()}
    assert spread["linear"] > spread["brier"] + 0.02
    assert _ece(runs["linear"], test) > _ece(runs["brier"], test)


@pytest.mark.parametrize("p", [0.2, 0.7, 0.9])
def test_only_the_proper_rewards_peak_at_the_truth(p):
    c = torch.linspace(0.01, 0.99, 99)
    best = {}
    for name, fn in REWARDS.items():
        expected = p * fn(c, torch.ones_like(c)) + (1 - p) * fn(c, torch.zeros_like(c))
        best[name] = c[expected.argmax()].item()
    assert best["brier"] == pytest.approx(p, abs=0.011)
    assert best["log"] == pytest.approx(p, abs=0.011)
    assert best["linear"] in (pytest.approx(0.01), pytest.approx(0.99))


def test_auxiliary_losses():
    conf, y = torch.tensor([0.9, 0.8, 0.3, 0.85]), torch.tensor([1.0, 1.0, 0.0, 0.0])
    assert calibration_loss(conf, y).item() == pytest.approx(abs(0.7125 - 0.5))
    # pairs (right, wrong): (.9,.3) (.9,.85) (.8,.3) (.8,.85); margin 0.1
    expected = (0 + 0.05 + 0 + 0.15) / 4
    assert ranking_loss(conf, y, 0.1).item() == pytest.approx(expected)
    assert ranking_loss(conf, torch.ones(4), 0.1).item() == 0.0
    # at the design's default margin 0.3: (0, .25, 0, .35)
    margin = RLConfig().ranking_margin
    assert margin == 0.3
    assert ranking_loss(conf, y, margin).item() == pytest.approx((0 + 0.25 + 0 + 0.35) / 4)


def test_fit_head_on_label_sets(data):
    (x, y), (xv, yv), _ = data
    head, summary = fit_head(
        as_label_set(x[:800], y[:800]),
        as_label_set(xv[:400], yv[:400]),
        SFTConfig(max_epochs=10),
        RLConfig(steps=20),
    )
    assert set(summary) == {"sft", "rl", "seconds"}
    assert summary["rl"]["validation_start"]["brier"] == pytest.approx(
        summary["sft"]["validation"]["brier"]
    )
    assert head.confidence(x[:5]).shape == (5,)


def test_bad_inputs_raise_clear_errors(sft_head, data):
    head = sft_head[0]
    (x, y), (xv, yv), _ = data
    with pytest.raises(ValueError, match="training split is empty"):
        train_sft(head, x[:0], y[:0], xv, yv)
    with pytest.raises(ValueError, match=r"training hidden states must be \(N, 16\)"):
        train_sft(head, x[:, :8], y, xv, yv)
    with pytest.raises(ValueError, match=r"validation targets must be \(N=1500,\)"):
        train_rl(head, x, y, xv, yv[:10])
    with pytest.raises(ValueError, match="0/1"):
        train_sft(head, x, y * 2, xv, yv)
    with pytest.raises(ValueError, match="unknown reward 'hinge'"):
        RLConfig(reward="hinge")
    with pytest.raises(ValueError, match="samples must be >= 2"):
        RLConfig(samples=1)
    with pytest.raises(ValueError, match="num_workers"):
        fit_head(as_label_set(x[:50], y[:50]), as_label_set(xv[:50], yv[:50]), num_workers=0)


def test_train_default_head_saves_a_head_the_router_serves(tmp_path, monkeypatch, tiny_zoo_spec):
    root = tmp_path / "zoo"
    ensure_models(root, tiny_zoo_spec)
    monkeypatch.setattr(hf, "DEFAULT_LABELS", {"calibration": 300, "validation": 150})
    summary = train_default_head(root, seed=0)
    assert summary["method"] == "sft_rl_log" and summary["seconds"] > 0
    assert summary["labels"]["calibration"]["n"] == 300
    router = RouterWithHead(root / "router")
    assert router.confidence_source == "confidence_head"
    assert router(["1+2"]).confidence.shape == (1,)
    assert torch.get_num_threads() == 1  # restored to the module's setting


@pytest.mark.slow
def test_ray_train_two_workers(data):
    """`--num-workers 2`: the same stages on Ray Train's TorchTrainer (DDP over gloo)."""
    (x, y), (xv, yv), test = data
    head, summary = fit_head(
        as_label_set(x[:1000], y[:1000]),
        as_label_set(xv[:500], yv[:500]),
        SFTConfig(max_epochs=80, patience=10, batch_size=64),
        RLConfig(steps=50, batch_size=64),
        num_workers=2,
    )
    assert summary["sft"]["num_workers"] == summary["rl"]["num_workers"] == 2
    assert summary["sft"]["epochs"] >= 1
    assert summary["rl"]["validation_start"]["brier"] == pytest.approx(
        summary["sft"]["validation"]["brier"]
    )
    assert _ece(head, test) < 0.06
