"""offline.head.metrics against the reference libraries (torchmetrics, scikit-learn)."""

import numpy as np
import pytest
import torch
from sklearn.calibration import calibration_curve
from sklearn.metrics import brier_score_loss, roc_auc_score
from torchmetrics.classification import BinaryCalibrationError

from offline.head.metrics import (
    auroc,
    bootstrap_interval,
    brier,
    decision_accuracy,
    ece,
    overlay_diagram,
    reliability_bins,
    reliability_diagram,
    summarize,
)


def _data(n=3000, seed=0, overconfident=0.1):
    rng = np.random.default_rng(seed)
    conf = rng.uniform(0.0, 0.999, n)  # torchmetrics puts exactly 1.0 in a bin of its own
    correct = (rng.uniform(size=n) < np.clip(conf - overconfident, 0, 1)).astype(float)
    return conf, correct


@pytest.mark.parametrize("bins", [10, 15])
@pytest.mark.parametrize("seed", [0, 1])
def test_equal_width_ece_matches_torchmetrics(bins, seed):
    conf, correct = _data(seed=seed)
    ref = BinaryCalibrationError(n_bins=bins, norm="l1")(
        torch.tensor(conf, dtype=torch.float64), torch.tensor(correct, dtype=torch.long)
    )
    assert ece(conf, correct, bins) == pytest.approx(float(ref), abs=1e-9)


def test_equal_mass_ece_matches_sklearn_quantile_bins():
    conf, correct = _data(n=3000)  # 3000 distinct values: 15 quantile bins of exactly 200
    prob_true, prob_pred = calibration_curve(correct, conf, n_bins=15, strategy="quantile")
    assert len(prob_true) == 15
    expected = np.mean(np.abs(prob_true - prob_pred))  # equal weights: equal counts
    assert ece(conf, correct, 15, "mass") == pytest.approx(expected, abs=1e-9)
    assert (reliability_bins(conf, correct, 15, "mass").count == 200).all()


def test_brier_matches_sklearn():
    conf, correct = _data(seed=3)
    assert brier(conf, correct) == pytest.approx(brier_score_loss(correct, conf), abs=1e-12)


@pytest.mark.parametrize("decimals", [None, 1])  # 1 decimal: many ties
def test_auroc_matches_sklearn_with_and_without_ties(decimals):
    conf, correct = _data(seed=4)
    if decimals is not None:
        conf = np.round(conf, decimals)
    assert auroc(conf, correct) == pytest.approx(roc_auc_score(correct, conf), abs=1e-12)


def test_auroc_is_none_with_one_class():
    assert auroc([0.2, 0.9], [1, 1]) is None


def test_confidence_one_lands_in_the_last_bin():
    rb = reliability_bins([1.0, 0.99], [1, 1], bins=10)
    assert rb.count[-1] == 2 and rb.count.sum() == 2


def test_perfect_and_worst_cases():
    assert ece([1.0, 0.0], [1, 0]) == 0.0
    assert ece([1.0, 1.0], [0, 0]) == 1.0
    assert decision_accuracy([0.9, 0.4, 0.6], [1, 0, 0]) == pytest.approx(2 / 3)


def test_summarize_has_every_metric():
    conf, correct = _data(n=500)
    s = summarize(conf, correct)
    assert {"ece", "ece_10", "ece_equal_mass", "brier", "auroc", "decision_accuracy", "n"} <= set(s)
    assert s["n"] == 500 and s["ece"] == ece(conf, correct, 15)


@pytest.mark.parametrize(
    ("conf", "correct", "match"),
    [
        ([], [], "empty"),
        ([0.5, 0.5], [1], "differ in length"),
        ([[0.5, 0.5]], [[1, 0]], "1-D"),
        ([1.5], [1], r"\[0, 1\]"),
        ([float("nan")], [1], r"\[0, 1\]"),
        ([0.5], [2], "0/1"),
    ],
)
def test_bad_inputs_raise_clear_errors(conf, correct, match):
    with pytest.raises(ValueError, match=match):
        summarize(conf, correct)


def test_bad_binning_raises():
    with pytest.raises(ValueError, match="strategy"):
        ece([0.5], [1], 10, "log")
    with pytest.raises(ValueError, match="bins"):
        ece([0.5], [1], 0)


def test_diagrams_are_written(tmp_path):
    conf, correct = _data(n=400)
    one = reliability_diagram(conf, correct, tmp_path / "a" / "one.png", title="m")
    both = overlay_diagram({"m": (conf, correct), "m2": (conf**2, correct)}, tmp_path / "o.png")
    for p in (one, both):
        assert p.is_file() and p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_bootstrap_interval_covers_the_estimate_and_widens_with_clusters():
    conf, correct = _data(n=2000, seed=5)
    lo, hi = bootstrap_interval(conf, correct, brier, n_boot=100)
    assert lo < brier(conf, correct) < hi
    # the same 200 rows each repeated 10 times: resampling rows would be falsely narrow
    rep_conf, rep_y = np.repeat(conf[:200], 10), np.repeat(correct[:200], 10)
    groups = np.repeat(np.arange(200), 10)
    rows = bootstrap_interval(rep_conf, rep_y, brier, n_boot=100)
    clustered = bootstrap_interval(rep_conf, rep_y, brier, groups=groups, n_boot=100)
    assert clustered[1] - clustered[0] > 2 * (rows[1] - rows[0])
    with pytest.raises(ValueError, match="groups"):
        bootstrap_interval(conf, correct, brier, groups=[1, 2])
