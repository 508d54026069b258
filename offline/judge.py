"""`judge`: grade every collected answer against the item's reference, per task type's judge.

    python -m calibration judge --traces traces/ --judge normalized
    python -m calibration judge --traces traces/ --judges judges.json

Labels are written per tier and model identity next to the answers, each with the judge that
made it, so a calibration can say what "right" meant.
"""

from __future__ import annotations

from dataclasses import dataclass

from calibration.dataset import DatasetItem
from calibration.judges import JudgeError, JudgesFile, Label, judge_answer
from offline.traces import TraceStore

__all__ = ["JudgeReport", "judge_traces"]


@dataclass(frozen=True)
class JudgeReport:
    tier: str
    n: int
    right: int
    missing: int  # items of the data set this tier has no answer for (collect was cut short)

    @property
    def accuracy(self) -> float:
        return self.right / self.n if self.n else float("nan")


def judge_traces(
    store: TraceStore, items: list[DatasetItem], judges: JudgesFile
) -> list[JudgeReport]:
    """Label every answer of every tier the manifest names; refuses items a judge cannot
    grade (no reference for a reference judge), naming the first few, rather than skip them."""
    manifest = store.manifest()
    reports = []
    for tier, identity in manifest.tiers.items():
        answers = store.answers(tier, identity)
        labels, problems = [], []
        for item in items:
            gen = answers.get(item.id)  # type: ignore[arg-type]
            if gen is None:
                continue
            spec = judges.for_task(item.task_type)
            if spec.name == "llm":
                raise JudgeError("the llm judge is not available in this version; use a built-in")
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
        store.write_labels(tier, identity, labels)
        right = sum(label.right for label in labels)
        reports.append(JudgeReport(tier, len(labels), right, len(items) - len(labels)))
    return reports
