"""load_engine: from a configured model name and engine kind to a running Engine.

Apart from `models.engine` (the contract every backend implements), so the backends import the
contract and this module imports the backends, never the other way round.
"""

from __future__ import annotations

from models.engine import Engine, EngineKind

__all__ = ["engine_kind", "load_engine"]


def engine_kind(kind: EngineKind) -> str:
    """The backend `auto` stands for here: vLLM when it can be imported, else transformers."""
    if kind != "auto":
        return kind
    from models.vllm_engine import vllm_available

    return "vllm" if vllm_available() else "transformers"


def load_engine(kind: EngineKind, model: str, **kwargs) -> Engine:
    """Build an engine for a model name ('zoo:cheap', a hub id or a path).

    `auto` picks vLLM when it can be imported, else transformers; callers log `engine.name` so
    the choice is visible at start-up.
    """
    from models.zoo import resolve

    path = resolve(model)
    kind = engine_kind(kind)
    if kind == "vllm":
        from models.vllm_engine import VLLMEngine

        return VLLMEngine(path, **kwargs)
    if kind == "ray_llm":  # outside Serve (collect, judge): the same vLLM, in this process
        from models.vllm_engine import VLLMEngine

        return VLLMEngine(path, **_vllm_args(kwargs))
    if kind == "openai":
        from models.openai_engine import OpenAIEngine

        return OpenAIEngine(model, **kwargs)
    if kind == "transformers":
        from models.hf_engine import HFEngine

        return HFEngine(path, **kwargs)
    raise ValueError(f"unknown engine {kind!r}; choose auto, transformers, vllm, openai or ray_llm")


_VLLM_ENGINE_ARGS = (
    "dtype",
    "max_model_len",
    "gpu_memory_utilization",
    "trust_remote_code",
    "seed",
)


def _vllm_args(flat: dict) -> dict:
    """A ray_llm tier's `engine_kwargs` are vLLM's engine args, flat as LLMConfig takes them;
    `VLLMEngine` takes a few by name and the rest as its own `engine_kwargs`."""
    named = {k: flat[k] for k in _VLLM_ENGINE_ARGS if k in flat}
    rest = {k: v for k, v in flat.items() if k not in named}
    return {**named, "engine_kwargs": rest} if rest else named
