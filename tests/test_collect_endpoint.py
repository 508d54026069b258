"""`collect --endpoint` on the real graph over real HTTP: the traces collected through the
running service are the traces a local collect makes (same answers, same logprobs, same
identities), `judge` and `calibrate` take them unchanged, and an endpoint serving other models
than the config's, or none at all, is refused with a message rather than a traceback.

The graph runs the zoo on the transformers engine (seconds to start), without the router.
"""

from __future__ import annotations

import json
import subprocess
import sys

import httpx
import numpy as np
import pytest

from calibration.config import AppArgs
from calibration.dataset import load_dataset
from deployments.local import free_port, running_app
from models.engine import SamplingSettings
from models.identity import configured_identities
from offline.cli import main
from offline.collect_endpoint import _served_identity, api_base
from offline.traces import TraceStore

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_thread")]


def _args(cheap: str = "zoo:cheap") -> dict:
    opts = {n: {"ray_actor_options": {"num_cpus": 0.1}} for n in ("Ingress", "Tier-cheap")}
    opts["Tier-strong"] = {"ray_actor_options": {"num_cpus": 0.1}}
    tier = {"engine": "transformers", "timeout_s": 30}
    return {
        "tiers": [
            {"name": "cheap", "model": cheap, **tier},
            {"name": "strong", "model": "zoo:strong", **tier},
        ],
        "router": {"enabled": False},
        "calibration": {"file": None},
        "limits": {"default_max_tokens": 8, "max_tokens": 16},
        "deployment_options": opts,
    }


def _config(path, args: dict):
    app = AppArgs.model_validate(args)
    path.write_text(
        json.dumps({"applications": [{"name": "cascade", "args": app.model_dump(mode="json")}]})
    )
    return path


@pytest.fixture(scope="module")
def base(zoo):
    with running_app(_args()) as (url, _):
        yield url


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("collect_endpoint")
    items = root / "items.jsonl"
    from models.tasks import _main as tasks_main

    tasks_main(
        ["export", "--split", "calibration", "--seed", "11", "--n", "22", "--out", str(items)]
    )
    # two raw-prompt items: those go to /v1/completions, the chat ones to /v1/chat/completions
    raw = [{"prompt": "rev abc", "reference": "cba", "id": "raw-0"}]
    raw.append({"prompt": "12+30=", "reference": "42", "id": "raw-1"})
    with items.open("a") as f:
        f.write("".join(json.dumps(r) + "\n" for r in raw))
    return root, items, _config(root / "config.yaml", _args())


def _collect(config, items, out, *extra: str) -> list[str]:
    return ["collect", "--config", str(config), "--data", str(items), "--out", str(out), *extra]


def test_models_carry_the_served_identities(base):
    cards = {c["id"]: c["metadata"] for c in httpx.get(f"{base}/v1/models").json()["data"]}
    expected = configured_identities(AppArgs.model_validate(_args()))
    for tier in ("cheap", "strong"):
        assert cards[tier]["identity"] == expected[tier].model_dump(mode="json")
        assert cards[tier]["model"] == f"zoo:{tier}" and "cost_per_request" in cards[tier]
    assert cards["cascade"]["tiers"] == ["cheap", "strong"]


def test_endpoint_traces_equal_local_ones_and_calibrate(base, files, capsys):
    root, items, config = files
    a, b = root / "endpoint", root / "local"
    flags = ("--batch", "8", "--no-progress", "--json")
    assert main(_collect(config, items, a, "--endpoint", f"{base}/v1/", *flags)) == 0
    via = json.loads(capsys.readouterr().out)
    assert all(via["tiers"][t]["collected"] == 24 for t in ("cheap", "strong"))
    assert main(_collect(config, items, b, *flags)) == 0
    capsys.readouterr()
    ma, mb = TraceStore(a).manifest(), TraceStore(b).manifest()
    assert ma.tiers == mb.tiers and list(ma.tiers) == ["cheap", "strong"]
    data = load_dataset(items)
    for tier, identity in ma.tiers.items():
        ga, gb = TraceStore(a).answers(tier, identity), TraceStore(b).answers(tier, identity)
        assert set(ga) == set(gb) == {i.id for i in data}
        for item in data:
            x, y = ga[item.id], gb[item.id]
            assert x.text == y.text and x.finish_reason == y.finish_reason, (tier, item.id)
            assert x.token_ids == (-1,) * len(y.token_ids) and len(y.token_ids) > 0  # via HTTP
            np.testing.assert_allclose(x.logprob_array(), y.logprob_array(), atol=1e-4)
            np.testing.assert_allclose(x.top_logprob_matrix(), y.top_logprob_matrix(), atol=1e-4)
    # resumable like a local collect: nothing left to do
    assert main(_collect(config, items, a, "--endpoint", base, *flags)) == 0
    again = json.loads(capsys.readouterr().out)
    assert (again["tiers"]["cheap"]["collected"], again["tiers"]["cheap"]["reused"]) == (0, 24)
    assert main(["judge", "--traces", str(a), "--judge", "normalized", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["tiers"]["cheap"]["n"] == 24
    art = root / "artifact.json"
    cal = ["calibrate", "--config", str(config), "--traces", str(a), "--out", str(art)]
    assert main([*cal, "--mode", "budget", "--alpha", "0.3", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["tiers"]["cheap"]["n_calibration"] > 0
    assert json.loads(art.read_text())["tiers"]["cheap"]["identity"] == ma.tiers[
        "cheap"
    ].model_dump(mode="json")


def test_an_endpoint_serving_other_models_is_refused(base, files):
    root, items, _ = files
    other = _config(root / "other.yaml", _args(cheap="zoo:mid"))
    out = root / "refused"
    with pytest.raises(SystemExit) as e:
        main(_collect(other, items, out, "--endpoint", base, "--no-progress"))
    message = str(e.value.code)
    served = configured_identities(AppArgs.model_validate(_args()))["cheap"]
    configured = configured_identities(AppArgs.model_validate(_args(cheap="zoo:mid")))["cheap"]
    assert "tier 'cheap'" in message and "tier 'strong'" not in message
    assert f"endpoint {served.revision!r}" in message
    assert f"config {configured.revision!r}" in message
    assert not (out / "answers").exists()  # refused before any answer


def test_an_unreachable_endpoint_is_a_clear_error(files):
    root, items, config = files
    url = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    cmd = [sys.executable, "-m", "calibration", *_collect(config, items, root / "none")]
    done = subprocess.run([*cmd, "--endpoint", url], capture_output=True, text=True, timeout=120)
    assert done.returncode != 0
    assert "cannot reach the endpoint" in done.stderr and url in done.stderr
    assert "Traceback" not in done.stderr


def test_a_foreign_server_records_only_the_model_name(capsys):
    settings = SamplingSettings(max_tokens=8, top_logprobs=5)
    identity = _served_identity("Qwen/Qwen2.5-32B", {}, settings, "http://127.0.0.1:9/v1")
    assert identity.engine == "openai" and identity.model == "Qwen/Qwen2.5-32B"
    assert identity.revision == "" and identity.top_k == 5
    assert identity.decoding == {"temperature": 0.0, "top_p": 1.0, "max_tokens": 8}
    assert "WARNING" in capsys.readouterr().err
    assert api_base("http://h:1") == api_base("http://h:1/v1/") == "http://h:1/v1"
