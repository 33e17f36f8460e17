"""The custom collector: fresh metric families from the latest `ExporterState` at every scrape.

spec_decode_draft_acceptance_rate{engine="0",model_name="tiny",target="vllm",window="1m"} 0.374
spec_decode_verdict{engine="0",model_name="tiny",target="vllm",temperature_band="all",verdict="disable"} 1.0
"""

from __future__ import annotations

import math
import platform
from collections.abc import Callable, Iterator, Mapping

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

from spec_exporter import __version__, catalog
from spec_exporter.catalog import MetricSpec
from spec_exporter.state import ExporterState
from spec_exporter.tap.recorder import TapSnapshot
from spec_exporter.types import Histogram, PollError, Verdict


def _family(spec: MetricSpec) -> Metric:
    if spec.type == "counter":
        return CounterMetricFamily(spec.name, spec.help, labels=spec.labels)
    if spec.type == "histogram":
        return HistogramMetricFamily(spec.name, spec.help, labels=spec.labels)
    if spec.type == "summary":
        # Quantile samples are added by hand: the stock SummaryMetricFamily only takes count and sum.
        return Metric(spec.name, spec.help, "summary")
    return GaugeMetricFamily(spec.name, spec.help, labels=spec.labels)


def _add_summary(
    family: Metric, spec: MetricSpec, values: list[str], quantiles: Mapping[float, float], count: float, total: float
) -> None:
    labels = dict(zip(spec.labels, values, strict=True))
    for q, v in sorted(quantiles.items()):
        family.add_sample(family.name, {**labels, "quantile": str(q)}, v)
    family.add_sample(family.name + "_count", labels, count)
    family.add_sample(family.name + "_sum", labels, total)


def _add_histogram(family: Metric, values: list[str], h: Histogram) -> None:
    buckets = [("+Inf" if math.isinf(b) else str(b), c) for b, c in zip(h.bounds, h.counts, strict=True)]
    family.add_metric(values, buckets, h.sum)  # type: ignore[attr-defined]


class SpecDecodeCollector(Collector):
    """Renders the state; never touches the network or the clock."""

    def __init__(self, state: Callable[[], ExporterState], tap: Callable[[], TapSnapshot] | None = None) -> None:
        self._state = state
        self._tap = tap

    def collect(self) -> Iterator[Metric]:
        state = self._state()
        fam = {spec.name: _family(spec) for spec in catalog.ALL}

        def add(spec: MetricSpec, labels: list[str], value: float | None) -> None:
            if value is not None and not math.isnan(value):
                fam[spec.name].add_metric(labels, value)

        add(catalog.BUILD_INFO, [__version__, platform.python_version()], 1.0)
        for name, t in state.targets.items():
            add(catalog.TARGET_UP, [name], 1.0 if t.up else 0.0)
            add(catalog.POLL_DURATION, [name], t.last_poll_duration_seconds)
            add(catalog.LAST_SUCCESS, [name], t.last_success_timestamp_seconds)
            for reason in PollError:
                add(catalog.POLL_ERRORS, [name, reason.value], float(t.errors.get(reason, 0)))
            if t.health is None:
                continue
            for (model, engine), e in t.health.engines.items():
                base = [name, model, engine]
                add(catalog.ENABLED, base, 1.0 if e.spec_enabled else 0.0)
                add(catalog.REQUESTS_RUNNING, base, e.requests_running)
                add(catalog.REQUESTS_WAITING, base, e.requests_waiting)
                add(catalog.KV_CACHE_USAGE, base, e.kv_cache_usage)
                for w in e.windows:
                    labels = [*base, w.window.label]
                    add(catalog.GENERATION_TOKENS_RATE, labels, w.generation_tokens_per_second)
                    add(catalog.PREEMPTIONS_RATE, labels, w.preemptions_per_second)
                    for metric, qs in sorted(w.latency.items()):
                        totals = e.totals.histograms.get(metric)
                        if totals is not None:
                            _add_summary(
                                fam[catalog.LATENCY.name],
                                catalog.LATENCY,
                                [*labels, metric.value],
                                qs,
                                totals.count,
                                totals.sum,
                            )
                    for metric, ratio in sorted(w.divergence.items()):
                        add(catalog.DIVERGENCE, [*labels, metric.value], ratio)
                if not e.spec_enabled:
                    # Off means no acceptance series at all: zeros would read as "drafts all rejected".
                    continue
                add(catalog.NUM_SPECULATIVE_TOKENS, base, e.num_speculative_tokens)
                add(catalog.BREAK_EVEN, base, e.break_even_acceptance)
                for verdict in Verdict:
                    add(catalog.VERDICT, [*base, "all", verdict.value], 1.0 if verdict is e.verdict else 0.0)
                if e.lifetime_acceptance is not None:
                    add(catalog.ACCEPTANCE_RATE, [*base, "lifetime"], e.lifetime_acceptance)
                spec = e.totals.spec
                if spec is not None:
                    add(catalog.DRAFTS, base, spec.drafts)
                    add(catalog.DRAFT_TOKENS, base, spec.draft_tokens)
                    add(catalog.ACCEPTED_TOKENS, base, spec.accepted_tokens)
                    for i, v in enumerate(spec.per_position):
                        add(catalog.POSITION_ACCEPTED, [*base, str(i)], v)
                for w in e.windows:
                    a = w.acceptance
                    if a is None:
                        continue
                    labels = [*base, w.window.label]
                    add(catalog.WINDOW_DRAFTS, labels, a.drafts)
                    add(catalog.WINDOW_DRAFT_TOKENS, labels, a.draft_tokens)
                    add(catalog.WINDOW_ACCEPTED_TOKENS, labels, a.accepted_tokens)
                    add(catalog.ACCEPTANCE_RATE, labels, a.rate)
                    add(catalog.MEAN_ACCEPTANCE_LENGTH, labels, a.mean_length)
                    add(catalog.EXPECTED_SPEEDUP, labels, w.expected_speedup)
                    for i, (accepted, rate) in enumerate(zip(a.accepted_per_position, a.per_position, strict=True)):
                        add(catalog.WINDOW_POSITION_ACCEPTED, [*labels, str(i)], accepted)
                        add(catalog.POSITION_ACCEPTANCE_RATE, [*labels, str(i)], rate)
        for c in state.comparisons:
            add(catalog.BASELINE_TPOT_SPEEDUP, [c.target, c.baseline, c.window], c.tpot_speedup)
            for metric, ratio in sorted(c.p99_ratio.items()):
                add(catalog.BASELINE_P99_RATIO, [c.target, c.baseline, c.window, metric.value], ratio)
        if self._tap is not None:
            self._collect_tap(self._tap(), state, add, fam)
        for spec in catalog.ALL:
            if fam[spec.name].samples:
                yield fam[spec.name]

    @staticmethod
    def _collect_tap(tap: TapSnapshot, state: ExporterState, add: Callable[..., None], fam: dict[str, Metric]) -> None:
        target = tap.target
        for (band, outcome), n in sorted(tap.requests.items()):
            add(catalog.TAP_REQUESTS, [target, band, outcome.value], float(n))
        for stage, n in sorted(tap.errors.items()):
            add(catalog.TAP_ERRORS, [target, stage.value], float(n))
        add(catalog.TAP_METRICS_MISSING, [target], 1.0 if tap.missing_spec_metrics else 0.0)
        for s in tap.series:
            labels = [target, s.model, s.band]
            add(catalog.REQUEST_DRAFT_TOKENS, labels, float(s.drafted))
            add(catalog.REQUEST_ACCEPTED_TOKENS, labels, float(s.accepted))
            if s.acceptance.count:
                _add_histogram(fam[catalog.REQUEST_ACCEPTANCE.name], labels, s.acceptance)
            if s.ttft.count:
                _add_histogram(fam[catalog.REQUEST_TTFT.name], labels, s.ttft)
            if s.tpot.count:
                _add_histogram(fam[catalog.REQUEST_TPOT.name], labels, s.tpot)
            if not s.acceptance.count:
                continue
            for w in s.windows:
                wl = [*labels, w.window.label]
                _add_summary(
                    fam[catalog.REQUEST_ACCEPTANCE_QUANTILE.name],
                    catalog.REQUEST_ACCEPTANCE_QUANTILE,
                    wl,
                    w.percentiles,
                    s.acceptance.count,
                    s.acceptance.sum,
                )
                add(catalog.REQUEST_WINDOW_DRAFT_TOKENS, wl, float(w.drafted))
                add(catalog.REQUEST_WINDOW_ACCEPTED_TOKENS, wl, float(w.accepted))
            for verdict in Verdict:
                add(catalog.VERDICT, [target, s.model, "", s.band, verdict.value], 1.0 if verdict is s.verdict else 0.0)
        engine = state.targets.get(target)
        health = engine.health if engine is not None else None
        for label, drafted in sorted(tap.drafted_in_window.items()):
            add(catalog.TAP_WINDOW_DRAFT_TOKENS, [target, label], float(drafted))
            if health is None:
                continue
            window = next((w for w in health.combined if w.window.label == label), None)
            engine_drafted = window.acceptance.draft_tokens if window is not None and window.acceptance else 0.0
            if engine_drafted > 0:
                add(catalog.TAP_COVERAGE, [target, label], drafted / engine_drafted)
