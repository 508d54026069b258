#!/usr/bin/env bash
# The checks only a GPU machine can run; CI never needs one (it runs the CPU-sized part).
#
#   bash scripts/gpu_check.sh          (or `make gpu-check`)
#
# Needs the venv (`make install`: on a GPU machine CUDA torch and vLLM) and a built zoo
# (`make zoo`, or $CASCADE_ZOO_DIR pointing at one: the zoo is ~6 MB, so it can be built on
# a CPU machine and copied over). The python used is $PYTHON, default .venv/bin/python.
#
# With a GPU (nvidia-smi lists one and torch.cuda.is_available()):
#   1. python -m benchmarks gpu-router --size gemma-2b --device cuda --dtype bfloat16 --json:
#      a Gemma-2B-sized router built from its config (untrained weights: latency and memory,
#      not quality) served through RouterWithHead: load time, p50/p95 at batch 1/8/32, peak
#      GPU memory.
#   2. python -m benchmarks gpu-vllm: serve_config.gpu.yaml's tiers are hub checkpoints, which
#      a machine without network cannot fetch, so vLLM on CUDA is checked with the zoo's cheap
#      model through models.vllm_engine.VLLMEngine: 8 prompts with logprobs, tokens/s.
#   3. the GPU-only tests: the CUDA test of tests/test_router_model.py that is skipped without
#      a GPU (skipped here too: a failure), and tests marked `gpu` (pyproject's marker) once any
#      carry it.
# Every step is bounded by `timeout` (240 + 150 + 120 s, + 60 s once tests carry the `gpu`
# marker: under 10 minutes in all, as a lent GPU may have only 15);
# a failed or timed-out step is reported and the others still run; the exit status is 1 when
# any failed.
#
# Without a GPU: says so, runs `gpu-router --size tiny --device cpu` (the same code path at a
# few MB) and exits 0 when that passes.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
failed=()

header() { printf '\n== %s ==\n' "$*"; }

# step NAME SECONDS CMD...: run CMD under timeout; record NAME when it fails or times out.
step() {
    local name=$1 limit=$2
    shift 2
    local rc=0
    timeout --kill-after=15 "$limit" "$@" || rc=$?
    if [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ]; then
        echo "!! $name: timed out after ${limit} s"
        failed+=("$name (timeout)")
    elif [ "$rc" -ne 0 ]; then
        echo "!! $name: failed (exit $rc)"
        failed+=("$name (exit $rc)")
    fi
}

header "machine"
smi=0
if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L 2>/dev/null; then smi=1; fi
torch_cuda=$(timeout 60 "$PY" -c 'import torch; print(int(torch.cuda.is_available()), torch.__version__, torch.version.cuda)')
echo "nvidia-smi sees a GPU: $smi; torch: cuda available, version, CUDA build = $torch_cuda"
if ! timeout 60 "$PY" -c 'import sys; from models.zoo import zoo_dir; sys.exit(not (zoo_dir() / "router" / "config.json").is_file())'; then
    echo "no zoo: build it first with \`make zoo\` (CPU minutes; do it before taking a GPU)"
    exit 1
fi

if [ "${torch_cuda%% *}" != "1" ]; then
    if [ "$smi" = "1" ]; then
        echo "nvidia-smi lists a GPU but torch cannot use it (a CPU build of torch?): reinstall"
        echo "with \`make install\` on this machine; the GPU checks below are skipped"
    fi
    echo "no GPU: running the CPU-sized check only"
    echo "skipped: gemma-2b router on cuda, vLLM on cuda, the GPU-only tests"
    header "router latency, tiny (CPU-sized), on cpu"
    step "gpu-router tiny cpu" 300 "$PY" -m benchmarks gpu-router --size tiny --device cpu
    if [ ${#failed[@]} -gt 0 ] || [ "$smi" = "1" ]; then
        echo "gpu_check: FAILED: ${failed[*]:-torch sees no GPU on a GPU machine}"
        exit 1
    fi
    echo "gpu_check: CPU-sized check passed (nothing GPU-sized ran)"
    exit 0
fi

header "1. router latency: Gemma-2B-sized (untrained, from config), cuda, bfloat16"
step "gpu-router gemma-2b cuda" 240 \
    "$PY" -m benchmarks gpu-router --size gemma-2b --device cuda --dtype bfloat16 --json

header "2. vLLM on cuda: zoo cheap model, 8 prompts with logprobs"
step "gpu-vllm" 150 "$PY" -m benchmarks gpu-vllm --n 8

header "3. GPU-only tests"
tests=(tests/test_router_model.py::test_on_cuda_auto_is_bfloat16_and_routes_as_cpu_float32)
marker=()
if grep -rqE 'pytest\.mark\.gpu\b' tests --include='*.py'; then marker=(tests -m gpu); fi
junit=$(mktemp --suffix=.xml)
step "gpu tests" 120 "$PY" -m pytest -q -rs -p no:cacheprovider --junitxml="$junit" "${tests[@]}"
if grep -q '<skipped' "$junit"; then  # on a GPU machine a skipped GPU test is a failure
    echo "!! gpu tests: skipped although torch sees a GPU"
    failed+=("gpu tests (skipped)")
fi
rm -f "$junit"
if [ ${#marker[@]} -gt 0 ]; then
    step "gpu-marked tests" 60 "$PY" -m pytest -q -rs -p no:cacheprovider "${marker[@]}"
fi

header "summary"
if [ ${#failed[@]} -gt 0 ]; then
    echo "gpu_check: FAILED: ${failed[*]}"
    exit 1
fi
echo "gpu_check: all GPU checks passed"
