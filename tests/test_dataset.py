"""The generic data set format: JSONL in, items out, every bad line named with file:line."""

import json

import pytest

from calibration.dataset import DatasetError, DatasetItem, load_dataset, write_dataset
from models.tasks import _main as tasks_main
from models.tasks import sample


def _write(tmp_path, lines: list[str]):
    path = tmp_path / "data.jsonl"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_chat_and_prompt_items_load_with_their_fields(tmp_path):
    path = _write(
        tmp_path,
        [
            json.dumps({"messages": [{"role": "user", "content": "48+7"}], "reference": "55"}),
            "",
            json.dumps({"prompt": "rev abc", "task_type": "rev", "id": "x1", "metadata": {"k": 1}}),
        ],
    )
    first, second = load_dataset(path)
    assert first.query == "48+7" and first.reference == "55" and first.id.startswith("h")
    assert second.query == "rev abc" and second.id == "x1" and second.metadata == {"k": 1}
    assert second.reference is None  # optional: an LLM judge needs none


def test_content_ids_are_stable_under_reordering(tmp_path):
    a = json.dumps({"prompt": "1+1", "reference": "2"})
    b = json.dumps({"prompt": "2+2", "reference": "4"})
    ids = [i.id for i in load_dataset(_write(tmp_path, [a, b]))]
    assert [i.id for i in load_dataset(_write(tmp_path, [b, a]))] == ids[::-1]
    assert ids[0] != ids[1]


def test_every_bad_line_is_named_with_file_and_line(tmp_path):
    path = _write(
        tmp_path,
        [
            json.dumps({"prompt": "ok", "reference": "1"}),
            "{not json",
            json.dumps(["a list"]),
            json.dumps({"prompt": "p", "messages": [{"role": "user", "content": "m"}]}),
            json.dumps({"prompt": "p", "refrence": "typo"}),
            json.dumps({"messages": [{"role": "assistant", "content": "m"}]}),
            json.dumps({"prompt": "dup", "id": "same"}),
            json.dumps({"prompt": "dup2", "id": "same"}),
        ],
    )
    with pytest.raises(DatasetError) as err:
        load_dataset(path)
    text = str(err.value)
    for line, what in [
        (2, "not JSON"),
        (3, "JSON object"),
        (4, "exactly one of 'messages' or 'prompt'"),
        (5, "refrence"),
        (6, "end with a user message"),
        (8, "repeats line 7"),
    ]:
        assert f"{path}:{line}:" in text and what in text, (line, what, text)
    assert f"{path}:1:" not in text and f"{path}:7:" not in text
    assert len(err.value.problems) == 6


def test_missing_and_empty_files_are_errors(tmp_path):
    with pytest.raises(DatasetError, match="no such file"):
        load_dataset(tmp_path / "absent.jsonl")
    with pytest.raises(DatasetError, match="no items"):
        load_dataset(_write(tmp_path, [""]))


def test_write_then_load_round_trips(tmp_path):
    items = [
        DatasetItem(prompt="1+2", reference="3", task_type="add"),
        DatasetItem(messages=[{"role": "user", "content": "rev ab"}], reference="ba"),
    ]
    path = tmp_path / "out.jsonl"
    assert write_dataset(items, path) == 2
    assert load_dataset(path) == items


def test_zoo_tasks_export_in_the_generic_format(tmp_path, capsys):
    out = tmp_path / "test.jsonl"
    tasks_main(["export", "--split", "test", "--seed", "3", "--n", "40", "--out", str(out)])
    assert "wrote 40 items" in capsys.readouterr().out
    items = load_dataset(out)
    tasks = sample("test", 40, seed=3)
    assert [i.query for i in items] == [t.prompt for t in tasks]
    assert [i.reference for i in items] == [t.answer for t in tasks]
    assert [i.task_type for i in items] == [t.family for t in tasks]
    assert {i.metadata["difficulty"] for i in items} <= {1, 2, 3}
    assert len({i.id for i in items}) == 40
