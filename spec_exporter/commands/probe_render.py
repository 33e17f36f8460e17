"""The probe's document as a terminal table or JSON, and its progress bar."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any, TextIO

from spec_exporter.commands.format import table


def _schedule_json(doc: dict[str, Any]) -> str | None:
    config = doc["suggested_speculative_config"]
    return json.dumps(config, separators=(", ", ": ")) if config is not None else None


def render_table(doc: dict[str, Any]) -> str:
    from spec_exporter.commands.probe_report import cell_values

    with_baseline = doc["baseline_target"] is not None
    header = ["conc", "temp", "acceptance", "p10", "p50", "p90", "accept len", "TTFT p50", "TTFT p99"]
    header += ["TPOT p50", "TPOT p99", "tok/s"]
    if with_baseline:
        header += ["base TPOT p50", "base tok/s", "TPOT speedup", "tok/s ratio"]
    header += ["failed", "verdict"]
    classes = "workloads" in doc
    rows_out = [["workload", *header] if classes else header]
    rows_out += [
        [s["workload"], *cell_values(s, with_baseline)] if classes else cell_values(s, with_baseline)
        for s in doc["cells"]
    ]
    against = f" against baseline {doc['baseline_target']}" if with_baseline else ""
    lines = [
        f"spec-exporter probe: {doc['target']}{against}, {doc['requests_per_cell']} requests per cell"
        f" (concurrency {', '.join(map(str, doc['concurrency']))}); TTFT/TPOT in ms",
        "",
    ]
    lines += table(rows_out)
    lines.append("")
    several = len(doc["concurrency"]) > 1
    # One line per temperature and verdict, the advice once per verdict: a grid repeats them otherwise.
    seen: dict[tuple[str, float, str, str], list[int]] = {}
    for s in doc["cells"]:
        key = (s.get("workload", ""), s["temperature"], s["verdict"], s["acceptance_source"])
        seen.setdefault(key, []).append(s["concurrency"])
    advice = {s["verdict"]: s["advice"] for s in doc["cells"]}
    for (workload, temperature, verdict_, source), levels in seen.items():
        at = f" at concurrency {', '.join(map(str, levels))}" if several else ""
        who = f"{workload} " if workload else ""
        lines.append(f"{who}T={temperature:g}: {verdict_}{at} ({source}).")
    # Which number decided each verdict: the measured speedup where a baseline ran the same cell, else acceptance.
    for text in dict.fromkeys(s["rule"] for s in doc["cells"]):
        lines.append(f"rule: {text}")
    lines += [f"{v}: {a}" for v, a in advice.items()]
    if with_baseline:
        lines.append("")
        for c in doc["crossover"]:
            who = f"{c['workload']} " if "workload" in c else ""
            lines.append(f"crossover {who}T={c['temperature']:g}: {crossover_text(c)}")
        schedule = _schedule_json(doc)
        if schedule is not None:
            lines += [
                "",
                "suggested speculative_config entry (batch size ≈ concurrency; merge into --speculative-config):",
                schedule,
            ]
    lines += [f"warning: {w}" for w in doc["warnings"]]
    return "\n".join(lines) + "\n"


def crossover_text(c: dict[str, Any]) -> str:
    """One temperature's crossover in words: the table and the HTML report say it alike."""
    if c["concurrency"] is not None:
        return f"stops paying at concurrency {c['concurrency']}"
    if c["measured_concurrencies"]:
        return f"pays at every concurrency measured (up to {max(c['measured_concurrencies'])})"
    return "no TPOT measured on both pools"


def render_json(doc: dict[str, Any]) -> str:
    return json.dumps(doc, indent=2) + "\n"


def progress_bar(stream: TextIO) -> Callable[[int, int], None]:
    """A one-line progress bar on a terminal; nothing when the output is piped."""
    if not stream.isatty():
        return lambda done, total: None

    def show(done: int, total: int) -> None:
        width = 30
        filled = int(width * done / total) if total else width
        stream.write(f"\r[{'#' * filled}{'.' * (width - filled)}] {done}/{total} requests")
        if done >= total:
            stream.write("\n")
        stream.flush()

    return show
