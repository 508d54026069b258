"""Synthetic generations and splits: test and benchmark the decision logic without any model.

`random_generation` draws a plausible (T,) chosen-logprob vector and (T, k) top-k rows from a
softmax over random logits whose sharpness says how sure the "model" is. `synthetic_split`
builds a whole `EvalSplit` where each request has a latent difficulty that lowers both tiers'
chance of being right and flattens the cheap tier's distributions, so the features carry real
(but imperfect) information, as they do with the zoo.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from models.engine import Generation
from models.tasks import Judgement, Task
from offline.replay import EvalSplit, RouterRows

__all__ = ["make_generation", "random_generation", "synthetic_split"]


def make_generation(
    logprobs: Sequence[float],
    top_logprobs: Sequence[Sequence[float]] | None = None,
    text: str = "answer",
) -> Generation:
    """A Generation from bare numbers; top-k rows get placeholder token texts."""
    rows = top_logprobs if top_logprobs is not None else [[lp] for lp in logprobs]
    return Generation(
        text=text,
        token_ids=tuple(range(len(logprobs))),
        logprobs=tuple(float(x) for x in logprobs),
        top_logprobs=tuple(tuple((f"t{j}", float(lp)) for j, lp in enumerate(row)) for row in rows),
        finish_reason="stop",
        prompt_tokens=4,
    )


def random_generation(
    rng: np.random.Generator, n_tokens: int = 256, k: int = 5, sharpness: float = 3.0
) -> Generation:
    """Greedy decoding from random softmaxes over a 50-token vocabulary; larger `sharpness`
    means more confident tokens."""
    logits = rng.normal(size=(n_tokens, 50)) * sharpness
    logp = logits - np.logaddexp.reduce(logits, axis=1, keepdims=True)
    top = -np.sort(-logp, axis=1)[:, :k]
    return make_generation(top[:, 0].tolist(), top.tolist())


def synthetic_split(
    n: int, seed: int = 0, split: str = "test", tiers: Sequence[str] = ("cheap", "strong")
) -> EvalSplit:
    """n requests answered by every tier; tier i is right with probability falling in the
    request's difficulty, less steeply for stronger tiers."""
    rng = np.random.default_rng(seed)
    difficulty = rng.random(n)
    answers: dict[str, list[Generation]] = {t: [] for t in tiers}
    judgements: dict[str, list[Judgement]] = {t: [] for t in tiers}
    for level, t in enumerate(tiers):
        p_right = 1 / (1 + np.exp(-(4.0 + 3.0 * level - 7.0 * difficulty)))
        right = rng.random(n) < p_right
        for d, ok in zip(difficulty, right, strict=True):
            # confidence follows difficulty, and (weakly) whether the answer is right
            sharp = 0.4 + 2.2 * (1 - d) + (0.5 if ok else 0.0) + rng.normal(0, 0.25)
            answers[t].append(random_generation(rng, int(rng.integers(2, 9)), 5, max(sharp, 0.1)))
            judgements[t].append(Judgement.correct if ok else Judgement.incorrect)
    tasks = [Task(prompt=f"q{i}", answer="a", family="add", difficulty=1) for i in range(n)]
    router_p = np.clip(difficulty + rng.normal(0, 0.2, n), 0, 1)
    return EvalSplit(
        split=split,
        seed=seed,
        tasks=tasks,
        tiers=list(tiers),
        answers=answers,
        judgements=judgements,
        router=RouterRows(
            policy=["complex" if x > 0.5 else "standard" for x in router_p],
            p_complex=router_p,
            confidence=np.maximum(router_p, 1.0 - router_p),
            source="max_probability",
        ),
    )
