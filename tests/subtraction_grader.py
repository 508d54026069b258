"""The zoo's strong tier as an LLM grader, by subtraction (tests/test_llm_judge.py explains why).

A zoo is trained from a seed, but its weights differ from one kind of CPU to another, so which
few `9a-r` sums its strong model gets wrong differs too (one zoo says `97-7` is 80). The judge
tests therefore hold the judge to what its grader really replies, asked directly through the
transformers engine, and hold the grader's subtraction to a quality floor separately: a test
that asserted the grader is never wrong on the items it happens to draw would fail on some
machines for a reason that is not the judge's.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from calibration.judges import Verdict, parse_grades, parse_verdict

TEMPLATE = "9{answer}-{reference}"  # 90 exactly when answer == reference (one digit each)
GRADES = "90/" + ",".join(str(n) for n in range(81, 100) if n != 90)


def direct_replies(zoo: Path, prompts: Iterable[str]) -> dict[str, str]:
    """The strong model's greedy replies to user messages, rendered as serving renders them."""
    from models.engine import SamplingSettings
    from models.hf_engine import HFEngine
    from models.prompting import render_prompt

    engine = HFEngine(str(zoo / "strong"))
    asked = sorted(set(prompts))
    rendered = [
        render_prompt(engine.tokenizer, messages=[{"role": "user", "content": p}]) for p in asked
    ]
    out = engine.generate_sync(rendered, SamplingSettings(max_tokens=4))
    return {p: g.text for p, g in zip(asked, out, strict=True)}


def grader_accuracy(zoo: Path) -> float:
    """Share of all 100 one-digit pairs whose `9a-r` the grader computes exactly."""
    pairs = [(a, r) for a in range(10) for r in range(10)]
    prompts = [TEMPLATE.format(answer=a, reference=r) for a, r in pairs]
    replies = direct_replies(zoo, prompts)
    right = [
        replies[TEMPLATE.format(answer=a, reference=r)].strip() == str(90 + a - r) for a, r in pairs
    ]
    return sum(right) / len(right)


def expected_verdicts(
    zoo: Path, answers: dict[str, str], references: dict[str, str]
) -> dict[str, Verdict | None]:
    """Per item, the verdict the grader's own reply gives (None: the reply is no grade)."""
    prompts = {i: TEMPLATE.format(answer=answers[i], reference=references[i]) for i in answers}
    replies = direct_replies(zoo, prompts.values())
    grades = parse_grades(GRADES)
    return {i: parse_verdict(replies[p], grades) for i, p in prompts.items()}
