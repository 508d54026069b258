import json
import random
import subprocess
import sys

import pytest

from models.tasks import (
    FAMILIES,
    LEVELS,
    SPLITS,
    Judgement,
    judge,
    make_task,
    sample,
    split_of,
)


def test_splits_never_overlap_across_seeds():
    prompts = {s: {t.prompt for seed in (0, 1) for t in sample(s, 400, seed)} for s in SPLITS}
    names = list(SPLITS)
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            assert not prompts[a] & prompts[b], f"{a} and {b} share queries"


def test_every_query_lands_in_the_split_it_was_drawn_for():
    for split in SPLITS:
        assert all(split_of(t.prompt) == split for t in sample(split, 200, seed=4))


def test_same_seed_same_sample_and_new_seed_new_sample():
    assert sample("test", 50, seed=9) == sample("test", 50, seed=9)
    assert sample("test", 50, seed=9) != sample("test", 50, seed=10)


def test_all_families_and_levels_appear_and_answers_check_out():
    tasks = sample("train", 2000, seed=0)
    assert {(t.family, t.difficulty) for t in tasks} == {(f, lv) for f in FAMILIES for lv in LEVELS}
    for t in tasks:
        if t.family == "add":
            a, b = t.prompt.split("+")
            assert int(t.answer) == int(a) + int(b)
        elif t.family == "sub":
            a, b = t.prompt.split("-")
            assert int(t.answer) == int(a) - int(b) >= 0
        elif t.family == "rev":
            assert t.answer == t.prompt.removeprefix("rev ")[::-1]
        elif t.family == "max":
            assert t.answer == max(t.prompt.removeprefix("max "))


@pytest.mark.parametrize(
    ("output", "answer", "expected"),
    [
        ("579", "579", Judgement.correct),
        (" 579\n", "579", Judgement.correct),
        ("578", "579", Judgement.partial),  # right length, 2 of 3 digits in place
        ("589", "579", Judgement.partial),
        ("678", "579", Judgement.incorrect),  # right length, only 1 of 3 in place
        ("57", "579", Judgement.incorrect),  # wrong length is never partial
        ("", "579", Judgement.incorrect),
        ("ab", "ba", Judgement.incorrect),  # 0 of 2 in place
        ("aa", "ba", Judgement.partial),  # 1 of 2: half counts
    ],
)
def test_judge(output, answer, expected):
    assert judge(output, answer) is expected


def test_bad_arguments_raise_clear_errors():
    with pytest.raises(ValueError, match="unknown family 'div'"):
        make_task(random.Random(0), "div", 1)
    with pytest.raises(ValueError, match="difficulty must be one of"):
        make_task(random.Random(0), "add", 4)
    with pytest.raises(ValueError, match="unknown split 'dev'"):
        sample("dev", 3)
    with pytest.raises(ValueError, match="n must be >= 0"):
        sample("test", -1)


def test_cli_prints_json_list():
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "models.tasks",
            "sample",
            "--split",
            "test",
            "--seed",
            "3",
            "--n",
            "5",
            "--json",
        ],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    rows = json.loads(out)
    assert len(rows) == 5
    assert set(rows[0]) == {"prompt", "answer", "family", "difficulty"}
    assert [r["prompt"] for r in rows] == [t.prompt for t in sample("test", 5, seed=3)]
