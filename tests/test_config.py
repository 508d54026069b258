"""calibration.config.AppArgs: the one typed config, read from the shipped serve configs."""

from __future__ import annotations

from pathlib import Path

import pytest

from calibration.config import SERVE_CONFIG, AppArgs
from calibration.policy import TierConfig

REPO = Path(__file__).resolve().parents[1]
SHIPPED = sorted(REPO.glob("serve_config*.yaml"))


def test_every_shipped_config_is_found():
    assert {p.name for p in SHIPPED} >= {
        "serve_config.yaml",
        "serve_config.gpu.yaml",
        "serve_config.3tier.yaml",
    }


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.name)
def test_shipped_configs_load_and_name_only_deployments_the_graph_has(path):
    import yaml

    args = AppArgs.from_serve_config(path)
    doc = yaml.safe_load(path.read_text())
    (app,) = [a for a in doc["applications"] if a["name"] == "cascade"]
    assert app["import_path"] == "deployments.app:build_app"
    named = {d["name"] for d in app.get("deployments") or []}
    assert named <= set(args.deployment_names()), named - set(args.deployment_names())
    # every deployment the graph makes has its options in the file (2 cores: fractional CPUs)
    assert set(args.deployment_names()) == named
    policy = args.policy()
    assert policy.tier_names == args.tier_names and len(policy.tiers) >= 2
    assert policy.router_threshold == args.router.threshold


def test_the_default_config_is_the_two_tier_zoo():
    args = AppArgs.from_serve_config()
    assert SERVE_CONFIG.name == "serve_config.yaml"
    assert args.tier_names == ["cheap", "strong"]
    assert [t.cost_per_request for t in args.policy().tiers] == [0.05, 0.75]
    assert args.router.threshold == 0.7 and args.calibration.file == "zoo"
    three = AppArgs.from_serve_config(REPO / "serve_config.3tier.yaml")
    assert three.tier_names == ["cheap", "mid", "strong"]
    assert three.router.threshold == args.router.threshold  # one artifact serves both


SERVE_YAML = """
applications:
  - name: other
    args: {tiers: [{name: a, model: x}, {name: b, model: y}]}
  - name: cascade
    import_path: deployments.app:build_app
    args:
      tiers:
        - {name: small, model: zoo:cheap, cost_per_request: 0.2, cost_per_1k_output_tokens: 1.0}
        - {name: big, model: zoo:strong, cost_per_request: 2.0}
      task_floors: {code: big}
      router: {model: zoo:router, threshold: 0.6}
    deployments:
      - name: Ingress
        user_config: {router: {threshold: 0.8}, calibration: {threshold: 0.3}}
      - name: Tier-big
        ray_actor_options: {num_cpus: 0.5}
"""


def test_an_application_by_name_with_its_user_config_applied(tmp_path):
    path = tmp_path / "serve.yaml"
    path.write_text(SERVE_YAML)
    args = AppArgs.from_serve_config(path, app="cascade")
    policy = args.policy()
    assert policy.tier_names == ["small", "big"]
    assert policy.tiers[0] == TierConfig(
        name="small", cost_per_request=0.2, cost_per_1k_output_tokens=1.0
    )
    assert policy.task_floors == {"code": "big"}
    assert policy.router_threshold == 0.8  # the Ingress user_config wins, as in serving
    assert args.threshold_overrides() == {"small": 0.3}
    assert args.deployment_options["Tier-big"] == {"ray_actor_options": {"num_cpus": 0.5}}
    assert AppArgs.from_serve_config(path, app=0).tier_names == ["a", "b"]


@pytest.mark.parametrize(
    "text, match",
    [
        ("applications: []\n", "no application named 'cascade'"),
        ("applications: [{name: cascade, args: {tiers: []}}]\n", "invalid args"),
        (
            SERVE_YAML.replace("name: Tier-big", "name: Tier-huge"),
            r"deployments \['Tier-huge'\] are not in the graph",
        ),
        (
            SERVE_YAML.replace("calibration: {threshold: 0.3}", "limits: {max_tokens: 9}"),
            "'limits' is not reconfigurable",
        ),
        ("applications: [\n", "cannot read serve config"),
    ],
)
def test_bad_configs_name_what_is_wrong(tmp_path, text, match):
    path = tmp_path / "serve.yaml"
    path.write_text(text)
    with pytest.raises(ValueError, match=match):
        AppArgs.from_serve_config(path)


def test_reconfigured_changes_thresholds_only_and_refuses_the_rest():
    args = AppArgs.from_serve_config()
    new = args.reconfigured({"calibration": {"thresholds": {"cheap": 0.1}}})
    assert new.threshold_overrides() == {"cheap": 0.1} and new.tiers == args.tiers
    assert args.reconfigured({"router": {"threshold": 0.9}}).policy().router_threshold == 0.9
    with pytest.raises(ValueError, match="may set only"):
        args.reconfigured({"router": {"model": "other"}})
    with pytest.raises(ValueError, match="invalid user_config"):
        args.reconfigured({"router": {"threshold": 3}})
    with pytest.raises(ValueError, match="must be a mapping"):
        args.reconfigured(["x"])  # type: ignore[arg-type]


def test_router_device_and_dtype_default_to_auto_and_the_gpu_config_asks_for_cuda(tmp_path):
    default = AppArgs.from_serve_config().router
    assert (default.device, default.dtype) == ("auto", "auto")
    gpu = AppArgs.from_serve_config(REPO / "serve_config.gpu.yaml").router
    assert (gpu.device, gpu.dtype) == ("cuda", "bfloat16")
    path = tmp_path / "serve.yaml"
    path.write_text(SERVE_YAML.replace("0.6}", "0.6, device: cpu, dtype: bfloat16}"))
    router = AppArgs.from_serve_config(path).router
    assert (router.device, router.dtype) == ("cpu", "bfloat16")


@pytest.mark.parametrize(
    "fields, match",
    [
        ("device: tpu", "device"),
        ("dtype: float64", "dtype"),
        ("device: cpu, dtype: float16", "float16 is not supported on cpu"),
    ],
)
def test_router_device_and_dtype_refusals_say_what_to_fix(tmp_path, fields, match):
    path = tmp_path / "serve.yaml"
    path.write_text(SERVE_YAML.replace("threshold: 0.6}", f"threshold: 0.6, {fields}}}"))
    with pytest.raises(ValueError, match=match):
        AppArgs.from_serve_config(path)


def test_only_ray_llm_tiers_get_a_start_up_grace_by_default():
    from calibration.config import TierArgs

    def grace(**kw):
        return TierArgs(name="t", model="zoo:cheap", **kw).startup_grace_s

    assert grace(engine="ray_llm") == 600.0
    assert grace(engine="vllm") == 0.0 and grace(engine="transformers") == 0.0
    assert grace(engine="vllm", health_startup_grace_s=30) == 30.0
    with pytest.raises(ValueError, match="greater than or equal to 0"):
        grace(health_startup_grace_s=-1)
