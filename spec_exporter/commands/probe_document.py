"""The probe's document: everything it found, as the JSON it prints; the table and the HTML report are views of it."""

from __future__ import annotations

from typing import Any

from spec_exporter.commands.probe_analysis import (
    ProfileError,
    cell_summary,
    compare_cell,
    cost_profile,
    crossovers,
    suggest_schedule,
)
from spec_exporter.commands.probe_load import ProbeRun, ProbeSettings

_BASELINE_FIELDS = (
    "requests",
    "failed",
    "ttft_seconds",
    "tpot_seconds",
    "tpot_source",
    "output_tokens",
    "seconds",
    "output_tokens_per_second",
)


def probe_document(settings: ProbeSettings, run: ProbeRun, created: str = "") -> dict[str, Any]:
    """Everything the probe found, as the JSON it prints; the table and the HTML report are views of it.

    Each cell's verdict follows the one rule (derive/cost.py): the speedup measured against the baseline at the
    same cell when there is one, else the acceptance policy. `created` stamps the calibration profile.
    """
    rows = []
    by_cell = {(c.workload, c.concurrency, c.temperature): c for c in (run.baseline or [])}
    for cell in run.cells:
        base = by_cell.get((cell.workload, cell.concurrency, cell.temperature))
        compared = compare_cell(cell, base) if base is not None else None
        row = cell_summary(cell, settings, compared["tpot_speedup"] if compared is not None else None)
        if base is not None and compared is not None:
            b = cell_summary(base, settings)
            row["baseline"] = {k: b[k] for k in _BASELINE_FIELDS}
            row |= compared
        else:
            row |= {"baseline": None, "tpot_speedup": None, "throughput_ratio": None}
        rows.append(row)
    schedule: list[list[int]] | None = None
    basis: list[dict[str, Any]] = []
    profile: dict[str, Any] | None = None
    profile_error: str | None = None
    if run.baseline is not None:
        schedule, basis = suggest_schedule(run.cells, run.baseline, settings)
        try:
            made = cost_profile(run.cells, run.baseline, settings, run.model or "unknown", created)
            profile = made.model_dump(exclude_none=True)
        except ProfileError as e:
            profile_error = str(e)
    warnings = list(run.warnings)
    if run.baseline is None:
        warnings.append(NO_BASELINE)
    return {
        "target": settings.target,
        "baseline_target": settings.baseline_target,
        "requests_per_cell": settings.requests,
        "concurrency": list(settings.concurrency),
        "temperatures": list(settings.temperatures),
        **({"workloads": [name for name, _ in settings.workloads]} if settings.workloads else {}),
        "max_tokens": settings.max_tokens,
        "thresholds": {
            "disable_below": settings.thresholds.disable_below,
            "beneficial_at": settings.thresholds.beneficial_at,
            "speedup_disable_below": settings.thresholds.speedup_disable_below,
            "speedup_beneficial_at": settings.thresholds.speedup_beneficial_at,
        },
        "draft_cost_ratio": settings.draft_cost_ratio,
        "cells": rows,
        "crossover": crossovers(rows, settings.temperatures) if run.baseline is not None else [],
        "suggested_speculative_config": (
            {"num_speculative_tokens_per_batch_size": schedule} if schedule is not None else None
        ),
        "schedule_basis": basis,
        "calibration_profile": profile,
        "calibration_profile_error": profile_error,
        "warnings": warnings,
    }


NO_BASELINE = (
    "no baseline: the verdicts follow the acceptance policy and ignore load, yet the same acceptance can be a "
    "speedup at low concurrency and a slowdown at high. Add --baseline-target URL (the same model without "
    "speculative decoding) to measure the speedup at each concurrency, its crossover, a batch-size schedule and a "
    "calibration profile (--write-profile FILE) the exporter reads its step cost from."
)
