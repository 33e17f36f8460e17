"""Server-sent events between vLLM and the client: split into events as they pass, find the usage chunk, and,
when the tap asked vLLM for it on the client's behalf, hand the client exactly the stream it would have got
without asking.

Events end at a blank line, and lines end with CRLF, LF or CR (the SSE spec allows all three, mixed), so a CR at
the end of one chunk may still be followed by the LF of its CRLF in the next: that LF belongs to the line before.

What asking for usage changes in vLLM 0.32's stream (chat and completions serving, `include_usage`): a final
event with `choices: []`, `usage` and the per-request metrics is added, and the `system_fingerprint` moves from
the terminal chunk (the one with a `finish_reason`) to that final event. So the filter withholds the usage event
and puts the fingerprint back where it would have been, holding the terminal chunk until the usage event (which
vLLM writes right after it) arrives. With several prompts in one completion each prompt's terminal chunk carries
the fingerprint, and other prompts' chunks may follow the first one: from the first terminal chunk on, every event
is held, in order, and each terminal chunk gets its fingerprint back when the usage event arrives.
"""

from __future__ import annotations

import re
from typing import Any

from spec_exporter.tap.request import NotUnderstood
from spec_exporter.tap.response import parse_json

_CR, _LF = 13, 10
_FINISHED = b'"finish_reason":"'
# A choice that ended on a stop string (vLLM's stop_reason is the string; a stop token is a number).
_STOPPED_ON_STRING = b'"stop_reason":"'
_LINE_END = re.compile(rb"\r\n|\r|\n")
_EMPTY_CHOICES = re.compile(rb'"choices"\s*:\s*\[\s*\]')
# The fingerprint as vLLM serialised it into the usage event (compact JSON: a string token, escapes and all), so it
# goes back into the terminal chunk byte for byte, whatever `--fingerprint-value` holds.
_FINGERPRINT = re.compile(rb'"system_fingerprint":("(?:[^"\\]|\\.)*")')


def event_data(event: bytes) -> bytes | None:
    """The data of one event (its `data` fields joined by LF, as the SSE spec says), or None if it has none."""
    data = []
    for line in _LINE_END.split(event):
        if line.startswith(b"data:"):
            value = line[5:]
            data.append(value[1:] if value.startswith(b" ") else value)
        elif line == b"data":
            data.append(b"")
    return b"\n".join(data) if data else None


def is_usage_chunk(obj: Any) -> bool:
    # The final chunk vLLM adds for include_usage: no choices, and the usage (and per-request metrics).
    return isinstance(obj, dict) and obj.get("choices") == [] and isinstance(obj.get("usage"), dict)


class FilterFailed(Exception):
    """A failure inside the filter; `passthrough` is every byte fed and not yet returned, to send as it is."""

    def __init__(self, passthrough: bytes) -> None:
        super().__init__("usage filter failed")
        self.passthrough = passthrough


class UsageFilter:
    """Feed it upstream bytes; it returns what to send the client now.

    With `strip_usage` off it only watches: every byte goes out at once. With it on, whole events go out as they
    complete (vLLM writes whole events, so nothing waits in practice), the usage event is withheld, and the
    terminal chunk waits for it. If vLLM turns out to include usage on its own (`--enable-force-include-usage`
    puts it into every chunk), the client would have had the usage event anyway: stripping stops.
    """

    def __init__(self, strip_usage: bool) -> None:
        self.strip_usage = strip_usage
        self.usage: Any = None
        self.data_events = 0
        self.malformed = 0
        self.stopped_on_string = False
        self._buf = bytearray()  # the current event, not complete yet
        self._line_start = 0
        self._scan = 0
        self._cr_pending = False  # the last byte seen was a CR ending a line: an LF next is part of it
        # Where the last complete event went: withheld (usage) or held (terminal); else sent.
        self._withheld_last = False
        self._held_last = False
        # Events held from the first terminal chunk on, in order: [bytes, is_terminal].
        self._held: list[list[Any]] = []

    def unreturned(self) -> bytes:
        """The bytes fed but not returned yet."""
        if not self.strip_usage:
            return b""
        return b"".join(e for e, _ in self._held) + bytes(self._buf)

    def feed(self, chunk: bytes) -> bytes:
        if not chunk:
            return b""
        if (
            not self._buf
            and not self._cr_pending
            and not self._held
            and chunk.endswith(b"\n\n")
            and b'"usage"' not in chunk
        ):
            # vLLM's finish_reason is null or a string; only a chunk with a string one is held.
            if _FINISHED not in chunk:
                # The common case, token chunks: whole events, none to hold back or parse. Skipping the split and
                # the copies keeps the per-chunk cost to two substring scans. (Only whether events arrived is used.)
                self.data_events += 1
                return chunk
            if not self.strip_usage:
                self.data_events += 1
                self.stopped_on_string |= _STOPPED_ON_STRING in chunk
                return chunk
        held = self.unreturned()
        try:
            return self._feed(chunk)
        except Exception as e:
            raise FilterFailed(held + chunk) from e

    def _feed(self, chunk: bytes) -> bytes:
        strip = self.strip_usage
        out = bytearray()
        data = chunk
        buf = self._buf
        if self._cr_pending:
            self._cr_pending = False
            if data[0] == _LF:
                data = data[1:]
                if buf:
                    buf.append(_LF)
                    self._line_start += 1
                    self._scan += 1
                elif self._held_last:
                    self._held[-1][0] += b"\n"
                elif not self._withheld_last:
                    out.append(_LF)
        buf += data
        n = len(buf)
        start, i = 0, self._scan
        cr = lf = -2
        switched_at: int | None = None
        while i < n:
            if -1 != cr < i:
                cr = buf.find(b"\r", i)
            if -1 != lf < i:
                lf = buf.find(b"\n", i)
            if cr == -1 and lf == -1:
                i = n
                break
            if cr == -1 or (lf != -1 and lf < cr):
                j, end = lf, lf + 1
            else:
                j = cr
                end = cr + 2 if cr + 1 < n and buf[cr + 1] == _LF else cr + 1
                if end == n and cr + 1 == n:
                    self._cr_pending = True
            blank = j == self._line_start
            self._line_start = i = end
            if not blank:
                continue
            emitted = self._on_event(bytes(buf[start:end]))
            start = end
            if strip:
                out += emitted
                if not self.strip_usage:
                    strip, switched_at = False, end
        rest = bytes(buf[switched_at:]) if switched_at is not None else b""
        del buf[:start]
        self._line_start -= start
        self._scan = i - start
        if strip:
            return bytes(out)
        if switched_at is not None:
            return bytes(out) + rest
        return chunk

    def finish(self) -> bytes:
        """Whatever is still held when upstream ends (the terminal chunk, a last event without its blank line)."""
        rest = self.unreturned()
        self._held.clear()
        self._buf.clear()
        return rest

    def _on_event(self, event: bytes) -> bytes:
        """Watch one complete event; the bytes to send in its place (used only while stripping)."""
        self._withheld_last = self._held_last = False
        data = event_data(event)
        if data is None:
            if self.strip_usage and self._held:
                self._held.append([event, False])
                self._held_last = True
                return b""
            return self._release() + event
        self.data_events += 1
        if b'"usage"' in data:
            if _EMPTY_CHOICES.search(data):
                obj = self._parse(data)
                if is_usage_chunk(obj):
                    self.usage = obj
                    if self.strip_usage:
                        self._withheld_last = True
                        token = _FINGERPRINT.search(data) if isinstance(obj.get("system_fingerprint"), str) else None
                        return self._release(token[1] if token else None)
                    return b""
            elif self.strip_usage:
                obj = self._parse(data)
                if isinstance(obj, dict) and obj.get("usage") is not None:
                    self.strip_usage = False
                    return self._release() + event
        terminal = data.count(b'"finish_reason"') != data.count(b'"finish_reason":null')
        if terminal and _STOPPED_ON_STRING in data:
            self.stopped_on_string = True
        if self.strip_usage and (terminal or self._held):
            # A terminal chunk (a choice with a finish_reason), or any event after one: held until the usage
            # event, unparsed.
            self._held.append([event, terminal])
            self._held_last = True
            return b""
        return self._release() + event

    def _parse(self, data: bytes) -> Any:
        try:
            return parse_json(data)
        except NotUnderstood:
            self.malformed += 1
            return None

    def _release(self, fingerprint: bytes | None = None) -> bytes:
        """The held events, each terminal chunk with the fingerprint (its JSON token) vLLM would have put there had
        usage not been asked for."""
        if not self._held:
            return b""
        held, self._held = self._held, []
        if fingerprint is None:
            return b"".join(e for e, _ in held)
        out = bytearray()
        for event, terminal in held:
            if terminal and b'"system_fingerprint"' not in event and event.count(b"data:") == 1:
                # vLLM serialises the field last (model_dump_json, field order), right before the closing brace.
                end = event.rfind(b"}")
                out += event[:end] + b',"system_fingerprint":' + fingerprint + event[end:]
            else:
                out += event
        return bytes(out)
