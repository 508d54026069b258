"""The llm judge with a real grader (the zoo's strong tier, through collect's engine path).

The zoo cannot read English, so the tests reduce grading to a task it solves: for `max` items
(one-digit references) the template `9{answer}-{reference}` is a zoo subtraction whose result
is 90 exactly when the answer equals the reference, and 81..99 otherwise; `--judge-grades`
reads 90 as right and the others as wrong. An answer that is not one digit makes a prompt
whose reply is none of those: unparsed, counted, named, unlabelled. The judge is held to what
its grader replies when asked directly (tests/subtraction_grader.py says why).
"""

import hashlib
import json

import pytest

from calibration.config import AppArgs
from calibration.dataset import load_dataset, write_dataset
from calibration.judges import parse_grades, parse_verdict
from models.identity import configured_identities
from offline.cli import main
from offline.collect import collect
from offline.traces import TraceStore
from tests.subtraction_grader import GRADES, TEMPLATE, expected_verdicts, grader_accuracy

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def setup(zoo, tmp_path_factory):
    """24 `max` items answered by the zoo's cheap tier; a config whose strong tier grades."""
    root = tmp_path_factory.mktemp("llm_judge")
    from models.tasks import _main as tasks_main

    tasks_main(
        [
            "export",
            "--split",
            "calibration",
            "--seed",
            "3",
            "--n",
            "200",
            "--out",
            str(root / "all.jsonl"),
        ]
    )
    every = load_dataset(root / "all.jsonl")
    maxes = [i for i in every if i.task_type == "max"][:24]
    for i in maxes[1::2]:  # off by one: the cheap tier's (mostly right) answers become wrong
        i.reference = str((int(i.reference) + 1) % 10)
    items = maxes + [i for i in every if i.task_type == "rev"][:6]  # not one digit: unparsed
    write_dataset(items, root / "items.jsonl")
    tier = {"engine": "transformers", "engine_kwargs": {"dtype": "float32"}}
    app = AppArgs(
        tiers=[
            {"name": "cheap", "model": "zoo:cheap", **tier},
            {"name": "strong", "model": "zoo:strong", **tier},
        ],
        limits={"default_max_tokens": 4},
    )
    config = root / "config.yaml"
    config.write_text(
        json.dumps({"applications": [{"name": "cascade", "args": app.model_dump(mode="json")}]})
    )
    out = root / "traces"
    collect(
        app, items, out, data=str(root / "items.jsonl"), batch=8, progress=False, tiers=["cheap"]
    )
    template = root / "sub.txt"
    template.write_text(TEMPLATE)
    return app, config, out, items, template


def _labels(out):
    store = TraceStore(out)
    ident = store.manifest().tiers["cheap"]
    return store.labels("cheap", ident), store.answers("cheap", ident)


def test_the_grader_subtracts_well_enough_to_grade(zoo):
    assert grader_accuracy(zoo) >= 0.95  # 0.99 and 1.00 on the zoos built so far


def test_a_real_grader_gives_verdicts_and_records_who_gave_them(setup, zoo, capsys):
    app, config, out, items, template = setup
    args = ["judge", "--traces", str(out), "--judge", "llm", "--config", str(config)]
    args += ["--judge-tier", "strong", "--judge-template", str(template)]
    args += ["--judge-grades", GRADES, "--judge-batch", "8", "--no-progress", "--json"]
    code = main([*args, "--allow-unparsed"])
    payload = json.loads(capsys.readouterr().out)
    assert code == 0
    labels, answers = _labels(out)
    refs = {i.id: i.reference for i in items}
    one_digit = {i.id for i in items if len(answers[i.id].text.strip()) == 1}
    assert len(one_digit) >= 20  # the cheap tier answers `max` with one digit
    want = expected_verdicts(zoo, {i: answers[i].text.strip() for i in one_digit}, refs)
    assert {i: labels[i].verdict for i in labels} == {i: v for i, v in want.items() if v}
    report = payload["tiers"]["cheap"]
    assert report["n"] == len(labels) and report["n"] + report["unparsed"] == len(items)
    unlabelled = [i.id for i in items if i.id not in labels]  # the six `rev` items at least
    assert report["unparsed"] == len(unlabelled) >= 6
    assert report["unparsed_ids"] == unlabelled[:10]
    rights = sum(lab.right for lab in labels.values())
    assert rights >= 4 and len(labels) - rights >= 4  # both verdicts, several times
    spec = next(iter(labels.values())).judge
    assert spec.name == "llm" and spec.tier == "strong" and spec.template == str(template)
    assert spec.template_sha256 == hashlib.sha256(template.read_bytes()).hexdigest()
    assert spec.grades == parse_grades(GRADES)
    assert spec.grader == configured_identities(app)["strong"]  # as collect records the tier
    assert all(parse_verdict(lab.detail, spec.grades) == lab.verdict for lab in labels.values())


def test_unparsed_replies_are_counted_named_and_fail_the_run(setup, capsys, tmp_path):
    _, config, out, items, _ = setup
    template = tmp_path / "add.txt"
    template.write_text("{answer}+{reference}")  # numbers back: no RIGHT / WRONG in them
    args = ["judge", "--traces", str(out), "--judge", "llm", "--config", str(config)]
    args += ["--judge-tier", "strong", "--judge-template", str(template), "--no-progress"]
    assert main([*args, "--json"]) == 1
    captured = capsys.readouterr()
    report = json.loads(captured.out)["tiers"]["cheap"]
    assert report["unparsed"] == len(items) and report["n"] == 0
    assert report["unparsed_ids"] == [i.id for i in items][:10]
    assert "30 grader replies held none of the grades RIGHT/WRONG" in captured.err
    labels, _ = _labels(out)
    assert labels == {}  # nothing labelled from a reply that said nothing
    assert main(args) == 1  # the text report names them too
    assert (
        "30 unparsed (no label): " + ", ".join(i.id for i in items[:10]) in capsys.readouterr().out
    )
    assert main([*args, "--allow-unparsed"]) == 0


def test_llm_judge_without_a_grader_names_the_flags(setup):
    _, config, out, _, _ = setup
    base = ["judge", "--traces", str(out), "--judge", "llm"]
    with pytest.raises(
        SystemExit, match="--judge-tier NAME, or --judge-endpoint URL --judge-model"
    ):
        main(base)
    with pytest.raises(SystemExit, match="exactly one grader"):
        main([*base, "--judge-tier", "strong", "--judge-endpoint", "http://x/v1"])
    with pytest.raises(SystemExit, match="--judge-tier needs --config"):
        main([*base, "--judge-tier", "strong"])
    with pytest.raises(SystemExit, match="not a tier of the config"):
        main([*base, "--config", str(config), "--judge-tier", "huge"])
    with pytest.raises(SystemExit, match="--judge-endpoint needs --judge-model"):
        main([*base, "--judge-endpoint", "http://127.0.0.1:9/v1"])
    with pytest.raises(SystemExit, match="unreachable"):  # a real OpenAIEngine probe, no server
        main([*base, "--judge-endpoint", "http://127.0.0.1:9/v1", "--judge-model", "m"])
    with pytest.raises(SystemExit, match="no judge is llm"):
        main(["judge", "--traces", str(out), "--judge", "exact", "--judge-tier", "strong"])
    with pytest.raises(SystemExit, match="grades must look like RIGHT/WRONG"):
        main([*base, "--config", str(config), "--judge-tier", "strong", "--judge-grades", "OK"])


def test_old_labels_and_specs_still_load():
    from calibration.judges import Label

    old = {"id": "a", "tier": "cheap", "verdict": "right", "judge": {"name": "exact"}}
    label = Label.model_validate(old)
    assert label.judge.grader is None and label.judge.template_sha256 is None
    assert Label.model_validate_json(label.model_dump_json()) == label
