"""ConfidenceHead (save/load, shapes) and RouterWithHead on a tiny zoo built in seconds."""

import json
import shutil

import pytest
import torch
from pydantic import ValidationError

from calibration.config import AppArgs
from calibration.identity import IdentityMismatch
from models.router_model import (
    HEAD_CONFIG_FILE,
    HEAD_WEIGHTS_FILE,
    ConfidenceHead,
    ConfidenceHeadConfig,
    RouterWithHead,
    check_head,
    router_checksum,
)
from models.tasks import sample

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def prompts():
    return [t.prompt for t in sample("test", 20, seed=1)]


def _head(in_dim=8, seed=0):
    torch.manual_seed(seed)
    head = ConfidenceHead(ConfidenceHeadConfig(in_dim=in_dim, width=16))
    head.fit_standardizer(torch.randn(50, in_dim) * 3 + 1)
    return head.eval()


def test_head_shapes_and_range():
    head, x = _head(), torch.randn(5, 8)
    mean, k = head(x)
    assert mean.shape == k.shape == (5,)
    assert ((mean > 0) & (mean < 1)).all() and (k > 0).all()
    assert k.mean().item() == pytest.approx(head.config.init_concentration, rel=1e-4)
    c = head.distribution(x).sample((3,))
    assert c.shape == (3, 5)


def test_head_save_load_round_trip(tmp_path):
    head, x = _head(), torch.randn(7, 8)
    head.save(tmp_path, meta={"method": "sft", "note": [1, 2]})
    loaded = ConfidenceHead.load(tmp_path)
    assert loaded.config == head.config
    assert loaded.meta == {"method": "sft", "note": [1, 2]}
    assert torch.equal(loaded.shift, head.shift) and torch.equal(loaded.scale, head.scale)
    assert torch.allclose(loaded.confidence(x), head.confidence(x), atol=0, rtol=0)


def test_head_rejects_wrong_shapes():
    head = _head()
    with pytest.raises(ValueError, match=r"\(B, 8\)"):
        head.confidence(torch.randn(4, 9))
    with pytest.raises(ValueError, match=r"\(B, 8\)"):
        head.confidence(torch.randn(8))


def test_head_config_validates():
    with pytest.raises(ValidationError, match="width"):
        ConfidenceHeadConfig(in_dim=8, width=0)
    with pytest.raises(ValidationError, match="dropout"):
        ConfidenceHeadConfig(in_dim=8, dropout=1.5)


def test_head_load_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="confidence_head"):
        ConfidenceHead.load(tmp_path)
    _head().save(tmp_path)
    (tmp_path / HEAD_CONFIG_FILE).write_text(json.dumps({"format": 1, "config": {"width": 3}}))
    with pytest.raises(ValueError, match=r"bad confidence_head\.json"):
        ConfidenceHead.load(tmp_path)


@torch.no_grad()
def _classifier_p_complex(router_dir, prompts):
    """The checkpoint's own classifier, in one padded batch: what RouterWithHead must match."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(router_dir)
    model = AutoModelForSequenceClassification.from_pretrained(router_dir).eval()
    logits = model(**tok(prompts, return_tensors="pt", padding=True)).logits
    return logits.softmax(-1)[:, model.config.label2id["complex"]]


def test_router_matches_the_classifier_and_falls_back_to_max_probability(tiny_zoo, prompts):
    # uneven batches, padding; cpu/float32 like the reference (auto would pick a GPU's bfloat16)
    router = RouterWithHead(tiny_zoo / "router", batch_size=3, device="cpu", dtype="float32")
    out = router(prompts)
    ref = _classifier_p_complex(tiny_zoo / "router", prompts)
    assert torch.allclose(out.probabilities[:, 1], ref, atol=1e-6)
    assert out.hidden.shape == (20, router.model.config.hidden_size)
    assert torch.allclose(router.model.score(out.hidden), out.logits, atol=1e-6)
    assert out.confidence_source == "max_probability"
    assert torch.equal(out.confidence, out.probabilities.max(-1).values)
    assert out.policies == [router.labels[i] for i in out.probabilities.argmax(-1).tolist()]
    row = out.to_dicts()[0]
    assert set(row["probabilities"]) == {"standard", "complex"}
    assert row["confidence_source"] == "max_probability"


def test_router_uses_a_head_saved_beside_it(tiny_zoo, prompts, tmp_path):
    router_dir = tmp_path / "router"
    shutil.copytree(tiny_zoo / "router", router_dir)
    plain = RouterWithHead(router_dir)
    head = _head(in_dim=plain.model.config.hidden_size)
    head.save(router_dir)
    router = RouterWithHead(router_dir)
    out = router(prompts)
    assert out.confidence_source == "confidence_head"
    assert torch.allclose(out.confidence, head.confidence(out.hidden))
    assert not torch.equal(out.confidence, out.probabilities.max(-1).values)


def test_router_rejects_a_head_of_another_width(tiny_zoo, tmp_path):
    _head(in_dim=5).save(tmp_path)
    with pytest.raises(ValueError, match="hidden size 5"):
        RouterWithHead(tiny_zoo / "router", head_dir=tmp_path)


@pytest.mark.parametrize("bad", [[], "12+3", ["12+3", 7]])
def test_router_rejects_bad_prompts(tiny_zoo, bad):
    with pytest.raises(ValueError, match="prompt"):
        RouterWithHead(tiny_zoo / "router")(bad)


def test_router_dir_must_exist(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"config\.json"):
        RouterWithHead(tmp_path)


def test_a_head_for_another_router_is_refused_unless_allowed(tiny_zoo, prompts, tmp_path, caplog):
    router_dir = tmp_path / "router"
    shutil.copytree(tiny_zoo / "router", router_dir)
    width = RouterWithHead(router_dir).model.config.hidden_size
    current = router_checksum(router_dir)
    _head(in_dim=width).save(router_dir, meta={"router_checksum": "0123456789abcdef"})
    with pytest.raises(IdentityMismatch) as err:
        RouterWithHead(router_dir)  # allow_mismatch=False by default
    text = str(err.value)
    assert "trained for router 0123456789abcdef" in text and current in text
    assert str(router_dir) in text
    assert "python -m calibration train" in text and "allow_mismatch: true" in text
    with pytest.raises(IdentityMismatch):
        check_head(router_dir)  # the file-only check (cached replays) agrees
    with caplog.at_level("WARNING", logger="models.router_model"):
        allowed = RouterWithHead(router_dir, allow_mismatch=True)
    assert "served anyway" in caplog.text and current in caplog.text
    assert allowed.confidence_source == "confidence_head"  # served, loudly
    assert allowed.head_mismatch is not None and "0123456789abcdef" in allowed.head_mismatch
    assert allowed(prompts).confidence_source == "confidence_head"
    assert check_head(router_dir, allow_mismatch=True) == allowed.head_mismatch
    # load_head=False never looks at the head
    assert RouterWithHead(router_dir, load_head=False).confidence_source == "max_probability"
    _head(in_dim=width).save(router_dir, meta={"router_checksum": current})
    fitting = RouterWithHead(router_dir)
    assert fitting.confidence_source == "confidence_head" and fitting.head_mismatch is None


def test_a_changed_router_weight_refuses_its_old_head(tiny_zoo, tmp_path):
    router_dir = tmp_path / "router"
    shutil.copytree(tiny_zoo / "router", router_dir)
    width = RouterWithHead(router_dir).model.config.hidden_size
    trained_for = router_checksum(router_dir)
    _head(in_dim=width).save(router_dir, meta={"router_checksum": trained_for})
    weights = next(f for f in router_dir.glob("*.safetensors") if f.name != HEAD_WEIGHTS_FILE)
    from safetensors.torch import load_file, save_file

    tensors = load_file(weights)
    name = next(iter(tensors))
    tensors[name] = tensors[name] + 1.0  # another router now
    save_file(tensors, weights, metadata={"format": "pt"})
    with pytest.raises(IdentityMismatch, match=trained_for):
        RouterWithHead(router_dir)


def test_a_head_without_a_recorded_checksum_is_accepted(tiny_zoo, tmp_path):
    router_dir = tmp_path / "router"
    shutil.copytree(tiny_zoo / "router", router_dir)
    width = RouterWithHead(router_dir).model.config.hidden_size
    _head(in_dim=width).save(router_dir)  # meta {}: from before checksums were recorded
    router = RouterWithHead(router_dir)
    assert router.confidence_source == "confidence_head" and router.head_mismatch is None


# --- device and dtype (router.device / router.dtype) ------------------------------------------


def test_auto_resolves_to_the_machine_and_bad_choices_are_refused():
    from models.router_device import resolve_device_dtype

    gpu = torch.cuda.is_available()
    auto = (torch.device("cuda" if gpu else "cpu"), torch.bfloat16 if gpu else torch.float32)
    assert resolve_device_dtype("auto", "auto") == auto
    assert resolve_device_dtype("cpu", "auto") == (torch.device("cpu"), torch.float32)
    assert resolve_device_dtype("cpu", "bfloat16") == (torch.device("cpu"), torch.bfloat16)
    with pytest.raises(ValueError, match=r"float16 is not supported on cpu.*float32 or bfloat16"):
        resolve_device_dtype("cpu", "float16")
    with pytest.raises(ValueError, match="device must be auto, cpu or cuda"):
        resolve_device_dtype("tpu", "auto")
    with pytest.raises(ValueError, match="dtype must be one of"):
        resolve_device_dtype("cpu", "float64")


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_cuda_without_a_gpu_is_refused_with_what_to_change(tiny_zoo):
    with pytest.raises(ValueError, match=r"sees no CUDA GPU.*router\.device to auto or cpu"):
        RouterWithHead(tiny_zoo / "router", device="cuda")


def test_bfloat16_router_routes_as_float32_on_the_zoo(zoo, capsys):
    """The GPU config's bfloat16 must not change what is served: same policies (but where the
    float32 probability is within 0.02 of the decision boundary) and confidences within 0.02,
    measured on CPU with the real zoo router and its confidence head."""
    queries = [t.prompt for t in sample("test", 50, seed=3)]
    fp32 = RouterWithHead(zoo / "router", device="cpu", dtype="float32")
    bf16 = RouterWithHead(zoo / "router", device="cpu", dtype="bfloat16")
    assert bf16.model.dtype == torch.bfloat16 and bf16.placement == {
        "device": "cpu",
        "dtype": "bfloat16",
    }
    assert fp32.placement == {"device": "cpu", "dtype": "float32"}
    a, b = fp32(queries), bf16(queries)
    for t in (b.probabilities, b.logits, b.hidden, b.confidence):  # callers see CPU float32
        assert t.dtype == torch.float32 and t.device.type == "cpu"
    assert a.confidence_source == b.confidence_source == "confidence_head"
    assert bf16.head.fc1.weight.dtype == torch.float32  # the head runs in float32
    near = (a.probabilities.max(-1).values - 0.5).abs() < 0.02  # (B,) at the boundary
    same = [x == y for x, y in zip(a.policies, b.policies, strict=True)]
    assert all(s or n for s, n in zip(same, near.tolist(), strict=True))
    # and the served start (complex with confidence >= router.threshold) is the same
    tau = AppArgs.from_serve_config().router.threshold
    top_a, top_b = (
        [
            p == "complex" and c >= tau
            for p, c in zip(o.policies, o.confidence.tolist(), strict=True)
        ]
        for o in (a, b)
    )
    near_tau = ((a.confidence - tau).abs() < 0.02) | near  # (B,)
    assert all(x == y or n for x, y, n in zip(top_a, top_b, near_tau.tolist(), strict=True))
    diff = (a.confidence - b.confidence).abs().max().item()
    with capsys.disabled():
        print(f"\nbf16 vs fp32 on {len(queries)} zoo queries: max |confidence diff| {diff:.5f}")
    assert diff < 0.02


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_on_cuda_auto_is_bfloat16_and_routes_as_cpu_float32(zoo):
    queries = [t.prompt for t in sample("test", 50, seed=3)]
    gpu = RouterWithHead(zoo / "router")  # auto
    assert gpu.placement == {"device": "cuda", "dtype": "bfloat16"}
    assert next(gpu.head.parameters()).device.type == "cuda"
    a, b = RouterWithHead(zoo / "router", device="cpu")(queries), gpu(queries)
    assert b.confidence.device.type == "cpu" and b.confidence.dtype == torch.float32
    near = (a.probabilities.max(-1).values - 0.5).abs() < 0.02  # (B,)
    assert all(x == y or n for x, y, n in zip(a.policies, b.policies, near.tolist(), strict=True))
    assert (a.confidence - b.confidence).abs().max().item() < 0.02
