"""The engine contract: what every generation backend (transformers, vLLM) returns.

The cascade decides from the cheap model's own token logprobs, so an engine must hand back,
for each generated token, the logprob of the chosen token and its top-k alternatives, all
from the model's *raw* distribution (before temperature or top-p), as vLLM does by default.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, Protocol, runtime_checkable

from calibration.generation import FinishReason, Generation

__all__ = [
    "GREEDY_TEMPERATURE",
    "Engine",
    "EngineError",
    "EngineKind",
    "FinishReason",
    "Generation",
    "SamplingSettings",
]


class EngineError(RuntimeError):
    """A backend failed to produce a generation (bad model path, device error, ...)."""


GREEDY_TEMPERATURE = 1e-5
"""Temperatures below this decode greedily, as vLLM does (its _SAMPLING_EPS): logits divided by
a tiny positive temperature overflow to inf and the sampling distribution to NaN."""


@dataclass(frozen=True)
class SamplingSettings:
    """How to decode. temperature < GREEDY_TEMPERATURE (0 included) means greedy."""

    max_tokens: int = 32
    temperature: float = 0.0
    top_p: float = 1.0
    stop: tuple[str, ...] = ()
    top_logprobs: int = 5
    seed: int | None = None

    def __post_init__(self) -> None:
        if self.max_tokens < 1:
            raise ValueError(f"max_tokens must be >= 1, got {self.max_tokens}")
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if not 0 <= self.top_logprobs <= 20:
            raise ValueError(f"top_logprobs must be in [0, 20], got {self.top_logprobs}")
        if any(not s for s in self.stop):
            raise ValueError(f"stop strings must be non-empty, got {list(self.stop)}")

    @property
    def greedy(self) -> bool:
        return self.temperature < GREEDY_TEMPERATURE


@runtime_checkable
class Engine(Protocol):
    """A generation backend. Implementations: HFEngine (transformers), VLLMEngine (vLLM)."""

    name: str

    async def generate(
        self, prompts: Sequence[str], settings: SamplingSettings
    ) -> list[Generation]:
        """Complete every prompt (raw text, special tokens added by the tokenizer)."""
        ...

    def count_tokens(self, text: str) -> int:
        """Tokens `text` takes as a prompt, for the ingress's length limits."""
        ...

    def check_alive(self) -> None:
        """Raise EngineError when the engine can no longer generate (its process died, it was
        shut down). Cheap, no generation: the serving layer calls it on every health check
        and adds a real probe generation of its own for engines that are alive but wedged."""
        ...


EngineKind = Literal["auto", "transformers", "vllm", "openai", "ray_llm"]
