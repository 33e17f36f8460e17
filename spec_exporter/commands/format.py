"""Number formatting for the commands' tables: one place, so `check` and `probe` print numbers alike."""

from __future__ import annotations

import math

MISSING = "-"


def number(value: float | None, digits: int = 3) -> str:
    """`value` with `digits` decimals; `-` for no value (None or NaN), never "nan"."""
    return MISSING if value is None or math.isnan(value) else f"{value:.{digits}f}"


def ms(seconds: float | None, digits: int = 1, *, unit: bool = False) -> str:
    """Seconds shown as milliseconds; with `unit`, followed by " ms" (tables put the unit in their header)."""
    text = number(None if seconds is None else seconds * 1000, digits)
    return text + " ms" if unit and text != MISSING else text


def table(rows: list[list[str]]) -> list[str]:
    """Right-aligned columns, two spaces apart; the first row is the header."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return ["  ".join(cell.rjust(w) for cell, w in zip(row, widths, strict=True)) for row in rows]
