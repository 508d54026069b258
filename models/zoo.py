"""Finding the embedded model zoo: `zoo:NAME` model names, its manifest, its artifacts.

No weights can be downloaded where this project is built, so the zoo trains its own tiny
checkpoints offline (`models.zoo_build`, driven by `offline.zoo_cli`): a *cheap*, a *mid* and a
*strong* Llama causal LM and a Gemma *router*, saved with `save_pretrained` so they load back
through the `Auto*` classes like any Hugging Face checkpoint. This module only finds and reads
what was built: serving resolves model names here at start-up and must never start a training
run, so a missing or stale zoo is an error that names the command that builds it.

    python -m models.zoo build            # into $CASCADE_ZOO_DIR or ~/.cache/cascade-router/zoo
    python -m models.zoo report --split test --seed 1 --json
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from models.oracle import Policy

if TYPE_CHECKING:
    from models.engine import Generation
    from models.tasks import Task

__all__ = [
    "ANSWER_MAX_TOKENS",
    "CHAT_TEMPLATE",
    "MANIFEST_FILE",
    "POLICY_LABELS",
    "ZOO_MODELS",
    "ZOO_PREFIX",
    "ZOO_VERSION",
    "ZooNotBuiltError",
    "ZooStaleError",
    "answer_queries",
    "build_command",
    "calibration_path",
    "read_manifest",
    "require_zoo",
    "resolve",
    "resolve_artifact",
    "zoo_dir",
]

# The manifest format. 2: per-model records (`models`), so a zoo gains or retrains one model
# without rebuilding the others; a version-1 zoo is upgraded in place by `models.zoo_build`.
ZOO_VERSION = 2
ZOO_PREFIX = "zoo:"
ZOO_MODELS = ("cheap", "mid", "strong", "router")  # the LM tiers cheapest first, then the router
MANIFEST_FILE = "manifest.json"
CALIBRATION_FILE = "calibration.json"
ANSWER_MAX_TOKENS = 10  # the longest answer (7 letters) + EOS, with room to spare
# Turns a chat user message that is a task prompt into the models' own format: "<bos>{prompt}=".
CHAT_TEMPLATE = (
    "{%- set ns = namespace(q='') -%}"
    "{%- for m in messages -%}{%- if m['role'] == 'user' -%}{%- set ns.q = m['content'] -%}"
    "{%- endif -%}{%- endfor -%}"
    "{{ ns.q | trim }}{%- if add_generation_prompt -%}={%- endif -%}"
)
POLICY_LABELS = {0: Policy.standard.value, 1: Policy.complex.value}


class ZooNotBuiltError(FileNotFoundError):
    """The zoo (or one of its files) is not there: nothing was built at that folder yet."""


class ZooStaleError(RuntimeError):
    """The zoo is there but from an older build (another format, or a model missing)."""


def zoo_dir() -> Path:
    """Where the zoo lives: $CASCADE_ZOO_DIR, else ~/.cache/cascade-router/zoo."""
    return Path(
        os.environ.get("CASCADE_ZOO_DIR", Path.home() / ".cache" / "cascade-router" / "zoo")
    )


def build_command(root: Path | None = None) -> str:
    """The command that builds (or brings up to date) the zoo at `root`, for error messages."""
    if root is None or Path(root).expanduser() == zoo_dir().expanduser():
        return "`make zoo` (or `python -m models.zoo build`)"
    return f"`python -m models.zoo build --dir {root}`"


def read_manifest(root: Path | str, current: bool = True) -> dict[str, Any] | None:
    """The zoo's manifest, or None when missing or unreadable.

    With `current` (the default) also None unless it is of this `ZOO_VERSION` and records every
    model of `ZOO_MODELS`: what a caller needs before loading anything. `current=False` returns
    whatever is there (the builder upgrades old manifests in place).
    """
    try:
        manifest = json.loads((Path(root) / MANIFEST_FILE).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(manifest, dict):
        return None
    if current and _staleness(manifest) is not None:
        return None
    return manifest


def _staleness(manifest: dict[str, Any]) -> str | None:
    """Why a readable manifest is not a current, complete zoo (None when it is)."""
    if manifest.get("version") != ZOO_VERSION:
        return f"built by zoo version {manifest.get('version')!r}, this code reads {ZOO_VERSION}"
    missing = [m for m in ZOO_MODELS if m not in (manifest.get("models") or {})]
    return f"it lacks {', '.join(missing)}" if missing else None


def require_zoo(root: Path | str | None = None, model: str | None = None) -> Path:
    """The zoo folder if it holds a current, complete zoo (and `model`'s files); else raise.

    Raises `ZooNotBuiltError` (a FileNotFoundError) when nothing is built there and
    `ZooStaleError` (a RuntimeError) when an older build is; both name the build command.
    """
    root = Path(root).expanduser() if root is not None else zoo_dir()
    manifest = read_manifest(root, current=False)
    if manifest is None:
        raise ZooNotBuiltError(
            f"no built zoo at {root} ({MANIFEST_FILE} missing or unreadable); "
            f"build it with {build_command(root)}"
        )
    why = _staleness(manifest)
    if why is not None:
        raise ZooStaleError(
            f"the zoo at {root} is out of date ({why}); bring it up to date with "
            f"{build_command(root)}, which trains only what is missing"
        )
    if model is not None and not (root / model / "config.json").is_file():
        raise ZooNotBuiltError(
            f"the zoo at {root} has no {model}/config.json; rebuild it with {build_command(root)}"
        )
    return root


def calibration_path(root: Path | str | None = None) -> Path:
    """The cheap tier's conformal calibration artifact of the (default) zoo; raises when the
    zoo or the artifact is missing (the zoo build derives it), so serving fails at start-up."""
    folder = require_zoo(root)
    path = folder / CALIBRATION_FILE
    if not path.is_file():
        raise ZooNotBuiltError(
            f"the zoo at {folder} has no {CALIBRATION_FILE} (derived artifacts not built); "
            f"build them with {build_command(folder)}"
        )
    return path


def resolve_artifact(file: str, root: Path | str | None = None) -> Path:
    """A config's `calibration.file`: 'zoo' is the zoo's artifact (under `root`, default the
    zoo folder; raises when not built), anything else a path, which must exist."""
    if file == "zoo":
        return calibration_path(root)
    path = Path(file)
    if not path.is_file():
        raise FileNotFoundError(
            f"calibration file {file!r} not found; run `python -m calibration conformal "
            f"--out {file}` or set calibration.file: null for the heuristic thresholds"
        )
    return path


def resolve(model: str) -> str:
    """Map 'zoo:cheap' (or mid, strong, router) to its folder in the built default zoo.

    Anything else (a hub id or a path) is returned unchanged, so configs name zoo models and
    real checkpoints the same way. Never builds: serving must not train at start-up.
    """
    if not model.startswith(ZOO_PREFIX):
        return model
    name = model.removeprefix(ZOO_PREFIX)
    if name not in ZOO_MODELS:
        names = ", ".join(ZOO_PREFIX + m for m in ZOO_MODELS)
        raise ValueError(f"unknown zoo model {model!r}; use one of {names}")
    return str(require_zoo(model=name) / name)


def answer_queries(model_dir: Path | str, tasks: list[Task], batch: int = 256) -> list[Generation]:
    """Greedy answers of a saved LM to task prompts, through the transformers engine.

    Inference, not building: the router's labels, the report and the offline evaluation all
    need the exact answers serving would give, so they share this one path."""
    from models.engine import SamplingSettings  # heavy (torch, transformers): lazy
    from models.hf_engine import HFEngine
    from models.prompting import render_prompt

    engine = HFEngine(str(model_dir))
    settings = SamplingSettings(max_tokens=ANSWER_MAX_TOKENS, top_logprobs=5)
    prompts = [
        render_prompt(engine.tokenizer, messages=[{"role": "user", "content": t.prompt}])
        for t in tasks
    ]
    out: list[Generation] = []
    for i in range(0, len(prompts), batch):
        out.extend(engine.generate_sync(prompts[i : i + batch], settings))
    return out


if __name__ == "__main__":
    # `python -m models.zoo build|report` is the documented entry point, but building (and the
    # derived artifacts) is offline's job: forward to its command line. This lazy import is the
    # one models -> offline edge, declared as an allowed exception in the import-linter config.
    from offline.zoo_cli import main

    main()
