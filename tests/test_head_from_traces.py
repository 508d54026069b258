"""The confidence head from the user's collected, judged traces and a configured router
(`labels --traces`, `train --traces --workers N [--gpu] --install`), on real tiny models."""

import json

import pytest
import torch

from calibration.config import AppArgs
from calibration.dataset import load_dataset
from models.oracle import ORACLE_MATRIX, Policy, true_policy
from models.router_model import ConfidenceHead, RouterWithHead, router_checksum
from models.tasks import Judgement
from offline.cli import main
from offline.head.labels import load_labels
from offline.head.trace_labels import trace_labels_path
from offline.trace_split import DEFAULT_FRACTIONS, part_of
from offline.traces import TraceStore

pytestmark = pytest.mark.usefixtures("one_thread")


def _write_config(path, app: AppArgs):
    doc = {"applications": [{"name": "cascade", "args": app.model_dump(mode="json")}]}
    path.write_text(json.dumps(doc))
    return path


@pytest.fixture(scope="module")
def app(tiny_zoo):
    tier = {"engine": "transformers", "engine_kwargs": {"dtype": "float32"}}
    return AppArgs(
        tiers=[
            {"name": "cheap", "model": str(tiny_zoo / "cheap"), **tier},
            {"name": "strong", "model": str(tiny_zoo / "strong"), **tier},
        ],
        limits={"default_max_tokens": 6, "max_tokens": 16},
        router={"model": str(tiny_zoo / "router"), "device": "cpu", "dtype": "float32"},
    )


@pytest.fixture(scope="module")
def setup(app, tmp_path_factory):
    """A config, 120 exported items, collected and judged (exact) through the CLI."""
    from models.tasks import _main as tasks_main

    root = tmp_path_factory.mktemp("traces_head")
    items, traces = root / "items.jsonl", root / "traces"
    tasks_main(
        ["export", "--split", "calibration", "--seed", "2", "--n", "120", "--out", str(items)]
    )
    config = _write_config(root / "config.yaml", app)
    collect = ["collect", "--config", str(config), "--data", str(items), "--out", str(traces)]
    assert main([*collect, "--batch", "16", "--no-progress", "--json"]) == 0
    assert main(["judge", "--traces", str(traces), "--judge", "exact", "--json"]) == 0
    return {"root": root, "config": config, "items": items, "traces": traces}


def _verdicts(traces):
    store = TraceStore(traces)
    tiers = store.manifest().tiers
    return {t: store.labels(t, tiers[t]) for t in ("cheap", "strong")}


def _labels(setup, capsys, *extra):
    args = ["labels", "--config", str(setup["config"]), "--traces", str(setup["traces"])]
    assert main([*args, "--out", str(setup["root"] / "art"), "--json", "--quiet", *extra]) == 0
    return json.loads(capsys.readouterr().out)


def test_labels_from_traces_follow_the_split_and_the_oracle(setup, capsys):
    summary = _labels(setup, capsys)
    items = load_dataset(setup["items"])
    part = {i.id: part_of(i.id, 0, DEFAULT_FRACTIONS) for i in items}
    verdicts = _verdicts(setup["traces"])
    item = {i.id: i for i in items}
    for name in ("fit", "calibration"):
        expected = [i.id for i in items if part[i.id] == name]
        assert summary[name]["n"] == len(expected) > 0
        labels = load_labels(trace_labels_path(setup["root"] / "art" / "labels", name, 0))
        assert labels.meta["ids"] == expected  # exactly this part, none of the held-out items
        assert not {k for k in labels.meta["ids"] if part[k] == "holdout"}
        assert labels.hidden.shape[0] == labels.n == len(expected)
        for k, r in zip(expected, labels.records, strict=True):
            cj, sj = (
                Judgement.correct if verdicts[t][k].right else Judgement.incorrect
                for t in ("cheap", "strong")
            )
            assert (r.cheap_judgement, r.strong_judgement) == (cj, sj)
            assert r.true_policy == true_policy(cj, sj, ORACLE_MATRIX)
            assert r.is_correct == (r.router_policy == r.true_policy)
            assert r.query == item[k].query and r.difficulty == 0
            assert r.family == (item[k].task_type or "default")
    assert sum(part[i.id] == "holdout" for i in items) > 0
    # the same traces again: the cache; another matrix: relabelled under it
    assert _labels(setup, capsys)["fingerprint"] == summary["fingerprint"]
    matrix = setup["root"] / "all_standard.json"
    cells = [f"{c.value}/{s.value}" for c, s in ORACLE_MATRIX]
    matrix.write_text(json.dumps(dict.fromkeys(cells, "standard")))
    other = _labels(setup, capsys, "--oracle-matrix", str(matrix), "--out", str(setup["root"]))
    assert other["fingerprint"] != summary["fingerprint"]
    assert other["fit"]["true_complex_rate"] == other["calibration"]["true_complex_rate"] == 0


def test_train_from_traces_on_the_running_ray_installs_the_head(setup, tiny_zoo, capsys):
    """--workers 2 on the Ray this process already runs (used as it is, left running); the
    installed head is the one the configured router serves."""
    import ray

    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        args = ["train", "--config", str(setup["config"]), "--traces", str(setup["traces"])]
        args += ["--out", str(setup["root"] / "art"), "--workers", "2", "--reward", "log"]
        args += ["--max-epochs", "5", "--patience", "3", "--rl-steps", "10", "--install"]
        assert main([*args, "--json", "--quiet"]) == 0
        assert ray.is_initialized()  # the caller's Ray was used, not shut down
    finally:
        ray.shutdown()
    summary = json.loads(capsys.readouterr().out)
    router_dir = tiny_zoo / "router"
    assert summary["installed"] == {"method": "sft_rl_log", "into": str(router_dir)}
    saved = ConfidenceHead.read_meta(summary["heads"]["sft_rl_log"])
    assert saved["sft"]["num_workers"] == saved["rl"]["num_workers"] == 2
    assert ConfidenceHead.read_meta(router_dir)["router_checksum"] == router_checksum(router_dir)
    router = RouterWithHead(router_dir, device="cpu", dtype="float32")
    assert router.confidence_source == "confidence_head"
    out = router(["12+7", "reverse abc"])
    assert out.confidence.shape == (2,) and ((out.confidence >= 0) & (out.confidence <= 1)).all()
    assert {p.value for p in Policy} >= set(router.labels)


def test_traces_of_other_models_are_refused(setup, app, capsys):
    other = app.model_dump(mode="json")
    other["tiers"][0]["model"] = other["tiers"][1]["model"]  # the cheap tier is another model
    config = _write_config(setup["root"] / "other.yaml", AppArgs.model_validate(other))
    for cmd in ("labels", "train"):
        args = [cmd, "--config", str(config), "--traces", str(setup["traces"])]
        with pytest.raises(SystemExit, match="made for other models") as err:
            main([*args, "--out", str(setup["root"] / "other"), "--quiet"])
        assert err.value.code not in (0, None)  # a message: exit status 1
        assert "tier 'cheap': model:" in str(err.value)


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a GPU")
def test_gpu_without_a_gpu_is_refused(setup, monkeypatch):
    import ray

    from offline.head.fitting import _scaling

    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    assert not ray.is_initialized()
    args = ["train", "--config", str(setup["config"]), "--traces", str(setup["traces"])]
    with pytest.raises(SystemExit, match="--gpu: no GPU is visible to torch") as err:
        main([*args, "--workers", "2", "--gpu", "--out", str(setup["root"] / "gpu")])
    assert "drop --gpu" in str(err.value)
    assert not ray.is_initialized()  # refused before Ray started
    assert not (setup["root"] / "gpu").exists()  # and before any labelling
    gpu, cpu = _scaling(2, True), _scaling(2, False)
    assert (gpu.num_workers, gpu.use_gpu, cpu.num_workers, cpu.use_gpu) == (2, True, 2, False)
    assert cpu.resources_per_worker == {"CPU": 1.0}
