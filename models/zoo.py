"""The embedded default model zoo, trained offline from code on the synthetic task suite.

No weights can be downloaded where this project is built, so the zoo trains its own: a
character-level tokenizer, a *cheap* and a *strong* Llama-architecture causal LM, and a
Gemma-architecture *router* that predicts from the query alone whether the cheap answer will do.
Everything is saved with `save_pretrained` and loaded back with the `Auto*` classes, the same
code path as a real Hugging Face checkpoint. Deterministic for a seed on one kind of machine.

    python -m models.zoo build            # into $CASCADE_ZOO_DIR or ~/.cache/cascade-router/zoo
    python -m models.zoo report --split test --seed 1 --json
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from filelock import FileLock
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
from transformers import (
    AutoModelForSequenceClassification,
    AutoTokenizer,
    GemmaConfig,
    GemmaForSequenceClassification,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedTokenizerFast,
)

from models.oracle import Policy, true_policy
from models.tasks import ALPHABET, Task, judge, sample, stream

__all__ = [
    "ZOO_VERSION",
    "ZooSpec",
    "answer_queries",
    "build",
    "calibration_path",
    "ensure_zoo",
    "report",
    "resolve",
    "route_probabilities",
    "route_queries",
    "zoo_dir",
]

# Bump when a build would produce something else: a cached zoo of another version is rebuilt.
ZOO_VERSION = 1
ZOO_PREFIX = "zoo:"
ANSWER_MAX_TOKENS = 10  # the longest answer (7 letters) + EOS, with room to spare
# Turns a chat user message that is a task prompt into the models' own format: "<bos>{prompt}=".
CHAT_TEMPLATE = (
    "{%- set ns = namespace(q='') -%}"
    "{%- for m in messages -%}{%- if m['role'] == 'user' -%}{%- set ns.q = m['content'] -%}"
    "{%- endif -%}{%- endfor -%}"
    "{{ ns.q | trim }}{%- if add_generation_prompt -%}={%- endif -%}"
)
POLICY_LABELS = {0: Policy.standard.value, 1: Policy.complex.value}


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
    hidden: int = 64
    layers: int = 2
    heads: int = 2
    intermediate: int = 256
    label_queries: int = 4000  # train-split queries both LMs answer to make the router's labels
    epochs: int = 6
    batch: int = 128
    lr: float = 2e-3


# Training weights per family: the LMs learn max and rev fast and add/sub slowly, so the
# arithmetic gets most of the steps. Evaluation always samples families uniformly.
TRAIN_MIX = {"add": 3.0, "sub": 3.0, "max": 1.0, "rev": 1.0}


@dataclass(frozen=True)
class ZooSpec:
    """The whole zoo's recipe. The defaults were tuned on the 2-core CI machine kind to hit the
    targets of the foundation issue (cheap 0.45-0.80, strong >= 0.92, AUROC >= 0.80) in
    well under 10 minutes; `seed` changes every random choice of the build."""

    seed: int = 0
    cheap: LMSpec = LMSpec(
        hidden=64, layers=2, heads=2, intermediate=256, steps=450, batch=128, lr=3e-3
    )
    strong: LMSpec = LMSpec(
        hidden=128, layers=4, heads=4, intermediate=512, steps=1500, batch=128, lr=3e-3
    )
    router: RouterSpec = RouterSpec()
    train_mix: tuple[tuple[str, float], ...] = tuple(TRAIN_MIX.items())


def zoo_dir() -> Path:
    """Where the zoo lives: $CASCADE_ZOO_DIR, else ~/.cache/cascade-router/zoo."""
    return Path(
        os.environ.get("CASCADE_ZOO_DIR", Path.home() / ".cache" / "cascade-router" / "zoo")
    )


def _manifest(root: Path) -> dict | None:
    try:
        manifest = json.loads((root / "manifest.json").read_text())
    except (OSError, ValueError):
        return None
    return manifest if manifest.get("version") == ZOO_VERSION else None


def ensure_zoo(
    root: Path | None = None, spec: ZooSpec | None = None, derived: bool | None = None
) -> Path:
    """The zoo folder, built first if missing or stale; concurrent callers build it once.

    `derived` adds what serving derives from the models (the conformal calibration artifact
    and the router's confidence head, from `calibration.zoo_artifacts`); it defaults to True
    for the default zoo and False for an explicit `spec` (tests build tiny zoos without them).
    """
    root = Path(root or zoo_dir())
    derived = spec is None if derived is None else derived
    spec = spec or ZooSpec()

    def complete() -> bool:
        manifest = _manifest(root)
        if manifest is None or not derived:
            return manifest is not None
        from calibration.zoo_artifacts import DERIVED_VERSION  # calibration builds on models

        return (manifest.get("derived") or {}).get("version") == DERIVED_VERSION

    if complete():
        return root
    root.mkdir(parents=True, exist_ok=True)
    with FileLock(str(root / ".build.lock")):
        if _manifest(root) is None:  # another process may have built it while we waited
            build(root, spec)
        if not complete():
            from calibration.zoo_artifacts import build_derived  # calibration builds on models

            print("deriving the calibration artifact and the confidence head", flush=True)
            t0 = time.time()
            manifest = _manifest(root) or {}
            manifest["derived"] = build_derived(root, seed=spec.seed)
            seconds = manifest["seconds"]
            seconds.setdefault("models", seconds["total"])  # kept across re-derivations
            seconds["derived"] = round(time.time() - t0, 1)
            seconds["total"] = round(seconds["models"] + seconds["derived"], 1)
            (root / "manifest.json").write_text(json.dumps(manifest, indent=2))
    return root


def calibration_path(root: Path | None = None) -> Path:
    """The cheap tier's conformal calibration artifact of the (default) zoo."""
    return Path(root or ensure_zoo()) / "calibration.json"


def resolve(model: str) -> str:
    """Map 'zoo:cheap' (or strong, router) to a local folder, building the zoo on first use.

    Anything else (a hub id or a path) is returned unchanged, so configs name zoo models and
    real checkpoints the same way.
    """
    if not model.startswith(ZOO_PREFIX):
        return model
    name = model.removeprefix(ZOO_PREFIX)
    if name not in ("cheap", "strong", "router"):
        raise ValueError(f"unknown zoo model {model!r}; use zoo:cheap, zoo:strong or zoo:router")
    return str(ensure_zoo() / name)


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


def _lm_config(spec: LMSpec, tok: PreTrainedTokenizerFast) -> LlamaConfig:
    return LlamaConfig(
        vocab_size=len(tok),
        hidden_size=spec.hidden,
        intermediate_size=spec.intermediate,
        num_hidden_layers=spec.layers,
        num_attention_heads=spec.heads,
        num_key_value_heads=spec.heads,
        head_dim=spec.hidden // spec.heads,
        max_position_embeddings=64,
        tie_word_embeddings=True,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )


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
    model = LlamaForCausalLM(_lm_config(spec, tok))
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


def answer_queries(model_dir: Path | str, tasks: list[Task], batch: int = 256):
    """Greedy answers of a saved LM to task prompts, through the transformers engine."""
    from models.engine import SamplingSettings
    from models.hf_engine import HFEngine

    engine = HFEngine(str(model_dir))
    settings = SamplingSettings(max_tokens=ANSWER_MAX_TOKENS, top_logprobs=5)
    prompts = [
        engine.tokenizer.apply_chat_template(
            [{"role": "user", "content": t.prompt}], tokenize=False, add_generation_prompt=True
        )
        for t in tasks
    ]
    out = []
    for i in range(0, len(prompts), batch):
        out.extend(engine.generate_sync(prompts[i : i + batch], settings))
    return out


def _policy_labels(cheap_dir: Path, strong_dir: Path, tasks: list[Task]) -> list[int]:
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
        vocab_size=len(tok),
        hidden_size=spec.hidden,
        intermediate_size=spec.intermediate,
        num_hidden_layers=spec.layers,
        num_attention_heads=spec.heads,
        num_key_value_heads=spec.heads,
        head_dim=spec.hidden // spec.heads,
        max_position_embeddings=64,
        num_labels=2,
        id2label=POLICY_LABELS,
        label2id={v: k for k, v in POLICY_LABELS.items()},
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
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


def build(root: Path, spec: ZooSpec = ZooSpec()) -> dict:
    """Train and save the whole zoo into `root`; returns the manifest it writes last."""
    t0 = time.time()
    root.mkdir(parents=True, exist_ok=True)
    tok = build_tokenizer()
    timings = {}
    for name, lm_spec, seed in (
        ("cheap", spec.cheap, spec.seed),
        ("strong", spec.strong, spec.seed + 1),
    ):
        t = time.time()
        print(
            f"training {name} LM ({lm_spec.layers}x{lm_spec.hidden}, {lm_spec.steps} steps)",
            flush=True,
        )
        model = train_lm(lm_spec, tok, seed, mix=dict(spec.train_mix))
        model.save_pretrained(root / name)
        tok.save_pretrained(root / name)
        timings[name] = round(time.time() - t, 1)
    t = time.time()
    print(f"labelling {spec.router.label_queries} train queries with both LMs", flush=True)
    tasks = sample("train", spec.router.label_queries, seed=spec.seed + 100)
    labels = _policy_labels(root / "cheap", root / "strong", tasks)
    print(f"training router on {len(labels)} labels ({sum(labels)} complex)", flush=True)
    router = train_router(spec.router, _router_tokenizer(tok), tasks, labels, spec.seed + 2)
    router.save_pretrained(root / "router")
    _router_tokenizer(tok).save_pretrained(root / "router")
    timings["router"] = round(time.time() - t, 1)
    manifest = {
        "version": ZOO_VERSION,
        "spec": asdict(spec),
        "seconds": {**timings, "total": round(time.time() - t0, 1)},
        "torch": torch.__version__,
    }
    (root / "manifest.json").write_text(json.dumps(manifest, indent=2))
    print(f"zoo built in {manifest['seconds']['total']} s at {root}", flush=True)
    return manifest


def _router_tokenizer(tok: PreTrainedTokenizerFast) -> PreTrainedTokenizerFast:
    """The router reads the query as-is; right padding so the last real token is easy to find."""
    tok.padding_side = "right"
    return tok


# --- report ---------------------------------------------------------------------------------


def report(split: str = "test", seed: int = 0, n: int = 1000, root: Path | None = None) -> dict:
    """Accuracy of each zoo model on a fresh sample of a split, and the cheap tier's AUROC."""
    from sklearn.metrics import roc_auc_score

    root = ensure_zoo(root)
    tasks = sample(split, n, seed=seed)
    cheap = answer_queries(root / "cheap", tasks)
    strong = answer_queries(root / "strong", tasks)
    cheap_j = [judge(g.text, t.answer) for g, t in zip(cheap, tasks, strict=True)]
    strong_j = [judge(g.text, t.answer) for g, t in zip(strong, tasks, strict=True)]
    cheap_ok = [j.value == "correct" for j in cheap_j]
    mean_lp = [sum(g.logprobs) / max(1, len(g.logprobs)) for g in cheap]
    truth = [true_policy(c, s).value for c, s in zip(cheap_j, strong_j, strict=True)]
    predicted = route_queries(root / "router", tasks)
    by_level: dict[str, dict[str, float]] = {}
    for key in sorted({f"{t.family}/{t.difficulty}" for t in tasks}):
        idx = [i for i, t in enumerate(tasks) if f"{t.family}/{t.difficulty}" == key]
        by_level[key] = {
            "n": len(idx),
            "cheap": round(sum(cheap_ok[i] for i in idx) / len(idx), 3),
            "strong": round(sum(strong_j[i].value == "correct" for i in idx) / len(idx), 3),
        }
    return {
        "split": split,
        "seed": seed,
        "n": n,
        "cheap": {
            "accuracy": sum(cheap_ok) / n,
            "logprob_auroc": float(roc_auc_score(cheap_ok, mean_lp))
            if 0 < sum(cheap_ok) < n
            else None,
        },
        "strong": {"accuracy": sum(j.value == "correct" for j in strong_j) / n},
        "router": {
            "accuracy": sum(p == t for p, t in zip(predicted, truth, strict=True)) / n,
            "complex_rate_true": truth.count("complex") / n,
            "complex_rate_predicted": predicted.count("complex") / n,
        },
        "by_family_level": by_level,
    }


@torch.inference_mode()
def route_probabilities(
    router_dir: Path | str, prompts: list[str], batch: int = 512
) -> list[float]:
    """The saved router's P(complex) for each prompt (the raw query text, not the chat format)."""
    tok = AutoTokenizer.from_pretrained(router_dir)
    model = AutoModelForSequenceClassification.from_pretrained(router_dir).eval()
    complex_id = model.config.label2id[Policy.complex.value]
    out: list[float] = []
    for i in range(0, len(prompts), batch):
        enc = tok(prompts[i : i + batch], return_tensors="pt", padding=True)
        out.extend(model(**enc).logits.softmax(-1)[:, complex_id].tolist())
    return out


def route_queries(router_dir: Path | str, tasks: list[Task]) -> list[str]:
    """The saved router's policy for each query (argmax, i.e. P(complex) > 0.5)."""
    probs = route_probabilities(router_dir, [t.prompt for t in tasks])
    return [Policy.complex.value if p > 0.5 else Policy.standard.value for p in probs]


def _main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m models.zoo",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True)
    b = sub.add_parser("build", help="train the zoo (skipped if a current one exists)")
    b.add_argument("--dir", type=Path, default=None, help="target folder (default: zoo_dir())")
    b.add_argument("--force", action="store_true", help="rebuild even if a current zoo exists")
    r = sub.add_parser("report", help="accuracy and AUROC of the zoo on a split")
    r.add_argument("--split", default="test")
    r.add_argument("--seed", type=int, default=0)
    r.add_argument("--n", type=int, default=1000)
    r.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    if args.command == "build":
        root = Path(args.dir or zoo_dir())
        if args.force and (root / "manifest.json").exists():
            (root / "manifest.json").unlink()
        ensure_zoo(root, derived=True)
        print(json.dumps(json.loads((root / "manifest.json").read_text())["seconds"]))
    else:
        result = report(args.split, args.seed, args.n)
        print(json.dumps(result, indent=None if args.json else 2))


if __name__ == "__main__":
    torch.set_num_threads(max(1, min(os.cpu_count() or 1, 4)))
    _main()
