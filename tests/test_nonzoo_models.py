"""The whole path on models that are not the zoo: a GPT-2 (cheap) and a Qwen2 (strong), each
with its own byte-level BPE trained here (tests/nonzoo_models.py).

Export a data set, collect, judge, train the router's confidence head on the traces, calibrate,
evaluate, serve the result through the real graph, and refuse an artifact made for other
models. Nothing here knows the zoo's Llama checkpoints or its one-char tokenizer, so what passes
is the path, not the zoo. The router is a copy of the zoo's (a router is any classifier over
the query; its head is retrained for these tiers and installed into the copy).

Order: the head before `calibrate`, because each tier is calibrated on the queries the served
router (with its head) sends it.
"""

from __future__ import annotations

import io
import json
import shutil
import subprocess
import sys
import time
from contextlib import redirect_stdout
from pathlib import Path

import httpx
import pytest
import yaml

from calibration.config import AppArgs
from calibration.dataset import load_dataset
from models.tasks import _main as tasks_main
from offline.cli import main
from offline.traces import TraceStore
from tests.nonzoo_models import build_nonzoo

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_thread")]

N_ITEMS = 360
ALPHA = 0.1
# measured on the 360 exported items (calibration split, seed 7): GPT-2 0.158, Qwen2 0.242
CHEAP_FLOOR, STRONG_FLOOR = 0.10, 0.20
TIMES: dict[str, float] = {}


def _app(models: dict, router: Path, artifact: Path, cheap: Path | None = None) -> dict:
    """The application's args as serve_config.yaml writes them (fractional CPUs, no vLLM)."""
    tier = {"engine": "transformers", "engine_kwargs": {"dtype": "float32"}, "timeout_s": 30}
    cpus = {"ray_actor_options": {"num_cpus": 0.1}}
    return {
        "tiers": [
            {
                "name": "cheap",
                "model": str(cheap or models["cheap"]["dir"]),
                **tier,
                "cost_per_request": 0.05,
            },
            {
                "name": "strong",
                "model": str(models["strong"]["dir"]),
                **tier,
                "cost_per_request": 0.75,
            },
        ],
        "router": {"model": str(router), "device": "cpu", "dtype": "float32", "threshold": 0.7},
        "calibration": {"file": str(artifact)},
        "limits": {"default_max_tokens": 8, "max_tokens": 16},
        "deployment_options": {n: cpus for n in ("Ingress", "Router", "Tier-cheap", "Tier-strong")},
    }


def _write(path: Path, args: dict) -> Path:
    """A Ray Serve config file: one application whose args are `args`."""
    args = AppArgs.model_validate(args).model_dump(mode="json")
    options = args.pop("deployment_options")
    deployments = [{"name": name, **opts} for name, opts in options.items()]
    doc = {
        "applications": [
            {
                "name": "cascade",
                "route_prefix": "/",
                "args": args,
                "import_path": "deployments.app:build_app",
                "deployments": deployments,
            }
        ]
    }
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def _cli(*argv: str) -> dict:
    """One `python -m calibration` command in-process (timed); its --json output."""
    out = io.StringIO()
    start = time.perf_counter()
    with redirect_stdout(out):
        assert main([*argv, "--json"]) == 0
    TIMES[argv[0]] = round(time.perf_counter() - start, 1)
    return json.loads(out.getvalue())


@pytest.fixture(scope="module")
def built(tmp_path_factory, zoo, one_thread):
    """Both models trained, a config naming them, 360 exported items collected and judged."""
    root = tmp_path_factory.mktemp("nonzoo")
    start = time.perf_counter()
    models = build_nonzoo(root / "models", seed=0)
    TIMES["build"] = round(time.perf_counter() - start, 1)
    router = root / "router"
    shutil.copytree(zoo / "router", router)  # the head is installed here, not into the zoo
    items, traces, artifact = root / "items.jsonl", root / "traces", root / "artifact.json"
    export = f"export --split calibration --seed 7 --n {N_ITEMS} --out {items}"
    tasks_main(export.split())
    config = _write(root / "config.yaml", _app(models, router, artifact))
    return {
        "root": root,
        "models": models,
        "router": router,
        "items": items,
        "traces": traces,
        "artifact": artifact,
        "config": config,
    }


@pytest.fixture(scope="module")
def judged(built) -> dict[str, dict[str, bool]]:
    """The items collected from both tiers and judged exactly: tier -> item id -> right."""
    cfg, traces = str(built["config"]), str(built["traces"])
    collect = ["collect", "--config", cfg, "--data", str(built["items"]), "--out", traces]
    _cli(*collect, "--batch", "32", "--no-progress")
    _cli("judge", "--traces", traces, "--judge", "exact")
    store = TraceStore(built["traces"])
    tiers = store.manifest().tiers
    return {
        t: {k: v.right for k, v in store.labels(t, tiers[t]).items()} for t in ("cheap", "strong")
    }


def test_the_models_are_other_architectures_and_really_trained(built, judged):
    cheap, strong = (
        json.loads((built["models"][t]["dir"] / "config.json").read_text())
        for t in ("cheap", "strong")
    )
    assert cheap["model_type"] == "gpt2" and strong["model_type"] == "qwen2"
    assert cheap["vocab_size"] != strong["vocab_size"]  # two tokenizers, both with merges
    assert min(built["models"][t]["merges"] for t in ("cheap", "strong")) > 0
    acc = {t: sum(v.values()) / len(v) for t, v in judged.items()}
    family = {i.id: i.task_type for i in load_dataset(built["items"])}
    by_family = {
        t: {f: sum(r for k, r in v.items() if family[k] == f) for f in sorted(set(family.values()))}
        for t, v in judged.items()
    }
    print(f"\nnon-zoo models {built['models']}\naccuracy on the {N_ITEMS} items: {acc}")
    print(f"right by family: {by_family}")
    assert all(len(v) == N_ITEMS for v in judged.values())
    assert acc["cheap"] >= CHEAP_FLOOR and acc["strong"] >= STRONG_FLOOR
    assert acc["strong"] > acc["cheap"]
    # the strong tier is right where the cheap one is wrong: something to escalate for
    assert sum(judged["strong"][k] and not judged["cheap"][k] for k in judged["cheap"]) > 10


@pytest.fixture(scope="module")
def calibrated(built, judged) -> dict:
    """labels + train --install (the head for the copied router), then calibrate (risk)."""
    from models.router_model import ConfidenceHead, router_checksum

    cfg, traces, root = str(built["config"]), str(built["traces"]), built["root"]
    base = ["--config", cfg, "--traces", traces, "--out", str(root / "art"), "--quiet"]
    labels = _cli("labels", *base)
    assert labels["fit"]["n"] > 0 and labels["calibration"]["n"] > 0
    flags = ["--workers", "1", "--reward", "log", "--max-epochs", "5", "--patience", "3"]
    trained = _cli("train", *base, *flags, "--rl-steps", "10", "--install")
    assert trained["installed"]["into"] == str(built["router"])
    meta = ConfidenceHead.read_meta(built["router"])
    assert meta["router_checksum"] == router_checksum(built["router"])
    cal = ["--config", cfg, "--traces", traces, "--mode", "risk", "--alpha", str(ALPHA)]
    return _cli("calibrate", *cal, "--out", str(built["artifact"]))


def test_calibrate_holds_its_guarantee_on_the_held_out_part(calibrated):
    cheap = calibrated["tiers"]["cheap"]
    print(f"\ncalibrate (risk, alpha {ALPHA}): {calibrated['tiers']}")
    assert cheap["target"] == f"<= {ALPHA}" and cheap["n_holdout"] > 0
    # risk: wrong at the cheap tier where the strong one is right, among the requests that
    # reached it; in expectation <= alpha, so a ~90-item held-out part gets some slack
    assert cheap["realised"] <= ALPHA + 0.1


def test_evaluate_tables_the_served_strategy(built, calibrated, capsys):
    cfg, traces = str(built["config"]), str(built["traces"])
    start = time.perf_counter()
    assert main(["evaluate", "--config", cfg, "--traces", traces]) == 0
    text = capsys.readouterr().out
    TIMES["evaluate"] = round(time.perf_counter() - start, 1)
    summary = _cli("evaluate", "--config", cfg, "--traces", traces)["summary"]
    print(f"\nevaluate:\n{text}")
    served = summary["served"]
    assert "served: acc" in text and "\nserved " in text  # the summary line and the table row
    assert served["accuracy"] >= summary["weak_accuracy"] - 1e-9
    assert served["accuracy"] <= summary["strong_accuracy"] + 1e-9
    assert 0.05 / 0.75 - 1e-9 <= served["cost"] <= 1 + 1e-9  # relative: always-strong = 1.0


def _chat(http: httpx.Client, model: str, messages: list[dict]) -> dict:
    out = http.post("/v1/chat/completions", json={"model": model, "messages": messages})
    assert out.status_code == 200, out.text
    return out.json()


def test_the_real_graph_serves_the_result(built, calibrated):
    """The config as `serve run` would serve it: the cascade answers with its final tier's own
    greedy answer (the one collected for that tier), and the forced GPT-2 answers exactly what
    the local transformers engine answers, unbatched."""
    from deployments.local import running_app
    from models.engine import SamplingSettings
    from models.hf_engine import HFEngine

    items = load_dataset(built["items"])[:10]
    cheap = HFEngine(str(built["models"]["cheap"]["dir"]))
    store = TraceStore(built["traces"])
    collected = {t: store.answers(t, i) for t, i in store.manifest().tiers.items()}
    finals = []
    start = time.perf_counter()
    with running_app(AppArgs.from_serve_config(built["config"]), quiet=True) as (url, _):
        TIMES["serve_start"] = round(time.perf_counter() - start, 1)
        with httpx.Client(base_url=url, timeout=60) as http:
            for item in items:
                messages = [m.model_dump() for m in item.messages]
                out = _chat(http, "cascade", messages)
                routing = out["routing"]
                final = routing["final_tier"]
                finals.append(final)
                assert final in ("cheap", "strong") and routing["tiers_visited"][-1] == final
                assert routing["conformal_mode"] == "risk"
                assert 0 <= routing["router"]["confidence"] <= 1
                text = out["choices"][0]["message"]["content"]
                assert text == collected[final][item.id].text, (item.id, final)
                forced = _chat(http, "cheap", messages)["choices"][0]["message"]["content"]
                prompt = cheap.tokenizer.apply_chat_template(
                    messages, tokenize=False, add_generation_prompt=True
                )
                direct = cheap.generate_sync([prompt], SamplingSettings(max_tokens=8))[0]
                assert forced == direct.text == collected["cheap"][item.id].text, item.id
    TIMES["serve"] = round(time.perf_counter() - start, 1)
    print(f"\nserved final tiers: {finals}")


def test_an_artifact_for_other_models_is_refused(built, calibrated):
    """The artifact of the GPT-2 cheap tier against a config whose cheap tier is the Qwen2:
    evaluate exits non-zero naming both sides, and serving's start-up check refuses it."""
    from calibration.identity import IdentityMismatch
    from deployments.serving import CascadeServer

    strong = built["models"]["strong"]["dir"]
    args = _app(built["models"], built["router"], built["artifact"], cheap=strong)
    other = _write(built["root"] / "other.yaml", args)
    cmd = [sys.executable, "-m", "calibration", "evaluate", "--config", str(other)]
    done = subprocess.run(
        [*cmd, "--traces", str(built["traces"])], capture_output=True, text=True, timeout=120
    )
    print(f"\nevaluate refuses (exit {done.returncode}): {done.stderr.strip()}")
    assert done.returncode != 0 and "Traceback" not in done.stderr
    assert "made for other models" in done.stderr and "tier 'cheap'" in done.stderr
    assert f"config '{strong}'" in done.stderr  # both sides named
    with pytest.raises(IdentityMismatch) as refused:
        CascadeServer(AppArgs.from_serve_config(other), tiers={}, router=None)
    print(f"serving refuses: {refused.value}")
    assert str(built["artifact"]) in str(refused.value) and "tier 'cheap'" in str(refused.value)
    print(f"seconds: {TIMES}")
