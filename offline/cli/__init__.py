"""`python -m calibration <command>` (and `python -m offline <command>`): the offline CLI.

    python -m calibration evaluate --split test --json
    python -m calibration conformal --mode risk --alpha 0.05 --trials 200 --json --out cal.json
    python -m calibration labels|train|report|ablate ...   (the router's confidence head)

Each command group is one module here with `register(subparsers)`; adding one is a new module
and a line in `COMMANDS`.
"""

from __future__ import annotations

import argparse
from importlib import import_module

__all__ = ["COMMANDS", "main"]

COMMANDS: tuple[str, ...] = (
    "offline.cli.evaluate",
    "offline.cli.conformal",
    "offline.cli.head",
    "offline.cli.traces",
    "offline.cli.calibrate",
)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m calibration",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True)
    for name in COMMANDS:
        import_module(name).register(sub)
    args = parser.parse_args(argv)
    return int(args.run(args) or 0)
