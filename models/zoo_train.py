"""The zoo's tokenizer and training loops: what turns a spec and a seed into weights.

`models.zoo_build` decides which models to train and records them; this module only trains.
The LMs learn next-token prediction on fresh train-split queries every step; the router learns
(query -> true policy) from labels made by the cheap and strong LMs' own answers.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
from transformers import (
    GemmaConfig,
    GemmaForSequenceClassification,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedTokenizerFast,
)

from models.oracle import Policy, true_policy
from models.tasks import ALPHABET, Task, judge, stream
from models.zoo import CHAT_TEMPLATE, POLICY_LABELS, answer_queries

__all__ = [
    "TRAIN_MIX",
    "LMSpec",
    "RouterSpec",
    "build_tokenizer",
    "policy_labels",
    "train_lm",
    "train_router",
]


@dataclass(frozen=True)
class LMSpec:
    """Size and training budget of one zoo LM. head_dim 32: vLLM's CPU attention needs >= 32."""

    hidden: int
    layers: int
    heads: int
    intermediate: int
    steps: int
    batch: int
    lr: float


@dataclass(frozen=True)
class RouterSpec:
    """The router's size and training; its labels come from the cheap and strong LMs."""

    hidden: int = 64
    layers: int = 2
    heads: int = 2
    intermediate: int = 256
    # Train-split queries both LMs answer to make the router's labels. The router learns the
    # cheap LM's own failures, a function of the query it needs many examples of: on the test
    # split its AUROC for them outside `rev` was 0.81 from 4000 labels x 6 epochs, 0.90 from
    # 16000 x 12, 0.92 from 64000 x 12 (labelling ~65 s, training 140-190 s on 2 cores).
    label_queries: int = 64000
    epochs: int = 12
    batch: int = 128
    lr: float = 2e-3


# Training weights per family: the LMs learn max and rev fast and add/sub slowly, so the
# arithmetic gets most of the steps. Evaluation always samples families uniformly.
TRAIN_MIX = {"add": 3.0, "sub": 3.0, "max": 1.0, "rev": 1.0}


# --- tokenizer ------------------------------------------------------------------------------


def build_tokenizer() -> PreTrainedTokenizerFast:
    """One token per character, as a byte-level BPE with no merges: the GPT-2 format that every
    library (transformers, vLLM's incremental detokenizer) already handles."""
    byte_char = {b: c for b, c in zip(*_bytes_to_unicode(), strict=True)}
    specials = ["<pad>", "<bos>", "<eos>", "<unk>"]
    vocab = {tok: i for i, tok in enumerate(specials)}
    for ch in ALPHABET:
        vocab.setdefault(byte_char[ord(ch)], len(vocab))
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.TemplateProcessing(
        single="<bos> $A", pair="<bos> $A $B", special_tokens=[("<bos>", vocab["<bos>"])]
    )
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<bos>",
        eos_token="<eos>",
        pad_token="<pad>",
        unk_token="<unk>",
    )
    fast.chat_template = CHAT_TEMPLATE
    return fast


def _bytes_to_unicode() -> tuple[list[int], list[str]]:
    """GPT-2's reversible byte -> printable character map (the ByteLevel pre-tokenizer's)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    bs += list(range(ord("®"), ord("ÿ") + 1))
    cs, n = bs[:], 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return bs, [chr(c) for c in cs]


# --- training -------------------------------------------------------------------------------


def _arch(
    hidden: int, layers: int, heads: int, intermediate: int, tok: PreTrainedTokenizerFast
) -> dict[str, Any]:
    """Config fields the LMs and the router share (MHA, head_dim = hidden / heads)."""
    return {
        "vocab_size": len(tok),
        "hidden_size": hidden,
        "intermediate_size": intermediate,
        "num_hidden_layers": layers,
        "num_attention_heads": heads,
        "num_key_value_heads": heads,
        "head_dim": hidden // heads,
        "max_position_embeddings": 64,
        "bos_token_id": tok.bos_token_id,
        "eos_token_id": tok.eos_token_id,
        "pad_token_id": tok.pad_token_id,
    }


def _lm_batch(tasks: list[Task], tok: PreTrainedTokenizerFast) -> dict[str, torch.Tensor]:
    """Right-padded "<bos>prompt=answer<eos>" rows; the loss sees only the answer and EOS."""
    prompts = tok([t.prompt + "=" for t in tasks])["input_ids"]
    answers = tok([t.answer for t in tasks], add_special_tokens=False)["input_ids"]
    rows = [p + a + [tok.eos_token_id] for p, a in zip(prompts, answers, strict=True)]
    width = max(map(len, rows))
    ids = torch.full((len(rows), width), tok.pad_token_id)
    labels = torch.full((len(rows), width), -100)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, (p, row) in enumerate(zip(prompts, rows, strict=True)):
        ids[i, : len(row)] = torch.tensor(row)
        labels[i, len(p) : len(row)] = torch.tensor(row[len(p) :])
        mask[i, : len(row)] = 1
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def _schedule(step: int, total: int, warmup: int = 50) -> float:
    """Linear warm-up, then cosine decay to 10% of the peak learning rate."""
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress))


def train_lm(
    spec: LMSpec,
    tok: PreTrainedTokenizerFast,
    seed: int,
    mix: dict[str, float] | None = None,
    log: bool = True,
) -> LlamaForCausalLM:
    """Next-token training on the train split, fresh queries every step (no epochs to overfit)."""
    torch.manual_seed(seed)
    arch = _arch(spec.hidden, spec.layers, spec.heads, spec.intermediate, tok)
    model = LlamaForCausalLM(LlamaConfig(**arch, tie_word_embeddings=True))
    opt = torch.optim.AdamW(model.parameters(), lr=spec.lr, betas=(0.9, 0.98), weight_decay=0.01)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: _schedule(s, spec.steps))
    data = stream("train", seed, families=mix or TRAIN_MIX)
    model.train()
    for step in range(spec.steps):
        batch = _lm_batch([next(data) for _ in range(spec.batch)], tok)
        loss = model(**batch).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        if log and (step % 200 == 0 or step == spec.steps - 1):
            print(f"  step {step:5d}  loss {loss.item():.4f}", flush=True)
    return model.eval()


def policy_labels(cheap_dir: Path, strong_dir: Path, tasks: list[Task]) -> list[int]:
    """1 where the oracle matrix says the query needs the strong tier, from both LMs' answers."""
    cheap = answer_queries(cheap_dir, tasks)
    strong = answer_queries(strong_dir, tasks)
    return [
        int(true_policy(judge(c.text, t.answer), judge(s.text, t.answer)) == Policy.complex)
        for t, c, s in zip(tasks, cheap, strong, strict=True)
    ]


def train_router(
    spec: RouterSpec, tok: PreTrainedTokenizerFast, tasks: list[Task], labels: list[int], seed: int
) -> GemmaForSequenceClassification:
    """Cross-entropy on (query -> true policy); class weights balance a skewed label mix."""
    torch.manual_seed(seed)
    config = GemmaConfig(
        **_arch(spec.hidden, spec.layers, spec.heads, spec.intermediate, tok),
        num_labels=2,
        id2label=POLICY_LABELS,
        label2id={v: k for k, v in POLICY_LABELS.items()},
    )
    model = GemmaForSequenceClassification(config)
    y = torch.tensor(labels)
    weight = len(y) / (2 * torch.bincount(y, minlength=2).clamp(min=1).float())
    opt = torch.optim.AdamW(model.parameters(), lr=spec.lr, weight_decay=0.01)
    steps = spec.epochs * math.ceil(len(tasks) / spec.batch)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: _schedule(s, steps, warmup=20))
    gen = torch.Generator().manual_seed(seed)
    model.train()
    for _ in range(spec.epochs):
        for idx in torch.randperm(len(tasks), generator=gen).split(spec.batch):
            enc = tok([tasks[i].prompt for i in idx], return_tensors="pt", padding=True)
            logits = model(**enc).logits
            loss = torch.nn.functional.cross_entropy(logits, y[idx], weight=weight)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
    return model.eval()
