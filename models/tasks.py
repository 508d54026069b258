"""The synthetic task suite: queries whose answers can be checked exactly.

Every query belongs to a *family* (add, sub, max, rev) and a *difficulty* level (1-3).
Which split a query belongs to is a pure function of its text (a hash bucket), so the splits
never overlap whatever seed draws from them, and any caller can draw a fresh held-out sample
by passing a new seed.

    python -m models.tasks sample --split test --seed 7 --n 5 --json
    python -m models.tasks export --split test --seed 7 --n 500 --out test.jsonl

`export` writes the generic data set format (`calibration.dataset`), so the zoo's tasks go
through the same collect / judge / calibrate path as anyone's traffic.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
import string
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from enum import StrEnum

from calibration.dataset import DatasetItem, Message, write_dataset

__all__ = [
    "FAMILIES",
    "LEVELS",
    "SPLITS",
    "Judgement",
    "Task",
    "judge",
    "make_task",
    "sample",
    "split_of",
    "stream",
]

# Hash buckets out of 100 that make up each split: 70 / 10 / 10 / 10 percent of the query space.
SPLITS: dict[str, range] = {
    "train": range(0, 70),
    "calibration": range(70, 80),
    "validation": range(80, 90),
    "test": range(90, 100),
}
LEVELS = (1, 2, 3)
_LETTERS = "abcdefgh"  # small alphabet: counting needs repeats, reversal needs no more


@dataclass(frozen=True)
class Task:
    """One query with its exact answer; `prompt` is what a user sends as the chat message."""

    prompt: str
    answer: str
    family: str
    difficulty: int


class Judgement(StrEnum):
    """How an answer compares with the truth.

    `partial` means: the answer has exactly the expected length and at least half of its
    characters (but not all) are right, position by position. For numbers that is "right
    magnitude, most digits right"; for a reversal "right length, most letters in place".
    """

    correct = "correct"
    partial = "partial"
    incorrect = "incorrect"


def _digits(rng: random.Random, n: int) -> int:
    """A uniform integer with exactly n digits (0-9 for n == 1)."""
    return rng.randint(0 if n == 1 else 10 ** (n - 1), 10**n - 1)


def _operands(rng: random.Random, level: int) -> tuple[int, int]:
    """A (level + 1)-digit number and a one-digit number: carries ripple further as the level
    rises, and every level has hundreds of queries or more, so each split holds many."""
    return _digits(rng, level + 1), _digits(rng, 1)


def _add(rng: random.Random, level: int) -> tuple[str, str]:
    a, b = _operands(rng, level)
    return f"{a}+{b}", str(a + b)


def _sub(rng: random.Random, level: int) -> tuple[str, str]:
    a, b = _operands(rng, level)
    return f"{a}-{b}", str(a - b)


def _max(rng: random.Random, level: int) -> tuple[str, str]:
    digits = "".join(rng.choice(string.digits) for _ in range(2 * level + 1))
    return f"max {digits}", max(digits)


def _rev(rng: random.Random, level: int) -> tuple[str, str]:
    word = "".join(rng.choice(_LETTERS) for _ in range(2 * level + 1))
    return f"rev {word}", word[::-1]


FAMILIES: dict[str, Callable[[random.Random, int], tuple[str, str]]] = {
    "add": _add,
    "sub": _sub,
    "max": _max,
    "rev": _rev,
}

# Every character a prompt or answer can contain; the zoo's tokenizer is built from it.
ALPHABET = string.digits + string.ascii_lowercase + "+-*=: "


def split_of(prompt: str) -> str:
    """The split a query belongs to: a stable hash of its text, independent of any seed."""
    bucket = int.from_bytes(hashlib.blake2b(prompt.encode(), digest_size=8).digest(), "big") % 100
    return next(name for name, buckets in SPLITS.items() if bucket in buckets)


def make_task(rng: random.Random, family: str, difficulty: int) -> Task:
    """Draw one query of a family and level, from any split."""
    if family not in FAMILIES:
        raise ValueError(f"unknown family {family!r}; choose from {sorted(FAMILIES)}")
    if difficulty not in LEVELS:
        raise ValueError(f"difficulty must be one of {LEVELS}, got {difficulty!r}")
    prompt, answer = FAMILIES[family](rng, difficulty)
    return Task(prompt=prompt, answer=answer, family=family, difficulty=difficulty)


def stream(
    split: str,
    seed: int,
    families: dict[str, float] | None = None,
    levels: tuple[int, ...] = LEVELS,
) -> Iterator[Task]:
    """An endless, deterministic stream of queries of one split.

    `families` maps family -> relative weight (default: all families, equal weight); levels are
    uniform. Evaluation uses the default mix; training may weight the families it learns slowest.
    """
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; choose from {sorted(SPLITS)}")
    mix = families or dict.fromkeys(FAMILIES, 1.0)
    names, weights = list(mix), list(mix.values())
    rng = random.Random(f"{split}:{seed}")
    while True:
        family, level = rng.choices(names, weights)[0], rng.choice(levels)
        task = make_task(rng, family, level)
        if split_of(task.prompt) == split:
            yield task


def sample(split: str, n: int, seed: int = 0, **kwargs) -> list[Task]:
    """The first n queries of `stream(split, seed)`: the same list for the same arguments."""
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    it = stream(split, seed, **kwargs)
    return [next(it) for _ in range(n)]


def judge(output: str, answer: str) -> Judgement:
    """Compare a model's output with the true answer (surrounding whitespace ignored)."""
    got = output.strip()
    if got == answer:
        return Judgement.correct
    if len(got) == len(answer) and answer:
        right = sum(g == a for g, a in zip(got, answer, strict=True))
        if 2 * right >= len(answer):
            return Judgement.partial
    return Judgement.incorrect


def as_item(task: Task, index: int, where: argparse.Namespace) -> DatasetItem:
    """A task as a data set item: the chat message, its answer, the family as task type."""
    return DatasetItem(
        messages=[Message(role="user", content=task.prompt)],
        reference=task.answer,
        task_type=task.family,
        id=f"{where.split}-{where.seed}-{index}",
        metadata={"difficulty": task.difficulty},
    )


def _main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m models.tasks", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("sample", help="print queries of a split")
    p.add_argument("--split", default="test", choices=sorted(SPLITS))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--n", type=int, default=10)
    p.add_argument("--json", action="store_true", help="one JSON list instead of lines")
    e = sub.add_parser("export", help="write queries of a split as a JSONL data set")
    e.add_argument("--split", required=True, choices=sorted(SPLITS))
    e.add_argument("--seed", type=int, required=True)
    e.add_argument("--n", type=int, default=1000)
    e.add_argument("--out", required=True, help="the .jsonl file to write")
    args = parser.parse_args(argv)
    tasks = sample(args.split, args.n, args.seed)
    if args.command == "export":
        n = write_dataset((as_item(t, i, args) for i, t in enumerate(tasks)), args.out)
        print(f"wrote {n} items of split {args.split} (seed {args.seed}) to {args.out}")
        return
    if args.json:
        print(json.dumps([asdict(t) for t in tasks]))
    else:
        for t in tasks:
            print(f"{t.family:6s} L{t.difficulty}  {t.prompt!r:28s} -> {t.answer}")


if __name__ == "__main__":
    _main()
