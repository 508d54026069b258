"""The data set format of the generic path: JSONL, one item a line.

    {"messages": [{"role": "user", "content": "48+7"}], "reference": "55", "task_type": "add"}
    {"prompt": "Translate to French: cat", "reference": "chat", "id": "fr-17"}

`messages` (OpenAI chat form) or `prompt`, exactly one; `reference` is the expected answer
(optional when an LLM judge grades); `task_type` names the task floor and the judge to use;
`id` keys the traces (when absent, a hash of the content, so reordering lines keeps the keys);
`metadata` is the user's own and is carried along untouched.

Bad lines are refused, all of them at once, each as `file:line: what is wrong`; nothing is
dropped silently. A typo in a key (`refrence`) is an error, not an ignored field. Blank lines
are not items.

The zoo's tasks are one user of this format: `python -m models.tasks export`.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

__all__ = ["DatasetError", "DatasetItem", "Message", "load_dataset", "write_dataset"]

MAX_ERRORS = 20  # reported per file; a file with more is wrong in a systematic way


class DatasetError(ValueError):
    """One or more lines of a data set file are not items; `str()` lists them, file:line."""

    def __init__(self, path: str | Path, problems: list[str]) -> None:
        self.problems = problems
        shown = problems[:MAX_ERRORS]
        more = (
            f"\n  ... and {len(problems) - len(shown)} more" if len(problems) > len(shown) else ""
        )
        super().__init__(
            f"{path}: {len(problems)} bad line(s); fix them and run again:\n  "
            + "\n  ".join(shown)
            + more
        )


class Message(BaseModel):
    model_config = ConfigDict(extra="forbid")

    role: Literal["system", "user", "assistant"]
    content: str


class DatasetItem(BaseModel):
    """One query of the user's traffic, with what a judge needs to grade the answers."""

    model_config = ConfigDict(extra="forbid")

    messages: list[Message] | None = Field(
        default=None, description="the conversation in OpenAI chat form, ending with the user"
    )
    prompt: str | None = Field(default=None, description="a raw prompt (text completion)")
    reference: str | None = Field(default=None, description="the expected answer")
    task_type: str | None = Field(default=None, max_length=64, description="e.g. 'sql', 'math'")
    id: str | None = Field(default=None, min_length=1, max_length=200)
    metadata: dict[str, Any] = Field(default_factory=dict, description="carried, never read")

    @field_validator("messages")
    @classmethod
    def _ends_with_user(cls, value: list[Message] | None) -> list[Message] | None:
        if value is not None and (not value or value[-1].role != "user"):
            raise ValueError("messages must be non-empty and end with a user message")
        return value

    @model_validator(mode="after")
    def _one_input(self) -> DatasetItem:
        if (self.messages is None) == (self.prompt is None):
            raise ValueError("give exactly one of 'messages' or 'prompt'")
        if self.prompt is not None and not self.prompt.strip():
            raise ValueError("prompt is empty")
        if self.id is None:
            self.id = content_id(self)
        return self

    @property
    def query(self) -> str:
        """The text the router sees: the last user message, or the prompt."""
        return self.prompt if self.prompt is not None else self.messages[-1].content  # type: ignore[index]


def content_id(item: DatasetItem) -> str:
    """A stable key from what the models see, so traces survive reordering the file."""
    content = item.model_dump(include={"messages", "prompt"}, exclude_none=True)
    digest = hashlib.blake2b(json.dumps(content, sort_keys=True).encode(), digest_size=8)
    return "h" + digest.hexdigest()


def load_dataset(path: str | Path) -> list[DatasetItem]:
    """Every item of a JSONL file, or a DatasetError naming every bad line."""
    path = Path(path)
    if not path.is_file():
        raise DatasetError(path, [f"{path}: no such file"])
    items: list[DatasetItem] = []
    problems: list[str] = []
    first_line: dict[str, int] = {}
    with path.open(encoding="utf-8") as f:
        for number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            where = f"{path}:{number}"
            item = _parse_line(line, where, problems)
            if item is None:
                continue
            if item.id in first_line:
                problems.append(f"{where}: id {item.id!r} repeats line {first_line[item.id]}")
                continue
            first_line[item.id] = number  # type: ignore[index]
            items.append(item)
    if problems:
        raise DatasetError(path, problems)
    if not items:
        raise DatasetError(path, [f"{path}: no items (the file is empty)"])
    return items


def _parse_line(line: str, where: str, problems: list[str]) -> DatasetItem | None:
    try:
        raw = json.loads(line)
    except json.JSONDecodeError as e:
        problems.append(f"{where}: not JSON ({e.msg} at column {e.colno})")
        return None
    if not isinstance(raw, dict):
        problems.append(f"{where}: an item is a JSON object, got {type(raw).__name__}")
        return None
    try:
        return DatasetItem.model_validate(raw)
    except ValidationError as e:
        for err in e.errors():
            field = ".".join(str(p) for p in err["loc"]) or "item"
            problems.append(f"{where}: {field}: {err['msg']}")
        return None


def write_dataset(items: Iterable[DatasetItem], path: str | Path) -> int:
    """Write items as JSONL (the same format `load_dataset` reads); returns the count."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    n = 0
    with path.open("w", encoding="utf-8") as f:
        for item in items:
            f.write(item.model_dump_json(exclude_none=True, exclude_defaults=True) + "\n")
            n += 1
    return n
