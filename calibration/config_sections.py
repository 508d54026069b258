"""Sections of the typed config (`calibration.config.AppArgs`) that stand alone: limits,
faults, drift, feedback/adaptive conformal, auth. Kept apart so `config.py` holds the tier
ladder and the loading rules; `calibration.config` re-exports every name here."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, model_validator

__all__ = ["AdaptiveArgs", "AuthArgs", "DriftArgs", "FaultArgs", "LimitArgs", "Strict"]


class Strict(BaseModel):
    """Every config section refuses unknown keys: a typo is an error, never a silent default."""

    model_config = ConfigDict(extra="forbid")


class FaultArgs(Strict):
    """Chaos testing: make a tier fail on purpose, to see the cascade degrade as designed.

    Off unless configured. Each call draws once: with `error_rate` it raises, else with
    `hang_rate` it sleeps `hang_s` before answering (past a short `timeout_s`, a hang)."""

    error_rate: float = Field(default=0.0, ge=0, le=1)
    hang_rate: float = Field(default=0.0, ge=0, le=1)
    hang_s: float = Field(default=30.0, ge=0)
    seed: int | None = None


class LimitArgs(Strict):
    default_max_tokens: int = Field(default=16, ge=1)
    max_tokens: int = Field(default=256, ge=1, description="Largest max_tokens a request may ask.")
    max_prompt_chars: int = Field(default=8000, ge=1)
    max_prompt_tokens: int = Field(default=2048, ge=1)
    max_body_bytes: int = Field(default=1_000_000, ge=1024)
    top_logprobs: int = Field(default=5, ge=1, le=20, description="k for the feedback signal.")


class DriftArgs(Strict):
    """The label-free drift monitor (`calibration.drift`): live traffic per tier against what
    calibration recorded; its alarms go to /stats, Prometheus and the log."""

    enabled: bool = Field(default=True, description="Monitor tiers whose artifact has a reference.")
    window: int = Field(default=200, ge=10, le=100_000, description="Requests per sliding window.")
    min_samples: int = Field(
        default=50, ge=10, description="Samples a window needs before it is tested."
    )
    alpha: float = Field(
        default=0.001,
        gt=0,
        lt=1,
        description="Chance that one look alarms on undrifted traffic (Bonferroni over tests).",
    )
    test_every: int = Field(
        default=10, ge=1, description="Run the tests every this many requests (O(window) each)."
    )

    @model_validator(mode="after")
    def _fits(self) -> DriftArgs:
        if self.min_samples > self.window:
            raise ValueError(f"min_samples {self.min_samples} is above window {self.window}")
        return self


class AdaptiveArgs(Strict):
    """Feedback on served answers (POST /v1/feedback) and adaptive conformal inference
    (`calibration.adaptive`). Labels are always recorded; only with `enabled` do they move a
    tier's threshold, so the long-run risk tracks alpha when traffic drifts."""

    enabled: bool = Field(
        default=False, description="Let labels move thresholds (ACI); off: they are counted only."
    )
    gamma: float = Field(
        default=0.005,
        gt=0,
        le=0.5,
        description="ACI step: alpha_t moves by gamma * (alpha - err) per labelled answer; "
        "larger adapts faster and jitters more (Gibbs and Candes use 0.005).",
    )
    min_feedback: int = Field(
        default=50,
        ge=0,
        description="Labels a tier needs before its threshold follows alpha_t (alpha_t is "
        "stepped from the first label on).",
    )
    max_alpha_ratio: float = Field(
        default=2.0,
        ge=1.0,
        description="alpha_t stays <= this times alpha (and <= 1): how far ACI may loosen a "
        "threshold when traffic is easier than calibrated; 1 = tighten only.",
    )
    ttl_s: float = Field(
        default=3600.0, gt=0, description="How long an answer stays open for feedback."
    )
    max_entries: int = Field(
        default=20_000, ge=1, description="Answers remembered for feedback at most (per replica)."
    )
    max_bytes: int = Field(
        default=32 << 20,
        ge=4096,
        description="Memory the remembered answers may take at most (prompts and answers).",
    )


class AuthArgs(Strict):
    """Optional bearer-token auth on the ingress: on when any token is configured.

    Only where the tokens come from is config; the tokens themselves are read at start-up and
    never logged, returned or put in the config."""

    tokens_env: str | None = Field(
        default="CASCADE_API_KEYS",
        description="Environment variable with comma-separated tokens (unset or empty: none).",
    )
    tokens_file: str | None = Field(default=None, description="A file with one token a line.")
    open_paths: list[str] = Field(
        default_factory=lambda: ["/healthz", "/readyz"],
        description="Paths served without a token (probes).",
    )
