"""offline.head.labels on a tiny zoo: records, cached tensors, cache keys, bad inputs."""

import json

import pytest
import torch

import offline.head.labels as labels_mod
from models.oracle import ORACLE_MATRIX, Policy, true_policy
from models.router_model import RouterWithHead
from offline.head.labels import (
    LabelRecord,
    LabelSet,
    build_labels,
    label_split,
    load_labels,
    load_oracle_matrix,
    save_labels,
)

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def labelled(tiny_zoo, tmp_path_factory):
    out = tmp_path_factory.mktemp("labels")
    return out, label_split(tiny_zoo, "validation", 60, seed=2, out_dir=out, progress=False)


def test_records_follow_the_oracle_matrix(labelled):
    _, data = labelled
    assert data.n == 60
    for r in data.records:
        assert r.true_policy == true_policy(r.cheap_judgement, r.strong_judgement)
        assert r.is_correct == (r.router_policy == r.true_policy)
        assert r.target_confidence == float(r.is_correct)
    assert torch.equal(data.correct, torch.tensor([float(r.is_correct) for r in data.records]))


def test_cached_tensors_are_the_routers(labelled, tiny_zoo):
    _, data = labelled
    router = RouterWithHead(tiny_zoo / "router")
    logits, hidden = router.encode([r.query for r in data.records])
    assert data.hidden.shape == (60, router.model.config.hidden_size)
    assert torch.allclose(data.hidden, hidden, atol=1e-6)
    assert torch.allclose(data.logits, logits, atol=1e-6)
    p_complex = torch.tensor([r.p_complex for r in data.records])
    assert torch.allclose(p_complex, logits.softmax(-1)[:, 1], atol=1e-6)


def test_jsonl_has_the_issue_fields(labelled):
    out, _ = labelled
    line = json.loads((out / "validation-seed2-n60.jsonl").read_text().splitlines()[0])
    assert {"query", "router_policy", "true_policy", "is_correct", "target_confidence"} <= set(line)
    assert (out / "validation-seed2-n60.safetensors").is_file()


def test_second_call_reads_the_cache(labelled, tiny_zoo, monkeypatch):
    out, data = labelled

    def boom(*a, **k):
        raise AssertionError("relabelled although the cache is current")

    monkeypatch.setattr(labels_mod, "build_labels", boom)
    again = label_split(tiny_zoo, "validation", 60, seed=2, out_dir=out)
    assert [r.query for r in again.records] == [r.query for r in data.records]
    assert torch.equal(again.hidden, data.hidden)


def test_another_oracle_matrix_relabels(tiny_zoo, tmp_path, labelled):
    _, base = labelled
    flipped = {k: Policy.complex for k in ORACLE_MATRIX}  # everything needs the strong tier
    data = label_split(tiny_zoo, "validation", 60, 2, out_dir=tmp_path, matrix=flipped)
    assert all(r.true_policy == Policy.complex for r in data.records)
    assert data.meta["fingerprint"] != base.meta["fingerprint"]


def test_save_load_round_trip(labelled, tmp_path):
    _, data = labelled
    save_labels(data, tmp_path / "x")
    back = load_labels(tmp_path / "x.jsonl")
    assert back.records == data.records and back.meta == data.meta
    assert torch.equal(back.hidden, data.hidden) and torch.equal(back.logits, data.logits)


def test_empty_and_unknown_splits_raise(tiny_zoo, tmp_path):
    with pytest.raises(ValueError, match="n must be >= 1"):
        label_split(tiny_zoo, "test", 0, out_dir=tmp_path)
    with pytest.raises(ValueError, match="unknown split 'dev'"):
        label_split(tiny_zoo, "dev", 10, out_dir=tmp_path)
    with pytest.raises(ValueError, match="no tasks"):
        build_labels(tiny_zoo, [])
    with pytest.raises(FileNotFoundError, match=r"router/config\.json"):
        label_split(tmp_path, "test", 5, out_dir=tmp_path)


def test_label_set_checks_shapes(labelled):
    _, data = labelled
    with pytest.raises(ValueError, match="empty label set"):
        LabelSet([], torch.zeros(0, 4), torch.zeros(0, 2))
    with pytest.raises(ValueError, match=r"hidden must be \(N=60, H\)"):
        LabelSet(data.records, data.hidden[:5], data.logits)
    with pytest.raises(ValueError, match="logits must be"):
        LabelSet(data.records, data.hidden, data.logits[:, 0])


def test_oracle_matrix_from_json(tmp_path):
    cells = {f"{c.value}/{s.value}": p.value for (c, s), p in ORACLE_MATRIX.items()}
    path = tmp_path / "m.json"
    path.write_text(json.dumps(cells))
    assert load_oracle_matrix(path) == ORACLE_MATRIX
    assert load_oracle_matrix(None) == ORACLE_MATRIX
    path.write_text(json.dumps({**cells, "correct/correct": "maybe"}))
    with pytest.raises(ValueError, match="correct/correct"):
        load_oracle_matrix(path)
    del cells["partial/partial"]
    path.write_text(json.dumps(cells))
    with pytest.raises(ValueError, match=r"missing.*partial/partial"):
        load_oracle_matrix(path)


def test_record_validates():
    with pytest.raises(ValueError):
        LabelRecord.model_validate({"query": "1+1", "router_policy": "cheap"})


def test_labels_from_a_serve_config_use_its_router_and_ladder_ends(tiny_zoo, tmp_path, capsys):
    """`--config`: the head is labelled for the router and tiers the config serves (resolved
    as serving resolves them), here the tiny zoo's checkpoints named by path."""
    from calibration.config import AppArgs
    from offline.cli import main
    from offline.head.labels import LabelModels, zoo_fingerprint

    config = tmp_path / "serve.yaml"
    config.write_text(
        "applications:\n  - name: cascade\n    args:\n      tiers:\n"
        f"        - {{name: small, model: {tiny_zoo / 'cheap'}}}\n"
        f"        - {{name: middle, model: {tiny_zoo / 'mid'}}}\n"
        f"        - {{name: big, model: {tiny_zoo / 'strong'}}}\n"
        f"      router: {{model: {tiny_zoo / 'router'}}}\n"
    )
    models = LabelModels.of_config(AppArgs.from_serve_config(config))
    assert models == LabelModels.of_zoo(tiny_zoo)  # the ladder's ends, not the middle tier
    args = ["labels", "--config", str(config), "--split", "validation", "--n", "30"]
    assert main([*args, "--seed", "4", "--out", str(tmp_path), "--json", "--quiet"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["n"] == 30 and out["fingerprint"] == zoo_fingerprint(tiny_zoo)
    config.write_text(config.read_text().replace(str(tiny_zoo / "router"), "/no/such/router"))
    with pytest.raises(SystemExit, match="the router checkpoint /no/such/router"):
        main([*args, "--out", str(tmp_path), "--json", "--quiet"])
