"""Building the embedded model zoo from code, on the synthetic task suite (offline only).

Three Llama causal LMs of growing size (*cheap*, *mid*, *strong*) and a Gemma *router* trained
on whether the cheap answer will do (cheap-vs-strong labels), by `models.zoo_train`. The
manifest records each model with the key of its recipe (its spec, seed and what it learnt from),
so a build trains only the models that are missing or whose recipe changed: a zoo from before
`mid` existed gains `mid` in about a minute instead of being rebuilt for six. Deterministic for
a seed on one kind of machine. Serving never imports this module (`models.zoo` finds the zoo);
`offline.zoo_cli` drives it and adds the derived artifacts.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from filelock import FileLock

from models.tasks import sample
from models.zoo import MANIFEST_FILE, ZOO_MODELS, ZOO_VERSION, read_manifest
from models.zoo_train import (  # LMSpec, RouterSpec: re-exported, the zoo recipe's parts
    TRAIN_MIX,
    LMSpec,
    RouterSpec,
    build_tokenizer,
    policy_labels,
    train_lm,
    train_router,
)

__all__ = [
    "LMSpec",
    "RouterSpec",
    "ZooSpec",
    "build",
    "ensure_models",
    "recipes",
    "stale_models",
    "update_models",
    "write_manifest",
    "zoo_lock",
]

LM_MODELS = ("cheap", "mid", "strong")
# Each model's seed is the zoo seed plus its offset; mid's is 3 because it came after the router.
SEED_OFFSET = {"cheap": 0, "strong": 1, "router": 2, "mid": 3}
LABEL_SEED_OFFSET = 100  # the train-split sample the router's labels are drawn from
# Bump when the training *code* of a kind of model changes what it produces: every model of
# that kind is retrained (its key changes). Spec changes need no bump: they are in the key.
RECIPE_VERSION = {"lm": 1, "router": 1}


# The default zoo's models (frozen: one shared instance is a safe dataclass default).
CHEAP = LMSpec(hidden=64, layers=2, heads=2, intermediate=256, steps=450, batch=128, lr=3e-3)
STRONG = LMSpec(hidden=128, layers=4, heads=4, intermediate=512, steps=1500, batch=128, lr=3e-3)
# Depth is what learns `rev` (cheap's 2 layers barely do); at 3x64 and 750 steps mid learns it
# in part and the arithmetic mostly: 0.88 on the test split, in ~60 s. A 3x96 mid swung between
# 0.71 and 0.97 with the seed at 500-650 steps, and took 107 s at 800.
MID = LMSpec(hidden=64, layers=3, heads=2, intermediate=256, steps=750, batch=128, lr=3e-3)
ROUTER = RouterSpec()


@dataclass(frozen=True)
class ZooSpec:
    """The whole zoo's recipe. The defaults were tuned on the 2-core CI machine kind to hit the
    targets of the foundation issue (cheap 0.45-0.80, strong >= 0.92, AUROC >= 0.80) in
    well under 10 minutes, and `mid` to land between them (0.80-0.92) in about a minute;
    `seed` changes every random choice of the build."""

    seed: int = 0
    cheap: LMSpec = CHEAP
    strong: LMSpec = STRONG
    router: RouterSpec = ROUTER
    train_mix: tuple[tuple[str, float], ...] = tuple(TRAIN_MIX.items())
    mid: LMSpec = MID


# --- recipes and the manifest ---------------------------------------------------------------


def _key(recipe: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:16]


def recipes(spec: ZooSpec | dict[str, Any]) -> dict[str, dict[str, Any]]:
    """What determines each model's weights, as JSON, keyed by model name.

    Takes a `ZooSpec` or its `asdict` form as stored in a manifest (a version-1 manifest's spec
    has no `mid`, so gives no mid recipe). The router's recipe names the keys of the LMs that
    labelled its data, so retraining cheap or strong retrains it too.
    """
    s = json.loads(json.dumps(asdict(spec) if isinstance(spec, ZooSpec) else spec))
    out: dict[str, dict[str, Any]] = {}
    for name in LM_MODELS:
        if name in s:
            out[name] = {
                "kind": "lm",
                "code": RECIPE_VERSION["lm"],
                "spec": s[name],
                "seed": s["seed"] + SEED_OFFSET[name],
                "train_mix": s["train_mix"],
            }
    out["router"] = {
        "kind": "router",
        "code": RECIPE_VERSION["router"],
        "spec": s["router"],
        "seed": s["seed"] + SEED_OFFSET["router"],
        "label_seed": s["seed"] + LABEL_SEED_OFFSET,
        "labelled_by": {m: _key(out[m]) for m in ("cheap", "strong")},
    }
    return out


def _upgraded(manifest: dict[str, Any] | None) -> dict[str, Any]:
    """A manifest of this version from whatever is on disk: a version-1 one (one spec for the
    zoo, no per-model records) gets a record per model it has, with the keys its spec gives,
    so its models are kept when the recipe did not change. Anything else starts empty."""
    if manifest is None:
        return {}
    if manifest.get("version") == ZOO_VERSION:
        return manifest
    if manifest.get("version") != 1 or "spec" not in manifest:
        return {}
    seconds = manifest.get("seconds") or {}
    old = recipes(manifest["spec"])
    up: dict[str, Any] = {
        "version": ZOO_VERSION,
        "spec": manifest["spec"],
        "models": {
            name: {"key": _key(r), "recipe": r, "seconds": seconds.get(name)}
            for name, r in old.items()
        },
        "seconds": seconds,
        "torch": manifest.get("torch"),
    }
    if "derived" in manifest:  # derived from exactly these models
        up["derived"] = manifest["derived"]
        up["derived_from"] = {name: rec["key"] for name, rec in up["models"].items()}
    return up


def _stale(root: Path, manifest: dict[str, Any], spec: ZooSpec) -> list[str]:
    """Models whose record is missing, of another recipe, or whose folder is gone."""
    have = manifest.get("models") or {}
    return [
        name
        for name, recipe in recipes(spec).items()
        if (have.get(name) or {}).get("key") != _key(recipe)
        or not (root / name / "config.json").is_file()
    ]


def stale_models(root: Path | str, spec: ZooSpec | None = None) -> list[str]:
    """The models a build of `spec` at `root` would train now (empty: the zoo is current)."""
    root = Path(root)
    return _stale(root, _upgraded(read_manifest(root, current=False)), spec or ZooSpec())


def write_manifest(root: Path, manifest: dict[str, Any]) -> None:
    """Write atomically (readers never see half a file), with the timing summary recomputed:
    each model's training seconds, `models` their sum, `derived`, and `total`."""
    models_ = manifest.get("models") or {}
    seconds = {n: models_[n].get("seconds") for n in ZOO_MODELS if n in models_}
    seconds["models"] = round(sum(s or 0 for s in seconds.values()), 1)
    derived = (manifest.get("seconds") or {}).get("derived")
    if derived is not None and "derived" in manifest:
        seconds["derived"] = derived
    seconds["total"] = round(seconds["models"] + (seconds.get("derived") or 0), 1)
    manifest["seconds"] = seconds
    tmp = root / f".{MANIFEST_FILE}.{os.getpid()}.tmp"
    tmp.write_text(json.dumps(manifest, indent=2))
    os.replace(tmp, root / MANIFEST_FILE)


def zoo_lock(root: Path) -> FileLock:
    """The lock every builder of `root` holds, so concurrent first uses build once. Not
    reentrant across instances: take it once and call the unlocked `update_models` inside."""
    root.mkdir(parents=True, exist_ok=True)
    return FileLock(str(root / ".build.lock"))


# --- building -------------------------------------------------------------------------------


def ensure_models(root: Path | str, spec: ZooSpec | None = None) -> dict[str, Any]:
    """Train the models of `spec` that `root` lacks (under the lock); returns the manifest."""
    root, spec = Path(root), spec or ZooSpec()
    if not stale_models(root, spec):
        return _upgraded(read_manifest(root, current=False))
    with zoo_lock(root):
        return update_models(root, spec)


def update_models(root: Path, spec: ZooSpec) -> dict[str, Any]:
    """Bring `root` to `spec`, training only stale models; the caller holds `zoo_lock(root)`
    (re-checked here: another process may have built them while we waited)."""
    manifest = _upgraded(read_manifest(root, current=False))
    stale = _stale(root, manifest, spec)
    return _train(root, spec, stale, manifest) if stale else manifest


def build(root: Path | str, spec: ZooSpec | None = None) -> dict[str, Any]:
    """Train every model of `spec` into `root`, whatever is there; returns the manifest. The
    caller holds `zoo_lock(root)` or owns the folder."""
    return _train(Path(root), spec or ZooSpec(), list(recipes(spec or ZooSpec())), {})


def _train(
    root: Path, spec: ZooSpec, names: Iterable[str], manifest: dict[str, Any]
) -> dict[str, Any]:
    """Train `names` in dependency order, recording each in the manifest once it is saved (an
    interrupted build keeps what it finished)."""
    root.mkdir(parents=True, exist_ok=True)
    t0, todo = time.time(), set(names)
    manifest = {**manifest, "version": ZOO_VERSION, "spec": asdict(spec)}
    manifest["torch"] = torch.__version__
    models_ = manifest["models"] = dict(manifest.get("models") or {})
    for name in ZOO_MODELS:
        if name not in todo:
            continue
        models_.pop(name, None)  # not recorded while its folder is being replaced
        write_manifest(root, manifest)
        t = time.time()
        _train_one(root, name, spec)
        recipe = recipes(spec)[name]
        models_[name] = {"key": _key(recipe), "recipe": recipe, "seconds": _since(t)}
        write_manifest(root, manifest)
    if todo:
        print(f"zoo: trained {', '.join(sorted(todo))} in {_since(t0)} s at {root}", flush=True)
    write_manifest(root, manifest)
    return manifest


def _since(t: float) -> float:
    return round(time.time() - t, 1)


def _train_one(root: Path, name: str, spec: ZooSpec) -> None:
    """Train one model and swap it into `root/name` (saved beside it first, then renamed)."""
    tok = build_tokenizer()
    seed = spec.seed + SEED_OFFSET[name]
    if name == "router":
        r = spec.router
        print(f"labelling {r.label_queries} train queries with cheap and strong", flush=True)
        tasks = sample("train", r.label_queries, seed=spec.seed + LABEL_SEED_OFFSET)
        labels = policy_labels(root / "cheap", root / "strong", tasks)
        print(f"training router on {len(labels)} labels ({sum(labels)} complex)", flush=True)
        tok.padding_side = "right"  # reads the query as-is; the last real token is easy to find
        model = train_router(r, tok, tasks, labels, seed)
    else:
        lm: LMSpec = getattr(spec, name)
        print(f"training {name} LM ({lm.layers}x{lm.hidden}, {lm.steps} steps)", flush=True)
        model = train_lm(lm, tok, seed, mix=dict(spec.train_mix))
    tmp = root / f".{name}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    tok.save_pretrained(tmp)
    shutil.rmtree(root / name, ignore_errors=True)
    os.replace(tmp, root / name)
