"""The transformers backend: the CPU default and the reference the vLLM backend is tested against.

Batches are left-padded so every prompt's last token sits at the same position, and the logprobs
come from the raw logits of each step (`output_logits=True`), i.e. the model's distribution
before temperature or top-p, which is what vLLM returns by default too.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Sequence

import numpy as np
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from models.engine import EngineError, Generation, SamplingSettings

__all__ = ["HFEngine"]


class HFEngine:
    """Generates with a Hugging Face causal LM; one batch at a time (a lock guards the model)."""

    name = "transformers"

    def __init__(
        self,
        model_path: str,
        *,
        device: str = "cpu",
        dtype: str = "float32",
        trust_remote_code: bool = False,
    ) -> None:
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(
                model_path, trust_remote_code=trust_remote_code
            )
            self.model = AutoModelForCausalLM.from_pretrained(
                model_path, dtype=getattr(torch, dtype), trust_remote_code=trust_remote_code
            )
        except (OSError, ValueError) as e:
            raise EngineError(f"cannot load model from {model_path!r}: {e}") from e
        self.model.to(device).eval()
        self.tokenizer.padding_side = "left"
        if self.tokenizer.pad_token_id is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.device = device
        self.model_path = model_path
        self.max_length = int(getattr(self.model.config, "max_position_embeddings", 4096))
        self._lock = threading.Lock()
        # A fast tokenizer's padding setting is state on the shared Rust object: a call with
        # padding (a batch, in a worker thread) racing one without (count_tokens, a health
        # probe) breaks the batch's tensors. Tokenizing takes microseconds, so it gets its own
        # lock rather than waiting behind a forward pass.
        self._tokenizer_lock = threading.Lock()

    def count_tokens(self, text: str) -> int:
        with self._tokenizer_lock:
            return len(self.tokenizer(text)["input_ids"])

    def check_alive(self) -> None:
        """In process, so alive while the model is loaded; a wedged forward pass is what the
        serving layer's probe generation (with its timeout) is there to catch."""
        if getattr(self, "model", None) is None:
            raise EngineError(f"the model {self.model_path!r} is not loaded")

    async def generate(
        self, prompts: Sequence[str], settings: SamplingSettings
    ) -> list[Generation]:
        return await asyncio.to_thread(self.generate_sync, prompts, settings)

    @torch.inference_mode()
    def generate_sync(self, prompts: Sequence[str], settings: SamplingSettings) -> list[Generation]:
        """Blocking generate; the zoo build and offline evaluation call this directly."""
        if not prompts:
            return []
        with self._tokenizer_lock:
            enc = self.tokenizer(list(prompts), return_tensors="pt", padding=True)
        enc = enc.to(self.device)
        prompt_len = enc["input_ids"].shape[1]
        if prompt_len + settings.max_tokens > self.max_length:
            raise ValueError(
                f"prompt ({prompt_len} tokens) + max_tokens ({settings.max_tokens}) exceeds the "
                f"model's context of {self.max_length} tokens; shorten the prompt or max_tokens"
            )
        sampling = not settings.greedy
        kwargs = dict(
            max_new_tokens=settings.max_tokens,
            do_sample=sampling,
            output_logits=True,
            return_dict_in_generate=True,
            pad_token_id=self.tokenizer.pad_token_id,
            eos_token_id=self.tokenizer.eos_token_id,
        )
        if sampling:
            kwargs.update(temperature=settings.temperature, top_p=settings.top_p, top_k=0)
        else:
            kwargs.update(temperature=None, top_p=None, top_k=None)
        if settings.stop:
            kwargs.update(stop_strings=list(settings.stop), tokenizer=self.tokenizer)
        with self._lock:
            if settings.seed is not None:
                torch.manual_seed(settings.seed)
            out = self.model.generate(**enc, **kwargs)
        new_tokens = out.sequences[:, prompt_len:]  # (B, T)
        logp = torch.log_softmax(torch.stack(out.logits, dim=1).float(), dim=-1)  # (B, T, V)
        chosen = logp.gather(-1, new_tokens.unsqueeze(-1)).squeeze(-1)  # (B, T)
        k = settings.top_logprobs
        top_lp, top_ids = logp.topk(k, dim=-1) if k else (None, None)  # (B, T, k)
        lengths = (enc["attention_mask"].sum(dim=1)).tolist()
        return [
            self._finish(
                new_tokens[b].tolist(),
                chosen[b].tolist(),
                None if top_ids is None else (top_ids[b].tolist(), top_lp[b].tolist()),
                int(lengths[b]),
                settings,
            )
            for b in range(len(prompts))
        ]

    def _finish(
        self,
        tokens: list[int],
        chosen: list[float],
        top: tuple[list[list[int]], list[list[float]]] | None,
        prompt_tokens: int,
        settings: SamplingSettings,
    ) -> Generation:
        """Cut one row at EOS (kept, as vLLM keeps it) or a stop string; build its Generation."""
        eos = self.tokenizer.eos_token_id
        n, reason = len(tokens), "length"
        if eos in tokens:
            n, reason = tokens.index(eos) + 1, "stop"
        text = self.tokenizer.decode(tokens[:n], skip_special_tokens=True)
        cut = min((i for s in settings.stop if (i := text.find(s)) >= 0), default=-1)
        if cut >= 0:
            # Keep tokens up to the one that completes the stop string; drop the string itself.
            stop = next(s for s in settings.stop if text.find(s) == cut)
            n = self._tokens_covering(tokens[:n], cut + len(stop))
            text, reason = text[:cut], "stop"
        top_logprobs: tuple = ()
        if top is not None:
            ids, lps = top
            texts = self.tokenizer.batch_decode(
                [[i] for row in ids[:n] for i in row], skip_special_tokens=True
            )
            k = len(ids[0]) if ids else 0
            top_logprobs = tuple(
                tuple(zip(texts[t * k : (t + 1) * k], lps[t], strict=True)) for t in range(n)
            )
        else:
            top_logprobs = tuple(() for _ in range(n))
        return Generation(
            text=text,
            token_ids=tuple(tokens[:n]),
            logprobs=tuple(chosen[:n]),
            top_logprobs=top_logprobs,
            finish_reason=reason,
            prompt_tokens=prompt_tokens,
            logprob_values=np.asarray(chosen[:n], dtype=np.float64),
            top_logprob_values=(
                np.asarray(top[1][:n], dtype=np.float64).reshape(n, settings.top_logprobs)
                if top is not None
                else None
            ),
        )

    def _tokens_covering(self, tokens: list[int], chars: int) -> int:
        """The fewest leading tokens whose decoded text reaches `chars` characters."""
        lo, hi = 1, len(tokens)
        while lo < hi:
            mid = (lo + hi) // 2
            if len(self.tokenizer.decode(tokens[:mid], skip_special_tokens=True)) >= chars:
                hi = mid
            else:
                lo = mid + 1
        return lo
