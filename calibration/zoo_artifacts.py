"""What the zoo build derives from its trained models: the cheap tier's conformal calibration
artifact and the router's confidence head, so a fresh `make serve` answers with a real
conformal threshold and a calibrated router confidence.

    python -m calibration conformal --mode risk --alpha 0.02 --out PATH   # the same by hand
"""

from __future__ import annotations

import time
from pathlib import Path

from calibration.artifact import CascadeCalibration, ModelIdentity
from calibration.conformal import calibrate
from calibration.evaluate import fit_quality_estimator
from calibration.replay import load_split, model_fingerprint

__all__ = [
    "DEFAULT_ALPHA",
    "DEFAULT_MODE",
    "DERIVED_VERSION",
    "build_derived",
    "build_zoo_calibration",
]

# Conformal risk control at 2%: in expectation at most 2% of requests get a wrong cheap answer
# that the strong tier would have got right. With the zoo's ~0.25 accuracy gap that keeps over
# 90% of the gap, the quality target of the cascade-core issue.
DEFAULT_MODE = "risk"
DEFAULT_ALPHA = 0.02
CALIBRATION_FILE = "calibration.json"
# Bumped whenever what is derived changes (2: the served head uses the log reward); a zoo whose
# derived artifacts are older is re-derived (seconds), its models are kept.
DERIVED_VERSION = 2


def build_zoo_calibration(
    root: Path,
    mode: str = DEFAULT_MODE,
    alpha: float = DEFAULT_ALPHA,
    seed: int = 0,
    n_fit: int = 1000,
    n_cal: int = 1000,
) -> CascadeCalibration:
    """Fit the quality estimator on the validation split, calibrate its threshold on the
    calibration split, and save the artifact at `root/calibration.json`."""
    root = Path(root)
    fit = load_split("validation", n_fit, seed, root=root, router=None)
    cal = load_split("calibration", n_cal, seed, root=root, router=None)
    scorer = fit_quality_estimator(fit)
    scores = scorer.score_many(cal.features[cal.tiers[0]], cal.feature_names)
    res = calibrate(mode, scores, alpha, wrong=cal.wrong, strong_right=cal.strong_right)
    model = ModelIdentity(
        name="zoo:cheap", path=str(root / "cheap"), fingerprint=model_fingerprint(root / "cheap")
    )
    artifact = CascadeCalibration.from_result(
        res,
        scorer,
        cal.feedback,
        model,
        f"calibration seed={seed} n={n_cal}; fit: validation n={n_fit}",
    )
    artifact.save(root / CALIBRATION_FILE)
    return artifact


def build_derived(root: Path, seed: int = 0) -> dict:
    """Both derived artifacts; returns what the manifest records about them."""
    from calibration.head_training import train_default_head

    t0 = time.time()
    artifact = build_zoo_calibration(root, seed=seed)
    t_cal = time.time() - t0
    head = train_default_head(root, seed=seed)
    return {
        "version": DERIVED_VERSION,
        "calibration": {
            "mode": artifact.mode,
            "alpha": artifact.alpha,
            "threshold": artifact.threshold,
            "n": artifact.n_calibration,
            "seconds": round(t_cal, 1),
        },
        "confidence_head": {k: head[k] for k in ("method", "seconds") if k in head},
    }
