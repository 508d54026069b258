"""collect and judge on real tiny models: resumable, keyed by identity, every answer judged."""

import json

import pytest

from calibration.config import AppArgs
from calibration.dataset import load_dataset
from calibration.judges import JudgesFile, JudgeSpec
from offline.cli import main
from offline.collect import collect
from offline.judge import judge_traces
from offline.traces import TraceStore

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def app(tiny_zoo):
    tier = {"engine": "transformers", "engine_kwargs": {"dtype": "float32"}}
    return AppArgs(
        tiers=[
            {"name": "cheap", "model": str(tiny_zoo / "cheap"), **tier},
            {"name": "strong", "model": str(tiny_zoo / "strong"), **tier},
        ],
        limits={"default_max_tokens": 6, "max_tokens": 16},
        router={"model": str(tiny_zoo / "router")},
    )


@pytest.fixture(scope="module")
def items(tmp_path_factory):
    out = tmp_path_factory.mktemp("data") / "items.jsonl"
    from models.tasks import _main as tasks_main

    tasks_main(["export", "--split", "calibration", "--seed", "1", "--n", "120", "--out", str(out)])
    return out


def test_collect_answers_every_item_and_resumes(app, items, tmp_path):
    data = load_dataset(items)[:24]
    first = collect(app, data[:10], tmp_path, data=str(items), batch=4, progress=False)
    assert [(r.tier, r.collected, r.reused) for r in first] == [("cheap", 10, 0), ("strong", 10, 0)]
    again = collect(app, data, tmp_path, data=str(items), batch=4, progress=False)
    assert [(r.collected, r.reused) for r in again] == [(14, 10), (14, 10)]
    store = TraceStore(tmp_path)
    manifest = store.manifest()
    assert list(manifest.tiers) == ["cheap", "strong"]
    answers = store.answers("cheap", manifest.tiers["cheap"])
    assert set(answers) == {i.id for i in data}
    gen = answers[data[0].id]
    assert 1 <= len(gen.token_ids) <= 6 and len(gen.top_logprobs[0]) == 5
    # the same tokens as a fresh, unbatched collection: batching changes nothing
    single = collect(app, data[:3], tmp_path / "single", data=str(items), batch=1, progress=False)
    assert single[0].collected == 3
    fresh = TraceStore(tmp_path / "single").answers("cheap", manifest.tiers["cheap"])
    assert all(fresh[i.id].token_ids == answers[i.id].token_ids for i in data[:3])


def test_a_changed_model_never_mixes_with_old_answers(app, items, tmp_path):
    data = load_dataset(items)[:4]
    collect(app, data, tmp_path, data=str(items), batch=4, progress=False, tiers=["cheap"])
    longer = app.model_copy(
        update={"limits": app.limits.model_copy(update={"default_max_tokens": 3})}
    )
    report = collect(
        longer, data, tmp_path, data=str(items), batch=4, progress=False, tiers=["cheap"]
    )
    assert report[0].collected == 4 and report[0].reused == 0  # new decoding: a new identity
    store = TraceStore(tmp_path)
    new = store.manifest().tiers["cheap"]
    assert new.decoding["max_tokens"] == 3
    assert all(len(g.token_ids) <= 3 for g in store.answers("cheap", new).values())
    assert len(list((tmp_path / "answers").glob("cheap-*.jsonl"))) == 2


def test_judge_labels_every_answer(app, items, tmp_path):
    data = load_dataset(items)
    collect(app, data, tmp_path, data=str(items), batch=8, progress=False)
    store = TraceStore(tmp_path)
    reports = judge_traces(store, data, JudgesFile(default=JudgeSpec(name="exact")))
    assert [(r.tier, r.n, r.missing) for r in reports] == [("cheap", 120, 0), ("strong", 120, 0)]
    manifest = store.manifest()
    labels = store.labels("cheap", manifest.tiers["cheap"])
    answers = store.answers("cheap", manifest.tiers["cheap"])
    for item in data:
        expected = "right" if answers[item.id].text.strip() == item.reference else "wrong"
        assert labels[item.id].verdict == expected and labels[item.id].judge.name == "exact"


def test_cli_collect_judge_calibrate(zoo, items, tmp_path, capsys):
    """The generic path on the zoo's real models: a calibration worth its name needs a cheap
    tier that is sometimes right (the tiny zoo's never is)."""
    tier = {"engine": "transformers", "engine_kwargs": {"dtype": "float32"}}
    app = AppArgs(
        tiers=[
            {"name": "cheap", "model": "zoo:cheap", **tier},
            {"name": "strong", "model": "zoo:strong", **tier},
        ],
        limits={"default_max_tokens": 10},
    )
    config = tmp_path / "config.yaml"
    config.write_text(
        json.dumps({"applications": [{"name": "cascade", "args": app.model_dump(mode="json")}]})
    )
    out = tmp_path / "traces"
    args = ["collect", "--config", str(config), "--data", str(items), "--out", str(out)]
    assert main([*args, "--batch", "8", "--no-progress", "--json"]) == 0
    payload = json.loads(capsys.readouterr().out)
    assert payload["items"] == 120 and payload["tiers"]["cheap"]["collected"] == 120
    assert main(["judge", "--traces", str(out), "--judge", "normalized", "--json"]) == 0
    judged = json.loads(capsys.readouterr().out)
    assert judged["tiers"]["strong"]["n"] == 120
    art = tmp_path / "artifact.json"
    cal = ["calibrate", "--config", str(config), "--traces", str(out), "--out", str(art)]
    assert main([*cal, "--mode", "budget", "--alpha", "0.3", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)["tiers"]["cheap"]
    assert result["target"] == "<= 0.3" and result["n_holdout"] > 0
    assert 0 <= result["realised"] <= 1 and result["n_calibration"] > 0
    from calibration.artifact import load_artifact

    saved = load_artifact(art, ["cheap", "strong"]).tiers["cheap"]
    assert saved.identity.model == app.tiers[0].model and saved.identity.revision
    assert saved.threshold == result["threshold"] and saved.sample is not None
    # --mondrian: per task type too, where a type has enough items; the report splits by type
    grouped = tmp_path / "mondrian.json"
    mond = ["calibrate", "--config", str(config), "--traces", str(out), "--out", str(grouped)]
    assert main([*mond, "--mode", "budget", "--alpha", "0.3", "--mondrian", "--json"]) == 0
    by_type = json.loads(capsys.readouterr().out)["tiers"]["cheap"]
    mondrian = load_artifact(grouped, ["cheap", "strong"]).tiers["cheap"]
    assert mondrian.group_thresholds and by_type["group_thresholds"] == mondrian.group_thresholds
    assert mondrian.threshold == saved.threshold and set(mondrian.group_n) >= set(
        mondrian.group_thresholds
    )
    assert sum(v["n"] for v in by_type["per_task_type"].values()) == by_type["n_holdout"]
    # evaluate the served artifact on the held-out part: the same realised guarantee
    served = app.model_copy(
        update={"calibration": app.calibration.model_copy(update={"file": str(art)})}
    )
    config.write_text(
        json.dumps({"applications": [{"name": "cascade", "args": served.model_dump(mode="json")}]})
    )
    ev = ["evaluate", "--config", str(config), "--traces", str(out), "--no-plot", "--json"]
    assert main(ev) == 0
    report = json.loads(capsys.readouterr().out)
    guarantee = report["summary"]["served"]["params"]["guarantee"]["cheap"]
    assert guarantee["realised"] == pytest.approx(result["realised"])
    assert guarantee["n"] == result["n_holdout"]
    # the same traces and artifact under a config whose cheap tier is another model: refused
    other = served.model_dump(mode="json")
    other["tiers"][0]["model"] = "zoo:mid"
    config.write_text(json.dumps({"applications": [{"name": "cascade", "args": other}]}))
    with pytest.raises(SystemExit, match="made for other models") as err:
        main(ev)
    assert "tier 'cheap': model: artifact 'zoo:cheap', config 'zoo:mid'" in str(err.value)
    with pytest.raises(SystemExit, match="no manifest"):
        main(["judge", "--traces", str(tmp_path / "nothing")])
