"""The built-in judges grade answers against references, and say why they cannot."""

import pytest

from calibration.judges import JudgeError, JudgesFile, JudgeSpec, judge_answer, normalize


@pytest.mark.parametrize(
    ("name", "answer", "reference", "verdict"),
    [
        ("exact", " 55\n", "55", "right"),
        ("exact", "55.0", "55", "wrong"),
        ("normalized", "The answer is  Paris!", "the answer is paris", "right"),
        ("normalized", "1,000.0", "1000", "right"),
        ("normalized", "-3.50", "-3.5", "right"),
        ("normalized", "56", "55", "wrong"),
        ("regex", "2026-12-02", r"\d{4}-\d{2}-\d{2}", "right"),
        ("regex", "on 2026-12-02", r"\d{4}-\d{2}-\d{2}", "wrong"),  # the whole answer
        ("contains", "I think it is Paris.", "paris", "right"),
        ("contains", "I think it is Lyon.", "paris", "wrong"),
    ],
)
def test_builtin_judges(name, answer, reference, verdict):
    assert judge_answer(answer, reference, JudgeSpec(name=name)) == verdict


def test_normalize_keeps_meaning_and_drops_form():
    assert normalize("  Hello,\tWORLD. ") == "hello world"
    assert normalize("007") == "7" and normalize("1e3") == "1000"


def test_a_reference_judge_without_reference_is_an_error():
    with pytest.raises(JudgeError, match="needs a 'reference'"):
        judge_answer("x", None, JudgeSpec(name="exact"))


def test_bad_regex_and_unknown_judge_are_errors():
    with pytest.raises(JudgeError, match="not a regular expression"):
        judge_answer("x", "(", JudgeSpec(name="regex"))
    with pytest.raises(JudgeError, match="unknown judge 'fuzzy'"):
        judge_answer("x", "x", JudgeSpec(name="fuzzy"))


def test_judges_file_maps_task_types():
    judges = JudgesFile.parse({"default": "exact", "dates": {"name": "regex"}})
    assert judges.for_task("dates").name == "regex"
    assert judges.for_task("other").name == "exact" and judges.for_task(None).name == "exact"
    assert JudgesFile.parse({}).for_task("x").name == "normalized"
