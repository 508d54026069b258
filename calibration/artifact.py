"""The calibration artifact: everything serving needs to decide, as one JSON file.

A `CascadeArtifact` holds one `CascadeCalibration` (scorer, threshold, how it was obtained,
the model it belongs to) for every tier but the top, since each tier's answers need their own
threshold. The zoo build and `python -m calibration conformal ... --out PATH` write it; serving
loads it once at start-up and, per answer below the top, asks for that tier's signal, which
`calibration.cascade.CascadeRun` turns into accept or escalate.

    art = load_artifact("artifacts/calibration.json", tiers=["cheap", "mid", "strong"])
    sig = art.signal("cheap", generation)   # TierSignal: score, threshold, escalate, reasons

A single-tier file (a bare `CascadeCalibration`, version 1) still loads: it calibrates the
cheapest tier.
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

from calibration.adaptive import CalibrationSample
from calibration.conformal import ConformalResult
from calibration.drift_reference import DriftReference
from calibration.feedback import FeedbackConfig, TierSignal
from calibration.feedback import signal as _signal
from calibration.identity import TierIdentity
from calibration.scores import HeuristicLimits, Scorer, ScorerSpec, SeedHeuristicScorer

__all__ = [
    "ARTIFACT_VERSION",
    "CASCADE_ARTIFACT_VERSION",
    "CalibrationMode",
    "CascadeArtifact",
    "CascadeCalibration",
    "ModelIdentity",
    "load_artifact",
]

ARTIFACT_VERSION = 1  # one tier's calibration
CASCADE_ARTIFACT_VERSION = 2  # every non-final tier's, in one file
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
    drift: DriftReference | None = Field(
        default=None,
        description="What the tier's live traffic should look like (calibration.drift); "
        "None in artifacts from before the drift monitor: the tier is then not monitored.",
    )
    identity: TierIdentity | None = Field(
        default=None,
        description="What the scores were made with (calibration.identity): checked against "
        "the configured tier at start-up; None in older artifacts: not checked.",
    )
    sample: CalibrationSample | None = Field(
        default=None,
        description="The calibration scores the threshold is a rank of (bounded), so adaptive "
        "conformal (calibration.adaptive) can recompute it at another level; None in older "
        "artifacts: the tier then cannot adapt.",
    )
    group_thresholds: dict[str, float] = Field(
        default_factory=dict,
        description="Task type -> its own (Mondrian) threshold, calibrated on that type's "
        "queries alone so each type gets the guarantee; a type not here uses `threshold`. "
        "Empty (the default, and older artifacts): one pooled threshold for all.",
    )
    group_n: dict[str, int] = Field(
        default_factory=dict,
        description="Task type -> its calibration answers at this tier, for every type seen; "
        "a type here but not in `group_thresholds` had too few and uses the pooled threshold.",
    )

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

    @field_validator("group_thresholds")
    @classmethod
    def _groups(cls, value: dict[str, float]) -> dict[str, float]:
        bad = {k: v for k, v in value.items() if math.isnan(v)}
        if bad:
            raise ValueError(f"group thresholds must be numbers or +-inf, got {bad}")
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
        sample: CalibrationSample | None = None,
    ) -> CascadeCalibration:
        """The artifact of one conformal calibration: its threshold with how it came about
        (and, for adaptive conformal, `CalibrationSample.of` the same scores and labels)."""
        return cls(
            sample=sample,
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

    def threshold_for(self, task_type: str | None = None) -> tuple[float, str | None]:
        """The threshold a request of `task_type` is decided at, and whose it is: the type's
        own (Mondrian) one, or `(threshold, None)`, the pooled one, for an unknown type, no
        type, or an artifact without group thresholds. Serving and the offline replay both
        come here (through `signal`), so they apply one group rule."""
        if task_type is not None and task_type in self.group_thresholds:
            return self.group_thresholds[task_type], task_type
        return self.threshold, None

    @property
    def needs_router(self) -> bool:
        """Whether its scorer takes the router's evidence (`feedback.router_evidence`)."""
        return bool(getattr(self.build_scorer(), "needs_router", False))

    def signal(
        self, generation=None, *, features=None, threshold=None, task_type=None, context=None
    ) -> TierSignal:
        """`calibration.feedback.signal` with this artifact's scorer, threshold and config;
        `threshold` replaces the artifact's (adaptive conformal's, `calibration.adaptive`),
        else `task_type` picks it (`threshold_for`); `context`: the router's evidence."""
        threshold = self.threshold_for(task_type)[0] if threshold is None else threshold
        return _signal(
            generation,
            self.build_scorer(),
            threshold,
            self.feedback,
            features=features,
            context=context,
        )

    def save(self, path: str | Path) -> Path:
        return _write_json(self, path)

    @classmethod
    def load(cls, path: str | Path) -> CascadeCalibration:
        """Read and validate an artifact; errors name the file and the bad field."""
        path = Path(path)
        raw = _read_json(path)
        try:
            return cls.model_validate(raw)
        except ValidationError as e:
            raise ValueError(f"invalid calibration artifact {path}: {e}") from e


class CascadeArtifact(BaseModel):
    """Every non-final tier's calibration, and the population they were calibrated on."""

    model_config = ConfigDict(frozen=True, extra="forbid", ser_json_inf_nan="constants")

    version: int = Field(default=CASCADE_ARTIFACT_VERSION, description="Artifact format version.")
    tiers: dict[str, CascadeCalibration] = Field(
        description="Tier name -> its calibration; every tier but the top needs one."
    )
    population: str = Field(
        default="",
        description="Which requests each tier was calibrated on, e.g. those the served router "
        "and policy send to it; the guarantee is conditional on that population.",
    )
    created_at: datetime = Field(default_factory=lambda: datetime.now(UTC))
    note: str = Field(default="")

    @field_validator("version")
    @classmethod
    def _version(cls, value: int) -> int:
        if value != CASCADE_ARTIFACT_VERSION:
            raise ValueError(
                f"cascade artifact version {value} is not supported "
                f"(need {CASCADE_ARTIFACT_VERSION})"
            )
        return value

    @field_validator("tiers")
    @classmethod
    def _some(cls, value: dict[str, CascadeCalibration]) -> dict[str, CascadeCalibration]:
        if not value:
            raise ValueError("a cascade artifact needs at least one tier's calibration")
        return value

    @classmethod
    def heuristic(cls, tiers: dict[str, ModelIdentity]) -> CascadeArtifact:
        """The seed design's fixed limits at every given tier (no data needed)."""
        return cls(
            tiers={name: CascadeCalibration.heuristic(model) for name, model in tiers.items()},
            population="none: fixed heuristic limits",
        )

    def for_tier(self, tier: str) -> CascadeCalibration:
        try:
            return self.tiers[tier]
        except KeyError:
            raise KeyError(
                f"the calibration artifact has no threshold for tier {tier!r}; it calibrates "
                f"{sorted(self.tiers)}"
            ) from None

    def signal(
        self,
        tier: str,
        generation=None,
        *,
        features=None,
        threshold=None,
        task_type=None,
        context=None,
    ) -> TierSignal:
        """`tier`'s calibrated verdict on one of its answers (at `threshold` if given, else at
        `task_type`'s threshold: `CascadeCalibration.threshold_for`), with the router's
        evidence as `context` (`calibration.feedback.router_evidence`)."""
        return self.for_tier(tier).signal(
            generation, features=features, threshold=threshold, task_type=task_type, context=context
        )

    @property
    def needs_router(self) -> bool:
        """Whether any tier's scorer takes the router's evidence: serving refuses to start
        such an artifact without a router."""
        return any(cal.needs_router for cal in self.tiers.values())

    def threshold_group(self, tier: str, task_type: str | None) -> str | None:
        """Whose threshold `tier` decides `task_type` at: the type's own, or None (pooled)."""
        cal = self.tiers.get(tier)
        return cal.threshold_for(task_type)[1] if cal is not None else None

    @property
    def grouped(self) -> bool:
        """Whether any tier has per-task-type (Mondrian) thresholds."""
        return any(cal.group_thresholds for cal in self.tiers.values())

    def check_covers(self, tiers: list[str]) -> None:
        """Serving refuses to start unless every tier below the top has a threshold."""
        missing = [t for t in tiers[:-1] if t not in self.tiers]
        if missing:
            raise ValueError(
                f"the calibration artifact has no threshold for tiers {missing} (it has "
                f"{sorted(self.tiers)}); recalibrate for this ladder (`python -m calibration "
                "conformal --out FILE`) or set calibration.file: null for the heuristic limits"
            )

    def with_thresholds(self, overrides: dict[str, float]) -> CascadeArtifact:
        """A copy with some tiers' thresholds replaced (user_config's overrides); an overridden
        tier's group thresholds are dropped, so the override holds for every task type."""
        for tier in overrides:
            self.for_tier(tier)
        tiers = {
            name: cal.model_copy(update={"threshold": overrides[name], "group_thresholds": {}})
            if name in overrides
            else cal
            for name, cal in self.tiers.items()
        }
        return self.model_copy(update={"tiers": tiers})

    def with_drift(self, references: dict[str, DriftReference]) -> CascadeArtifact:
        """A copy with drift references recorded for the tiers `references` names."""
        for tier in references:
            self.for_tier(tier)
        tiers = {
            name: cal.model_copy(update={"drift": references[name]}) if name in references else cal
            for name, cal in self.tiers.items()
        }
        return self.model_copy(update={"tiers": tiers})

    def save(self, path: str | Path) -> Path:
        return _write_json(self, path)


def load_artifact(path: str | Path, tiers: list[str]) -> CascadeArtifact:
    """Read a cascade artifact for the ladder `tiers`; a single-tier file (version 1)
    calibrates the cheapest tier. Errors name the file and what is wrong."""
    path = Path(path)
    raw = _read_json(path)
    try:
        if isinstance(raw, dict) and "tiers" in raw:
            return CascadeArtifact.model_validate(raw)
        single = CascadeCalibration.model_validate(raw)
    except ValidationError as e:
        raise ValueError(f"invalid calibration artifact {path}: {e}") from e
    return CascadeArtifact(tiers={tiers[0]: single}, population=single.calibration_split)


def _write_json(model: BaseModel, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(model.model_dump_json(indent=2) + "\n")
    return path


def _read_json(path: Path):
    try:
        return json.loads(path.read_text())  # Python's json reads Infinity
    except (OSError, ValueError) as e:
        raise ValueError(f"cannot read calibration artifact {path}: {e}") from e
