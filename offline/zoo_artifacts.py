"""What the zoo build derives from its trained models: the router's confidence head and the
cascade's calibration artifact, so a fresh `make serve` answers with a calibrated router
confidence and a conformal threshold at every tier below the top.

The artifact is calibrated on the population each threshold will see in serving: the
calibration-split queries that the served router (with its confidence head) and policy send to
that tier, found by replaying `CascadeRun` (`offline.served.replay_served`) one tier at a
time. Calibrating on all queries instead would mix in the router's confident-complex queries,
which never reach the cheap tier's threshold in production.

    python -m calibration conformal --mode risk --alpha 0.02 --out PATH   # one tier by hand
"""

from __future__ import annotations

import time
from pathlib import Path

from calibration.artifact import CascadeArtifact, ModelIdentity
from calibration.config import SERVE_CONFIG, AppArgs, TierArgs
from calibration.identity import TierIdentity
from models.zoo import CALIBRATION_FILE
from offline.ladder_calibration import calibrate_ladder
from offline.replay import load_split, model_fingerprint

__all__ = [
    "DEFAULT_ALPHA",
    "DEFAULT_MODE",
    "DERIVED_VERSION",
    "SERVE_CONFIG_3TIER",
    "build_derived",
    "build_zoo_calibration",
    "calibration_ladder",
]

# Conformal risk control at 2% per tier: in expectation at most 2% of the requests a tier
# decides get a wrong answer accepted there that the top tier would have got right.
DEFAULT_MODE = "risk"
DEFAULT_ALPHA = 0.02
SERVE_CONFIG_3TIER = SERVE_CONFIG.with_name("serve_config.3tier.yaml")
# Bumped whenever what is derived changes (3: one threshold per tier below the top, each on
# the population the served router + head + policy send it; the head is trained first); a zoo
# whose derived artifacts are older is re-derived (seconds), its models are kept. 4: each
# tier's calibration records its drift reference (calibration.drift_reference). 5: and its
# calibration sample (adaptive conformal) and model identity (checked at start-up). 6: the
# head's ranking-margin loss at the design's margin 0.3 (was 0.1). 7: each tier's quality
# estimator also sees the router's P(complex) (ex-ante evidence beside the logprobs).
DERIVED_VERSION = 7


def calibration_ladder(root: Path) -> AppArgs:
    """The served config whose ladder the artifact calibrates: the 3-tier one when the zoo has
    the middle tier, else serve_config.yaml. Both use the same router threshold, so the
    cheapest tier sees the same population in either and one artifact serves both."""
    args = AppArgs.from_serve_config(SERVE_CONFIG)
    if (Path(root) / "mid").is_dir() and SERVE_CONFIG_3TIER.is_file():
        three = AppArgs.from_serve_config(SERVE_CONFIG_3TIER)
        if three.router.threshold != args.router.threshold:
            raise ValueError(
                f"{SERVE_CONFIG_3TIER.name} and {SERVE_CONFIG.name} must share a router "
                f"threshold for one artifact to serve both ({three.router.threshold} vs "
                f"{args.router.threshold})"
            )
        args = three
    return args


def build_zoo_calibration(
    root: Path,
    mode: str = DEFAULT_MODE,
    alpha: float = DEFAULT_ALPHA,
    seed: int = 0,
    n_fit: int = 1000,
    n_cal: int = 2000,
    *,
    mondrian: bool = False,
    router_evidence: bool = True,
    out: Path | None = None,
) -> CascadeArtifact:
    """Fit each tier's quality estimator on the validation split and calibrate its threshold
    on the calibration queries that reach it under the served policy (lower tiers first, so
    a tier's population is known before its own threshold); save `root/calibration.json`,
    or `out`. `mondrian`: per-task-family thresholds too (`calibrate_ladder`); the zoo's
    own artifact is pooled, this is for measuring the per-type variant on the same data.
    `router_evidence=False`: estimators on the logprobs alone, for measuring what the router's
    P(complex) adds (`calibrate_ladder`)."""
    root = Path(root)
    policy = calibration_ladder(root).policy()
    names = policy.tier_names
    fit = load_split("validation", n_fit, seed, root=root, tiers=names)
    cal = load_split("calibration", n_cal, seed, root=root, tiers=names)
    models = {
        name: ModelIdentity(
            name=f"zoo:{name}", path=str(root / name), fingerprint=model_fingerprint(root / name)
        )
        for name in names[:-1]
    }
    artifact = calibrate_ladder(
        policy,
        fit,
        cal,
        mode=mode,
        alpha=alpha,
        models=models,
        identities=zoo_identities(root, names[:-1]),
        where=f"zoo calibration split seed={seed} (fit: validation)",
        mondrian=mondrian,
        router_evidence=router_evidence,
    )
    artifact.save(out if out is not None else root / CALIBRATION_FILE)
    return artifact


def zoo_identities(root: Path, names: list[str]) -> dict[str, TierIdentity]:
    """What the zoo's answers were made with: the transformers engine, float32, greedy,
    `ANSWER_MAX_TOKENS`, top-5 (`models.zoo.answer_queries`)."""
    from models.engine import SamplingSettings
    from models.identity import tier_identity
    from models.zoo import ANSWER_MAX_TOKENS

    settings = SamplingSettings(max_tokens=ANSWER_MAX_TOKENS, top_logprobs=5)
    return {
        name: tier_identity(
            TierArgs(name=name, model=str(root / name), engine_kwargs={"dtype": "float32"}),
            settings,
            "transformers",
        ).model_copy(update={"model": f"zoo:{name}"})
        for name in names
    }


def build_derived(root: Path, seed: int = 0) -> dict:
    """Both derived artifacts, head first (the calibration population depends on the head's
    confidence); returns what the manifest records about them."""
    from offline.head.fitting import train_default_head

    t0 = time.time()
    head = train_default_head(root, seed=seed)
    t_head = time.time() - t0
    artifact = build_zoo_calibration(root, seed=seed)
    tiers = {
        name: {
            "mode": c.mode,
            "alpha": c.alpha,
            "threshold": c.threshold,
            "n": c.n_calibration,
        }
        for name, c in artifact.tiers.items()
    }
    return {
        "version": DERIVED_VERSION,
        "calibration": {
            "tiers": tiers,
            "seconds": round(time.time() - t0 - t_head, 1),
        },
        "confidence_head": {k: head[k] for k in ("method", "seconds") if k in head},
    }
