"""The calibration an application serves, checked against the models it configures.

Serving, the served replay, the evaluate CLI and the serving-vs-offline check all load it
here, so a mismatched artifact is refused the same way everywhere.
"""

from __future__ import annotations

from pathlib import Path

from calibration.artifact import CascadeArtifact, ModelIdentity, load_artifact
from calibration.config import AppArgs
from calibration.identity import check_identities
from models.identity import configured_identities
from models.zoo import resolve_artifact

__all__ = ["identity_mismatches", "served_artifact"]


def served_artifact(args: AppArgs, root: Path | str | None = None) -> CascadeArtifact:
    """The calibration an application serves: the artifact its `calibration.file` names (the
    zoo's under `root` for 'zoo'; None: the seed's heuristic limits at every tier below the
    top), with the config's threshold overrides applied. Raises (ValueError) when a tier below
    the top is left uncalibrated. Serving and every offline replay of it load it here."""
    if args.calibration.file is None:
        artifact = CascadeArtifact.heuristic(
            {t.name: ModelIdentity(name=t.model) for t in args.tiers[:-1]}
        )
    else:
        artifact = load_artifact(resolve_artifact(args.calibration.file, root), args.tier_names)
    artifact = artifact.with_thresholds(args.threshold_overrides())
    artifact.check_covers(args.tier_names)
    if artifact.needs_router and not args.router.enabled:
        raise ValueError(
            f"the calibration artifact {args.calibration.file!r} scores answers with the "
            "router's P(complex) too (its quality estimator was fitted with the router's "
            "evidence), but router.enabled is false; enable the router, or recalibrate "
            "without it (`python -m calibration calibrate` with a config whose router is off)"
        )
    identity_mismatches(args, artifact, allow=args.calibration.allow_mismatch)
    return artifact


def identity_mismatches(args: AppArgs, artifact: CascadeArtifact, allow: bool = True) -> list[str]:
    """How the models the artifact was made for differ from the configured ones, tier by
    tier; raises `calibration.identity.IdentityMismatch` (naming both sides) unless `allow`."""
    recorded = {t: c.identity for t, c in artifact.tiers.items() if c.identity is not None}
    if not recorded:
        return []  # a heuristic artifact, or one from before identities were recorded
    what = f"the calibration artifact {args.calibration.file!r}"
    return check_identities(recorded, configured_identities(args), what=what, allow_mismatch=allow)
