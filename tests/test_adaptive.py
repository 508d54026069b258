"""Adaptive conformal (calibration.adaptive), the feedback store (deployments.feedback), and
POST /v1/feedback on the real graph over real HTTP: the zoo on the transformers engine (it
starts in seconds), no router, the zoo's artifact with calibration samples (so it can adapt)."""

from __future__ import annotations

import math
import warnings
from pathlib import Path

import httpx
import numpy as np
import pytest

from calibration.adaptive import (
    AdaptiveConformal,
    CalibrationSample,
    TierDecision,
    tier_decisions,
)
from calibration.artifact import CascadeArtifact, CascadeCalibration, ModelIdentity
from calibration.cascade import CascadeRun, run_cascade
from calibration.config import AdaptiveArgs, AppArgs
from calibration.conformal import calibrate
from calibration.feedback import FeedbackConfig, TierSignal
from calibration.policy import CascadePolicyConfig, TierConfig
from calibration.scores import get_scorer
from deployments.feedback import AnswerRecord, FeedbackRejected, FeedbackStore, same_answer
from deployments.llm import TierRequest
from models.engine import SamplingSettings
from models.tasks import sample

ALPHA = 0.05


def _synthetic(n: int, rng, p_wrong: float, shift: float = 0.0):
    """Scores in [0, 1] and labels: an answer scoring s is wrong with p_wrong * s + shift."""
    s = rng.uniform(size=n)
    return s, rng.uniform(size=n) < np.clip(p_wrong * s + shift, 0, 1)


def _calibration(mode: str, n: int = 2000, seed: int = 0) -> CascadeCalibration:
    rng = np.random.default_rng(seed)
    s, wrong = _synthetic(n, rng, 0.4)
    right = np.ones(n, dtype=bool)
    r = calibrate(mode, s, ALPHA, wrong=wrong, strong_right=right)
    sample = CalibrationSample.of(mode, s, wrong=wrong, strong_right=right)
    scorer = get_scorer("neg_mean_logprob")
    return CascadeCalibration.from_result(
        r, scorer, FeedbackConfig(), ModelIdentity(name="synthetic"), "synthetic", sample=sample
    )


def _stream(aci: AdaptiveConformal, mode: str, t: int, seed: int, shift: float) -> float:
    """Decide `t` shifted answers at the thresholds `aci` serves, each label fed back before
    the next decision; returns the long-run error rate (what the mode bounds)."""
    rng = np.random.default_rng(seed)
    errs = 0
    for _ in range(t):
        s, wrong = _synthetic(1, rng, 0.4, shift)
        score = float(s[0]) + (shift if mode == "budget" else 0.0)  # budget: scores drift up
        accepted = score <= aci.threshold("cheap")
        errs += (not accepted) if mode == "budget" else (accepted and bool(wrong[0]))
        aci.feedback((_d(accepted, score),), wrong=bool(wrong[0]))
    return errs / t


def _d(accepted: bool, score: float = 0.5) -> TierDecision:
    return TierDecision("cheap", accepted, score, math.nan)


# --- the calibration sample -----------------------------------------------------------------


@pytest.mark.parametrize("mode", ["budget", "risk"])
def test_the_sample_gives_back_the_conformal_threshold_at_every_level(mode):
    rng = np.random.default_rng(1)
    s, wrong = _synthetic(700, rng, 0.5)
    right = rng.uniform(size=700) < 0.9
    sample = CalibrationSample.of(mode, s, wrong=wrong, strong_right=right)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the tiny levels are conservative, and say so
        for alpha in (0.0005, 0.01, 0.05, 0.2, 0.7):
            want = calibrate(mode, s, alpha, wrong=wrong, strong_right=right).threshold
            assert sample.threshold(alpha) == want, alpha
            assert sample.threshold(sample.level_of(want)) == want  # a hand-set threshold
    # the levels that cannot err: risk escalates everything, budget never escalates
    assert sample.threshold(0.0) == (math.inf if mode == "budget" else -math.inf)


def test_a_thinned_sample_rounds_to_the_safe_side():
    rng = np.random.default_rng(2)
    s, wrong = _synthetic(20_000, rng, 0.8)
    right = np.ones_like(wrong)
    for mode, safe in (("risk", np.less_equal), ("budget", np.greater_equal)):
        full = CalibrationSample.of(mode, s, wrong=wrong, strong_right=right, cap=10**6)
        thin = CalibrationSample.of(mode, s, wrong=wrong, strong_right=right, cap=500)
        assert len(thin.scores) == 500 and thin.total == full.total
        for alpha in (0.01, 0.05, 0.2):
            a, b = thin.threshold(alpha), full.threshold(alpha)
            assert safe(a, b) and abs(a - b) < 0.02, (mode, alpha)


def test_the_artifact_keeps_the_sample_and_older_files_still_load(tmp_path):
    cal = _calibration("risk")
    art = CascadeArtifact(tiers={"cheap": cal})
    back = CascadeArtifact.model_validate_json(art.save(tmp_path / "a.json").read_text())
    assert back.tiers["cheap"].sample == cal.sample
    old = CascadeArtifact(tiers={"cheap": cal.model_copy(update={"sample": None})})
    assert CascadeArtifact.model_validate_json(old.model_dump_json()).tiers["cheap"].sample is None
    with pytest.raises(ValueError, match="sorted"):
        CalibrationSample(mode="risk", n=3, total=2, scores=(0.5, 0.1))


# --- adaptive conformal -----------------------------------------------------------------------


@pytest.mark.parametrize("mode,shift", [("risk", 0.15), ("budget", 0.15), ("risk", 0.0)])
def test_the_long_run_error_tracks_alpha_with_aci_and_under_a_shift_only_with_it(mode, shift):
    cal = _calibration(mode)
    t, gamma = 4000, 0.01
    static = AdaptiveConformal.build({"cheap": cal}, AdaptiveArgs())
    on = AdaptiveArgs(enabled=True, gamma=gamma, min_feedback=0, max_alpha_ratio=4)
    err_static = _stream(static, mode, t, seed=3, shift=shift)
    err_aci = _stream(AdaptiveConformal.build({"cheap": cal}, on), mode, t, seed=3, shift=shift)
    if shift:  # the calibrated threshold breaks its bound; without a shift it holds
        assert err_static > ALPHA + 0.03, err_static
    assert abs(err_aci - ALPHA) < 0.01, err_aci  # ACI tracks alpha
    assert err_aci <= ALPHA + (ALPHA + gamma) / (gamma * t)  # the deterministic bound
    assert static.threshold("cheap") == cal.threshold


def test_warm_up_clip_and_the_disabled_switch():
    cal = _calibration("risk")
    aci = AdaptiveConformal.build({"cheap": cal}, AdaptiveArgs(enabled=True, min_feedback=3))
    bad = (_d(True, 0.1),)
    first = aci.feedback(bad, wrong=True)[0]
    assert first.err and first.applied and first.alpha_after < ALPHA
    assert first.threshold_after == cal.threshold and "2 more label" in first.note
    for _ in range(40):  # a long run of bad accepts: alpha_t is clipped at -gamma
        u = aci.feedback(bad, wrong=True)[0]
    assert u.adapted and u.alpha_after == -0.005 and u.threshold_after == -math.inf
    good = (_d(False, 0.9),)
    for _ in range(5000):  # escalations never err: alpha_t climbs to the ceiling, no higher
        u = aci.feedback(good, wrong=False)[0]
    assert u.alpha_after == pytest.approx(2 * ALPHA) and u.threshold_after > cal.threshold
    args = AppArgs(tiers=[{"name": "cheap", "model": "m"}, {"name": "strong", "model": "m"}])
    assert args.reconfigured({"adaptive": {"enabled": True, "gamma": 0.01}}).adaptive.enabled
    off = AdaptiveConformal.build({"cheap": cal}, args.adaptive)  # off by default
    u = off.feedback(bad, wrong=True)[0]
    assert u.err and not u.applied and not u.moved and "enabled is false" in u.note
    assert off.state()["tiers"]["cheap"]["feedback"] == 0


def test_a_new_threshold_resets_the_tier_and_unsupported_tiers_are_named():
    cal = _calibration("risk")
    settings = AdaptiveArgs(enabled=True, min_feedback=0)
    aci = AdaptiveConformal.build({"cheap": cal}, settings)
    aci.feedback((_d(True, 0.1),), wrong=True)
    same = AdaptiveConformal.build({"cheap": cal}, settings, previous=aci)
    assert same.state()["tiers"]["cheap"]["feedback"] == 1 and not same.resets
    art = CascadeArtifact(tiers={"cheap": cal}).with_thresholds({"cheap": 0.3})
    moved = AdaptiveConformal.build(art.tiers, settings, previous=same)
    tier = moved.state()["tiers"]["cheap"]
    assert tier["feedback"] == 0 and tier["epoch"] == 1 and "0.3" in moved.resets["cheap"]
    assert tier["alpha_t"] == cal.sample.level_of(0.3)  # starts where the new threshold is
    # a label on an answer served before the reset leaves the new state alone
    u = moved.feedback((_d(True, 0.1),), wrong=True, epochs={"cheap": 0})[0]
    assert not u.applied and "recalibrated" in u.note
    unsupported = (
        cal.model_copy(update={"sample": None}),  # an artifact from before samples
        cal.model_copy(update={"mode": "recall"}),
        CascadeCalibration.heuristic(ModelIdentity(name="x")),
    )
    for bad in unsupported:
        with pytest.raises(ValueError, match="tier 'cheap' cannot adapt"):
            AdaptiveConformal.build({"cheap": bad}, settings)
        off = AdaptiveConformal.build({"cheap": bad}, AdaptiveArgs())  # off: served as is
        assert off.threshold("cheap") == bad.threshold
        assert not off.feedback((_d(True),), wrong=True)[0].applied


def test_tier_decisions_read_the_run():
    policy = CascadePolicyConfig(tiers=(TierConfig(name="cheap"), TierConfig(name="strong")))
    sig = TierSignal({}, 0.9, 0.5, True, ("0.9 > 0.5",), "neg_mean_logprob")
    outcome = run_cascade(policy, CascadeRun(policy, 0), lambda t: sig if t == 0 else None)
    assert tier_decisions(outcome, policy.tier_names) == (TierDecision("cheap", False, 0.9, 0.5),)
    forced = run_cascade(policy, CascadeRun.forced(policy, "cheap"), lambda t: sig)
    assert tier_decisions(forced, policy.tier_names) == ()  # no threshold decided it


# --- the feedback store -------------------------------------------------------------------------


class _Clock:
    now = 1000.0

    def __call__(self) -> float:
        return self.now


def _record(rid: str) -> AnswerRecord:
    request = TierRequest(settings=SamplingSettings(max_tokens=8), prompt="40+2=")
    return AnswerRecord(rid, "cheap", "42", (_d(True),), {"cheap": 0}, request, False)


def _refusal(store: FeedbackStore, rid: str) -> FeedbackRejected:
    with pytest.raises(FeedbackRejected) as e:
        store.claim(rid)
    return e.value


def test_the_store_is_capped_in_entries_and_bytes_and_says_who_was_evicted():
    store = FeedbackStore(ttl_s=60, max_entries=3, max_bytes=10**6, clock=_Clock())
    for i in range(5):
        store.add(_record(f"id-{i}"))
    assert len(store) == 3
    e = _refusal(store, "id-0")
    assert (e.status, e.code) == (404, "feedback_id_evicted") and "max_entries=3" in e.message
    assert store.claim("id-4").id == "id-4"
    one = _record("x").size
    small = FeedbackStore(ttl_s=60, max_entries=100, max_bytes=2 * one + 1, clock=_Clock())
    for i in range(4):
        small.add(_record(f"b-{i}"))
    assert len(small) == 2 and small.bytes <= 2 * one + 1
    assert _refusal(small, "b-1").code == "feedback_id_evicted"
    # the ids it remembers are capped as well: the oldest become unknown
    assert _refusal(store, "never-served").code == "feedback_id_unknown"
    for i in range(5, 12):
        store.add(_record(f"id-{i}"))
    assert _refusal(store, "id-0").code == "feedback_id_unknown"


def test_answers_expire_after_the_ttl():
    clock = _Clock()
    store = FeedbackStore(ttl_s=60, max_entries=10, max_bytes=10**6, clock=clock)
    store.add(_record("old"))
    clock.now += 30
    store.add(_record("new"))
    clock.now += 31  # "old" is 61 s old, "new" 31 s
    e = _refusal(store, "old")  # the answer is gone, and the 404 says why
    assert (e.status, e.code) == (404, "feedback_id_expired") and "60 s" in e.message
    assert store.claim("new").id == "new"
    clock.now += 100
    store.add(_record("newest"))  # adding prunes what expired meanwhile
    assert store.as_dict()["open"] == 1


def test_one_verdict_per_answer():
    store = FeedbackStore(ttl_s=60, max_entries=10, max_bytes=10**6, clock=_Clock())
    store.add(_record("a"))
    record = store.claim("a")
    assert _refusal(store, "a").code == "feedback_pending"  # being judged
    store.release(record)  # the judge failed: the verdict can come again
    record = store.claim("a")
    store.settle(record, "wrong")
    e = _refusal(store, "a")
    assert (e.status, e.code) == (409, "feedback_duplicate") and "wrong" in e.message
    assert e.response().status_code == 409
    assert store.bytes == 0
    # the 'strong' verdict's match: up to whitespace and case
    assert same_answer(" Edcba\n", "edcba") and not same_answer("592", "591")


# --- POST /v1/feedback on the real graph -----------------------------------------------------

TOKEN = "feedback-test-key-5e0a"  # a fake credential, for this test graph only
AUTH = {"authorization": f"Bearer {TOKEN}"}


def _graph_args(artifact: Path, tokens: Path) -> dict:
    opts = {n: {"ray_actor_options": {"num_cpus": 0.1}} for n in ("Ingress", "Tier-cheap")}
    tiers = [("cheap", 0.05), ("strong", 0.75)]
    return {
        "tiers": [
            {"name": n, "model": f"zoo:{n}", "cost_per_request": c, "engine": "transformers"}
            for n, c in tiers
        ],
        "router": {"enabled": False},  # every cascade request starts at the cheap tier
        "calibration": {"file": str(artifact)},
        "limits": {"max_tokens": 32, "max_prompt_chars": 48, "max_prompt_tokens": 48},
        "auth": {"tokens_env": None, "tokens_file": str(tokens)},
        "adaptive": {"enabled": True, "min_feedback": 2},
        "deployment_options": {**opts, "Tier-strong": opts["Tier-cheap"]},
    }


@pytest.fixture(scope="module")
def base(logprobs_only_artifact, tmp_path_factory):
    from deployments.local import running_app

    folder = tmp_path_factory.mktemp("adaptive")
    artifact = logprobs_only_artifact  # the zoo's, router off; every tier's calibration sample
    (tokens := folder / "tokens").write_text(f"{TOKEN}\n")
    with running_app(_graph_args(artifact, tokens)) as (url, _):
        yield url


def _chat(base: str, content: str, model: str = "cascade") -> dict:
    body = {"model": model, "messages": [{"role": "user", "content": content}]}
    r = httpx.post(f"{base}/v1/chat/completions", json=body, headers=AUTH, timeout=60)
    assert r.status_code == 200, r.text
    return r.json()


def _verdict(base: str, body, headers=AUTH) -> httpx.Response:
    kw = {"content": body} if isinstance(body, bytes) else {"json": body}
    return httpx.post(f"{base}/v1/feedback", headers=headers, timeout=60, **kw)


def _stats(base: str) -> dict:
    return httpx.get(f"{base}/stats", headers=AUTH, timeout=30).json()


@pytest.fixture(scope="module")
def accepted(base) -> list[dict]:
    """Answers the cheap tier accepted (a bounded search over test prompts)."""
    out = []
    for task in sample("test", 40, seed=21):
        r = _chat(base, task.prompt)
        if r["routing"]["tiers_visited"] == ["cheap"]:
            out.append({**r, "prompt": task.prompt})
        if len(out) == 4:
            return out
    pytest.fail(f"only {len(out)} of 40 test prompts were accepted at the cheap tier")


@pytest.mark.slow
def test_a_verdict_is_taken_once_and_unknown_ids_are_404(base, accepted):
    answer = accepted[0]
    assert answer["routing"]["feedback_id"] == answer["id"]
    r = _verdict(base, {"id": answer["id"], "verdict": "right"})
    assert r.status_code == 200, r.text
    out = r.json()
    assert out["label"] == "right" and out["final_tier"] == "cheap" and out["adaptive"]
    (u,) = out["updates"]
    assert u["tier"] == "cheap" and not u["err"] and out["applied"]
    again = _verdict(base, {"id": answer["id"], "verdict": "wrong"})
    assert again.status_code == 409 and again.json()["error"]["code"] == "feedback_duplicate"
    unknown = _verdict(base, {"id": "chatcmpl-never-served", "verdict": "wrong"})
    error = unknown.json()["error"]
    assert unknown.status_code == 404 and error["code"] == "feedback_id_unknown"
    assert "was served by this replica" in error["message"]
    feedback = _stats(base)["feedback"]
    assert feedback["received"] >= 3 and feedback["applied"] >= 1
    assert {"feedback_duplicate", "feedback_id_unknown"} <= set(feedback["rejected"])


@pytest.mark.slow
def test_bad_bodies_are_400_and_a_key_is_required(base, accepted):
    rid = accepted[0]["id"]
    for body, param in (
        ({"id": rid, "verdict": "maybe"}, "verdict"),
        ({"verdict": "right"}, "id"),
        ({"id": rid, "verdict": "right", "comment": "x"}, "comment"),
        ({"id": "x" * 129, "verdict": "right"}, "id"),
    ):
        r = _verdict(base, body)
        assert r.status_code == 400 and r.json()["error"]["param"] == param, (body, r.text)
    assert _verdict(base, b"{not json").status_code == 400
    wrong_key = {"authorization": "Bearer not-the-key"}
    assert _verdict(base, {"id": rid, "verdict": "right"}, headers=wrong_key).status_code == 401
    assert _verdict(base, {"id": rid, "verdict": "right"}, headers={}).status_code == 401


@pytest.mark.slow
def test_wrong_verdicts_move_the_served_threshold(base, accepted):
    before = _stats(base)["adaptive"]["tiers"]["cheap"]
    assert before["threshold"] == before["base_threshold"]
    for answer in accepted[1:3]:
        r = _verdict(base, {"id": answer["id"], "verdict": "wrong"})
        assert r.status_code == 200, r.text
        (u,) = r.json()["updates"]
        assert u["err"] and u["alpha_after"] < u["alpha_before"]
    assert u["moved"] and u["threshold_after"] < u["threshold_before"] and u["adapted"]
    after = _stats(base)["adaptive"]["tiers"]["cheap"]
    assert after["adapted"] and after["alpha_t"] < after["alpha"]
    assert after["threshold"] < after["base_threshold"] == before["base_threshold"]
    routing = _chat(base, "12+3")["routing"]
    assert routing["attempts"][0]["threshold"] == after["threshold"]
    assert routing["attempts"][0]["adapted"] and routing["threshold_adapted"]


@pytest.mark.slow
def test_the_strong_verdict_asks_the_top_tier(base, accepted):
    r = _verdict(base, {"id": accepted[3]["id"], "verdict": "strong"})
    assert r.status_code == 200, r.text
    out, judge = r.json(), r.json()["judge"]
    assert judge["called"] and judge["tier"] == "strong" and judge["cost"] == 0.75
    assert out["label"] == ("right" if judge["agrees"] else "wrong")
    direct = _chat(base, accepted[3]["prompt"], model="strong")  # the same request, forced
    assert judge["answer"] == direct["choices"][0]["message"]["content"]
    forced = _chat(base, "12+3", model="strong")
    r = _verdict(base, {"id": forced["id"], "verdict": "strong"})
    assert r.status_code == 200 and not r.json()["judge"]["called"]  # the top tier's own answer
    assert r.json()["updates"] == [] and "forced" in r.json()["note"]
    assert _stats(base)["feedback"]["judge_calls"] >= 1
