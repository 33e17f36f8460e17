"""One completion request and its response, as both tap front ends drive it.

The front end hands over the request body (it gets back the body to forward), then the response's status and
headers, each body chunk (it gets back the bytes to send the client) and how the exchange ended; the exchange
folds the request into `TapMetrics` exactly once. It never raises: a failure of its own is counted as
`spec_tap_errors_total{stage="internal"}` and from then on every byte passes through untouched.
"""

from __future__ import annotations

from collections.abc import Callable

from spec_exporter.tap.echo import undo_echo
from spec_exporter.tap.metrics import ErrorStage, Outcome, TapMetrics
from spec_exporter.tap.request import NotUnderstood, RequestView, identity_only, read_request
from spec_exporter.tap.response import SpecResult, parse_json, spec_result
from spec_exporter.tap.settings import TapSettings
from spec_exporter.tap.sse import FilterFailed, UsageFilter
from spec_exporter.tap.temperature_bands import UNKNOWN
from spec_exporter.tap.workload import candidate


def _encoded(content_encoding: str | None) -> bool:
    return content_encoding is not None and content_encoding.strip().lower() not in ("", "identity")


class Exchange:
    """See the module docstring. `server_may_encode`: whether the server behind this front end might answer
    content-encoded (then usage is only injected for a client that accepts nothing but identity).
    `workload_header`, `workload_route`: the request's class header value and route prefix, when the settings
    name those sources (the header's value is only ever used as a label value, never logged). `joined`: False for
    an endpoint whose answers carry no per-request metrics: the request is read for its model and band (an
    unreadable body is no error there), nothing is injected or parsed, and it is folded as other_endpoint."""

    def __init__(
        self,
        metrics: TapMetrics,
        settings: TapSettings,
        *,
        clock: Callable[[], float],
        server_may_encode: bool,
        workload_header: str | None = None,
        workload_route: str | None = None,
        joined: bool = True,
    ) -> None:
        self._joined = joined
        self._metrics = metrics
        self._workload_header = workload_header
        self._workload_route = workload_route
        self._settings = settings
        self._clock = clock
        self._server_may_encode = server_may_encode
        self._started = clock()
        self._folded = False
        self._broken = False
        self.view: RequestView | None = None
        self._band = UNKNOWN
        self._request_unreadable = False
        self._not_measurable = False
        self._status: int | None = None
        self._upstream_failed = False
        self._client_gone = False
        self._sse: UsageFilter | None = None
        self._copy: bytearray | None = None
        # The error answer to a request we injected into, held whole to take the injection out of its echo.
        self._error: bytearray | None = None
        self._first_event_at: float | None = None
        self._last_event_at: float | None = None
        # What the request was folded as, once it is (for the front ends' own logging).
        self.outcome: Outcome | None = None

    @property
    def injected_usage(self) -> bool:
        return self.view is not None and self.view.injected_usage

    @property
    def holds_error(self) -> bool:
        """Whether the front end must hold the response head until `response_end`: the answer is an error to a
        request the tap added a member to, and its body (and so its Content-Length) may change. vLLM bounds such
        answers (ten errors of at most 1,000 characters), so holding one whole is cheap."""
        return self._error is not None

    # -- request --------------------------------------------------------------------------------------------

    def request(
        self, body: bytes | None, *, accept_encoding: str | None = None, content_encoding: str | None = None
    ) -> bytes | None:
        """The body to forward for this request body (None: over the inspection cap, not read)."""
        try:
            return self._request(body, accept_encoding, content_encoding)
        except Exception:
            self._fail()
            return body

    def _request(self, body: bytes | None, accept_encoding: str | None, content_encoding: str | None) -> bytes | None:
        if body is None or len(body) > self._settings.max_inspect_bytes:
            # A configured limit, not bad input: counted as not_measurable, with no error.
            self._not_measurable = True
            return body
        may_encode = self._server_may_encode and not identity_only(accept_encoding)
        if not self._joined:
            try:
                view = read_request(body, self._settings.bands, inject_usage=False, may_encode=True)
            except NotUnderstood:  # a form upload, say: nothing the tap needs to read
                return body
            self.view, self._band = view, view.temperature_band
            return body
        try:
            # A body labelled with a Content-Encoding is read as it is, as vLLM reads it (it decodes nothing), and
            # never rewritten.
            view = read_request(
                body,
                self._settings.bands,
                inject_usage=self._settings.inject_usage,
                may_encode=may_encode,
                encoded=_encoded(content_encoding),
            )
        except NotUnderstood:
            self._unreadable()
            return body
        self.view, self._band = view, view.temperature_band
        return view.upstream_body

    def _unreadable(self) -> None:
        self._request_unreadable = True
        self._metrics.error(ErrorStage.REQUEST)

    # -- response -------------------------------------------------------------------------------------------

    def response_start(
        self, status: int, *, content_type: str | None, content_encoding: str | None, content_length: bool
    ) -> bool:
        """Note the response head; True if the front end must drop Content-Length (the body will be shorter)."""
        try:
            return self._response_start(status, content_type, content_encoding, content_length)
        except Exception:
            self._fail()
            return False

    def _response_start(
        self, status: int, content_type: str | None, content_encoding: str | None, content_length: bool
    ) -> bool:
        self._status = status
        view = self.view
        if view is not None and view.added_member and status != 200 and not self._broken:
            self._error = bytearray()
            return False
        if view is None or status != 200 or self._broken or not self._joined:
            return False
        if _encoded(content_encoding):
            self._not_measurable = True
            if view.injected_usage:
                # Only possible if the server encodes although the client accepts identity only: the usage
                # chunk reaches the client inside the encoded body. Counted, never altered.
                self._metrics.error(ErrorStage.RESPONSE)
            return False
        if view.n != 1:
            self._not_measurable = True
            return False
        if (content_type or "").split(";")[0].strip().lower() == "text/event-stream":
            self._sse = UsageFilter(strip_usage=view.injected_usage)
            return view.injected_usage and content_length
        self._copy = bytearray()
        return False

    def response_body(self, chunk: bytes) -> bytes:
        """The bytes to send the client for this chunk of the response body."""
        sse = self._sse
        if sse is None:
            if self._copy is not None:
                self._keep(chunk)
            elif self._error is not None:
                self._error += chunk
                return b""
            return chunk
        if self._first_event_at is None:
            self._first_event_at = self._clock()
        try:
            return sse.feed(chunk)
        except FilterFailed as e:
            self._fail()
            return e.passthrough
        except Exception:
            # Raised before the filter touched its state (its slow path raises FilterFailed): what it held is
            # still what it holds.
            self._fail()
            try:
                return sse.unreturned() + chunk
            except Exception:
                return chunk

    def _keep(self, chunk: bytes) -> None:
        try:
            copy = self._copy
            assert copy is not None
            if len(copy) + len(chunk) > self._settings.max_inspect_bytes:
                self._copy, self._not_measurable = None, True
            else:
                copy += chunk
        except Exception:
            self._fail()

    def response_end(self) -> bytes:
        """The response body ended normally: what is still to be sent, and the request is folded."""
        rest = b""
        sse = self._sse
        if self._error is not None:
            held, self._error = bytes(self._error), None
            try:
                rest = held if self._broken else undo_echo(held)
            except Exception:
                self._fail()
                rest = held
        elif sse is not None:
            # The last event arrives right before the end of the body ([DONE] follows it at once).
            self._last_event_at = self._clock()
            held = sse.unreturned()
            try:
                rest = sse.finish()
            except Exception:
                self._fail()
                rest = held
        self._fold()
        return rest

    def upstream_failed(self) -> None:
        """The server could not be reached, or broke off mid-body."""
        self._upstream_failed = True
        self._fold()

    def client_gone(self) -> None:
        """The client went away before the response was complete."""
        self._client_gone = True
        self._fold()

    # -- folding --------------------------------------------------------------------------------------------

    def fail(self) -> None:
        """The front end failed around this exchange: count it, and pass everything from here on through raw."""
        self._fail()

    def _fail(self) -> None:
        # From here on the front end passes bytes through raw (response_body sees no filter).
        self._broken = True
        self._sse = None
        self._copy = None
        # A held error answer stays held (the front end holds its head): response_end returns it as it came.
        try:
            self._metrics.error(ErrorStage.INTERNAL)
        except Exception:  # counting the failure must not become one
            pass

    def _fold(self) -> None:
        if self._folded:
            return
        self._folded = True
        try:
            self._fold_once()
        except Exception:
            self._fail()

    def _fold_once(self) -> None:
        metrics, band, view = self._metrics, self._band, self.view
        model = view.model if view is not None else None
        # The alias the client asked for (the response may name the model it resolved to).
        workload = candidate(
            self._settings.workload_source,
            header=self._workload_header,
            model=model,
            route=self._workload_route,
        )
        ttft = tpot = None
        result = None
        if self._request_unreadable:
            model, band, outcome = None, UNKNOWN, Outcome.NOT_UNDERSTOOD
        elif self._client_gone:
            # Before the answer was complete, whatever its status (vLLM answers a body cut short with a 400).
            outcome = Outcome.CLIENT_DISCONNECTED
        elif self._status is not None and self._status != 200:
            outcome = Outcome.UPSTREAM_ERROR
        elif self._upstream_failed:
            outcome = Outcome.UPSTREAM_ERROR
        elif not self._joined:
            outcome = Outcome.OTHER_ENDPOINT
        elif view is not None and view.several_prompts:
            outcome = Outcome.UNREPORTED
        elif view is None or self._broken or self._not_measurable:
            outcome = Outcome.NOT_MEASURABLE
        else:
            result = self._result()
            if result is not None and result.model is not None:
                model = result.model
            ttft, tpot = _latency(result, self._started, self._first_event_at, self._last_event_at)
            if result is None:
                outcome = Outcome.NOT_MEASURABLE
            elif result.accepted is None or result.drafted is None:
                stopped = result.stopped_on_string or (self._sse is not None and self._sse.stopped_on_string)
                outcome = Outcome.UNREPORTED if stopped else Outcome.NO_SPEC_METRICS
            else:
                outcome = Outcome.MEASURED
        self.outcome = outcome
        metrics.request(
            model,
            band,
            outcome,
            accepted=result.accepted if result is not None else None,
            drafted=result.drafted if result is not None else None,
            ttft=ttft,
            tpot=tpot,
            steps=result.steps if result is not None else None,
            per_position=result.per_position if result is not None else None,
            workload=workload,
        )

    def _result(self) -> SpecResult | None:
        """The response's per-request numbers; None if it had none to read (a stream without a usage chunk)."""
        try:
            if self._sse is not None:
                if self._sse.malformed:
                    self._metrics.error(ErrorStage.RESPONSE)
                return spec_result(self._sse.usage) if self._sse.usage is not None else None
            if self._copy is not None:
                return spec_result(parse_json(bytes(self._copy)))
        except NotUnderstood:
            self._metrics.error(ErrorStage.RESPONSE)
        return None


def _latency(
    result: SpecResult | None, started: float, first_event_at: float | None, last_event_at: float | None
) -> tuple[float | None, float | None]:
    """Per-request TTFT and TPOT: vLLM's own numbers when the response has them, else measured here."""
    ttft = result.ttft_seconds if result is not None else None
    tpot = result.tpot_seconds if result is not None else None
    if ttft is None and first_event_at is not None:
        ttft = first_event_at - started
    tokens = result.completion_tokens if result is not None else None
    if tpot is None and first_event_at is not None and last_event_at is not None and tokens and tokens > 1:
        tpot = (last_event_at - first_event_at) / (tokens - 1)
    return ttft, tpot
