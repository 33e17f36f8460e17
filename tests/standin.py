"""A stand-in vLLM for the faults a real one can't produce on demand (restart, outage, garbage, huge bodies).

Its /metrics bodies are the real captured scrapes in tests/fixtures/vllm, served verbatim or with the values of
chosen series rewritten, so the wire format is vLLM's own (test_standin.py checks it against the samples).
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from aiohttp import web

FIXTURES = Path(__file__).parent / "fixtures" / "vllm"

V032_IDLE = "vllm-0.32.0-cpu_v1_spec-decode-draft-model_k3_idle.txt"
V032_LOAD = "vllm-0.32.0-cpu_v1_spec-decode-draft-model_k3_after-load.txt"
V033_MP = "vllm-0.33.0_v1_spec-decode_k3_multiprocess_RENDERED.txt"
V085_V0 = "vllm-0.8.5.post1_v0_spec-decode_k4_single-process_RENDERED.txt"
V085_V0_MP = "vllm-0.8.5.post1_v0_spec-decode_k4_multiprocess_RENDERED.txt"
NVIDIA_NO_SPEC = "armandossrecife-vllm-server-api-chat_v1-nvidia-25.09_no-spec.txt"
ALL_SAMPLES = (V032_IDLE, V032_LOAD, V033_MP, V085_V0, V085_V0_MP, NVIDIA_NO_SPEC)


# The captures come from several vLLM runs. A stand-in is one vLLM process, so its bodies share one start time
# unless a scenario restarts it (`with_process_start`).
PROCESS_START = 1.7954761e9


def sample(name: str, *, process_start: float | None = PROCESS_START) -> str:
    """A captured body; `process_start=None` keeps the capture's own process_start_time_seconds."""
    text = (FIXTURES / name).read_text()
    # One capture was stored without the final newline every real /metrics body ends with.
    text = text if text.endswith("\n") else text + "\n"
    return text if process_start is None else with_process_start(text, process_start)


def with_process_start(text: str, start: float) -> str:
    """The body as another process (started at `start`) would serve it."""
    return re.sub(r"^process_start_time_seconds \S+$", f"process_start_time_seconds {start!r}", text, flags=re.M)


def rewrite(text: str, values: Mapping[str, float]) -> str:
    """Set the value of each series given as `name{labels}` exactly as it appears in the text."""
    out = text
    for series, value in values.items():
        pattern = re.compile("^" + re.escape(series) + r" \S+$", re.M)
        out, n = pattern.subn(f"{series} {float(value)!r}", out)
        if n != 1:
            raise KeyError(f"{series} appears {n} times")
    return out


def scale_counters(text: str, factor: float) -> str:
    """Every vllm:* counter and histogram sample multiplied by `factor` (gauges and _created kept)."""
    lines = []
    kind = {}
    for line in text.split("\n"):
        if line.startswith("# TYPE "):
            _, _, name, typ = line.split(" ", 3)
            kind[name] = typ
        elif line.startswith("vllm:") and not line.split("{")[0].split(" ")[0].endswith("_created"):
            series, value = line.rsplit(" ", 1)
            name = series.split("{")[0]
            base = re.sub(r"_(bucket|count|sum)$", "", name)
            if kind.get(name) == "counter" or kind.get(base) == "histogram":
                line = f"{series} {float(value) * factor!r}"
        lines.append(line)
    return "\n".join(lines)


def stretch_latency(text: str, family: str, factor: float) -> str:
    """`family`'s histogram as if every observation had taken `factor` times as long: bucket bounds and sum scaled.

    Quantiles interpolated inside buckets scale by exactly `factor`, so a comparison has a known answer.
    """

    def bound(m: re.Match[str]) -> str:
        le = m.group(1)
        return m.group(0) if le == "+Inf" else m.group(0).replace(f'le="{le}"', f'le="{float(le) * factor!r}"')

    out = re.sub(rf'^{re.escape(family)}_bucket{{[^}}]*le="([^"]+)"[^}}]*}}', bound, text, flags=re.M)

    def total(m: re.Match[str]) -> str:
        return f"{m.group(1)} {float(m.group(2)) * factor!r}"

    return re.sub(rf"^({re.escape(family)}_sum{{[^}}]*}}) (\S+)$", total, out, flags=re.M)


def with_engines(text: str, engines: int) -> str:
    """Data-parallel layout: every `engine="0"` series repeated for engines 0..n-1, values scaled by rank+1."""
    lines = []
    for line in text.split("\n"):
        if 'engine="0"' in line and line.startswith("vllm:"):
            series, value = line.rsplit(" ", 1)
            for rank in range(engines):
                scaled = (
                    float(value) if series.endswith("_created") or "kv_cache" in series else float(value) * (rank + 1)
                )
                renamed = series.replace('engine="0"', 'engine="' + str(rank) + '"')
                lines.append(f"{renamed} {scaled!r}")
        else:
            lines.append(line)
    return "\n".join(lines)


@dataclass
class Reply:
    """One scripted answer to GET /metrics."""

    body: bytes | str = ""
    status: int = 200
    hang: bool = False  # never answer: the client's timeout must fire
    cut_after: int | None = None  # close the connection after this many body bytes
    chunked: bool = False  # no Content-Length: the client only learns the size by reading
    content_type: str = "text/plain; version=0.0.4; charset=utf-8"


@dataclass
class StandIn:
    """Serves `replies` in order, repeating the last one; `next_reply` can be swapped by a test."""

    replies: list[Reply] = field(default_factory=list)
    served: int = 0
    released: asyncio.Event = field(default_factory=asyncio.Event)
    on_request: Callable[[web.Request], None] | None = None

    def push(self, *replies: Reply | str) -> None:
        self.replies.extend(Reply(r) if isinstance(r, str) else r for r in replies)

    async def handle(self, request: web.Request) -> web.StreamResponse:
        if self.on_request is not None:
            self.on_request(request)
        reply = self.replies[min(self.served, len(self.replies) - 1)]
        self.served += 1
        if reply.hang:
            await self.released.wait()
        body = reply.body.encode() if isinstance(reply.body, str) else reply.body
        if reply.cut_after is not None:
            response = web.StreamResponse(status=reply.status, headers={"Content-Type": reply.content_type})
            response.content_length = len(body)
            await response.prepare(request)
            await response.write(body[: reply.cut_after])
            assert request.transport is not None
            request.transport.close()
            return response
        if reply.chunked:
            response = web.StreamResponse(status=reply.status, headers={"Content-Type": reply.content_type})
            response.enable_chunked_encoding()
            await response.prepare(request)
            for i in range(0, len(body), 1 << 16):
                await response.write(body[i : i + (1 << 16)])
            await response.write_eof()
            return response
        return web.Response(body=body, status=reply.status, headers={"Content-Type": reply.content_type})

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/metrics", self.handle)
        return app
