"""Prometheus text (format 0.0.4) from vLLM → `Snapshot`, reading only the `vllm:*` samples we use.

This is the exporter's hot path, so it does not build metric families for the hundreds of lines it ignores:
it looks at each line's sample name and parses labels and value only for names in `_WANTED`. The stock
`prometheus_client` parser is the benchmark baseline and a cross-check in the tests.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from spec_exporter.types import (
    EngineGeneration,
    EngineKey,
    EngineSample,
    Histogram,
    LatencyMetric,
    PollError,
    Snapshot,
    SpecCounters,
    TapSample,
    TemperatureBandKey,
    TemperatureBandSample,
)
from spec_exporter.vllm import names


class ParseError(ValueError):
    """The body is not a vLLM exposition we can read."""

    def __init__(self, reason: PollError, message: str) -> None:
        super().__init__(message)
        self.reason = reason


# What each wanted sample name feeds.
_SCALAR = 0
_POSITION = 1
_BUCKET = 2
_HCOUNT = 3
_HSUM = 4
# The tap's `spec_tap_*` families (the tap's, on vLLM's /metrics when the middleware runs there).
_TAP_COUNTER = 5
_TAP_BUCKET = 6
_TAP_HCOUNT = 7
_TAP_HSUM = 8
_PROCESS_START = 9
_TAP_INFO = 10

_HISTOGRAM_KINDS = frozenset({_BUCKET, _HCOUNT, _HSUM, _TAP_BUCKET, _TAP_HCOUNT, _TAP_HSUM})


def _wanted_samples() -> dict[str, tuple[int, Any]]:
    """Sample name → (kind, what it feeds); histogram families expand to their three sample names."""
    wanted: dict[str, tuple[int, Any]] = {
        names.SPEC_DRAFTS: (_SCALAR, "drafts"),
        names.SPEC_DRAFT_TOKENS: (_SCALAR, "draft_tokens"),
        names.SPEC_ACCEPTED_TOKENS: (_SCALAR, "accepted_tokens"),
        names.SPEC_ACCEPTED_PER_POS: (_POSITION, None),
        names.V0_ACCEPTANCE_RATE: (_SCALAR, "lifetime_acceptance"),
        names.GENERATION_TOKENS: (_SCALAR, "generation_tokens"),
        names.PREEMPTIONS: (_SCALAR, "preemptions"),
        names.REQUESTS_RUNNING: (_SCALAR, "requests_running"),
        names.REQUESTS_WAITING: (_SCALAR, "requests_waiting"),
        names.KV_CACHE_USAGE: (_SCALAR, "kv_cache_usage"),
        names.KV_CACHE_USAGE_LEGACY: (_SCALAR, "kv_cache_usage_legacy"),
        names.PROCESS_START: (_PROCESS_START, None),
    }
    for family, metric in (names.LATENCY_FAMILIES | names.LEGACY_LATENCY_FAMILIES).items():
        target = (metric, family in names.LEGACY_LATENCY_FAMILIES)
        wanted[family + "_bucket"] = (_BUCKET, target)
        wanted[family + "_count"] = (_HCOUNT, target)
        wanted[family + "_sum"] = (_HSUM, target)
    for name, field_name in names.TAP_COUNTERS.items():
        wanted[name] = (_TAP_COUNTER, field_name)
    wanted[names.TAP_SPECULATIVE_INFO] = (_TAP_INFO, "speculative")
    for family, field_name in names.TAP_HISTOGRAMS.items():
        wanted[family + "_bucket"] = (_TAP_BUCKET, field_name)
        wanted[family + "_count"] = (_TAP_HCOUNT, field_name)
        wanted[family + "_sum"] = (_TAP_HSUM, field_name)
    return wanted


def _family_names(wanted: dict[str, tuple[int, Any]]) -> frozenset[str]:
    """TYPE-line names of the families holding `wanted` samples: the sample name for counters and gauges, the
    base name for histograms; counter TYPE lines from older prometheus_client lack the `_total`."""
    return frozenset(
        set(wanted)
        | {n.removesuffix("_total") for n in wanted}
        | {n.rsplit("_", 1)[0] for n, (kind, _) in wanted.items() if kind in _HISTOGRAM_KINDS}
    )


_WANTED = _wanted_samples()
_WANTED_FAMILIES = _family_names(_WANTED)
_LINE_PREFIXES = (names.PREFIX, names.TAP_PREFIX, names.PROCESS_START)

# Gauges of several series under one key (extra labels, e.g. Ray's) are combined: request gauges add up,
# cache usage takes the fullest.
_MAX_COMBINED = frozenset({"kv_cache_usage", "kv_cache_usage_legacy"})

_LABEL_RE = re.compile(r'\s*([a-zA-Z_][a-zA-Z0-9_]*)\s*=\s*"((?:[^"\\]|\\.)*)"\s*,?')


@dataclass(slots=True)
class _HistogramBuilder:
    buckets: dict[float, float] = field(default_factory=dict)
    count: float | None = None
    sum: float = 0.0


@dataclass(slots=True)
class _EngineBuilder:
    scalars: dict[str, float] = field(default_factory=dict)
    positions: dict[int, float] = field(default_factory=dict)
    histograms: dict[tuple[LatencyMetric, bool], _HistogramBuilder] = field(default_factory=dict)


@dataclass(slots=True)
class _TapBuilder:
    # (field, key) → value; key is (model, band) for tokens, (band, outcome) for requests, stage for errors.
    counters: dict[tuple[str, Any], float] = field(default_factory=dict)
    histograms: dict[tuple[str, TemperatureBandKey], _HistogramBuilder] = field(default_factory=dict)
    speculative: tuple[tuple[str, str], ...] | None = None


@dataclass(slots=True)
class _Scan:
    """What one parse has gathered so far."""

    engines: dict[EngineKey, _EngineBuilder] = field(default_factory=dict)
    tap: _TapBuilder | None = None
    seen: set[str] = field(default_factory=set)
    found: bool = False
    with_model: bool = False
    router_like: bool = False
    process_start: float | None = None


class ExpositionParser:
    """Parses vLLM expositions, remembering how each series line was understood (they repeat every poll)."""

    _CACHE_LIMIT = 8192

    def __init__(self) -> None:
        self._series: dict[str, tuple[Any, ...]] = {}

    def parse(self, text: str, taken_at: float) -> Snapshot:
        """Parse a vLLM /metrics body; raise `ParseError` if a line we need is malformed or none is present."""
        scan = _Scan()
        # Families are contiguous in the text format, each introduced by its TYPE line, so splitting there lets
        # us skip the hundreds of families we don't read without looking at their lines. Samples before the
        # first TYPE line (an untyped exposition) are scanned line by line.
        blocks = text.split("\n# TYPE ")
        self._scan(blocks[0], scan)
        for block in blocks[1:]:
            if block[: block.find(" ")] in _WANTED_FAMILIES:
                # The block's first line is the rest of its TYPE line.
                self._scan(block[block.find("\n") + 1 :], scan)
        if not scan.found:
            raise ParseError(PollError.UNKNOWN_LAYOUT, "no vllm:* metric this exporter reads was found")
        if scan.engines and not scan.with_model:
            # Every vLLM engine labels its series with model_name; production-stack's router labels its
            # vllm:* gauges with server= instead, and has no spec-decode counters to read.
            what = "a vLLM router (its series carry server=, not model_name=)" if scan.router_like else "a proxy"
            raise ParseError(
                PollError.NOT_AN_ENGINE,
                f"not a vLLM engine: no vllm:* series has a model_name label; this looks like {what}. "
                "Poll each vLLM pod's own /metrics instead",
            )
        generation = (
            EngineGeneration.V0
            if any("lifetime_acceptance" in b.scalars for b in scan.engines.values())
            else EngineGeneration.V1
        )
        return Snapshot(
            taken_at=taken_at,
            generation=generation,
            engines={key: _finish(b, generation, key) for key, b in scan.engines.items()},
            tap=_finish_tap(scan.tap) if scan.tap is not None else None,
            process_start=scan.process_start,
        )

    def _describe(self, series_text: str) -> tuple[Any, ...]:
        series = self._series.get(series_text)
        if series is None:
            series = _describe_series(series_text)
            if len(self._series) >= self._CACHE_LIMIT:
                self._series.clear()
            self._series[series_text] = series
        return series

    def _scan(self, block: str, scan: _Scan) -> None:
        seen = scan.seen
        for line in block.split("\n"):
            if not line.startswith(_LINE_PREFIXES):
                continue
            # The series part (name and labels) repeats verbatim from poll to poll; only the value changes.
            close = line.rfind("}")
            if close < 0:
                close = line.find(" ")
                if close < 0:
                    close = len(line)
                series_text, rest = line[:close], line[close:]
            else:
                series_text, rest = line[: close + 1], line[close + 1 :]
            series = self._describe(series_text)
            if series is _UNWANTED:
                continue
            if series_text in seen:
                raise ParseError(
                    PollError.DUPLICATE_SERIES, f"{series_text[:200]} appears twice in one scrape; refusing to sum"
                )
            seen.add(series_text)
            kind, target, key, extra, has_model, has_server = series
            value = _parse_value(rest, series_text)
            if kind == _PROCESS_START:
                scan.process_start = value
                continue
            scan.found = True
            if kind >= _TAP_COUNTER:
                _add_tap(scan, kind, target, key, extra, value)
                continue
            scan.with_model = scan.with_model or has_model
            scan.router_like = scan.router_like or has_server
            _add_engine(scan, kind, target, key, extra, value)


def _add_engine(scan: _Scan, kind: int, target: Any, key: EngineKey, extra: Any, value: float) -> None:
    builder = scan.engines.get(key)
    if builder is None:
        builder = scan.engines[key] = _EngineBuilder()
    if kind == _SCALAR:
        scalars = builder.scalars
        if target in scalars:
            previous = scalars[target]
            value = max(previous, value) if target in _MAX_COMBINED else previous + value
        scalars[target] = value
    elif kind == _POSITION:
        builder.positions[extra] = builder.positions.get(extra, 0.0) + value
    else:
        hist = builder.histograms.get(target)
        if hist is None:
            hist = builder.histograms[target] = _HistogramBuilder()
        _add_histogram_sample(hist, kind - _BUCKET, extra, value)


def _add_tap(scan: _Scan, kind: int, target: str, key: Any, extra: Any, value: float) -> None:
    tap = scan.tap
    if tap is None:
        tap = scan.tap = _TapBuilder()
    if kind == _TAP_INFO:
        # One engine config per target; several processes of one server export the same one.
        if value and (tap.speculative is None or key < tap.speculative):
            tap.speculative = key
        return
    if kind == _TAP_COUNTER:
        slot = (target, key)
        tap.counters[slot] = tap.counters.get(slot, 0.0) + value
        return
    hist = tap.histograms.get((target, key))
    if hist is None:
        hist = tap.histograms[(target, key)] = _HistogramBuilder()
    _add_histogram_sample(hist, kind - _TAP_BUCKET, extra, value)


def _add_histogram_sample(hist: _HistogramBuilder, part: int, le: Any, value: float) -> None:
    """`part` 0: a bucket at `le`; 1: the count; 2: the sum (samples of one family may be split by extra labels)."""
    if part == 0:
        hist.buckets[le] = hist.buckets.get(le, 0.0) + value
    elif part == 1:
        hist.count = value + (hist.count or 0.0)
    else:
        hist.sum += value


_UNWANTED: tuple[Any, ...] = ()


def _describe_series(series_text: str) -> tuple[Any, ...]:
    """`name{labels}` → (kind, target, key, le or position, has model_name, has server), or `_UNWANTED`."""
    brace = series_text.find("{")
    name = series_text if brace < 0 else series_text[:brace]
    if name not in _WANTED:
        return _UNWANTED
    return _classify(name, {} if brace < 0 else _parse_labels(series_text[brace + 1 : -1]))


def _classify(name: str, labels: Mapping[str, str]) -> tuple[Any, ...]:
    """What a sample feeds, from its name and labels (however they were read), or `_UNWANTED`."""
    wanted = _WANTED.get(name)
    if wanted is None:
        return _UNWANTED
    kind, target = wanted
    model = labels.get(names.LABEL_MODEL, "")
    key: Any = (model, labels.get(names.LABEL_ENGINE, ""))
    extra: Any = None
    if kind == _POSITION:
        extra = _parse_position(labels.get(names.LABEL_POSITION), name)
    elif kind in (_BUCKET, _TAP_BUCKET):
        extra = _parse_le(labels.get(names.LABEL_LE), name)
    if kind == _TAP_INFO:
        key = tuple(sorted((k, v) for k, v in labels.items() if k in names.TAP_SPECULATIVE_LABELS))
        return (kind, target, key, extra, False, False)
    if kind >= _TAP_COUNTER:
        band_key = (model, labels.get(names.LABEL_WORKLOAD, names.DEFAULT_WORKLOAD), labels.get(names.LABEL_BAND, ""))
    if kind == _TAP_COUNTER:
        band = band_key[2]
        if target == "requests":
            key = (band, labels.get(names.LABEL_OUTCOME, ""))
        elif target == "errors":
            key = labels.get(names.LABEL_STAGE, "")
        elif target == "per_position":
            key = (*band_key, _parse_position(labels.get(names.LABEL_POSITION), name))
        else:
            key = band_key
    elif kind >= _TAP_BUCKET:
        key = band_key
    return (kind, target, key, extra, names.LABEL_MODEL in labels, names.LABEL_SERVER in labels)


def _parse_le(text: str | None, name: str) -> float:
    if text is None:
        raise ParseError(PollError.PARSE_ERROR, f"bucket of {name} has no le label")
    try:
        return float(text)
    except ValueError:
        raise ParseError(PollError.PARSE_ERROR, f"bad le={text!r} in {name}") from None


def parse_exposition(text: str, taken_at: float) -> Snapshot:
    """One-off parse without a label memo (tests, the `check` command)."""
    return ExpositionParser().parse(text, taken_at)


def read_tap_samples(samples: Iterable[tuple[str, Mapping[str, str], float]]) -> TapSample | None:
    """The tap's `spec_tap_*` families from samples already read, (name, labels, value) as prometheus_client's
    registries yield them: the proxy tap's own counts, read as the same fields the text of vLLM's /metrics gives.
    None if there is no tap sample among them."""
    scan = _Scan()
    for name, labels, value in samples:
        series = _classify(name, labels)
        if series is _UNWANTED or series[0] < _TAP_COUNTER:
            continue
        kind, target, key, extra, _, _ = series
        _add_tap(scan, kind, target, key, extra, value)
    return _finish_tap(scan.tap) if scan.tap is not None else None


def _finish(builder: _EngineBuilder, generation: EngineGeneration, key: EngineKey) -> EngineSample:
    s = builder.scalars
    spec = None
    if generation is EngineGeneration.V1 and "draft_tokens" in s and "accepted_tokens" in s:
        positions = builder.positions
        per_position = tuple(positions.get(i, 0.0) for i in range(max(positions) + 1)) if positions else ()
        spec = SpecCounters(
            drafts=s.get("drafts", math.nan),
            draft_tokens=s["draft_tokens"],
            accepted_tokens=s["accepted_tokens"],
            per_position=per_position,
        )
    histograms: dict[LatencyMetric, Histogram] = {}
    # Current family names win over the pre-0.11 ones when a scrape has both.
    for (metric, legacy), hb in sorted(builder.histograms.items(), key=lambda item: not item[0][1]):
        del legacy
        histograms[metric] = _finish_histogram(metric.value, hb, key)
    kv = s.get("kv_cache_usage", s.get("kv_cache_usage_legacy"))
    return EngineSample(
        spec=spec,
        lifetime_acceptance=s.get("lifetime_acceptance"),
        histograms=histograms,
        generation_tokens=s.get("generation_tokens"),
        preemptions=s.get("preemptions"),
        requests_running=s.get("requests_running"),
        requests_waiting=s.get("requests_waiting"),
        kv_cache_usage=kv,
    )


def _finish_tap(tb: _TapBuilder) -> TapSample:
    bands: dict[TemperatureBandKey, dict[str, Any]] = {}
    requests: dict[tuple[str, str], float] = {}
    errors: dict[str, float] = {}
    positions: dict[TemperatureBandKey, dict[int, float]] = {}
    for (field_name, key), value in tb.counters.items():
        if field_name == "requests":
            requests[key] = requests.get(key, 0.0) + value
        elif field_name == "errors":
            errors[key] = errors.get(key, 0.0) + value
        elif field_name == "per_position":
            model, workload, band, position = key
            positions.setdefault((model, workload, band), {})[position] = value
        else:
            bands.setdefault(key, {})[field_name] = value
    for (field_name, key), hb in tb.histograms.items():
        bands.setdefault(key, {})[field_name] = _finish_histogram(f"spec_tap {field_name}", hb, key)
    for key, fields in bands.items():
        # The band's steps and per-position counts as vLLM's own four counters, so one code windows both.
        steps = fields.pop("spec_steps", None)
        if steps is not None:
            at = positions.get(key, {})
            fields["spec"] = SpecCounters(
                drafts=steps,
                draft_tokens=fields.get("draft_tokens", 0.0),
                accepted_tokens=fields.get("accepted_tokens", 0.0),
                per_position=tuple(at.get(i, 0.0) for i in range(max(at) + 1)) if at else (),
            )
    return TapSample(
        bands={k: TemperatureBandSample(**v) for k, v in bands.items()},
        requests=requests,
        errors=errors,
        speculative=tb.speculative,
    )


def _finish_histogram(what: str, hb: _HistogramBuilder, key: object) -> Histogram:
    bounds = sorted(hb.buckets)
    if not bounds or not math.isinf(bounds[-1]):
        # A body cut at a line boundary inside a histogram parses cleanly but lacks its +Inf bucket.
        raise ParseError(PollError.PARSE_ERROR, f"{what} histogram for {key} has no +Inf bucket")
    counts = tuple(hb.buckets[b] for b in bounds)
    return Histogram(
        bounds=tuple(bounds),
        counts=counts,
        count=hb.count if hb.count is not None else counts[-1],
        sum=hb.sum,
    )


def _parse_labels(text: str) -> dict[str, str]:
    body = text[:-1] if text.endswith(",") else text
    if "\\" not in body and body.endswith('"'):
        # Without escapes a value cannot contain `"`, so `",` only ever ends a label pair.
        labels = {}
        for pair in body[:-1].split('",'):
            key, sep, value = pair.partition('="')
            if not sep or not key.isidentifier():
                break
            labels[key] = value
        else:
            return labels
    # Escapes, blanks or something odd: the careful way, which also reports malformed sets.
    labels = {}
    pos = 0
    while pos < len(text):
        m = _LABEL_RE.match(text, pos)
        if m is None:
            if text[pos:].strip() == "":
                break
            raise ParseError(PollError.PARSE_ERROR, f"malformed labels {text[:200]!r}")
        labels[m.group(1)] = _unescape(m.group(2))
        pos = m.end()
    return labels


def _unescape(value: str) -> str:
    return value.replace("\\\\", "\x00").replace('\\"', '"').replace("\\n", "\n").replace("\x00", "\\")


def _parse_value(rest: str, series: str) -> float:
    # `rest` is " <value>", rarely followed by " <timestamp>"; float() ignores the surrounding blanks.
    try:
        return float(rest)
    except ValueError:
        pass
    parts = rest.split()
    try:
        return float(parts[0])
    except (ValueError, IndexError):
        raise ParseError(PollError.PARSE_ERROR, f"{series[:200]} has a bad value {rest[:50]!r}") from None


def _parse_position(text: str | None, name: str) -> int:
    try:
        value = int(text) if text is not None else -1
    except ValueError:
        value = -1
    if value < 0 or value > 1024:
        raise ParseError(PollError.PARSE_ERROR, f"{name} has a bad position {text!r}")
    return value
