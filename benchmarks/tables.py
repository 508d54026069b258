"""Markdown tables for benchmark output: what `make bench` prints and the README quotes."""

from __future__ import annotations

from typing import Any

__all__ = ["table"]


def table(title: str, header: list[str], rows: list[list[Any]]) -> str:
    """A titled, column-aligned markdown table."""
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows, strict=True)]

    def line(r: list[Any]) -> str:
        return "| " + " | ".join(str(x).ljust(w) for x, w in zip(r, widths, strict=True)) + " |"

    sep = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    return "\n".join([f"\n{title}", line(header), sep, *map(line, rows)])
