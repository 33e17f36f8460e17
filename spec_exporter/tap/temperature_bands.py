"""Temperature → temperature band: the closed set of `temperature_band` label values (pure)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

GREEDY = "0"
INVALID = "invalid"
# The request could not be read at all (not JSON, not an object): its temperature is unknown.
UNKNOWN = "unknown"
# vLLM's SamplingParams rejects temperatures outside [0, 2] and non-finite ones (0.32/0.33).
MAX_TEMPERATURE = 2.0


def _edge(value: float) -> str:
    return f"{value:.1f}" if value == int(value) else f"{value:g}"


def check_edges(edges: Sequence[float]) -> None:
    """Raise ValueError unless `edges` split (0, 2] into bands: finite, strictly increasing, in (0, 2]."""
    if not edges or any(not math.isfinite(e) or e <= 0 or e > MAX_TEMPERATURE for e in edges):
        raise ValueError(f"temperature band edges must lie in (0, {MAX_TEMPERATURE:g}]")
    if list(edges) != sorted(set(edges)):
        raise ValueError("temperature band edges must be strictly increasing")


@dataclass(frozen=True, slots=True)
class TemperatureBands:
    """`edges` split (0, 2] into [lo, hi) bands; 0 (greedy) is a band of its own.

    `default_temperature` stands in for a request without one: vLLM then uses the model's generation_config
    default, or 1.0 when it sets none, so it is configurable. Both come from `TapSettings` (their defaults and
    validation live there); the edges are checked again here because a band label set built on bad edges would
    not be closed.
    """

    edges: tuple[float, ...]
    default_temperature: float

    def __post_init__(self) -> None:
        check_edges(self.edges)

    @property
    def labels(self) -> tuple[str, ...]:
        """Every value `band_of` can return, in order."""
        inner = [f"0-{_edge(self.edges[0])}"]
        inner += [f"{_edge(lo)}-{_edge(hi)}" for lo, hi in zip(self.edges, self.edges[1:], strict=False)]
        return (GREEDY, *inner, f"{_edge(self.edges[-1])}+", INVALID, UNKNOWN)

    def band_of(self, temperature: float) -> str:
        """The band of a temperature vLLM would accept; `invalid` for one it would reject."""
        if not math.isfinite(temperature) or temperature < 0 or temperature > MAX_TEMPERATURE:
            return INVALID
        if temperature == 0:
            return GREEDY
        labels = self.labels
        for i, edge in enumerate(self.edges):
            if temperature < edge:
                return labels[i + 1]
        return labels[len(self.edges) + 1]
