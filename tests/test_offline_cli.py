"""The answers cache helpers and the offline CLI (evaluate, conformal), on synthetic data."""

from __future__ import annotations

import json
import struct

import numpy as np
import pytest

import offline.cli.conformal as conformal_cmd
import offline.cli.evaluate as evaluate_cmd
import offline.replay as replay_mod
from calibration.__main__ import main
from calibration.policy import CascadePolicyConfig, TierConfig
from offline.replay import (
    _from_json,
    _to_json,
    model_fingerprint,
    param_count,
    zoo_tiers,
)
from offline.synthetic import random_generation, synthetic_split

POLICY = CascadePolicyConfig(
    tiers=[
        TierConfig(name="cheap", cost_per_request=0.125),
        TierConfig(name="strong", cost_per_request=1.0),
    ]
)


# --- cache helpers ---------------------------------------------------------------------------


def test_generation_json_round_trip():
    g = random_generation(np.random.default_rng(0), 7)
    assert _from_json(json.loads(json.dumps(_to_json(g)))) == g


def write_safetensors(path, shapes):
    header = {name: {"dtype": "F32", "shape": s, "data_offsets": [0, 0]} for name, s in shapes}
    header["__metadata__"] = {"format": "pt"}
    raw = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(raw)) + raw)


def test_param_count_and_zoo_tiers(tmp_path):
    (tmp_path / "cheap").mkdir()
    (tmp_path / "strong").mkdir()
    write_safetensors(tmp_path / "cheap" / "model.safetensors", [("a", [10, 10]), ("b", [5])])
    write_safetensors(tmp_path / "strong" / "model.safetensors", [("a", [20, 42])])
    assert param_count(tmp_path / "cheap") == 105
    tiers = zoo_tiers(tmp_path)
    assert [t.cost_per_request for t in tiers] == [0.125, 1.0]
    with pytest.raises(FileNotFoundError):
        param_count(tmp_path)


def test_fingerprint_follows_the_model_files_only(tmp_path):
    cheap, strong = tmp_path / "cheap", tmp_path / "strong"
    cheap.mkdir()
    strong.mkdir()
    (cheap / "config.json").write_text('{"hidden": 64}')
    (strong / "config.json").write_text('{"hidden": 64}')
    a = model_fingerprint(cheap)
    assert model_fingerprint(strong) == a  # same content, same model
    (tmp_path / "manifest.json").write_text('{"derived": {}}')  # outside the folder
    assert model_fingerprint(cheap) == a
    (cheap / "config.json").write_text('{"hidden": 128}')  # retrained
    assert model_fingerprint(cheap) != a
    with pytest.raises(FileNotFoundError, match="no model folder"):
        model_fingerprint(tmp_path / "missing")


# --- the CLI, on synthetic data ---------------------------------------------------------------


@pytest.fixture
def synthetic_cli(monkeypatch, tmp_path):
    seeds = {"validation": 11, "calibration": 12, "test": 13}

    def fake_load_split(split, n, seed=0, **_):
        return synthetic_split(n, seeds[split] + 100 * seed, split)

    monkeypatch.setattr(replay_mod, "load_split", fake_load_split)
    monkeypatch.setattr(evaluate_cmd, "zoo_root", lambda args: tmp_path)
    monkeypatch.setattr(conformal_cmd, "zoo_root", lambda args: tmp_path)
    (tmp_path / "cheap").mkdir()
    (tmp_path / "cheap" / "config.json").write_text("{}")  # the artifact fingerprints it
    policy = tmp_path / "policy.json"
    policy.write_text(POLICY.model_dump_json())
    return tmp_path, policy


def test_cli_evaluate_json(synthetic_cli, capsys):
    tmp, policy = synthetic_cli
    rc = main(
        [
            "evaluate",
            "--split",
            "test",
            "--n",
            "300",
            "--n-cal",
            "300",
            "--n-fit",
            "300",
            "--policy",
            str(policy),
            "--out",
            str(tmp / "art"),
            "--json",
        ]
    )
    assert rc == 0
    out = json.loads(capsys.readouterr().out)
    assert {"strategies", "summary"} <= set(out)
    assert {"apgr", "cpt50", "cpt80"} <= set(out["summary"])
    assert {"apgr", "cpt50", "cpt80"} <= set(out["summary"]["oracle"])
    assert (tmp / "art" / "cost_quality_test_s0.png").stat().st_size > 10_000


SMALL = ["--n", "200", "--n-cal", "200", "--n-fit", "200", "--no-plot", "--json"]


def test_cli_evaluate_prices_tiers_as_the_serve_config_does(synthetic_cli, capsys):
    rc = main(["evaluate", "--split", "test", *SMALL])
    assert rc == 0
    out = json.loads(capsys.readouterr().out)
    s = out["summary"]
    assert [t["cost_per_request"] for t in s["tiers"]] == [0.05, 0.75]  # serve_config.yaml
    assert s["router_threshold"] == 0.7
    assert s["always_strong_cost"] == pytest.approx(1.0)
    assert s["always_strong_cost_raw"] == pytest.approx(0.75)
    by = {p["name"]: p for p in out["strategies"]}
    assert by["always_cheap"]["cost"] == pytest.approx(0.05 / 0.75)
    assert out["policy_source"].startswith("serve config")


def test_cli_evaluate_policy_yaml_and_param_costs(synthetic_cli, capsys):
    tmp, _ = synthetic_cli
    path = tmp / "serve.yaml"
    path.write_text(
        "applications:\n  - name: cascade\n    args:\n      tiers:\n"
        "        - {name: cheap, model: zoo:cheap, cost_per_request: 0.2}\n"
        "        - {name: strong, model: zoo:strong, cost_per_request: 2.0}\n"
    )
    assert main(["evaluate", "--split", "test", "--policy", str(path), *SMALL]) == 0
    s = json.loads(capsys.readouterr().out)["summary"]
    assert s["always_strong_cost_raw"] == pytest.approx(2.0)
    assert s["router_threshold"] == 0.7  # serving's default when the file names none
    (tmp / "strong").mkdir()
    write_safetensors(tmp / "cheap" / "model.safetensors", [("a", [10, 10])])
    write_safetensors(tmp / "strong" / "model.safetensors", [("a", [20, 20])])
    assert main(["evaluate", "--split", "test", "--costs", "params", *SMALL]) == 0
    s = json.loads(capsys.readouterr().out)["summary"]
    assert [t["cost_per_request"] for t in s["tiers"]] == [0.25, 1.0]


def test_cli_evaluate_refuses_to_evaluate_on_its_own_calibration_data(synthetic_cli):
    _, policy = synthetic_cli
    with pytest.raises(SystemExit, match="used to fit or calibrate"):
        main(["evaluate", "--split", "calibration", "--policy", str(policy)])


@pytest.mark.parametrize("mode", ["budget", "recall", "risk"])
def test_cli_conformal_json_and_artifact(synthetic_cli, capsys, mode):
    tmp, _ = synthetic_cli
    out_path = tmp / f"{mode}.json"
    rc = main(
        [
            "conformal",
            "--mode",
            mode,
            "--alpha",
            "0.1",
            "--trials",
            "200",
            "--n",
            "300",
            "--n-cal",
            "300",
            "--n-fit",
            "300",
            "--json",
            "--out",
            str(out_path),
        ]
    )
    assert rc == 0
    out = json.loads(capsys.readouterr().out)
    assert out["mode"] == mode and out["check"]["trials"] == 200
    assert out["policy_source"].startswith("serve config")  # priced as serving prices
    assert 0.05 / 0.75 - 1e-9 <= out["on_test"]["cost_vs_always_strong"] <= 1.0 + 0.05 / 0.75
    assert {"mean", "violation_share", "holds", "bound"} <= set(out["check"])
    assert out["check"]["holds"]
    from calibration.artifact import CascadeCalibration

    art = CascadeCalibration.load(out_path)
    assert art.mode == mode and art.threshold == pytest.approx(float(out["threshold"]))
    assert art.identity is not None and art.identity.model == "zoo:cheap"  # synthetic: no weights
    if mode != "recall":  # adaptive conformal can recompute this threshold from the sample
        assert art.sample is not None and art.sample.threshold(0.1) == art.threshold


def test_cli_conformal_heuristic(synthetic_cli, capsys):
    tmp, _ = synthetic_cli
    rc = main(
        [
            "conformal",
            "--mode",
            "heuristic",
            "--n",
            "200",
            "--n-cal",
            "200",
            "--json",
            "--out",
            str(tmp / "h.json"),
        ]
    )
    assert rc == 0
    out = json.loads(capsys.readouterr().out)
    assert out["threshold"] == 1.0 and "escalation_rate" in out["check"]


def test_cli_rejects_bad_alpha(synthetic_cli):
    with pytest.raises(SystemExit, match="--alpha must be in"):
        main(["conformal", "--mode", "risk", "--alpha", "2"])
