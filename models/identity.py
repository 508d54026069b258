"""A checkpoint's identity, computed from its files, cheaply enough to run at every start-up.

The revision is the hub's commit when the folder is a hub snapshot (`.../snapshots/<sha>/`);
otherwise a hash of the config and of every weight file: whole for files up to 256 MiB (the
zoo's, any small model's), and for larger ones their size, their safetensors header (names,
shapes, dtypes, offsets) and their first and last MiB, so a 60 GB checkpoint is identified in
milliseconds. A fine-tune that changes only middle bytes of a large file and keeps its size
would pass; the config hash, the tokenizer hash and the decoding settings still must agree.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Any

from calibration.config import AppArgs, TierArgs
from calibration.identity import TierIdentity
from models.engine import SamplingSettings
from models.loading import engine_kind

__all__ = [
    "checkpoint_identity",
    "configured_identities",
    "folder_revision",
    "served_settings",
    "tier_identity",
    "tokenizer_hash",
]

_WHOLE_LIMIT = 256 << 20
_EDGE = 1 << 20
_WEIGHTS = ("*.safetensors", "*.bin", "*.pt", "*.gguf")
_TOKENIZER = (
    "tokenizer.json",
    "tokenizer_config.json",
    "vocab.json",
    "merges.txt",
    "tokenizer.model",
    "special_tokens_map.json",
    "chat_template.jinja",
)
_SNAPSHOT = re.compile(r"/snapshots/([0-9a-f]{40})/?$")


def _hash_file(h: Any, path: Path) -> None:
    size = path.stat().st_size
    h.update(f"{path.name}:{size}".encode())
    with path.open("rb") as f:
        if size <= _WHOLE_LIMIT:
            for chunk in iter(lambda: f.read(1 << 22), b""):
                h.update(chunk)
            return
        head = f.read(8)
        h.update(head)
        if path.suffix == ".safetensors":
            h.update(f.read(min(int.from_bytes(head, "little"), 100 << 20)))
        f.seek(0)
        h.update(f.read(_EDGE))
        f.seek(size - _EDGE)
        h.update(f.read(_EDGE))


def folder_revision(path: str | Path) -> str:
    """The hub commit of a snapshot folder, else a content hash of config and weights."""
    path = Path(path)
    m = _SNAPSHOT.search(str(path.resolve()))
    if m:
        return m.group(1)
    h = hashlib.blake2b(digest_size=12)
    for name in ("config.json", "generation_config.json"):
        if (path / name).is_file():
            _hash_file(h, path / name)
    weights = sorted({p for pattern in _WEIGHTS for p in path.glob(pattern)})
    for p in weights:
        _hash_file(h, p)
    return "sha:" + h.hexdigest() if weights else ""


def tokenizer_hash(path: str | Path) -> str:
    path = Path(path)
    files = [path / n for n in _TOKENIZER if (path / n).is_file()]
    if not files:
        return ""
    h = hashlib.blake2b(digest_size=12)
    for p in files:
        _hash_file(h, p)
    return "sha:" + h.hexdigest()


def checkpoint_identity(
    model: str,
    *,
    engine: str = "",
    dtype: str = "",
    top_k: int = 5,
    decoding: dict[str, Any] | None = None,
) -> TierIdentity:
    """The identity of a configured model: resolved (zoo names, local folders) and hashed.

    A hub id that is not a local folder keeps an empty revision (the hub resolves it at load
    time; pin `revision` in engine_kwargs to make it comparable)."""
    from models.zoo import resolve

    path = Path(resolve(model))
    local = path.is_dir()
    return TierIdentity(
        model=model,
        revision=folder_revision(path) if local else "",
        tokenizer=tokenizer_hash(path) if local else "",
        engine=engine,
        dtype=dtype,
        top_k=top_k,
        decoding=decoding or {},
    )


def served_settings(args: AppArgs) -> SamplingSettings:
    """The decoding of a served request that sets no sampling options: what calibration
    traces are collected with."""
    return SamplingSettings(
        max_tokens=args.limits.default_max_tokens, top_logprobs=args.limits.top_logprobs
    )


def served_dtype(model: str, configured: str | None) -> str:
    """The dtype the weights are served in: as configured, or for `auto` (both engines' default)
    the checkpoint's own (`dtype` / `torch_dtype` in its config.json), when it is local."""
    if configured not in (None, "auto"):
        return str(configured)
    from models.zoo import resolve

    config = Path(resolve(model)) / "config.json"
    if config.is_file():
        raw = json.loads(config.read_text())
        found = raw.get("dtype") or raw.get("torch_dtype")
        if found:
            return str(found)
    return "auto"


def tier_identity(tier: TierArgs, settings: SamplingSettings, engine: str) -> TierIdentity:
    return checkpoint_identity(
        tier.model,
        engine=engine,
        dtype=served_dtype(tier.model, tier.engine_kwargs.get("dtype")),
        top_k=settings.top_logprobs,
        decoding={
            "temperature": settings.temperature,
            "top_p": settings.top_p,
            "max_tokens": settings.max_tokens,
        },
    )


def configured_identities(args: AppArgs) -> dict[str, TierIdentity]:
    """What the config would serve, tier by tier, as `collect` records it."""
    settings = served_settings(args)
    return {t.name: tier_identity(t, settings, engine_kind(t.engine)) for t in args.tiers}
