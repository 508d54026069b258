"""The 9-cell oracle matrix: which tier a query *should* have gone to, given both tiers' answers.

`standard` means the cheap tier's answer is good enough (or the strong tier would not do better,
so paying for it is waste); `complex` means the strong tier is needed. The matrix is a config
table so that a deployment with other costs can change a cell without touching code.
"""

from __future__ import annotations

from enum import StrEnum

from models.tasks import Judgement

__all__ = ["ORACLE_MATRIX", "Policy", "true_policy"]


class Policy(StrEnum):
    standard = "standard"
    complex = "complex"


J = Judgement
ORACLE_MATRIX: dict[tuple[Judgement, Judgement], Policy] = {
    # (cheap, strong): policy
    (J.correct, J.correct): Policy.standard,
    (J.correct, J.partial): Policy.standard,
    (J.correct, J.incorrect): Policy.standard,
    (J.partial, J.correct): Policy.complex,
    (J.partial, J.partial): Policy.standard,
    (J.partial, J.incorrect): Policy.standard,
    (J.incorrect, J.correct): Policy.complex,
    (J.incorrect, J.partial): Policy.complex,
    (J.incorrect, J.incorrect): Policy.standard,
}


def true_policy(
    cheap: Judgement,
    strong: Judgement,
    matrix: dict[tuple[Judgement, Judgement], Policy] = ORACLE_MATRIX,
) -> Policy:
    """The policy the oracle matrix assigns to a pair of judged answers."""
    return matrix[(Judgement(cheap), Judgement(strong))]
