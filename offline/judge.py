"""`judge`: grade every collected answer against the item's reference, per task type's judge.

    python -m calibration judge --traces traces/ --judge normalized
    python -m calibration judge --traces traces/ --judges judges.json
    python -m calibration judge --traces traces/ --judge llm --config C.yaml --judge-tier strong

Labels are written per tier and model identity next to the answers, each with the judge that
made it, so a calibration can say what "right" meant. An `llm` judge (`offline.llm_judge`)
grades in batches; a reply it cannot read is counted and named in the report, never dropped
silently, and that item gets no label.
"""

from __future__ import annotations

from dataclasses import dataclass

from calibration.dataset import DatasetItem
from calibration.generation import Generation
from calibration.judges import JudgeError, JudgesFile, Label, judge_answer, parse_verdict
from offline.llm_judge import LLMGrader, fill_template
from offline.traces import TraceStore

__all__ = ["JudgeReport", "judge_traces"]

_NO_GRADER = (
    "the llm judge needs a grader: --config CONFIG --judge-tier NAME (a configured tier) or "
    "--judge-endpoint URL --judge-model MODEL (an OpenAI-compatible server)"
)


@dataclass(frozen=True)
class JudgeReport:
    tier: str
    n: int
    right: int
    missing: int  # items of the data set this tier has no answer for (collect was cut short)
    unparsed: int = 0  # llm: replies with no grade word; those items have no label
    unparsed_ids: tuple[str, ...] = ()  # the first few

    @property
    def accuracy(self) -> float:
        return self.right / self.n if self.n else float("nan")


def judge_traces(
    store: TraceStore,
    items: list[DatasetItem],
    judges: JudgesFile,
    grader: LLMGrader | None = None,
    *,
    progress: bool = False,
) -> list[JudgeReport]:
    """Label every answer of every tier the manifest names; refuses items a judge cannot
    grade (no reference for a reference judge), naming the first few, rather than skip them."""
    manifest = store.manifest()
    reports = []
    for tier, identity in manifest.tiers.items():
        answers = store.answers(tier, identity)
        answered = [(item, answers[item.id]) for item in items if item.id in answers]  # type: ignore[index]
        labels, problems, for_llm = [], [], []
        for item, gen in answered:
            spec = judges.for_task(item.task_type)
            if spec.name == "llm":
                if grader is None:
                    raise JudgeError(_NO_GRADER)
                if item.reference is None:
                    problems.append(f"item {item.id}: the llm judge needs a 'reference'")
                else:
                    for_llm.append((item, gen))
                continue
            try:
                verdict = judge_answer(gen.text, item.reference, spec)
            except JudgeError as e:
                problems.append(f"item {item.id}: {e}")
                continue
            labels.append(Label(id=item.id, tier=tier, verdict=verdict, judge=spec))  # type: ignore[arg-type]
        if problems:
            raise JudgeError(
                f"{len(problems)} answers of tier {tier!r} cannot be judged:\n  "
                + "\n  ".join(problems[:10])
            )
        unparsed: list[str] = []
        if for_llm:
            assert grader is not None
            llm_labels, unparsed = _llm_labels(grader, tier, for_llm, progress)
            labels.extend(llm_labels)
        store.write_labels(tier, identity, labels)
        right = sum(label.right for label in labels)
        reports.append(
            JudgeReport(
                tier,
                len(labels),
                right,
                len(items) - len(answered),
                len(unparsed),
                tuple(unparsed[:10]),
            )
        )
    return reports


def _llm_labels(
    grader: LLMGrader, tier: str, todo: list[tuple[DatasetItem, Generation]], progress: bool
) -> tuple[list[Label], list[str]]:
    """The grader's labels for `todo`, and the ids whose reply held no grade word."""
    prompts = [
        fill_template(grader.template, _question(item), item.reference or "", gen.text.strip())
        for item, gen in todo
    ]
    replies = grader.grade(prompts, desc=f"judge {tier}", progress=progress)
    grades = grader.spec.grades
    assert grades is not None
    labels, unparsed = [], []
    for (item, _), reply in zip(todo, replies, strict=True):
        verdict = parse_verdict(reply, grades)
        if verdict is None:
            unparsed.append(item.id)  # type: ignore[arg-type]
            continue
        labels.append(
            Label(id=item.id, tier=tier, verdict=verdict, judge=grader.spec, detail=reply)  # type: ignore[arg-type]
        )
    return labels, unparsed


def _question(item: DatasetItem) -> str:
    """What was asked: the raw prompt, or the conversation's messages as lines."""
    if item.prompt is not None:
        return item.prompt
    return "\n".join(m.content for m in item.messages or [])
