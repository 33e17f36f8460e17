"""The custom collector: fresh metric families from the latest `ExporterState` at every scrape.

spec_decode_draft_acceptance_rate{engine="0",model_name="tiny",target="vllm",window="1m"} 0.374
spec_decode_verdict{engine="0",model_name="tiny",target="vllm",temperature_band="all",verdict="disable"} 1.0
"""

from __future__ import annotations

import math
import platform
from collections.abc import Callable, Iterator, Mapping

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from spec_exporter import __version__, catalog
from spec_exporter.catalog import MetricSpec
from spec_exporter.derive.latency import QUANTILES
from spec_exporter.derive.verdict import Verdict
from spec_exporter.snapshot import Histogram
from spec_exporter.state import ExporterState, PollError


def _family(spec: MetricSpec) -> Metric:
    if spec.type == "counter":
        return CounterMetricFamily(spec.name, spec.help, labels=spec.labels)
    if spec.type == "summary":
        # Quantile samples are added by hand: the stock SummaryMetricFamily only takes count and sum.
        return Metric(spec.name, spec.help, "summary")
    return GaugeMetricFamily(spec.name, spec.help, labels=spec.labels)


def _add_summary(family: Metric, values: list[str], quantiles: Mapping[float, float], totals: Histogram) -> None:
    labels = dict(zip(catalog.LATENCY.labels, values, strict=True))
    for q in QUANTILES:
        if q in quantiles:
            family.add_sample(family.name, {**labels, "quantile": str(q)}, quantiles[q])
    family.add_sample(family.name + "_count", labels, totals.count)
    family.add_sample(family.name + "_sum", labels, totals.sum)


class SpecDecodeCollector(Collector):
    """Renders the state; never touches the network or the clock."""

    def __init__(self, state: Callable[[], ExporterState]) -> None:
        self._state = state

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
                            _add_summary(fam[catalog.LATENCY.name], [*labels, metric.value], qs, totals)
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
        for spec in catalog.ALL:
            if fam[spec.name].samples:
                yield fam[spec.name]
