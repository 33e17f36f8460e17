"""Benchmark payloads: the real vLLM 0.32 scrape, and N-engine scrapes generated from it.

A data-parallel vLLM (`--data-parallel-size N`) exposes every per-engine series once per engine, told apart by
the `engine` label, inside the same family; the API server's own series (HTTP, Python, process, admission) stay
single. `ScrapeSequence` does exactly that to the real 0.32 scrape: every `engine="0"` sample is repeated for
engines 0..N-1 and given values that make a believable, growing series of scrapes:

- counters and histogram samples (`_total`, `_bucket`, `_count`, `_sum`) of engine i at poll t are the real
  value × `scale_i` × (1 + `rate_i` · t), so each poll adds a fixed slice of the real load: cumulative buckets
  stay monotone, `_count` stays equal to the `+Inf` bucket, and window deltas are non-trivial;
- the spec-decode accepted-token counters are further multiplied by `accept_i` (0.7..1.3), so engines differ in
  acceptance rate (draft tokens stay 3 × drafts, as with k=3, within rounding);
- the load gauges (running / waiting requests, KV-cache usage) take pseudo-random values per engine and poll;
- everything else (`_created` timestamps, info and sleep-state gauges, the API server's series) is copied.

Values are formatted by `prometheus_client`'s own float formatter, as vLLM's exposition is.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass
from pathlib import Path

from prometheus_client.utils import floatToGoString

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = ROOT / "tests" / "fixtures" / "vllm"
REAL_AFTER_LOAD = FIXTURES / "vllm-0.32.0-cpu_v1_spec-decode-draft-model_k3_after-load.txt"
REAL_IDLE = FIXTURES / "vllm-0.32.0-cpu_v1_spec-decode-draft-model_k3_idle.txt"

ENGINE_LABEL = 'engine="0"'

# Gauges that move with load; every other gauge is copied as scraped.
_LOAD_GAUGES = {
    "vllm:num_requests_running": (0, 48),
    "vllm:num_requests_waiting": (0, 12),
    "vllm:kv_cache_usage_perc": None,  # a fraction in [0, 1)
}
_ACCEPTED = ("vllm:spec_decode_num_accepted_tokens_total", "vllm:spec_decode_num_accepted_tokens_per_pos_total")
_TYPE_RE = re.compile(r"^# TYPE (\S+) (\S+)$")


def read_scrape(path: Path = REAL_AFTER_LOAD) -> str:
    """A fixture as vLLM served it: without the fixture's own `# source:` / `# note:` comment lines."""
    lines = path.read_text(encoding="utf-8").splitlines()
    kept = [ln for ln in lines if not ln.startswith("#") or ln.startswith(("# HELP ", "# TYPE "))]
    return "\n".join(kept) + "\n"


# How an engine sample's value evolves.
_CONST = 0
_COUNTER = 1
_GAUGE = 2


@dataclass(frozen=True, slots=True)
class _EngineSample:
    before: str  # series text up to `engine="`
    after: str  # series text from the closing quote of the engine label on
    name: str
    base: float
    mode: int
    accepted: bool
    integral: bool


@dataclass(frozen=True, slots=True)
class _Engine:
    scale: float
    rate: float
    accept: float


class ScrapeSequence:
    """Successive /metrics bodies of an N-engine vLLM 0.32 built from one real scrape; `scrape(t)` is poll t."""

    def __init__(self, engines: int, base_text: str | None = None, seed: int = 1) -> None:
        if engines < 1:
            raise ValueError("engines must be >= 1")
        self.engines = engines
        self._seed = seed
        text = read_scrape() if base_text is None else base_text
        # The template: a list whose items are either a verbatim line or the list of engine-0 samples of one
        # family, to be written out once per engine at that position.
        self._template: list[str | list[_EngineSample]] = []
        family_type = "untyped"
        group: list[_EngineSample] | None = None
        for line in text.rstrip("\n").split("\n"):
            if line.startswith("#"):
                group = None
                m = _TYPE_RE.match(line)
                if m:
                    family_type = m.group(2)
                self._template.append(line)
                continue
            series, _, value_text = line.rpartition(" ")
            at = series.find(ENGINE_LABEL)
            if at < 0:
                group = None
                self._template.append(line)
                continue
            if group is None:
                group = []
                self._template.append(group)
            name = series[: series.find("{")]
            base = float(value_text)
            group.append(
                _EngineSample(
                    before=series[: at + len('engine="')],
                    after=series[at + len(ENGINE_LABEL) - 1 :],
                    name=name,
                    base=base,
                    mode=_mode(name, family_type),
                    accepted=name in _ACCEPTED,
                    integral=base.is_integer(),
                )
            )
        rng = random.Random(seed)
        self._engines = [
            _Engine(scale=rng.uniform(0.6, 1.4), rate=rng.uniform(0.02, 0.08), accept=rng.uniform(0.7, 1.3))
            for _ in range(engines)
        ]
        self._engines[0] = _Engine(scale=1.0, rate=self._engines[0].rate, accept=1.0)

    def scrape(self, t: int) -> str:
        """The body vLLM would serve at poll `t` (t >= 0; t = 0 has engine 0 exactly as scraped)."""
        out: list[str] = []
        append = out.append
        for item in self._template:
            if isinstance(item, str):
                append(item)
                continue
            for i, eng in enumerate(self._engines):
                label = str(i)
                growth = eng.scale * (1.0 + eng.rate * t)
                gauges = random.Random(self._seed * 1_000_003 + i * 10_007 + t)
                for s in item:
                    if s.mode == _COUNTER:
                        v = s.base * growth * (eng.accept if s.accepted else 1.0)
                        if s.integral:
                            v = float(round(v))
                    elif s.mode == _GAUGE:
                        bounds = _LOAD_GAUGES[s.name]
                        v = gauges.random() if bounds is None else float(gauges.randint(*bounds))
                    else:
                        v = s.base
                    append(f"{s.before}{label}{s.after} {floatToGoString(v)}")
        append("")
        return "\n".join(out)

    def scrapes(self, start: int, count: int) -> list[str]:
        return [self.scrape(t) for t in range(start, start + count)]


def _mode(name: str, family_type: str) -> int:
    if name.endswith("_created"):
        return _CONST
    if family_type in ("counter", "histogram", "summary"):
        return _COUNTER
    if name in _LOAD_GAUGES:
        return _GAUGE
    return _CONST


def describe(text: str) -> tuple[int, int]:
    """(lines, bytes) of a body."""
    return text.count("\n"), len(text.encode("utf-8"))
