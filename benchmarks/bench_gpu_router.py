"""Latency and memory of a Gemma-2B-sized router on the real serving path, built from its config:

    python -m benchmarks gpu-router [--size gemma-2b|tiny] [--device auto|cpu|cuda]
        [--dtype auto|float32|bfloat16|float16] [--batch 1 8 32] [--rounds 3] [--calls 10]
        [--json]

The zoo's router is a few hundred kB; what a deployment serves is Gemma-2B-sized. This builds a
`GemmaForSequenceClassification` from Gemma-2B's published architecture (`--size gemma-2b`:
hidden 2048, 18 layers, 8 heads, 1 KV head, head_dim 256, MLP 16384, vocab 256000, ~2.5B
parameters) or a few-MB version of it (`--size tiny`, what CI and CPU machines run), with
random weights from a fixed seed: nothing is downloaded, and the weights are UNTRAINED, so
this measures latency and memory, never routing quality. The checkpoint is saved with the zoo
router's tokenizer (its ids are all below either vocab) into a temporary folder, with a
`ConfidenceHead` beside it (its standardiser fitted on random hidden states, its router
checksum recorded), and loaded by `models.router_model.RouterWithHead` exactly as the Router
deployment loads it. Then the call the deployment makes per batch of queries
(`RouterWithHead.__call__`) is timed on the zoo's test-split queries, every batch size once per
round, the order rotated round by round, `--calls` batches each; one warm-up call per size
first, not counted.

Reported: `load_s` (RouterWithHead's constructor: tokenizer, weights, placement, head and its
checksum check), p50/p95 per call for each batch size, and peak memory: on cuda
`torch.cuda.max_memory_allocated` from the load on, on cpu the process's resident high-water
mark (VmHWM, reset before the load where Linux allows it, so it covers the load and the calls
plus the interpreter and libraries). `--json` prints one object: size, device, dtype, params,
load_s, batches {B: {p50_ms, p95_ms, n}}, peak_mem_mb, weights. `--size` defaults to gemma-2b
when torch sees a GPU and tiny otherwise; gemma-2b on a CPU works but needs ~10 GB of memory
and minutes. `scripts/gpu_check.sh` runs this on a GPU machine.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from benchmarks.side_by_side import percentiles
from benchmarks.tables import table
from models.router_device import resolve_device_dtype
from models.router_model import (
    ConfidenceHead,
    ConfidenceHeadConfig,
    RouterWithHead,
    router_checksum,
)
from models.tasks import sample
from models.zoo import build_command, zoo_dir

__all__ = ["SIZES", "WEIGHTS", "cli", "gemma_config", "main", "param_count"]

WEIGHTS = "untrained (from config)"
# Gemma-2B's published architecture (google/gemma-2b config.json) and a few-MB version of it.
SIZES: dict[str, dict[str, int]] = {
    "gemma-2b": dict(
        hidden_size=2048,
        num_hidden_layers=18,
        num_attention_heads=8,
        num_key_value_heads=1,
        head_dim=256,
        intermediate_size=16384,
        vocab_size=256000,
        max_position_embeddings=8192,
    ),
    "tiny": dict(
        hidden_size=256,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=1,
        head_dim=64,
        intermediate_size=1024,
        vocab_size=1024,
        max_position_embeddings=8192,
    ),
}
SEED = 0


def gemma_config(size: str, tokenizer: Any | None = None) -> Any:
    """The GemmaConfig of `size` with the router's two labels; special-token ids from
    `tokenizer` when given (the zoo router's, which the saved checkpoint ships with)."""
    from transformers import GemmaConfig

    ids = {}
    if tokenizer is not None:
        ids = dict(
            pad_token_id=tokenizer.pad_token_id,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
        )
    return GemmaConfig(
        **SIZES[size],
        **ids,
        num_labels=2,
        id2label={0: "standard", 1: "complex"},
        label2id={"standard": 0, "complex": 1},
        architectures=["GemmaForSequenceClassification"],
    )


def param_count(size: str) -> int:
    """Parameters of the `size` router, counted on the meta device: no weights allocated."""
    from transformers import GemmaForSequenceClassification

    with torch.device("meta"):
        model = GemmaForSequenceClassification(gemma_config(size))
    return sum(p.numel() for p in model.parameters())


def _zoo_tokenizer() -> Any:
    from transformers import AutoTokenizer

    src = zoo_dir() / "router"
    if not (src / "tokenizer_config.json").is_file():
        raise SystemExit(
            f"gpu-router needs the zoo router's tokenizer in {src}; build the zoo first with "
            f"{build_command()}"
        )
    return AutoTokenizer.from_pretrained(src)


def build_checkpoint(size: str, out: Path, device: torch.device, dtype: torch.dtype) -> int:
    """Random-init the `size` router (seed SEED) on `device`, save it in `dtype` with the zoo
    tokenizer and a ConfidenceHead into `out`, as a trained router folder looks; returns the
    parameter count. The model is freed before returning."""
    from transformers import GemmaForSequenceClassification

    tokenizer = _zoo_tokenizer()
    cfg = gemma_config(size, tokenizer)
    if tokenizer.vocab_size > cfg.vocab_size:
        raise ValueError(f"the zoo tokenizer's {tokenizer.vocab_size} ids exceed {size}'s vocab")
    torch.manual_seed(SEED)
    with torch.device(device):
        model = GemmaForSequenceClassification(cfg)
    model.to(dtype).save_pretrained(out)
    params = sum(p.numel() for p in model.parameters())
    del model
    tokenizer.save_pretrained(out)
    head = ConfidenceHead(ConfidenceHeadConfig(in_dim=cfg.hidden_size))
    head.fit_standardizer(
        torch.randn(256, cfg.hidden_size, generator=torch.Generator().manual_seed(SEED))
    )
    meta = {"router_checksum": router_checksum(out), "trained_on": "nothing (latency only)"}
    head.save(out, meta=meta)
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return params


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _reset_peak(device: torch.device) -> str:
    """Start the peak-memory count here; returns what the peak will mean."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        return "torch.cuda.max_memory_allocated from the load on"
    try:
        Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS
        return "process RSS high-water (VmHWM) from the load on"
    except OSError:
        return "process RSS high-water (ru_maxrss) since start, incl. the build"


def _peak_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return round(torch.cuda.max_memory_allocated(device) / 2**20, 1)
    status = Path("/proc/self/status")
    if status.is_file():
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return round(int(line.split()[1]) / 1024, 1)
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def time_calls(
    router: RouterWithHead, batches: list[int], rounds: int, calls: int
) -> dict[int, list[float]]:
    """Seconds per `router(queries)` call by batch size: `calls` distinct batches of the zoo's
    test queries per size per round, the sizes' order rotated each round."""
    prompts = [t.prompt for t in sample("test", max(batches) * calls, seed=21)]
    for b in batches:  # warm-up: kernels, allocator, tokenizer caches
        router(prompts[:b])
    lat: dict[int, list[float]] = {b: [] for b in batches}
    for k in range(rounds):
        order = batches[k % len(batches) :] + batches[: k % len(batches)]
        for b in order:
            for c in range(calls):
                chunk = prompts[c * b : (c + 1) * b]
                _sync(router.device)
                t0 = time.perf_counter()
                router(chunk)  # returns CPU tensors: the device's work is done
                _sync(router.device)
                lat[b].append(time.perf_counter() - t0)
    return lat


def measure(
    size: str, device: str, dtype: str, batches: list[int], rounds: int, calls: int
) -> dict:
    """Build, save, load through RouterWithHead, time; everything `--json` prints."""
    dev, dt = resolve_device_dtype(device, dtype)
    with tempfile.TemporaryDirectory(prefix=f"gpu-router-{size}-") as tmp:
        t0 = time.perf_counter()
        params = build_checkpoint(size, Path(tmp), dev, dt)
        build_s = time.perf_counter() - t0
        peak_kind = _reset_peak(dev)
        t0 = time.perf_counter()
        router = RouterWithHead(tmp, batch_size=max(batches), device=device, dtype=dtype)
        load_s = time.perf_counter() - t0
        assert router.confidence_source == "confidence_head", "the head must load as in serving"
        lat = time_calls(router, batches, rounds, calls)
        peak = _peak_mb(dev)
        queries = [t.prompt for t in sample("test", 64, seed=21)]
        tokens = sum(len(router.tokenizer(q)["input_ids"]) for q in queries) / len(queries)
    return {
        "size": size,
        "device": str(dev),
        "dtype": str(dt).removeprefix("torch."),
        "params": params,
        "weights": WEIGHTS,
        "hardware": torch.cuda.get_device_name(dev) if dev.type == "cuda" else _cpu_name(),
        "torch": torch.__version__,
        "build_s": round(build_s, 2),
        "load_s": round(load_s, 2),
        "rounds": rounds,
        "calls_per_round": calls,
        "mean_tokens_per_query": round(tokens, 1),
        "batches": {str(b): percentiles(xs) for b, xs in lat.items()},
        "peak_mem_mb": peak,
        "peak_mem_is": peak_kind,
    }


def _cpu_name() -> str:
    return f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads"


def _millions(n: int) -> str:
    return f"{n / 1e9:.2f}B" if n >= 1e9 else f"{n / 1e6:.1f}M"


def _print(r: dict) -> None:
    rows = [
        [b, s["n"], s["p50_ms"], s["p95_ms"], round(s["p50_ms"] / int(b), 3)]
        for b, s in r["batches"].items()
    ]
    title = (
        f"gpu-router: {r['size']} ({_millions(r['params'])} params, weights {r['weights']}: "
        f"latency and memory only, not quality) on {r['device']} {r['dtype']} ({r['hardware']}); "
        f"RouterWithHead.__call__, {r['rounds']} interleaved rounds x {r['calls_per_round']} "
        f"calls, ~{r['mean_tokens_per_query']} tokens/query"
    )
    print(table(title, ["batch", "n", "p50 ms", "p95 ms", "p50 ms / query"], rows))
    print(
        f"load {r['load_s']} s (build + save {r['build_s']} s, not served); peak memory "
        f"{r['peak_mem_mb']} MB ({r['peak_mem_is']})"
    )


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks gpu-router",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--size", choices=sorted(SIZES), default=None, help="default: gemma-2b on a GPU, else tiny"
    )
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"])
    p.add_argument("--batch", type=int, nargs="+", default=[1, 8, 32], help="batch sizes")
    p.add_argument("--rounds", type=int, default=3, help="interleaved rounds (default 3)")
    p.add_argument("--calls", type=int, default=10, help="calls per batch size per round")
    p.add_argument("--json", action="store_true", help="print one JSON object, no table")
    a = p.parse_args(argv)
    if min(a.batch) < 1 or a.rounds < 1 or a.calls < 1:
        p.error("--batch, --rounds and --calls must be >= 1")
    size = a.size or ("gemma-2b" if torch.cuda.is_available() else "tiny")
    try:
        result = measure(size, a.device, a.dtype, a.batch, a.rounds, a.calls)
    except ValueError as e:  # cuda without a GPU, float16 on cpu: say what to change
        raise SystemExit(f"gpu-router: {e}") from e
    if a.json:
        print(json.dumps(result))
    else:
        _print(result)
    return result


def cli(argv: list[str]) -> None:
    main(argv)
