"""The one rendering of a request into the text a model sees.

Serving (`deployments.llm.LLMTier`) and trace collection (`offline.collect`) both call this, so
the answers that calibrate a tier were produced from exactly the text that tier serves.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

__all__ = ["render_prompt"]


def render_prompt(
    tokenizer: Any, *, prompt: str | None = None, messages: Sequence[dict[str, str]] | None = None
) -> str:
    """A raw prompt as is; chat messages through the tokenizer's chat template, or, for a base
    model without one, the conversation as plain lines."""
    if messages is None:
        if prompt is None:
            raise ValueError("give a prompt or messages")
        return prompt
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template(
            list(messages), tokenize=False, add_generation_prompt=True
        )
    return "\n".join(m["content"] for m in messages) + "\n"
