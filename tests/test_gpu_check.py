"""The GPU check, on a CPU: `python -m benchmarks gpu-router` at its CPU size, for real, and
`scripts/gpu_check.sh`'s no-GPU path; the Gemma-2B size is checked by its parameter count on
the meta device (no weights allocated), since only a GPU machine runs it.

    .venv/bin/python -m pytest tests/test_gpu_check.py -q
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "scripts" / "gpu_check.sh"
# Gemma-2B (google/gemma-2b) has 2,506,172,416 parameters; the classifier adds 2048 x 2 labels.
GEMMA_2B_PARAMS = 2_506_172_416 + 2048 * 2


def _env(zoo: Path) -> dict[str, str]:
    """One thread (a shared 2-core box) and the zoo the fixture built."""
    return {**os.environ, "OMP_NUM_THREADS": "1", "CASCADE_ZOO_DIR": str(zoo)}


def test_tiny_router_is_timed_through_the_serving_class_and_says_it_is_untrained(zoo):
    cmd = [sys.executable, "-m", "benchmarks", "gpu-router", "--size", "tiny", "--device", "cpu"]
    cmd += ["--batch", "1", "4", "--rounds", "2", "--json"]
    out = subprocess.run(cmd, cwd=REPO, env=_env(zoo), capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "untrained" in out.stdout
    r = json.loads(out.stdout.strip().splitlines()[-1])
    assert {
        "size",
        "device",
        "dtype",
        "params",
        "load_s",
        "batches",
        "peak_mem_mb",
        "weights",
    } <= set(r)
    assert (r["size"], r["device"], r["dtype"]) == ("tiny", "cpu", "float32")
    assert r["weights"] == "untrained (from config)"
    assert 1e6 < r["params"] < 5e6  # a few MB in float32
    assert r["load_s"] > 0 and r["peak_mem_mb"] > 0
    assert set(r["batches"]) == {"1", "4"}
    for stats in r["batches"].values():
        assert stats["n"] == 2 * r["calls_per_round"]
        assert 0 < stats["p50_ms"] <= stats["p95_ms"]


def test_gemma_2b_config_has_gemma_2b_parameter_count_without_allocating_it():
    from benchmarks.bench_gpu_router import gemma_config, param_count

    cfg = gemma_config("gemma-2b")
    assert (cfg.hidden_size, cfg.num_hidden_layers, cfg.vocab_size) == (2048, 18, 256000)
    assert (cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim) == (8, 1, 256)
    assert (cfg.intermediate_size, cfg.num_labels) == (16384, 2)
    assert param_count("gemma-2b") == GEMMA_2B_PARAMS


def test_cuda_without_a_gpu_is_refused_before_anything_is_built():
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    from benchmarks.bench_gpu_router import main

    with pytest.raises(SystemExit, match="gpu-router: router device 'cuda' asked for"):
        main(["--size", "tiny", "--device", "cuda"])


def test_gpu_check_script_parses_and_is_executable():
    assert os.access(SCRIPT, os.X_OK)
    subprocess.run(["bash", "-n", str(SCRIPT)], check=True, timeout=30)


@pytest.mark.skipif(torch.cuda.is_available(), reason="with a GPU the script runs the GPU checks")
def test_without_a_gpu_the_script_runs_the_cpu_check_and_says_what_it_skipped(zoo):
    env = {**_env(zoo), "PYTHON": sys.executable}
    out = subprocess.run(
        ["bash", str(SCRIPT)], cwd=REPO, env=env, capture_output=True, text=True, timeout=300
    )
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    assert "no GPU: running the CPU-sized check only" in out.stdout
    assert "skipped: gemma-2b router on cuda, vLLM on cuda, the GPU-only tests" in out.stdout
    assert "gpu-router: tiny" in out.stdout and "untrained" in out.stdout
    assert "== router latency, tiny (CPU-sized), on cpu ==" in out.stdout
