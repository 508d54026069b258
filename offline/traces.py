"""Collected traces on disk: every tier's answer to every data set item, keyed by identity.

    DIR/manifest.json                   the data file, and per tier the identity collected last
    DIR/answers/<tier>-<key>.jsonl      {"id", "generation"} per line, appended batch by batch
    DIR/labels/<tier>-<key>.jsonl       {"id", "tier", "verdict", "judge", "detail"} per line

`<key>` is a hash of the tier's `TierIdentity`, so answers of a changed model (new weights, a
new tokenizer, another dtype, top-k or decoding) go to a new file and are never mixed with the
old ones; collecting again after an interruption appends only the missing ids. A torn last
line (the process killed mid-write) is dropped on reading and collected again.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from pathlib import Path

from pydantic import BaseModel, Field

from calibration.generation import Generation, generation_from_dict, generation_to_dict
from calibration.identity import TierIdentity
from calibration.judges import Label

__all__ = ["TraceManifest", "TraceStore", "identity_key"]


def identity_key(identity: TierIdentity) -> str:
    return hashlib.blake2b(identity.model_dump_json().encode(), digest_size=6).hexdigest()


class TraceManifest(BaseModel):
    version: int = 1
    data: str = Field(description="the data set file the items came from")
    tiers: dict[str, TierIdentity] = Field(default_factory=dict, description="ladder order")


class TraceStore:
    """One folder of traces; cheap to construct, reads lazily."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    @property
    def manifest_path(self) -> Path:
        return self.root / "manifest.json"

    def manifest(self) -> TraceManifest:
        if not self.manifest_path.is_file():
            raise FileNotFoundError(
                f"{self.root} holds no traces (no manifest.json); run "
                "`python -m calibration collect --config ... --data ... --out "
                f"{self.root}` first"
            )
        return TraceManifest.model_validate_json(self.manifest_path.read_text())

    def record(self, data: str, tier: str, identity: TierIdentity, ladder: list[str]) -> None:
        """Point the manifest at this identity for the tier (tiers kept in ladder order)."""
        try:
            old = self.manifest()
            tiers = dict(old.tiers)
        except FileNotFoundError:
            tiers = {}
        tiers[tier] = identity
        ordered = {t: tiers[t] for t in ladder if t in tiers}
        ordered.update({t: i for t, i in tiers.items() if t not in ordered})
        self.root.mkdir(parents=True, exist_ok=True)
        tmp = self.manifest_path.with_suffix(".tmp")
        tmp.write_text(TraceManifest(data=data, tiers=ordered).model_dump_json(indent=2))
        tmp.replace(self.manifest_path)

    def _file(self, kind: str, tier: str, identity: TierIdentity) -> Path:
        return self.root / kind / f"{tier}-{identity_key(identity)}.jsonl"

    # answers ---------------------------------------------------------------------------------

    def answers(self, tier: str, identity: TierIdentity) -> dict[str, Generation]:
        return {
            row["id"]: generation_from_dict(row["generation"])
            for row in _read_rows(self._file("answers", tier, identity))
        }

    def done_ids(self, tier: str, identity: TierIdentity) -> set[str]:
        return {row["id"] for row in _read_rows(self._file("answers", tier, identity))}

    def append_answers(
        self, tier: str, identity: TierIdentity, rows: Iterable[tuple[str, Generation]]
    ) -> None:
        path = self._file("answers", tier, identity)
        path.parent.mkdir(parents=True, exist_ok=True)
        lines = [json.dumps({"id": i, "generation": generation_to_dict(g)}) for i, g in rows]
        with path.open("a", encoding="utf-8") as f:
            f.write("".join(line + "\n" for line in lines))

    # labels ----------------------------------------------------------------------------------

    def write_labels(self, tier: str, identity: TierIdentity, labels: list[Label]) -> Path:
        path = self._file("labels", tier, identity)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text("".join(label.model_dump_json() + "\n" for label in labels))
        tmp.replace(path)
        return path

    def labels(self, tier: str, identity: TierIdentity) -> dict[str, Label]:
        path = self._file("labels", tier, identity)
        if not path.is_file():
            raise FileNotFoundError(
                f"no labels for tier {tier!r} in {self.root}; run "
                f"`python -m calibration judge --traces {self.root} --judge ...` first"
            )
        return {row["id"]: Label.model_validate(row) for row in _read_rows(path)}


def _read_rows(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    rows = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue  # a torn last line from an interrupted write: collected again
    return rows
