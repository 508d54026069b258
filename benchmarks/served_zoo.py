"""What the offline benchmarks of the served policy share (`head-value`, `frontier`): the
served config's app and artifact on the zoo, its splits loaded as that config loads them, and
one command line (test seeds, n, config, zoo, --json)."""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from calibration.config import SERVE_CONFIG, AppArgs

__all__ = ["ServedZoo", "emit", "served_parser"]


@dataclass(frozen=True)
class ServedZoo:
    """The served config (`app`) on the zoo at `root`, with its artifact."""

    app: AppArgs
    root: Path
    artifact: Any

    @classmethod
    def load(cls, config: Path, zoo: Path | None) -> ServedZoo:
        """Build the zoo if needed (`offline.zoo_cli.ensure_zoo`) and load the config's
        artifact as serving does (`models.served_calibration.served_artifact`)."""
        from models.served_calibration import served_artifact
        from offline.zoo_cli import ensure_zoo

        root = ensure_zoo(zoo)
        app = AppArgs.from_serve_config(config)
        return cls(app, root, served_artifact(app, root))

    def split(self, name: str, n: int, seed: int):
        """One split answered by the config's tiers (`offline.replay.load_split`)."""
        from offline.replay import load_split

        return load_split(
            name,
            n,
            seed,
            root=self.root,
            tiers=self.app.tier_names,
            allow_mismatch=self.app.calibration.allow_mismatch,
        )


def served_parser(doc: str) -> argparse.ArgumentParser:
    """The options every served-policy benchmark takes; each adds its own."""
    p = argparse.ArgumentParser(description=doc)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="test split seeds")
    p.add_argument("--n", type=int, default=1000, help="test requests per seed (default 1000)")
    p.add_argument("--config", type=Path, default=SERVE_CONFIG, help="the served config")
    p.add_argument("--zoo", type=Path, default=None, help="zoo folder (default: models.zoo)")
    p.add_argument("--json", action="store_true")
    return p


def emit(a: argparse.Namespace, result: dict, show: Callable[[dict], None]) -> dict:
    """Print `result` as indented JSON (`--json`) or as `show` tabulates it."""
    if a.json:
        print(json.dumps(result, indent=2))
    else:
        show(result)
    return result
