"""The custom collector: fresh metric families from the latest `ExporterState` at every scrape.

spec_decode_draft_acceptance_rate{engine="0",model_name="tiny",target="vllm",window="1m"} 0.374
spec_decode_verdict{engine="0",model_name="tiny",target="vllm",temperature_band="all",verdict="disable",workload=""} 1.0

One generator per source of numbers (the exporter itself, each engine, the tap's bands, the baseline
comparisons); each only renders what the derivations already decided.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Mapping, Sequence

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

from spec_exporter import buildinfo, catalog
from spec_exporter.catalog import MetricSpec
from spec_exporter.derive.baseline import Comparison
from spec_exporter.derive.health import EngineHealth, TargetHealth
from spec_exporter.derive.load import LOAD_BAND_LABELS
from spec_exporter.derive.tap_health import TapHealth
from spec_exporter.state import ExporterState, TargetState
from spec_exporter.types import Histogram, LatencyMetric, PollError, Verdict

INVALID_LABEL = "invalid"


def _family(spec: MetricSpec) -> Metric:
    if spec.type == "counter":
        return CounterMetricFamily(spec.name, spec.help, labels=spec.labels)
    if spec.type == "histogram":
        return HistogramMetricFamily(spec.name, spec.help, labels=spec.labels)
    if spec.type == "summary":
        # Quantile samples are added by hand: the stock SummaryMetricFamily only takes count and sum.
        return Metric(spec.name, spec.help, "summary")
    return GaugeMetricFamily(spec.name, spec.help, labels=spec.labels)


def _label(value: str) -> str:
    # A value that cannot be encoded would fail the whole scrape at render time; the tap replaces and counts such
    # names where they come in, so this only guards against a bug of ours.
    if value.isascii():
        return value
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return INVALID_LABEL
    return value


class _Families:
    """The families of one scrape, filled by the generators below."""

    def __init__(self) -> None:
        self.by_name: dict[str, Metric] = {spec.name: _family(spec) for spec in catalog.ALL}

    def add(self, spec: MetricSpec, labels: Sequence[str], value: float | None) -> None:
        if value is not None and not math.isnan(value):
            self.by_name[spec.name].add_metric([_label(v) for v in labels], value)  # type: ignore[attr-defined]

    def summary(
        self, spec: MetricSpec, labels: Sequence[str], quantiles: Mapping[float, float], count: float, total: float
    ) -> None:
        family = self.by_name[spec.name]
        named = dict(zip(spec.labels, (_label(v) for v in labels), strict=True))
        for q, v in sorted(quantiles.items()):
            family.add_sample(family.name, {**named, "quantile": str(q)}, v)
        family.add_sample(family.name + "_count", named, count)
        family.add_sample(family.name + "_sum", named, total)

    def histogram(self, spec: MetricSpec, labels: Sequence[str], h: Histogram) -> None:
        buckets = [("+Inf" if math.isinf(b) else str(b), c) for b, c in zip(h.bounds, h.counts, strict=True)]
        self.by_name[spec.name].add_metric([_label(v) for v in labels], buckets, h.sum)  # type: ignore[attr-defined]

    def nonempty(self) -> Iterator[Metric]:
        return (f for f in self.by_name.values() if f.samples)


class SpecDecodeCollector(Collector):
    """Renders the state; never touches the network or the clock."""

    def __init__(self, state: Callable[[], ExporterState]) -> None:
        self._state = state

    def collect(self) -> Iterator[Metric]:
        state = self._state()
        out = _Families()
        out.add(catalog.BUILD_INFO, buildinfo.build_info_values(), 1.0)
        for name, target in state.targets.items():
            _exporter_families(out, name, target)
            if target.health is None:
                continue
            for engine in target.health.engines.values():
                _engine_families(out, name, engine)
            _load_families(out, name, target.health)
            if target.health.tap is not None:
                _tap_families(out, name, target.health.tap, target.health)
        _baseline_families(out, state.comparisons)
        yield from out.nonempty()


def _exporter_families(out: _Families, name: str, t: TargetState) -> None:
    out.add(catalog.TARGET_UP, [name], 1.0 if t.up else 0.0)
    out.add(catalog.POLL_DURATION, [name], t.last_poll_duration_seconds)
    out.add(catalog.LAST_SUCCESS, [name], t.last_success_timestamp_seconds)
    out.add(catalog.FOLDED_MODELS, [name], float(t.folded_models) if t.ever_succeeded else None)
    for reason in PollError:
        out.add(catalog.POLL_ERRORS, [name, reason.value], float(t.errors.get(reason, 0)))


def _engine_families(out: _Families, name: str, e: EngineHealth) -> None:
    base = [name, *e.key]
    out.add(catalog.ENABLED, base, 1.0 if e.spec_enabled else 0.0)
    out.add(catalog.REQUESTS_RUNNING, base, e.requests_running)
    out.add(catalog.REQUESTS_WAITING, base, e.requests_waiting)
    out.add(catalog.KV_CACHE_USAGE, base, e.kv_cache_usage)
    for w in e.windows:
        labels = [*base, w.window.label]
        out.add(catalog.GENERATION_TOKENS_RATE, labels, w.generation_tokens_per_second)
        out.add(catalog.PREEMPTIONS_RATE, labels, w.preemptions_per_second)
        for metric, qs in sorted(w.latency.items()):
            totals = e.totals.histograms.get(metric)
            if totals is not None:
                out.summary(catalog.LATENCY, [*labels, metric.value], qs, totals.count, totals.sum)
        for metric, ratio in sorted(w.divergence.items()):
            out.add(catalog.DIVERGENCE, [*labels, metric.value], ratio)
    # The same buckets in every window: the lowest bound of the first window that has quantiles.
    floors = next((w.latency_floor for w in e.windows if w.latency_floor), {})
    for metric, bound in sorted(floors.items()):
        out.add(catalog.LATENCY_LOWEST_BUCKET, [*base, metric.value], bound)
    if e.spec_enabled:
        # Off means no acceptance series at all: zeros would read as "drafts all rejected".
        _speculation_families(out, base, e)


def _speculation_families(out: _Families, base: list[str], e: EngineHealth) -> None:
    out.add(catalog.NUM_SPECULATIVE_TOKENS, base, e.num_speculative_tokens)
    for verdict in Verdict:
        out.add(catalog.VERDICT, [*base, "", "all", verdict.value], 1.0 if verdict is e.verdict else 0.0)
    if e.lifetime_acceptance is not None:
        out.add(catalog.ACCEPTANCE_RATE, [*base, "lifetime"], e.lifetime_acceptance)
    spec = e.totals.spec
    if spec is not None:
        out.add(catalog.DRAFTS, base, spec.drafts)
        out.add(catalog.DRAFT_TOKENS, base, spec.draft_tokens)
        out.add(catalog.ACCEPTED_TOKENS, base, spec.accepted_tokens)
        for i, v in enumerate(spec.per_position):
            out.add(catalog.POSITION_ACCEPTED, [*base, str(i)], v)
    for w in e.windows:
        a = w.acceptance
        if a is None:
            continue
        labels = [*base, w.window.label]
        out.add(catalog.WINDOW_DRAFTS, labels, a.drafts)
        out.add(catalog.WINDOW_DRAFT_TOKENS, labels, a.draft_tokens)
        out.add(catalog.WINDOW_ACCEPTED_TOKENS, labels, a.accepted_tokens)
        out.add(catalog.ACCEPTANCE_RATE, labels, a.rate)
        out.add(catalog.MEAN_ACCEPTANCE_LENGTH, labels, a.mean_length)
        out.add(catalog.EFFECTIVE_K, labels, w.effective_k)
        out.add(catalog.SPECULATED_SHARE, labels, w.speculated_share)
        if w.cost is not None:
            sourced = [*labels, w.cost.source.value]
            out.add(catalog.STEP_COST_RATIO, sourced, w.cost.rho)
            out.add(catalog.BREAK_EVEN, sourced, w.break_even_rate)
            out.add(catalog.EXPECTED_SPEEDUP, sourced, w.expected_speedup)
            if w.recommended is not None:
                out.add(catalog.RECOMMENDED_K, labels, float(w.recommended.k))
                out.add(catalog.RECOMMENDED_SPEEDUP, sourced, w.recommended.speedup)
        for i, (accepted, rate) in enumerate(zip(a.accepted_per_position, a.per_position, strict=True)):
            out.add(catalog.WINDOW_POSITION_ACCEPTED, [*labels, str(i)], accepted)
            out.add(catalog.POSITION_ACCEPTANCE_RATE, [*labels, str(i)], rate)


def _tap_families(out: _Families, target: str, tap: TapHealth, health: TargetHealth) -> None:
    sources = {w.window.label: w.cost.source.value for w in health.combined if w.cost is not None}
    for (band, outcome), n in sorted(tap.requests.items()):
        out.add(catalog.TAP_REQUESTS, [target, band, outcome], n)
    for stage, n in sorted(tap.errors.items()):
        out.add(catalog.TAP_ERRORS, [target, stage], n)
    out.add(catalog.TAP_METRICS_MISSING, [target], 1.0 if tap.missing_spec_metrics else 0.0)
    if tap.speculative is not None:
        info = dict(tap.speculative)
        out.add(
            catalog.SPECULATIVE_CONFIG_INFO,
            [target, *(info.get(n, "") for n in catalog.SPECULATIVE_CONFIG_INFO.labels[1:])],
            1.0,
        )
    for label, drafted in sorted(tap.drafted_in_window.items()):
        out.add(catalog.TAP_WINDOW_DRAFT_TOKENS, [target, label], drafted)
        out.add(catalog.TAP_COVERAGE, [target, label], tap.coverage.get(label))
    for b in tap.bands:
        labels = [target, *b.key]
        t = b.totals
        out.add(catalog.REQUEST_DRAFT_TOKENS, labels, t.draft_tokens)
        out.add(catalog.REQUEST_ACCEPTED_TOKENS, labels, t.accepted_tokens)
        for spec, h in ((catalog.REQUEST_TTFT, t.ttft), (catalog.REQUEST_TPOT, t.tpot)):
            if h is not None and h.count:
                out.histogram(spec, labels, h)
        acceptance = t.acceptance
        if acceptance is None or not acceptance.count:
            continue
        # The tap's own buckets, those the quantiles below were derived from: the rules read the same numbers.
        out.histogram(catalog.REQUEST_ACCEPTANCE, labels, acceptance)
        for w in b.windows:
            wl = [*labels, w.window.label]
            out.summary(catalog.REQUEST_ACCEPTANCE_QUANTILE, wl, w.percentiles, acceptance.count, acceptance.sum)
            out.add(catalog.REQUEST_WINDOW_DRAFT_TOKENS, wl, w.drafted)
            out.add(catalog.REQUEST_WINDOW_ACCEPTED_TOKENS, wl, w.accepted)
            out.add(catalog.BAND_ACCEPTANCE_LENGTH, wl, w.acceptance_length)
            if w.window.label in sources:
                out.add(catalog.BAND_EXPECTED_SPEEDUP, [*wl, sources[w.window.label]], w.expected_speedup)
            if w.recommended is not None:
                out.add(catalog.BAND_RECOMMENDED_K, wl, float(w.recommended.k))
        for verdict in Verdict:
            model, workload, band = b.key
            out.add(catalog.VERDICT, [target, model, "", workload, band, verdict.value], float(verdict is b.verdict))


def _load_families(out: _Families, name: str, h: TargetHealth) -> None:
    for wl in h.load:
        for key, load in sorted(wl.engines.items()):
            out.add(catalog.LOAD_RUNNING, [name, *key, wl.window.label], load.mean_running)
    if h.load:
        # Now: the shortest window (windows are sorted, shortest first).
        for key, load in sorted(h.load[0].engines.items()):
            if load.band is not None and key in h.engines:
                out.add(catalog.LOAD_BAND_INFO, [name, *key, load.band], 1.0)
    # Latency by band is there only for a target compared with a baseline and for its baseline.
    for wl in h.load:
        for metric, by_band in sorted(wl.latency_by_load_band.items()):
            for band in LOAD_BAND_LABELS:
                latency = by_band.get(band)
                if latency is None:
                    continue
                labels = [name, band, wl.window.label, metric.value]
                for q, v in sorted(latency.quantiles.items()):
                    out.add(catalog.LOAD_BAND_LATENCY, [*labels, str(q)], v)
                if metric is LatencyMetric.TPOT:
                    out.add(catalog.LOAD_BAND_REQUESTS, [name, band, wl.window.label], latency.requests)


def _baseline_families(out: _Families, comparisons: Sequence[Comparison]) -> None:
    for c in comparisons:
        out.add(catalog.BASELINE_TPOT_SPEEDUP, [c.target, c.baseline, c.window], c.tpot_speedup)
        for b in c.load_bands:
            labels = [c.target, c.baseline, b.band, c.window]
            out.add(catalog.BASELINE_LOAD_BAND_SPEEDUP, labels, b.speedup)
            out.add(catalog.BASELINE_LOAD_BAND_REQUESTS, labels, b.requests)
        for metric, ratio in sorted(c.p99_ratio.items()):
            out.add(catalog.BASELINE_P99_RATIO, [c.target, c.baseline, c.window, metric.value], ratio)
