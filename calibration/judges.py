"""Judges: is a tier's answer to a data set item right or wrong?

The labels that calibrate a cascade are only as good as the judge that made them, so each
label records which judge (and with which settings) made it. The built-in judges compare the
answer with the item's `reference`:

    exact       the answer, stripped of surrounding whitespace, equals the reference
    normalized  equal after lower-casing, collapsing whitespace, dropping punctuation, and
                reading numbers as numbers ("1,000.0" == "1000")
    regex       the reference is a regular expression that must match the whole answer
                (`fullmatch`, after stripping)
    contains    the normalized reference occurs in the normalized answer

An `llm` judge (a model grading the answer against the reference) lives with the engines
(`offline.llm_judge`), since it needs one; it produces the same `Label`, whose spec records
the template's sha256, the grades and the grader's `TierIdentity`. `parse_verdict` here reads
the grader's reply.

A judges file maps task types to judges: `{"default": "normalized", "sql": "exact",
"dates": {"name": "regex"}}`.
"""

from __future__ import annotations

import contextlib
import re
import string
from collections.abc import Callable
from decimal import Decimal, InvalidOperation
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from calibration.identity import TierIdentity

__all__ = [
    "BUILTIN_JUDGES",
    "DEFAULT_GRADES",
    "JudgeError",
    "JudgeSpec",
    "JudgesFile",
    "Label",
    "judge_answer",
    "normalize",
    "parse_grades",
    "parse_verdict",
]

Verdict = Literal["right", "wrong"]


class JudgeError(ValueError):
    """A judge cannot grade this item (no reference for a reference judge, a bad regex)."""


class JudgeSpec(BaseModel):
    """Which judge, and its settings; recorded with every label it makes."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(description="exact, normalized, regex, contains or llm")
    tier: str | None = Field(default=None, description="llm: the configured tier that grades")
    endpoint: str | None = Field(default=None, description="llm: an OpenAI-compatible base URL")
    model: str | None = Field(default=None, description="llm: the grader's model name")
    template: str | None = Field(
        default=None, description="llm: the grading prompt template's file, or 'default'"
    )
    template_sha256: str | None = Field(
        default=None, description="llm: sha256 of the template text the grader was sent"
    )
    grades: tuple[tuple[str, ...], tuple[str, ...]] | None = Field(
        default=None, description="llm: the reply words read as right, and as wrong"
    )
    grader: TierIdentity | None = Field(
        default=None, description="llm: the grading model, as collect records a tier's"
    )


class JudgesFile(BaseModel):
    """task_type -> judge; `default` grades every other task type."""

    model_config = ConfigDict(extra="forbid")

    default: JudgeSpec = Field(default_factory=lambda: JudgeSpec(name="normalized"))
    by_task: dict[str, JudgeSpec] = Field(default_factory=dict)

    @classmethod
    def parse(cls, raw: dict[str, str | dict]) -> JudgesFile:
        """The file's flat form: `{"default": "exact", "sql": {"name": "regex"}, ...}`."""
        specs = {
            k: JudgeSpec(name=v) if isinstance(v, str) else JudgeSpec(**v) for k, v in raw.items()
        }
        default = specs.pop("default", JudgeSpec(name="normalized"))
        return cls(default=default, by_task=specs)

    def for_task(self, task_type: str | None) -> JudgeSpec:
        return self.by_task.get(task_type or "", self.default)


class Label(BaseModel):
    """One tier's answer to one item, graded."""

    model_config = ConfigDict(extra="forbid")

    id: str
    tier: str
    verdict: Verdict
    judge: JudgeSpec
    detail: str = Field(default="", description="why, when the judge says (llm: its reply)")

    @property
    def right(self) -> bool:
        return self.verdict == "right"


DEFAULT_GRADES: tuple[tuple[str, ...], tuple[str, ...]] = (("RIGHT",), ("WRONG",))


def parse_grades(text: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """`RIGHT/WRONG`, or with synonyms `RIGHT,CORRECT/WRONG,INCORRECT`: the words of an llm
    grader's reply that mean right, and wrong. A word in both would make a verdict ambiguous."""
    parts = text.split("/")
    sides = tuple(tuple(w.strip() for w in p.split(",") if w.strip()) for p in parts)
    if len(sides) != 2 or not all(sides):
        raise JudgeError(f"grades must look like RIGHT/WRONG (synonyms comma-separated): {text!r}")
    right, wrong = sides
    both = {w.lower() for w in right} & {w.lower() for w in wrong}
    if both:
        raise JudgeError(f"grades {text!r} name {sorted(both)} as both right and wrong")
    return right, wrong


def parse_verdict(reply: str, grades: tuple[tuple[str, ...], tuple[str, ...]]) -> Verdict | None:
    """The grade word that occurs first in the reply (whole words, any case), or None.

    Whole words, so `incorrect` is not read as `correct`; the first one, since a grader that
    answers "RIGHT. (It is not WRONG to ...)" gave its verdict first."""
    words = {w.lower(): v for v, side in zip(("right", "wrong"), grades, strict=True) for w in side}
    pattern = "|".join(re.escape(w) for w in sorted(words, key=len, reverse=True))
    m = re.search(rf"(?<![^\W_])({pattern})(?![^\W_])", reply, flags=re.IGNORECASE)
    return words[m.group(1).lower()] if m else None  # type: ignore[return-value]


_PUNCT = str.maketrans("", "", string.punctuation.replace(".", "").replace("-", ""))
_NUMBER = re.compile(r"^[-+]?(\d+(\.\d*)?|\.\d+)([eE][-+]?\d+)?$")


def normalize(text: str) -> str:
    """Case, whitespace, punctuation and number form do not change an answer's meaning."""
    words = text.lower().replace(",", "").translate(_PUNCT).split()
    out = []
    for w in words:
        w = w.rstrip(".") or w
        if _NUMBER.match(w):
            with contextlib.suppress(InvalidOperation):  # the regex admits only numbers
                w = format(Decimal(w).normalize(), "f")
        out.append(w)
    return " ".join(out)


def _need_reference(reference: str | None, judge: str) -> str:
    if reference is None:
        raise JudgeError(f"the {judge} judge needs a 'reference' for every item")
    return reference


def _exact(answer: str, reference: str | None) -> bool:
    return answer.strip() == _need_reference(reference, "exact").strip()


def _normalized(answer: str, reference: str | None) -> bool:
    return normalize(answer) == normalize(_need_reference(reference, "normalized"))


def _regex(answer: str, reference: str | None) -> bool:
    pattern = _need_reference(reference, "regex")
    try:
        return re.fullmatch(pattern, answer.strip()) is not None
    except re.error as e:
        raise JudgeError(f"the reference {pattern!r} is not a regular expression: {e}") from e


def _contains(answer: str, reference: str | None) -> bool:
    ref = normalize(_need_reference(reference, "contains"))
    return bool(ref) and ref in normalize(answer)


BUILTIN_JUDGES: dict[str, Callable[[str, str | None], bool]] = {
    "exact": _exact,
    "normalized": _normalized,
    "regex": _regex,
    "contains": _contains,
}


def judge_answer(answer: str, reference: str | None, spec: JudgeSpec) -> Verdict:
    """A built-in judge's verdict; the `llm` judge is `offline.llm_judge`."""
    try:
        fn = BUILTIN_JUDGES[spec.name]
    except KeyError:
        raise JudgeError(
            f"unknown judge {spec.name!r}; built in: {sorted(BUILTIN_JUDGES)} (or 'llm')"
        ) from None
    return "right" if fn(answer, reference) else "wrong"
