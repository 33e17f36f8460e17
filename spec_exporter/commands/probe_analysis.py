"""The probe's analysis: what the cells measured, the speedup against the baseline, crossovers, the schedule and
the calibration profile (rho per concurrency) the exporter reads its step cost from.

Every modelled number comes from derive/cost.py, as in the exporter.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from pydantic import ValidationError

from spec_exporter.commands.probe_load import CLIENT_TPOT, VLLM_TPOT, PhaseResult, ProbeSettings
from spec_exporter.derive import cost as cost_model
from spec_exporter.derive.acceptance import acceptance, sum_spec
from spec_exporter.derive.load import effective_k
from spec_exporter.derive.sample import percentiles
from spec_exporter.derive.verdict import ADVICE
from spec_exporter.types import PROFILE_KIND, CostPoint, CostProfile, SpecCounters


def pct(values: list[float], q: float) -> float | None:
    return percentiles(values, (q,))[q] if values else None


def counted(cell: PhaseResult) -> tuple[SpecCounters, str]:
    """The cell's speculation counters and where they come from: per-request metrics, else vLLM's counters."""
    if cell.measured:
        return (
            SpecCounters(
                drafts=sum(r.steps or 0 for r in cell.measured),
                draft_tokens=sum(r.drafted or 0 for r in cell.measured),
                accepted_tokens=sum(r.accepted or 0 for r in cell.measured),
            ),
            "per-request metrics",
        )
    if cell.engine is not None:
        return cell.engine, "vLLM counters over the phase"
    return SpecCounters(0.0, 0.0, 0.0), "none"


def cell_summary(self: PhaseResult, settings: ProbeSettings, baseline_speedup: float | None = None) -> dict[str, Any]:
    """One cell's numbers; its step cost from the baseline measured at the same cell, else the configured one."""
    ok = self.ok
    rates = [r.accepted / r.drafted for r in self.measured if r.accepted is not None and r.drafted]
    spec, source = counted(self)
    a = acceptance(spec)
    k_eff = effective_k(spec)
    cost = None
    if k_eff:
        cost = cost_model.step_cost(
            k_eff=k_eff,
            draft_cost_ratio=settings.draft_cost_ratio,
            load=float(self.concurrency),
            k=settings.num_speculative_tokens,
            profile=settings.cost_profile,
            baseline_speedup=baseline_speedup,
            acceptance_length=a.mean_length,
        )
    speedup = cost_model.speedup(a.mean_length, cost) if cost is not None and a.mean_length else None
    v = cost_model.verdict(a.rate, a.draft_tokens, speedup, cost, settings.thresholds)
    ttft = [r.ttft for r in ok if r.ttft is not None]
    tpot = self.tpots(self.tpot_source)
    return {
        **({"workload": self.workload} if self.workload is not None else {}),
        "temperature": self.temperature,
        "concurrency": self.concurrency,
        "requests": len(self.requests),
        "failed": len(self.requests) - len(ok),
        "acceptance_source": source,
        "acceptance_rate": a.rate,
        "acceptance_percentiles": {f"p{int(q * 100)}": v for q, v in percentiles(rates).items()},
        "accepted_tokens": a.accepted_tokens,
        "draft_tokens": a.draft_tokens,
        "mean_acceptance_length": a.mean_length,
        "effective_k": k_eff,
        "step_cost": None if cost is None else {"rho": cost.rho, "source": cost.source.value, "note": cost.note},
        "break_even_acceptance_rate": cost_model.break_even_rate(cost) if cost is not None else None,
        "expected_speedup": speedup,
        "ttft_seconds": {"p50": pct(ttft, 0.5), "p99": pct(ttft, 0.99)},
        "tpot_seconds": {"p50": pct(tpot, 0.5), "p99": pct(tpot, 0.99)},
        "tpot_source": self.tpot_source,
        "output_tokens": self.output_tokens,
        "seconds": self.seconds,
        "output_tokens_per_second": self.output_tokens / self.seconds if self.seconds > 0 else None,
        "verdict": v.value,
        "rule": cost_model.rule(cost, settings.thresholds),
        "advice": ADVICE[v],
    }


def _shared_source(cells: Sequence[PhaseResult]) -> str:
    """vLLM's TPOT when every cell on both sides has it; else the probe's own clock on both sides."""
    return VLLM_TPOT if cells and all(c.tpot_source == VLLM_TPOT for c in cells) else CLIENT_TPOT


def _p50(values: list[float]) -> float | None:
    return pct(values, 0.5)


def _tpot_speedup(spec: Sequence[PhaseResult], base: Sequence[PhaseResult]) -> tuple[float | None, str]:
    """Baseline TPOT p50 / speculative TPOT p50 over all requests of the cells, on one source for both."""
    source = _shared_source([*spec, *base])
    s = _p50([v for c in spec for v in c.tpots(source)])
    b = _p50([v for c in base for v in c.tpots(source)])
    return (b / s if s is not None and b is not None and s > 0 else None), source


def compare_cell(spec: PhaseResult, base: PhaseResult) -> dict[str, Any]:
    speedup, source = _tpot_speedup([spec], [base])
    spec_rate = spec.output_tokens / spec.seconds if spec.seconds > 0 else None
    base_rate = base.output_tokens / base.seconds if base.seconds > 0 else None
    return {
        "tpot_speedup": speedup,
        "tpot_source": source,
        "throughput_ratio": spec_rate / base_rate if spec_rate is not None and base_rate else None,
    }


def crossovers(rows: Sequence[dict[str, Any]], temperatures: Sequence[float]) -> list[dict[str, Any]]:
    """Per workload class (when the probe ran several) and temperature, the lowest concurrency at which the TPOT
    speedup is 1 or less (None: it always paid)."""
    out = []
    for workload in dict.fromkeys(r.get("workload") for r in rows) or (None,):
        for t in temperatures:
            measured = sorted(
                (
                    r
                    for r in rows
                    if r.get("workload") == workload and r["temperature"] == t and r["tpot_speedup"] is not None
                ),
                key=lambda r: r["concurrency"],
            )
            stops = next((r["concurrency"] for r in measured if r["tpot_speedup"] <= 1.0), None)
            out.append(
                {
                    **({"workload": workload} if workload is not None else {}),
                    "temperature": t,
                    "concurrency": stops,
                    "measured_concurrencies": [r["concurrency"] for r in measured],
                }
            )
    return out


def _pooled(cells: Sequence[PhaseResult]) -> SpecCounters | None:
    """The cells' speculation counters taken together (per-request metrics where every cell has them)."""
    return sum_spec([spec for c in cells if (spec := counted(c)[0]).drafts > 0])


def level_cost(
    spec: Sequence[PhaseResult], speedup: float | None, settings: ProbeSettings
) -> tuple[SpecCounters | None, cost_model.StepCost | None]:
    """The step cost at one concurrency level: rho = AL / measured TPOT speedup (the baseline's evidence)."""
    pooled = _pooled(spec)
    if pooled is None:
        return None, None
    k_eff = effective_k(pooled)
    if not k_eff:
        return pooled, None
    return pooled, cost_model.step_cost(
        k_eff=k_eff,
        draft_cost_ratio=settings.draft_cost_ratio,
        load=float(spec[0].concurrency) if spec else None,
        baseline_speedup=speedup,
        acceptance_length=acceptance(pooled).mean_length,
    )


def suggest_schedule(
    cells: Sequence[PhaseResult], baseline: Sequence[PhaseResult], settings: ProbeSettings
) -> tuple[list[list[int]] | None, list[dict[str, Any]]]:
    """A `num_speculative_tokens_per_batch_size` schedule from the measured speedup at each concurrency.

    A concurrency level stands for the batch size it keeps running. Where the pooled TPOT speedup (all
    temperatures, as probed) is above 1 speculation stays on, at the best k the per-position acceptance measured
    there models with that level's measured step cost (the configured k when it models none); elsewhere k = 0.
    Each level's k covers batch sizes from it up to the next level; vLLM carries the last range's k on to
    max_num_seqs. Adjacent equal ranges merge.
    """
    basis: list[dict[str, Any]] = []
    levels: list[tuple[int, int]] = []  # (concurrency, k)
    for concurrency in sorted({c.concurrency for c in cells}):
        spec = [c for c in cells if c.concurrency == concurrency]
        base = [c for c in baseline if c.concurrency == concurrency]
        speedup, source = _tpot_speedup(spec, base)
        if speedup is None:
            continue
        engine = sum_spec([c.engine for c in spec if c.engine is not None])
        per_position = engine.per_position if engine is not None else ()
        k = settings.num_speculative_tokens or len(per_position) or None
        if k is None:
            return None, basis
        _, cost = level_cost(spec, speedup, settings)
        best = None
        if engine is not None and cost is not None and per_position:
            best = cost_model.best_k(per_position, engine.drafts, engine.draft_tokens, cost)
        chosen = (best.k if best is not None and best.k > 0 else k) if speedup > 1.0 else 0
        basis.append(
            {
                "concurrency": concurrency,
                "tpot_speedup": speedup,
                "tpot_source": source,
                "step_cost_ratio": cost.rho if cost is not None else None,
                "modelled_best_k": best.k if best is not None else None,
                "k": min(chosen, k),
            }
        )
        levels.append((concurrency, min(chosen, k)))
    if not levels:
        return None, basis
    ranges: list[list[int]] = []
    for i, (concurrency, level_k) in enumerate(levels):
        first = 1 if i == 0 else concurrency
        last = levels[i + 1][0] - 1 if i + 1 < len(levels) else concurrency
        if ranges and ranges[-1][2] == level_k:
            ranges[-1][1] = last
        else:
            ranges.append([first, last, level_k])
    return ranges, basis


class ProfileError(Exception):
    """The sweep cannot make a calibration profile: the message says what is missing."""


def cost_profile(
    cells: Sequence[PhaseResult], baseline: Sequence[PhaseResult], settings: ProbeSettings, model: str, created: str
) -> CostProfile:
    """rho per concurrency level, for this hardware, model pair and k: rho = AL * TPOT_spec / TPOT_base.

    AL and the TPOT speedup pool every temperature probed at the level, as the schedule does; the rho of a
    hardware, pair and k does not depend on the traffic's acceptance, which the exporter reads live.
    """
    engine = sum_spec([c.engine for c in cells if c.engine is not None])
    k = settings.num_speculative_tokens or (len(engine.per_position) if engine is not None else 0)
    if not k:
        raise ProfileError(
            "the profile needs k: vLLM exported no per-position counters; pass --config.file with "
            "speculation.num_speculative_tokens"
        )
    points = []
    implausible = []
    for concurrency in sorted({c.concurrency for c in cells}):
        spec = [c for c in cells if c.concurrency == concurrency]
        base = [c for c in baseline if c.concurrency == concurrency]
        speedup, source = _tpot_speedup(spec, base)
        pooled = _pooled(spec)
        if speedup is None or pooled is None or pooled.drafts <= 0:
            continue
        length = acceptance(pooled).mean_length
        assert length is not None  # drafts > 0
        s_tpot = pct([v for c in spec for v in c.tpots(source)], 0.5)
        b_tpot = pct([v for c in base for v in c.tpots(source)], 0.5)
        try:
            point = CostPoint(
                batch_size=concurrency,
                step_cost_ratio=length / speedup,
                acceptance_length=length,
                tpot_spec_seconds=s_tpot,
                tpot_baseline_seconds=b_tpot,
                requests=sum(len(c.ok) for c in spec),
            )
        except ValidationError:
            # A starved client reads a whole stream in one burst and its own clock's TPOT collapses; a profile
            # with such a level would price every step at the exporter, so none is written.
            implausible.append(
                f"concurrency {concurrency}: rho {length / speedup:.3g} from TPOT {_ms(s_tpot)} (speculative) / "
                f"{_ms(b_tpot)} (baseline), {source}"
            )
            continue
        points.append(point)
    if implausible:
        raise ProfileError(
            "implausible step costs, not a profile: "
            + "; ".join(implausible)
            + ". Re-run on a quieter machine, with more --requests, or with --enable-per-request-metrics on both "
            "pools (vLLM's own TPOT)"
        )
    if not points:
        raise ProfileError("no concurrency level measured both acceptance and TPOT on both pools: no profile")
    return CostProfile(
        kind=PROFILE_KIND,
        version=1,
        model=model,
        num_speculative_tokens=k,
        draft_model=settings.draft_model,
        hardware=settings.hardware,
        created=created,
        points=tuple(points),
    )


def _ms(seconds: float | None) -> str:
    return "?" if seconds is None else f"{seconds * 1000:.3g} ms"
