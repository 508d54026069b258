"""The drift monitor: its tests against scipy, alarms on shifted traffic and not on reference
traffic (false alarms over many seeded repeats), the artifact with and without references, the
zoo's references, and serving's logging of alarms (the /stats section over HTTP is checked in
test_serve_e2e)."""

from __future__ import annotations

import json
import logging
from types import SimpleNamespace

import numpy as np
import pytest
from scipy import stats

from calibration.artifact import CascadeArtifact, CascadeCalibration, ModelIdentity, load_artifact
from calibration.cascade import CascadeRun, run_cascade
from calibration.config import AppArgs, DriftArgs
from calibration.drift import DriftMonitor, ScoreSample, references_from_outcomes
from calibration.drift_stats import fisher_exact, kolmogorov_sf, ks_two_sample
from calibration.feedback import TierSignal
from calibration.policy import CascadePolicyConfig, TierConfig

POLICY = CascadePolicyConfig(
    tiers=(TierConfig(name="cheap", cost_per_request=0.1), TierConfig(name="strong")),
    router_threshold=0.7,
)
THRESHOLD = 0.45


def _traffic(rng, n: int, p_top=0.3, p_complex=0.25, score_shift=0.0, threshold=THRESHOLD):
    """n synthetic cascade outcomes through the real CascadeRun: a share starts at the top
    (confident 'complex'), the rest get a Beta(2, 5) score at the cheap tier."""
    outcomes, verdicts = [], []
    for _ in range(n):
        if rng.random() < p_top:
            verdict, run = "complex", CascadeRun.begin(POLICY, router_policy="complex",
                                                       router_confidence=0.9)  # fmt: skip
        else:
            verdict = "complex" if rng.random() < p_complex else "standard"
            run = CascadeRun.begin(POLICY, router_policy=verdict, router_confidence=0.6)
        score = float(rng.beta(2, 5)) + score_shift
        sig = TierSignal({}, score, threshold, score > threshold, (), "synthetic")
        outcomes.append(run_cascade(POLICY, run, lambda t, s=sig: s))
        verdicts.append(verdict)
    return outcomes, verdicts


@pytest.fixture(scope="module")
def reference():
    outcomes, verdicts = _traffic(np.random.default_rng(0), 2000)
    return references_from_outcomes(POLICY, outcomes, verdicts, {"cheap": THRESHOLD}, "synthetic")


@pytest.fixture(scope="module")
def same():
    """A large pool of traffic from the reference's own distribution (other seed)."""
    return _traffic(np.random.default_rng(1), 4000)


def _monitor(ref, threshold=THRESHOLD, policy=POLICY, **kw):
    return DriftMonitor(policy, {"cheap": (ref, threshold)}, **kw)


def _first_alarm(monitor, outcomes, verdicts, order):
    for i in order:
        for s in monitor.observe(outcomes[i], verdicts[i]) or ():
            if s.alarm:
                return monitor.requests, s
    return None, None


# --- the statistics -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "table", [(10, 200, 300, 1500), (40, 200, 300, 1500), (0, 50, 3, 2000), (5, 60, 100, 1000)]
)
def test_fisher_exact_matches_scipy(table):
    k1, n1, k2, n2 = table
    want = stats.fisher_exact([[k1, n1 - k1], [k2, n2 - k2]]).pvalue
    assert fisher_exact(k1, n1, k2, n2) == pytest.approx(want, rel=1e-6, abs=1e-12)


@pytest.mark.parametrize("lam", [0.1, 0.5, 1.0, 1.17, 1.19, 1.6, 2.5, 4.0])
def test_kolmogorov_tail_matches_scipy_on_both_series(lam):
    assert kolmogorov_sf(lam) == pytest.approx(stats.kstwobign.sf(lam), rel=1e-9, abs=1e-15)


@pytest.mark.parametrize("shift", [0.0, 0.15, 0.3, 0.45])
def test_ks_matches_scipy_and_a_quantile_summary_keeps_it(shift):
    rng = np.random.default_rng(7)
    x, ref = rng.normal(shift, 1, 200), rng.normal(0, 1, 1500)
    d, p = ks_two_sample(x, ref)
    want = stats.ks_2samp(x, ref)
    assert d == pytest.approx(want.statistic)
    assert p == pytest.approx(want.pvalue, rel=0.1, abs=1e-4)
    summary = ScoreSample.of(ref)
    assert len(summary.values) == 512 and summary.n == 1500
    d_q, p_q = ks_two_sample(x, np.asarray(summary.values), summary.n)
    assert abs(d_q - d) <= 1 / 512 and p_q == pytest.approx(p, rel=0.25, abs=1e-4)


# --- the monitor ----------------------------------------------------------------------------


def test_reference_records_the_population(reference):
    ref = reference["cheap"]
    assert ref.reach.n == 2000 and 0.65 < ref.reach.rate < 0.75  # 30% start at the top
    assert ref.escalation.n == ref.reach.k and ref.router.n == ref.reach.k
    assert 0.2 < ref.router.rate < 0.3 and ref.threshold == THRESHOLD and ref.below == {}


def test_no_false_alarm_on_reference_traffic_beyond_tolerance(reference, same):
    """alpha bounds one look; over a run of 400 requests (looks every 10, windows overlapping)
    false alarms stay rare: at most 5% of 100 seeded runs."""
    outcomes, verdicts = same
    alarms = 0
    for r in range(100):
        order = np.random.default_rng([2, r]).permutation(len(outcomes))[:400]
        first, _ = _first_alarm(_monitor(reference["cheap"]), outcomes, verdicts, order)
        alarms += first is not None
    assert alarms <= 5, f"{alarms} of 100 runs alarmed on undrifted traffic"


@pytest.mark.parametrize(
    ("shift", "test"),
    [
        ({"score_shift": 0.15}, {"score", "escalation"}),
        ({"p_complex": 0.6}, {"router"}),
        ({"p_top": 0.7}, {"reach"}),
    ],
)
def test_fires_on_shifted_traffic_within_a_window(reference, shift, test):
    for seed in range(5):
        outcomes, verdicts = _traffic(np.random.default_rng([3, seed]), 300, **shift)
        first, status = _first_alarm(
            _monitor(reference["cheap"]), outcomes, verdicts, range(len(outcomes))
        )
        assert first is not None and first <= 200, f"seed {seed}: no alarm in 200 requests"
        assert set(status.fired) & test, (seed, status.fired)
        assert status.changed and status.alarm_since == first


def test_alarm_clears_once_traffic_is_back(reference, same):
    shifted, sv = _traffic(np.random.default_rng(4), 200, p_top=0.8)
    monitor = _monitor(reference["cheap"])
    edges = []
    for o, v in [*zip(shifted, sv, strict=True), *zip(*same, strict=True)][:1200]:
        edges += [s.alarm for s in monitor.observe(o, v) or () if s.changed]
    assert edges == [True, False]  # on once, off once: no flapping
    assert not monitor.alarm


def test_forced_requests_and_answers_without_reference_are_not_tested(reference, same):
    forced = run_cascade(POLICY, CascadeRun.forced(POLICY, "cheap"), lambda t: None)
    monitor = _monitor(reference["cheap"])
    assert monitor.observe(forced) is None and monitor.requests == 0
    none = _monitor(None)
    for o, v in zip(*same, strict=True):
        none.observe(o, v)
    status = none.statuses()["cheap"]
    assert status.note == "no reference" and not status.reference and not status.alarm
    assert status.tests == {}


def test_a_moved_threshold_is_not_drift_but_a_moved_router_threshold_is_stale(reference):
    """Serving at threshold 0.3 (user_config, adaptive conformal) escalates far more often,
    but escalations are counted at the reference's threshold: no alarm. A reference recorded
    under another router threshold saw another population: not tested."""
    outcomes, verdicts = _traffic(np.random.default_rng(5), 600, threshold=0.3)
    served_rate = np.mean([o.escalated for o in outcomes if o.start_tier == 0])
    assert served_rate > 2 * reference["cheap"].escalation.rate  # ~0.42 vs ~0.18
    moved = _monitor(reference["cheap"], threshold=0.3)
    assert _first_alarm(moved, outcomes, verdicts, range(600)) == (None, None)
    esc = moved.statuses()["cheap"].tests["escalation"]
    assert abs(esc.observed - esc.expected) < 0.1 and esc.p_value > moved.level
    router = POLICY.model_copy(update={"router_threshold": 0.9})
    stale = _monitor(reference["cheap"], policy=router)
    assert stale.statuses()["cheap"].note.startswith("reference stale: router threshold")
    assert stale.m == 1 and stale._tiers[0].tests == ()


def test_settings_are_validated():
    with pytest.raises(ValueError, match="min_samples"):
        DriftArgs(window=20, min_samples=50)
    with pytest.raises(ValueError, match="min_samples"):
        DriftMonitor(POLICY, {}, window=20, min_samples=50)
    args = AppArgs.from_serve_config()
    assert args.drift.enabled and args.drift.alpha == 0.001
    assert args.reconfigured({"drift": {"alpha": 0.01}}).drift.alpha == 0.01
    with pytest.raises(ValueError, match="drift may set only"):
        args.reconfigured({"drift": {"bogus": 1}})


# --- the artifact ---------------------------------------------------------------------------


def test_artifact_round_trips_with_and_without_a_reference(tmp_path, reference):
    model = ModelIdentity(name="zoo:cheap")
    plain = CascadeCalibration.heuristic(model)
    art = CascadeArtifact(tiers={"cheap": plain})
    with_ref = art.with_drift({"cheap": reference["cheap"]})
    for a in (art, with_ref):
        back = load_artifact(a.save(tmp_path / "a.json"), ["cheap", "strong"])
        assert back.tiers["cheap"].drift == a.tiers["cheap"].drift
    # a file written before the monitor (no "drift" key) still loads, unmonitored
    raw = json.loads(with_ref.save(tmp_path / "b.json").read_text())
    del raw["tiers"]["cheap"]["drift"]
    (tmp_path / "old.json").write_text(json.dumps(raw))
    old = load_artifact(tmp_path / "old.json", ["cheap", "strong"])
    assert old.tiers["cheap"].drift is None
    assert DriftMonitor.from_artifact(old, POLICY).statuses()["cheap"].note == "no reference"
    # an infinite threshold (a conservative calibration) survives in the reference too
    inf = reference["cheap"].model_copy(update={"threshold": float("inf")})
    single = plain.model_copy(update={"drift": inf})
    assert CascadeCalibration.load(single.save(tmp_path / "c.json")).drift.threshold == float("inf")


# --- the zoo --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def zoo_traffic(zoo):
    """The zoo's test split (seed 0, cached) replayed through serve_config.yaml's policy, as
    benchmarks/bench_drift.py replays it."""
    from models.served_calibration import served_artifact
    from offline.replay import load_split
    from offline.served import replay_served

    args = AppArgs.from_serve_config()
    artifact = served_artifact(args)
    data = load_split("test", 1000, 0, tiers=args.tier_names)
    pool = SimpleNamespace(
        outcomes=replay_served(args.policy(), artifact, data).outcomes,
        verdicts=data.router.policy,
        families=np.array([t.family for t in data.tasks]),
    )
    return args, artifact, pool


def test_zoo_artifact_has_references_for_every_tier_below_the_top(zoo):
    art = load_artifact(zoo / "calibration.json", ["cheap", "mid", "strong"])
    assert set(art.tiers) == {"cheap", "mid"}
    for cal in art.tiers.values():
        ref = cal.drift
        assert ref is not None and ref.threshold == cal.threshold and ref.router_threshold == 0.7
        assert ref.escalation.n == ref.reach.k == ref.scores.n > 100
        assert 0 < ref.escalation.rate < 1 and ref.router is not None
    assert art.tiers["mid"].drift.below == {"cheap": art.tiers["cheap"].threshold}
    assert art.tiers["mid"].drift.reach.k == art.tiers["cheap"].drift.escalation.k


def test_zoo_monitor_is_quiet_on_test_traffic_and_fires_when_one_family_is_all(zoo_traffic):
    args, artifact, pool = zoo_traffic
    idx = np.arange(len(pool.outcomes))
    quiet = DriftMonitor.from_artifact(artifact, args.policy())
    first, _ = _first_alarm(quiet, pool.outcomes, pool.verdicts, idx)
    assert first is None, "alarm on the held-out split itself"
    only_sub = idx[pool.families == "sub"]
    loud = DriftMonitor.from_artifact(artifact, args.policy())
    first, status = _first_alarm(loud, pool.outcomes, pool.verdicts, only_sub)
    assert first is not None and first <= 150 and status.tier == "cheap"


def test_serving_logs_an_alarm_once_and_its_clearing(zoo_traffic):
    """CascadeServer's drift hook, without the graph: WARNING when the alarm turns on, INFO
    when it clears, and the /stats section it serves."""
    from deployments.protocol import RouterView
    from deployments.serving import CascadeServer

    args, _, pool = zoo_traffic
    server = CascadeServer(args, tiers={}, router=None)
    records: list[logging.LogRecord] = []
    handler = logging.Handler(logging.INFO)
    handler.emit = records.append
    log = logging.getLogger("ray.serve")
    log.addHandler(handler)
    level, log.level = log.level, logging.INFO
    try:
        only_max = np.flatnonzero(pool.families == "max")[:200]
        for i in [*only_max, *range(len(pool.outcomes))]:
            server._watch_drift(pool.outcomes[i], RouterView(policy=pool.verdicts[i]))
    finally:
        log.removeHandler(handler)
        log.setLevel(level)
    drift = [r for r in records if "drift alarm" in r.getMessage()]
    assert [r.levelno for r in drift] == [logging.WARNING, logging.INFO], drift
    assert "ON at tier cheap" in drift[0].getMessage()
    section = server.drift_stats()
    assert section["enabled"] and section["requests"] == 200 + len(pool.outcomes)
    assert set(section["tiers"]) == {"cheap"} and not section["alarm"]
