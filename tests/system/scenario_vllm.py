"""A stand-in vLLM whose counters move the way a scenario says, for the real-Prometheus tier.

Its /metrics body is the real vLLM 0.32 scrape (tests/fixtures/vllm) with values rewritten: histograms and
counters scaled by elapsed time, the four spec-decode counters set from the scenario. Its OpenAI endpoint answers
with the real captured response, its per-request spec metrics set by the request's temperature, and every answer
is added to the engine counters, so the tap and the engine agree the way they do on a real vLLM.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from aiohttp import web

from tests.openai_standin import response, sse_events
from tests.standin import PROCESS_START, V032_LOAD, rewrite, sample, scale_counters, with_process_start

K = 3
_SERIES = '{{engine="0",model_name="{model}"}}'


@dataclass
class ScenarioVLLM:
    model: str
    # Synthetic engine traffic: draft tokens a second and the acceptance they get (0 for an idle pool).
    draft_tokens_per_second: float = 0.0
    acceptance: float = 0.0
    # Seconds after start at which the counters went back to zero, as on a vLLM restart: set by `restart()`, when
    # the test has seen what it needs from before it.
    restart_after: float | None = None
    # Per-request acceptance by temperature, for traffic through the tap.
    acceptance_by_temperature: Callable[[float], float] = lambda t: 0.8
    # vLLM without --per-request-spec-decode-metrics, or without --speculative-config at all.
    per_request_spec_metrics: bool = True
    spec_enabled: bool = True
    # vLLM's per-request TPOT (mean_itl_ms) as a function of the most requests in flight during the request:
    # a pool whose speed depends on load. None: the captured response's own value.
    mean_itl_ms_at: Callable[[int], float] | None = None
    clock: Callable[[], float] = time.monotonic
    started: float = field(default=0.0)
    served_accepted: int = 0
    served_drafted: int = 0
    served_steps: int = 0
    in_flight: int = 0
    # Per active request, the most requests in flight seen while it ran.
    _peaks: dict[int, int] = field(default_factory=dict)
    # Wall-clock times of the scrapes served after the restart, for tests to wait on.
    scraped_after_restart: list[float] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.started = self.clock()
        template = sample(V032_LOAD).replace('model_name="tiny"', f'model_name="{self.model}"')
        self._template = template

    def restart(self) -> None:
        """From the next scrape on, a new process: a later start time, counters from zero."""
        self.restart_after = self.clock() - self.started

    def _elapsed(self) -> float:
        t = self.clock() - self.started
        if self.restart_after is not None and t >= self.restart_after:
            return t - self.restart_after
        return t

    def _restarted(self) -> bool:
        return self.restart_after is not None and self.clock() - self.started >= self.restart_after

    def exposition(self) -> str:
        t = self._elapsed()
        # Latency histograms and other counters grow with time: a steady stream of requests.
        text = scale_counters(self._template, 1.0 + t)
        if self._restarted():
            # A new process: a later start time, counters from zero.
            text = with_process_start(text, PROCESS_START + self.restart_after)
            self.scraped_after_restart.append(time.time())
        draft = self.draft_tokens_per_second * t + self.served_drafted
        accepted = self.draft_tokens_per_second * t * self.acceptance + self.served_accepted
        drafts = draft / K if self.draft_tokens_per_second else self.served_steps
        series = _SERIES.format(model=self.model)
        # Prefix acceptance: position i is accepted only if all before it were.
        share = (0.5, 0.3, 0.2)
        values = {
            f"vllm:spec_decode_num_drafts_total{series}": drafts,
            f"vllm:spec_decode_num_draft_tokens_total{series}": draft,
            f"vllm:spec_decode_num_accepted_tokens_total{series}": accepted,
        }
        for i, s in enumerate(share):
            pos = f'{{engine="0",model_name="{self.model}",position="{i}"}}'
            values[f"vllm:spec_decode_num_accepted_tokens_per_pos_total{pos}"] = accepted * s
        text = rewrite(text, values)
        if not self.spec_enabled:
            text = "\n".join(line for line in text.split("\n") if "spec_decode" not in line)
        return text

    async def metrics(self, _: web.Request) -> web.Response:
        return web.Response(text=self.exposition(), content_type="text/plain")

    async def chat(self, request: web.Request) -> web.StreamResponse:
        me = id(request)
        self.in_flight += 1
        self._peaks[me] = self.in_flight
        for other in self._peaks:
            self._peaks[other] = max(self._peaks[other], self.in_flight)
        try:
            return await self._chat(request, me)
        finally:
            self.in_flight -= 1
            del self._peaks[me]

    async def _chat(self, request: web.Request, me: int) -> web.StreamResponse:
        body = await request.json()
        temperature = body.get("temperature")
        temperature = 1.0 if temperature is None else float(temperature)
        drafted = 60
        accepted = round(drafted * self.acceptance_by_temperature(temperature))
        steps = drafted // K
        doc = json.loads(response("chat_nonstream_t0.7.json"))
        doc["model"] = self.model
        spec = doc["metrics"]["speculative_decoding"]
        spec.update(
            num_accepted_draft_tokens=accepted,
            num_draft_tokens=drafted,
            num_spec_steps=steps,
            draft_acceptance_rate=accepted / drafted,
            mean_acceptance_length=1 + accepted / steps,
        )
        if self.spec_enabled:
            self.served_accepted += accepted
            self.served_drafted += drafted
            self.served_steps += steps
        if not (self.spec_enabled and self.per_request_spec_metrics):
            del doc["metrics"]["speculative_decoding"]
        if body.get("stream"):
            return await self._stream(request, body, doc["metrics"], me)
        self._set_itl(doc["metrics"], me)
        return web.json_response(doc)

    def _set_itl(self, metrics: dict, me: int) -> None:
        if self.mean_itl_ms_at is not None:
            metrics["mean_itl_ms"] = self.mean_itl_ms_at(self._peaks[me])

    async def _stream(self, request: web.Request, body: dict, metrics: dict, me: int) -> web.StreamResponse:
        # The real captured stream, its usage chunk carrying this request's metrics, sent only when asked for.
        include_usage = (body.get("stream_options") or {}).get("include_usage") is True
        stream = web.StreamResponse(headers={"Content-Type": "text/event-stream; charset=utf-8"})
        await stream.prepare(request)
        for event in sse_events(response("chat_stream_usage_t0.4.sse")):
            if b'"choices":[]' in event:
                if not include_usage:
                    continue
                chunk = json.loads(event.removeprefix(b"data: "))
                chunk["model"] = self.model
                self._set_itl(metrics, me)
                chunk["metrics"] = metrics
                event = b"data: " + json.dumps(chunk, separators=(",", ":")).encode() + b"\n\n"
            await stream.write(event)
            # Let other requests' handlers run between events, as a server streaming many at once does.
            await asyncio.sleep(0)
        await stream.write_eof()
        return stream

    async def models(self, _: web.Request) -> web.Response:
        return web.json_response({"object": "list", "data": [{"id": self.model, "object": "model"}]})

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/metrics", self.metrics)
        app.router.add_post("/v1/chat/completions", self.chat)
        app.router.add_get("/v1/models", self.models)
        return app
