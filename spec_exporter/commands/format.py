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


def latency(seconds: float | None, lowest_bucket: float | None = None) -> str:
    """Milliseconds with the unit; "< 10 ms" for a quantile inside vLLM's lowest bucket (interpolated from 0 there,
    so its digits say nothing beyond "below the bound")."""
    if seconds is not None and lowest_bucket is not None and seconds <= lowest_bucket:
        return f"< {lowest_bucket * 1000:g} ms"
    return ms(seconds, unit=True)


def table(rows: list[list[str]]) -> list[str]:
    """Right-aligned columns, two spaces apart; the first row is the header."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return ["  ".join(cell.rjust(w) for cell, w in zip(row, widths, strict=True)) for row in rows]
