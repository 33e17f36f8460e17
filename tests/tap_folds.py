"""Shorthands for folding one request into `TapMetrics` (the front ends call `TapMetrics.request` themselves)."""

from __future__ import annotations

from spec_exporter.tap.metrics import Outcome, TapMetrics


def measured(
    metrics: TapMetrics,
    model: str | None,
    band: str,
    accepted: int,
    drafted: int,
    ttft: float | None,
    tpot: float | None,
) -> None:
    metrics.request(model, band, Outcome.MEASURED, accepted=accepted, drafted=drafted, ttft=ttft, tpot=tpot)


def outcome(
    metrics: TapMetrics,
    model: str | None,
    band: str,
    what: Outcome,
    ttft: float | None = None,
    tpot: float | None = None,
) -> None:
    metrics.request(model, band, what, ttft=ttft, tpot=tpot)
