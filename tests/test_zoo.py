"""The embedded zoo: its checkpoints, finding it (never building), and building it incrementally.

The accuracy tests use the default zoo (`zoo` fixture); the build tests use zoos of a tiny spec
that trains in seconds, so they check the bookkeeping, not the accuracy.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import threading
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer

from models import zoo_build
from models.tasks import ALPHABET
from models.zoo import (
    ZOO_MODELS,
    ZOO_VERSION,
    ZooNotBuiltError,
    ZooStaleError,
    calibration_path,
    read_manifest,
    require_zoo,
    resolve,
)
from models.zoo_build import LMSpec, RouterSpec, ZooSpec, stale_models
from offline.zoo_cli import ensure_zoo, report


def test_models_load_back_through_the_auto_classes(zoo):
    lms = {name: AutoModelForCausalLM.from_pretrained(zoo / name) for name in ZOO_MODELS[:3]}
    router = AutoModelForSequenceClassification.from_pretrained(zoo / "router")
    assert {m.config.model_type for m in lms.values()} == {"llama"}
    assert router.config.model_type == "gemma"
    assert router.config.id2label == {0: "standard", 1: "complex"}
    n = {name: sum(p.numel() for p in m.parameters()) for name, m in lms.items()}
    assert n["strong"] > 4 * n["cheap"] and n["cheap"] < n["mid"] < n["strong"]
    # vLLM's CPU attention refuses head_dim < 32.
    assert all(m.config.head_dim in (32, 64) for m in lms.values())
    spec = json.loads((zoo / "manifest.json").read_text())["spec"]
    assert spec["cheap"]["steps"] < spec["mid"]["steps"] < spec["strong"]["steps"]


def test_tokenizer_is_one_token_per_character_and_round_trips(zoo):
    tok = AutoTokenizer.from_pretrained(zoo / "cheap")
    ids = tok(ALPHABET)["input_ids"]
    assert ids[0] == tok.bos_token_id and len(ids) == len(ALPHABET) + 1
    assert tok.decode(ids, skip_special_tokens=True) == ALPHABET
    assert tok("A?")["input_ids"][1:] == [tok.unk_token_id] * 2


def test_chat_template_maps_a_task_prompt_to_the_model_format(zoo):
    for name in ("strong", "mid"):
        tok = AutoTokenizer.from_pretrained(zoo / name)
        messages = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "12+34"}]
        prompt = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        assert prompt == "12+34="


def test_targets_hold_on_a_fresh_seed(zoo):
    # n=400: the standard error of an accuracy is <= 0.025, so the bounds sit ~2 SE inside the
    # issues' targets (cheap in [0.45, 0.80], mid in [0.80, 0.92], strong >= 0.92, AUROC >= 0.80,
    # router >= 0.75), which `python -m models.zoo report` checks on the full 1000.
    r = report("test", seed=2024, n=400, root=zoo)
    assert 0.40 <= r["cheap"]["accuracy"] <= 0.85, r
    assert 0.75 <= r["mid"]["accuracy"] <= 0.95, r
    assert r["strong"]["accuracy"] >= 0.88, r
    assert r["mid"]["accuracy"] - r["cheap"]["accuracy"] >= 0.08, r
    assert r["strong"]["accuracy"] - r["mid"]["accuracy"] >= 0.04, r
    assert r["cheap"]["logprob_auroc"] >= 0.75, r
    assert r["router"]["accuracy"] >= 0.70, r


def test_resolve_passes_real_checkpoints_through_and_rejects_unknown_zoo_names():
    assert resolve("google/gemma-2b") == "google/gemma-2b"
    assert resolve("/models/llama") == "/models/llama"
    with pytest.raises(ValueError, match="unknown zoo model 'zoo:huge'"):
        resolve("zoo:huge")


def test_resolve_never_builds_and_names_the_build_command(tmp_path, monkeypatch):
    monkeypatch.setenv("CASCADE_ZOO_DIR", str(tmp_path))
    for name in ZOO_MODELS:
        with pytest.raises(
            FileNotFoundError, match=r"no built zoo at .*make zoo.*models\.zoo build"
        ):
            resolve(f"zoo:{name}")
    with pytest.raises(ZooNotBuiltError, match="make zoo"):
        calibration_path()
    with pytest.raises(
        FileNotFoundError, match=re.escape(f"models.zoo build --dir {tmp_path / 'x'}")
    ):
        require_zoo(tmp_path / "x")
    assert list(tmp_path.iterdir()) == []  # nothing was built, not even a lock file


# --- building (tiny zoos) -------------------------------------------------------------------

TINY = ZooSpec(
    seed=3,
    cheap=LMSpec(hidden=32, layers=1, heads=1, intermediate=64, steps=3, batch=8, lr=1e-3),
    strong=LMSpec(hidden=64, layers=1, heads=2, intermediate=64, steps=4, batch=8, lr=1e-3),
    router=RouterSpec(hidden=32, layers=1, heads=1, intermediate=64, label_queries=16, epochs=1),
    mid=LMSpec(hidden=64, layers=1, heads=2, intermediate=32, steps=3, batch=8, lr=1e-3),
)


@pytest.fixture
def trained(monkeypatch) -> list[str]:
    """The names of the models trained during a test, in order."""
    names: list[str] = []
    real = zoo_build._train_one
    monkeypatch.setattr(
        zoo_build,
        "_train_one",
        lambda root, name, spec: names.append(name) or real(root, name, spec),
    )
    return names


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    """One TINY zoo per module; tests that change it work on a copy (`copy_of`)."""
    return ensure_zoo(tmp_path_factory.mktemp("tiny"), TINY)


def copy_of(zoo: Path, dest: Path) -> Path:
    shutil.copytree(zoo, dest)  # copy2: modification times are kept
    return dest


def fingerprint(folder: Path) -> dict[str, tuple[str, int]]:
    """sha256 and mtime of every file: what "left untouched" means."""
    return {
        str(f.relative_to(folder)): (
            hashlib.sha256(f.read_bytes()).hexdigest(),
            f.stat().st_mtime_ns,
        )
        for f in sorted(folder.rglob("*"))
        if f.is_file()
    }


def _hashes(folder: Path) -> dict[str, str]:
    return {name: digest for name, (digest, _) in fingerprint(folder).items()}


def test_concurrent_first_use_builds_once_and_the_build_is_deterministic(tmp_path, trained):
    threads = [threading.Thread(target=ensure_zoo, args=(tmp_path / "a", TINY)) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert trained == list(ZOO_MODELS)  # each model once, the router after the LMs it needs
    ensure_zoo(tmp_path / "b", TINY)
    for name in ZOO_MODELS:
        a = AutoModelForCausalLM if name != "router" else AutoModelForSequenceClassification
        wa = a.from_pretrained(tmp_path / "a" / name).state_dict()
        wb = a.from_pretrained(tmp_path / "b" / name).state_dict()
        assert all(torch.equal(wa[k], wb[k]) for k in wa), f"{name} differs between two builds"
    assert read_manifest(tmp_path / "a") is not None


def test_a_stale_zoo_is_rebuilt(tiny, tmp_path, trained):
    root = copy_of(tiny, tmp_path / "zoo")
    (root / "manifest.json").write_text(json.dumps({"version": -1}))
    assert stale_models(root, TINY) == list(ZOO_MODELS)
    ensure_zoo(root, TINY)
    assert trained == list(ZOO_MODELS)
    assert json.loads((root / "manifest.json").read_text())["version"] == ZOO_VERSION


def _as_version_1(root: Path) -> None:
    """Turn a zoo into what the code before `mid` built: one spec, no per-model records."""
    manifest = json.loads((root / "manifest.json").read_text())
    spec = {k: v for k, v in manifest["spec"].items() if k != "mid"}
    seconds = {k: v for k, v in manifest["seconds"].items() if k != "mid"}
    old = {"version": 1, "spec": spec, "seconds": seconds, "torch": manifest["torch"]}
    (root / "manifest.json").write_text(json.dumps(old))
    shutil.rmtree(root / "mid")


def test_a_zoo_from_before_mid_gains_mid_and_keeps_its_models(tiny, tmp_path, monkeypatch, trained):
    root = copy_of(tiny, tmp_path / "zoo")
    _as_version_1(root)
    kept = {name: fingerprint(root / name) for name in ("cheap", "strong", "router")}
    monkeypatch.setenv("CASCADE_ZOO_DIR", str(root))
    with pytest.raises(ZooStaleError, match=r"out of date .*version 1.*make zoo"):
        resolve("zoo:cheap")
    assert stale_models(root, TINY) == ["mid"]
    ensure_zoo(root, TINY)
    assert trained == ["mid"]
    assert {name: fingerprint(root / name) for name in kept} == kept
    manifest = read_manifest(root)
    assert manifest is not None and set(manifest["models"]) == set(ZOO_MODELS)
    assert set(manifest["seconds"]) >= {*ZOO_MODELS, "models", "total"}
    assert resolve("zoo:mid") == str(root / "mid")
    # the same mid as a zoo built with it from the start: per-model seeds, not build order
    assert _hashes(root / "mid") == _hashes(tiny / "mid")
    ensure_zoo(root, TINY)
    assert trained == ["mid"]  # current now: nothing more to do


def test_a_changed_spec_retrains_that_model_and_what_depends_on_it(tiny, tmp_path, trained):
    root = copy_of(tiny, tmp_path / "zoo")
    before = {name: fingerprint(root / name) for name in ZOO_MODELS}
    ensure_zoo(root, replace(TINY, mid=replace(TINY.mid, steps=4)))
    assert trained == ["mid"]
    ensure_zoo(
        root, replace(TINY, mid=replace(TINY.mid, steps=4), cheap=replace(TINY.cheap, lr=2e-3))
    )
    assert trained == ["mid", "cheap", "router"]  # the router's labels come from cheap
    assert fingerprint(root / "strong") == before["strong"]


def test_a_lost_model_folder_is_retrained(tiny, tmp_path, monkeypatch, trained):
    root = copy_of(tiny, tmp_path / "zoo")
    shutil.rmtree(root / "strong")
    monkeypatch.setenv("CASCADE_ZOO_DIR", str(root))
    with pytest.raises(FileNotFoundError, match=r"strong/config\.json"):
        resolve("zoo:strong")
    ensure_zoo(root, TINY)
    assert trained == ["strong"]


def test_derived_artifacts_are_remade_when_the_models_change_only(tiny, tmp_path, monkeypatch):
    import offline.zoo_artifacts as za

    calls: list[Path] = []
    monkeypatch.setattr(
        za,
        "build_derived",
        lambda root, seed=0: calls.append(root) or {"version": za.DERIVED_VERSION},
    )
    root = copy_of(tiny, tmp_path / "zoo")
    ensure_zoo(root, TINY, derived=True)
    ensure_zoo(root, TINY, derived=True)
    assert len(calls) == 1
    manifest = read_manifest(root)
    assert manifest["derived"] == {"version": za.DERIVED_VERSION}
    assert manifest["seconds"]["total"] >= manifest["seconds"]["models"]
    ensure_zoo(root, replace(TINY, cheap=replace(TINY.cheap, steps=4)), derived=True)
    assert len(calls) == 2
    _as_version_1(root)  # artifacts derived before mid existed: adding mid re-derives them
    old = json.loads((root / "manifest.json").read_text())
    old["derived"] = manifest["derived"]
    (root / "manifest.json").write_text(json.dumps(old))
    spec = replace(TINY, cheap=replace(TINY.cheap, steps=4))
    assert stale_models(root, spec) == ["mid"]
    ensure_zoo(root, spec, derived=True)
    assert len(calls) == 3
    manifest = read_manifest(root)
    assert set(manifest["derived_from"]) == set(ZOO_MODELS)
