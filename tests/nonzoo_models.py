"""Two small LMs that are not the zoo: a GPT-2 and a Qwen2, each with its own trained BPE.

Why: every other test serves the zoo's Llama checkpoints and their one-char-per-token
tokenizer, so nothing proves the path (collect, judge, calibrate, train the head, evaluate,
serve) holds for other architectures and real byte-level BPE merges. `build_nonzoo` trains both
offline in seconds on the task suite's train split and saves them with `save_pretrained`, so
they load through the `Auto*` classes like any Hugging Face checkpoint.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from itertools import islice
from pathlib import Path
from typing import Any

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import (
    GPT2Config,
    GPT2LMHeadModel,
    PreTrainedModel,
    PreTrainedTokenizerFast,
    Qwen2Config,
    Qwen2ForCausalLM,
)

from models.tasks import stream
from models.zoo import CHAT_TEMPLATE
from models.zoo_train import TRAIN_MIX, _lm_batch, _schedule

__all__ = ["NONZOO_TIERS", "build_nonzoo", "train_bpe"]

NONZOO_TIERS = ("cheap", "strong")  # cheap: the GPT-2, strong: the Qwen2
_SPECIALS = ["<pad>", "<bos>", "<eos>", "<unk>"]
_CONTEXT = 64  # positions; a prompt is at most ~12 tokens, an answer ~8


@dataclass(frozen=True)
class _Budget:
    """Training steps of one LM: fresh train-split queries every step, as the zoo trains."""

    steps: int
    batch: int
    lr: float


def train_bpe(
    vocab_size: int, seed: int, split_digits: bool = False, n_texts: int = 4000
) -> PreTrainedTokenizerFast:
    """A byte-level BPE (GPT-2's pre-tokenizer and byte alphabet) whose merges are learnt from
    train-split prompts and answers; wrapped with bos/eos/pad and the zoo's chat template so a
    chat item renders as "<bos>{prompt}=" exactly as for the zoo. `split_digits`: one token per
    digit, as Qwen2's and Llama's tokenizers do (GPT-2's merges digit runs)."""
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.pre_tokenizer = (
        pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True), byte_level])
        if split_digits
        else byte_level
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=_SPECIALS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    texts = [s for t in islice(stream("train", seed), n_texts) for s in (t.prompt, t.answer)]
    tok.train_from_iterator(texts, trainer=trainer)
    bos = tok.token_to_id("<bos>")
    tok.post_processor = processors.TemplateProcessing(
        single="<bos> $A", pair="<bos> $A $B", special_tokens=[("<bos>", bos)]
    )
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<bos>", eos_token="<eos>", pad_token="<pad>"
    )
    fast.unk_token = "<unk>"
    fast.chat_template = CHAT_TEMPLATE
    return fast


def _ids(tok: PreTrainedTokenizerFast) -> dict[str, int]:
    return {
        "bos_token_id": tok.bos_token_id,
        "eos_token_id": tok.eos_token_id,
        "pad_token_id": tok.pad_token_id,
    }


def _gpt2(tok: PreTrainedTokenizerFast) -> GPT2LMHeadModel:
    """The cheap tier: 2 layers of 64 (head_dim 32), learnt absolute positions."""
    config = GPT2Config(
        vocab_size=len(tok),
        n_positions=_CONTEXT,
        n_embd=64,
        n_layer=2,
        n_head=2,
        n_inner=256,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
        **_ids(tok),
    )
    return GPT2LMHeadModel(config)


def _qwen2(tok: PreTrainedTokenizerFast) -> Qwen2ForCausalLM:
    """The strong tier: 2 layers of 128, grouped-query attention (4 heads of 32, 2 KV heads),
    rotary positions."""
    config = Qwen2Config(
        vocab_size=len(tok),
        hidden_size=128,
        intermediate_size=384,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=32,
        max_position_embeddings=_CONTEXT,
        tie_word_embeddings=True,
        **_ids(tok),
    )
    return Qwen2ForCausalLM(config)


def _train(
    model: PreTrainedModel, tok: PreTrainedTokenizerFast, budget: _Budget, seed: int
) -> tuple[PreTrainedModel, float]:
    """Next-token loss on "<bos>prompt=answer<eos>" (answer and EOS only), as the zoo's LMs."""
    opt = torch.optim.AdamW(model.parameters(), lr=budget.lr, betas=(0.9, 0.98), weight_decay=0.01)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: _schedule(s, budget.steps, 30))
    data = stream("train", seed, families=TRAIN_MIX)
    model.train()
    for _ in range(budget.steps):
        loss = model(**_lm_batch([next(data) for _ in range(budget.batch)], tok)).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
    return model.eval(), float(loss.item())


# tier -> (architecture, BPE vocabulary size, one token per digit?, budget). Measured on 2
# shared cores, one thread: ~6 s and ~17 s; the strong one learns `max` all but perfectly,
# the cheap one ~60% of it (GPT-2's digit merges make it harder), neither much arithmetic.
_PLANS = {
    "cheap": (_gpt2, 300, False, _Budget(steps=250, batch=64, lr=3e-3)),
    "strong": (_qwen2, 360, True, _Budget(steps=400, batch=64, lr=5e-3)),
}


def build_nonzoo(root: Path, seed: int = 0) -> dict[str, Any]:
    """Train and save both tiers under `root` (cheap/ and strong/); return their folders,
    architectures, vocabulary sizes, last losses and seconds (what a report quotes)."""
    out: dict[str, Any] = {}
    for i, (tier, (make, vocab, split, budget)) in enumerate(_PLANS.items()):
        start = time.perf_counter()
        torch.manual_seed(seed + i)
        tok = train_bpe(vocab, seed + i, split_digits=split)
        model, loss = _train(make(tok), tok, budget, seed + i)
        folder = Path(root) / tier
        model.generation_config.pad_token_id = tok.pad_token_id
        model.save_pretrained(folder)
        tok.save_pretrained(folder)
        out[tier] = {
            "dir": folder,
            "arch": type(model).__name__,
            "vocab": len(tok),
            "split_digits": split,
            "merges": len(json.loads(tok.backend_tokenizer.to_str())["model"]["merges"]),
            "loss": round(loss, 4),
            "seconds": round(time.perf_counter() - start, 1),
        }
    return out
