import json
import threading

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer

from models import zoo as zoo_module
from models.tasks import ALPHABET
from models.zoo import LMSpec, RouterSpec, ZooSpec, ensure_zoo, report, resolve


def test_models_load_back_through_the_auto_classes(zoo):
    cheap = AutoModelForCausalLM.from_pretrained(zoo / "cheap")
    strong = AutoModelForCausalLM.from_pretrained(zoo / "strong")
    router = AutoModelForSequenceClassification.from_pretrained(zoo / "router")
    assert cheap.config.model_type == strong.config.model_type == "llama"
    assert router.config.model_type == "gemma"
    assert router.config.id2label == {0: "standard", 1: "complex"}
    n = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert n(strong) > 4 * n(cheap)
    # vLLM's CPU attention refuses head_dim < 32.
    assert cheap.config.head_dim in (32, 64) and strong.config.head_dim in (32, 64)
    manifest = json.loads((zoo / "manifest.json").read_text())
    assert manifest["spec"]["strong"]["steps"] > manifest["spec"]["cheap"]["steps"]


def test_tokenizer_is_one_token_per_character_and_round_trips(zoo):
    tok = AutoTokenizer.from_pretrained(zoo / "cheap")
    ids = tok(ALPHABET)["input_ids"]
    assert ids[0] == tok.bos_token_id and len(ids) == len(ALPHABET) + 1
    assert tok.decode(ids, skip_special_tokens=True) == ALPHABET
    assert tok("A?")["input_ids"][1:] == [tok.unk_token_id] * 2


def test_chat_template_maps_a_task_prompt_to_the_model_format(zoo):
    tok = AutoTokenizer.from_pretrained(zoo / "strong")
    messages = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "12+34"}]
    assert tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True) == "12+34="


def test_targets_hold_on_a_fresh_seed(zoo):
    # n=400: the standard error of an accuracy is <= 0.025, so the bounds sit ~2 SE inside the
    # issue's targets (cheap in [0.45, 0.80], strong >= 0.92, AUROC >= 0.80, router >= 0.75),
    # which `python -m models.zoo report` checks on the full 1000.
    r = report("test", seed=2024, n=400, root=zoo)
    assert 0.40 <= r["cheap"]["accuracy"] <= 0.85, r
    assert r["strong"]["accuracy"] >= 0.88, r
    assert r["strong"]["accuracy"] - r["cheap"]["accuracy"] >= 0.15, r
    assert r["cheap"]["logprob_auroc"] >= 0.75, r
    assert r["router"]["accuracy"] >= 0.70, r


def test_resolve_passes_real_checkpoints_through_and_rejects_unknown_zoo_names():
    assert resolve("google/gemma-2b") == "google/gemma-2b"
    assert resolve("/models/llama") == "/models/llama"
    with pytest.raises(ValueError, match="unknown zoo model 'zoo:huge'"):
        resolve("zoo:huge")


TINY = ZooSpec(
    seed=3,
    cheap=LMSpec(hidden=32, layers=1, heads=1, intermediate=64, steps=3, batch=8, lr=1e-3),
    strong=LMSpec(hidden=64, layers=1, heads=2, intermediate=64, steps=4, batch=8, lr=1e-3),
    router=RouterSpec(hidden=32, layers=1, heads=1, intermediate=64, label_queries=16, epochs=1),
)


def test_concurrent_first_use_builds_once_and_the_build_is_deterministic(tmp_path, monkeypatch):
    calls = []
    real_build = zoo_module.build
    monkeypatch.setattr(
        zoo_module, "build", lambda root, spec: calls.append(1) or real_build(root, spec)
    )
    threads = [threading.Thread(target=ensure_zoo, args=(tmp_path / "a", TINY)) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert calls == [1]
    ensure_zoo(tmp_path / "b", TINY)
    for name in ("cheap", "strong", "router"):
        a = AutoModelForCausalLM if name != "router" else AutoModelForSequenceClassification
        wa = a.from_pretrained(tmp_path / "a" / name).state_dict()
        wb = a.from_pretrained(tmp_path / "b" / name).state_dict()
        assert all(torch.equal(wa[k], wb[k]) for k in wa), f"{name} differs between two builds"


def test_a_stale_zoo_is_rebuilt(tmp_path, monkeypatch):
    ensure_zoo(tmp_path, TINY)
    manifest = tmp_path / "manifest.json"
    manifest.write_text(json.dumps({"version": -1}))
    ensure_zoo(tmp_path, TINY)
    assert json.loads(manifest.read_text())["version"] == zoo_module.ZOO_VERSION
