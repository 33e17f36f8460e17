"""Prometheus text (format 0.0.4) from vLLM → `Snapshot`, reading only the `vllm:*` samples we use.

This is the exporter's hot path, so it does not build metric families for the hundreds of lines it ignores:
it looks at each line's sample name and parses labels and value only for names in `_WANTED`. The stock
`prometheus_client` parser is the benchmark baseline and a cross-check in the tests.
"""

from __future__ import annotations

import math
import re
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
)
from spec_exporter.vllm import names


class ParseError(ValueError):
    """The body is not a vLLM exposition we can read."""

    def __init__(self, reason: PollError, message: str) -> None:
        super().__init__(message)
        self.reason = reason


# What each wanted sample name feeds. Histogram suffixes are expanded below.
_SCALAR = 0
_POSITION = 1
_BUCKET = 2
_HCOUNT = 3
_HSUM = 4

_WANTED: dict[str, tuple[int, Any]] = {
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
}
for _family, _metric in (names.LATENCY_FAMILIES | names.LEGACY_LATENCY_FAMILIES).items():
    _legacy = _family in names.LEGACY_LATENCY_FAMILIES
    _WANTED[_family + "_bucket"] = (_BUCKET, (_metric, _legacy))  # type: ignore[assignment]
    _WANTED[_family + "_count"] = (_HCOUNT, (_metric, _legacy))
    _WANTED[_family + "_sum"] = (_HSUM, (_metric, _legacy))

# Gauges of several series under one key (extra labels, e.g. Ray's) are combined: request gauges add up,
# cache usage takes the fullest.
_MAX_COMBINED = frozenset({"kv_cache_usage", "kv_cache_usage_legacy"})

# TYPE-line names of the families holding those samples: the sample name for counters and gauges, the base
# name for histograms; counter TYPE lines from older prometheus_client lack the `_total`.
_WANTED_FAMILIES = frozenset(
    {n for n in _WANTED}
    | {n.removesuffix("_total") for n in _WANTED}
    | {n.rsplit("_", 1)[0] for n, (kind, _) in _WANTED.items() if kind in (_BUCKET, _HCOUNT, _HSUM)}
)

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


class ExpositionParser:
    """Parses vLLM expositions, remembering how each series line was understood (they repeat every poll)."""

    _CACHE_LIMIT = 8192

    def __init__(self) -> None:
        self._series: dict[str, tuple[Any, ...]] = {}

    def parse(self, text: str, taken_at: float) -> Snapshot:
        """Parse a vLLM /metrics body; raise `ParseError` if a line we need is malformed or none is present."""
        engines: dict[EngineKey, _EngineBuilder] = {}
        # Families are contiguous in the text format, each introduced by its TYPE line, so splitting there lets
        # us skip the hundreds of families we don't read without looking at their lines. Samples before the
        # first TYPE line (an untyped exposition) are scanned line by line.
        blocks = text.split("\n# TYPE ")
        found = self._scan(blocks[0], engines)
        for block in blocks[1:]:
            if block[: block.find(" ")] in _WANTED_FAMILIES:
                # The block's first line is the rest of its TYPE line.
                found = self._scan(block[block.find("\n") + 1 :], engines) or found
        if not found:
            raise ParseError(PollError.UNKNOWN_LAYOUT, "no vllm:* metric this exporter reads was found")
        generation = (
            EngineGeneration.V0
            if any("lifetime_acceptance" in b.scalars for b in engines.values())
            else EngineGeneration.V1
        )
        return Snapshot(
            taken_at=taken_at,
            generation=generation,
            engines={key: _finish(b, generation, key) for key, b in engines.items()},
        )

    def _scan(self, block: str, engines: dict[EngineKey, _EngineBuilder]) -> bool:
        found = False
        cache = self._series
        for line in block.split("\n"):
            if not line.startswith("vllm:"):
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
            series = cache.get(series_text)
            if series is None:
                series = _describe_series(series_text)
                if len(cache) >= self._CACHE_LIMIT:
                    cache.clear()
                cache[series_text] = series
            if series is _UNWANTED:
                continue
            found = True
            kind, target, key, extra = series
            value = _parse_value(rest, series_text)
            builder = engines.get(key)
            if builder is None:
                builder = engines[key] = _EngineBuilder()
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
                if kind == _BUCKET:
                    hist.buckets[extra] = hist.buckets.get(extra, 0.0) + value
                elif kind == _HCOUNT:
                    hist.count = value + (hist.count or 0.0)
                else:
                    hist.sum += value
        return found


_UNWANTED: tuple[Any, ...] = ()


def _describe_series(series_text: str) -> tuple[Any, ...]:
    """`name{labels}` → (kind, target, engine key, le or position), or `_UNWANTED`."""
    brace = series_text.find("{")
    name = series_text if brace < 0 else series_text[:brace]
    wanted = _WANTED.get(name)
    if wanted is None:
        return _UNWANTED
    kind, target = wanted
    labels = {} if brace < 0 else _parse_labels(series_text[brace + 1 : -1])
    key = (labels.get(names.LABEL_MODEL, ""), labels.get(names.LABEL_ENGINE, ""))
    extra: Any = None
    if kind == _POSITION:
        extra = _parse_position(labels.get(names.LABEL_POSITION), name)
    elif kind == _BUCKET:
        le_text = labels.get(names.LABEL_LE)
        if le_text is None:
            raise ParseError(PollError.PARSE_ERROR, f"bucket of {name} has no le label")
        try:
            extra = float(le_text)
        except ValueError:
            raise ParseError(PollError.PARSE_ERROR, f"bad le={le_text!r} in {name}") from None
    return (kind, target, key, extra)


def parse_exposition(text: str, taken_at: float) -> Snapshot:
    """One-off parse without a label memo (tests, the `check` command)."""
    return ExpositionParser().parse(text, taken_at)


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
        histograms[metric] = _finish_histogram(metric, hb, key)
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


def _finish_histogram(metric: LatencyMetric, hb: _HistogramBuilder, key: EngineKey) -> Histogram:
    bounds = sorted(hb.buckets)
    if not bounds or not math.isinf(bounds[-1]):
        # A body cut at a line boundary inside a histogram parses cleanly but lacks its +Inf bucket.
        raise ParseError(PollError.PARSE_ERROR, f"{metric.value} histogram for {key} has no +Inf bucket")
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
