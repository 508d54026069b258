"""Checks shared by the engine tests: every backend must pass the same ones."""

from __future__ import annotations

import torch

from models.engine import Generation


@torch.inference_mode()
def forward_logprobs(model, tokenizer, prompt: str, gen: Generation) -> torch.Tensor:
    """Log-softmax of one fresh forward pass over prompt + generated tokens, at the generated
    positions: shape (T, V)."""
    prompt_ids = tokenizer(prompt)["input_ids"]
    ids = torch.tensor([prompt_ids + list(gen.token_ids)])
    logits = model(input_ids=ids).logits[0].float()
    start = len(prompt_ids) - 1  # the logits at position i predict token i + 1
    return torch.log_softmax(logits[start : start + len(gen.token_ids)], dim=-1)


def assert_matches_forward_pass(model, tokenizer, prompt: str, gen: Generation, atol=1e-4):
    ref = forward_logprobs(model, tokenizer, prompt, gen)
    chosen = ref.gather(-1, torch.tensor(gen.token_ids).unsqueeze(-1)).squeeze(-1)
    assert torch.allclose(torch.tensor(gen.logprobs), chosen, atol=atol), (gen.logprobs, chosen)
    k = len(gen.top_logprobs[0])
    top = ref.topk(k, dim=-1).values
    got = torch.tensor([[lp for _, lp in row] for row in gen.top_logprobs])
    assert torch.allclose(got, top, atol=atol)
