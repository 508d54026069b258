"""The schemas of POST /v1/feedback (deployments/feedback.py), apart from the OpenAI ones."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from deployments.protocol import JSONFloat

__all__ = ["FeedbackRequest", "FeedbackResponse", "JudgeReport", "ThresholdUpdate"]


class FeedbackRequest(BaseModel):
    """A verdict on one served answer. Strict: a misspelt field is a 400, not ignored."""

    model_config = ConfigDict(extra="forbid")  # unlike the OpenAI routes: no client to mimic
    id: str = Field(
        min_length=1, max_length=128, description="A served answer's id (`routing.feedback_id`)."
    )
    verdict: Literal["right", "wrong", "strong"] = Field(
        description="'right' / 'wrong': your verdict on the answer. 'strong': the service asks "
        "the top tier the same request and labels the answer right iff both answers match "
        "(whitespace and case aside); one top-tier call, billed at that tier's cost."
    )


class JudgeReport(BaseModel):
    """How a 'strong' verdict was reached: the top tier's answer, and whether it was called
    (not when it had served the answer itself) and at what cost."""

    tier: str
    answer: str
    agrees: bool
    called: bool
    cost: float


class ThresholdUpdate(BaseModel):
    """One tier's adaptive-conformal step on this label (`calibration.adaptive.TierUpdate`)."""

    tier: str
    mode: str
    err: bool = Field(description="The label counts as an error of this tier's decision.")
    alpha: float | None
    alpha_before: float | None
    alpha_after: float | None
    threshold_before: JSONFloat
    threshold_after: JSONFloat
    moved: bool
    feedback: int = Field(description="Labels this tier has adapted on so far.")
    adapted: bool = Field(description="The served threshold follows alpha_t (past warm-up).")
    note: str = ""


class FeedbackResponse(BaseModel):
    id: str
    object: Literal["feedback"] = "feedback"
    verdict: str
    label: Literal["right", "wrong"] = Field(description="The verdict on the served answer.")
    final_tier: str
    adaptive: bool = Field(description="adaptive.enabled: labels move thresholds.")
    applied: bool  # some tier's adaptive state took this label
    updates: list[ThresholdUpdate] = []
    judge: JudgeReport | None = None
    note: str = ""
