"""The calibration artifact: everything serving needs to decide, as one JSON file.

`python -m calibration conformal ... --out PATH` writes it from the zoo's calibration split;
serving loads it once at start-up and, per answer, calls `calibration.signal(generation)`
then `calibration.policy.decide(...)`. It names the model it was calibrated for, so a
deployment can refuse a threshold that belongs to another checkpoint.

    cal = CascadeCalibration.load("artifacts/calibration.json")
    sig = cal.signal(generation)          # FeedbackSignal: score, threshold, escalate, reasons
"""

from __future__ import annotations

import json
import math
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    field_validator,
    model_validator,
)

from calibration.conformal import ConformalResult
from calibration.feedback import FeedbackConfig, FeedbackSignal
from calibration.feedback import signal as _signal
from calibration.scores import HeuristicLimits, Scorer, ScorerSpec, SeedHeuristicScorer

__all__ = ["ARTIFACT_VERSION", "CalibrationMode", "CascadeCalibration", "ModelIdentity"]

ARTIFACT_VERSION = 1
CalibrationMode = Literal["budget", "recall", "risk", "heuristic"]


class ModelIdentity(BaseModel):
    """Which cheap-tier model the scores and threshold belong to."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = Field(description="Model name as configured, e.g. 'zoo:cheap' or a hub id.")
    path: str = Field(default="", description="Resolved local folder, if any.")
    fingerprint: str = Field(
        default="", description="Content hash of the checkpoint's manifest or files."
    )


class CascadeCalibration(BaseModel):
    """A scorer, a threshold and how the threshold was obtained (mode, alpha, data)."""

    # inf thresholds (a conservative calibration) must survive JSON: write them as Infinity.
    model_config = ConfigDict(frozen=True, extra="forbid", ser_json_inf_nan="constants")

    version: int = Field(default=ARTIFACT_VERSION, description="Artifact format version.")
    scorer: ScorerSpec = Field(description="The nonconformity score, with its parameters.")
    feedback: FeedbackConfig = Field(
        default_factory=FeedbackConfig, description="How features are computed from logprobs."
    )
    mode: CalibrationMode = Field(description="budget | recall | risk | heuristic.")
    alpha: float | None = Field(default=None, description="Conformal level; None for heuristic.")
    threshold: float = Field(description="Escalate iff score > threshold.")
    n_calibration: int = Field(default=0, ge=0, description="Calibration answers used.")
    conservative: bool = Field(
        default=False, description="True if too little data forced the conservative threshold."
    )
    model: ModelIdentity = Field(description="The cheap-tier model this was calibrated for.")
    calibration_split: str = Field(default="", description="Where the calibration data came from.")
    created_at: datetime = Field(default_factory=lambda: datetime.now(UTC))
    note: str = Field(default="", description="Free text: warnings, command line.")

    _scorer: Scorer | None = PrivateAttr(default=None)

    @field_validator("version")
    @classmethod
    def _version(cls, value: int) -> int:
        if value != ARTIFACT_VERSION:
            raise ValueError(f"artifact version {value} is not supported (need {ARTIFACT_VERSION})")
        return value

    @field_validator("threshold")
    @classmethod
    def _threshold(cls, value: float) -> float:
        if math.isnan(value):
            raise ValueError(f"threshold must be a number or +-inf, got {value}")
        return value

    @model_validator(mode="after")
    def _mode(self) -> CascadeCalibration:
        if self.mode == "heuristic":
            if self.scorer.name != "seed_heuristic":
                raise ValueError(
                    f"mode 'heuristic' needs scorer 'seed_heuristic', got {self.scorer.name!r}"
                )
        elif self.alpha is None or not 0 < self.alpha < 1:
            raise ValueError(f"mode {self.mode!r} needs alpha in (0, 1), got {self.alpha}")
        return self

    @classmethod
    def heuristic(
        cls, model: ModelIdentity, limits: HeuristicLimits | None = None, **kwargs
    ) -> CascadeCalibration:
        """The seed design's fixed limits as an artifact (no data needed)."""
        scorer = SeedHeuristicScorer(limits or HeuristicLimits())
        return cls(
            scorer=ScorerSpec.of(scorer),
            mode="heuristic",
            threshold=SeedHeuristicScorer.THRESHOLD,
            model=model,
            **kwargs,
        )

    @classmethod
    def from_result(
        cls,
        result: ConformalResult,
        scorer: Scorer,
        feedback: FeedbackConfig,
        model: ModelIdentity,
        calibration_split: str,
    ) -> CascadeCalibration:
        """The artifact of one conformal calibration: its threshold with how it came about."""
        return cls(
            scorer=ScorerSpec.of(scorer),
            feedback=feedback,
            mode=result.mode,
            alpha=result.alpha,
            threshold=result.threshold,
            n_calibration=result.n,
            conservative=result.conservative,
            model=model,
            calibration_split=calibration_split,
            note=result.note,
        )

    def build_scorer(self) -> Scorer:
        """The scorer, built once per loaded artifact."""
        if self._scorer is None:
            self._scorer = self.scorer.build()
        return self._scorer

    def signal(self, generation=None, *, features=None) -> FeedbackSignal:
        """`calibration.feedback.signal` with this artifact's scorer, threshold and config."""
        return _signal(
            generation, self.build_scorer(), self.threshold, self.feedback, features=features
        )

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(self.model_dump_json(indent=2) + "\n")
        return path

    @classmethod
    def load(cls, path: str | Path) -> CascadeCalibration:
        """Read and validate an artifact; errors name the file and the bad field."""
        path = Path(path)
        try:
            raw = json.loads(path.read_text())  # Python's json reads Infinity
        except (OSError, ValueError) as e:
            raise ValueError(f"cannot read calibration artifact {path}: {e}") from e
        try:
            return cls.model_validate(raw)
        except ValidationError as e:
            raise ValueError(f"invalid calibration artifact {path}: {e}") from e
