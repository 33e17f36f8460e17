"""Taking the injected `stream_options` back out of vLLM's validation error, which echoes the request (pure).

vLLM 0.32 answers a request its request model rejects (a missing `messages`, a field of the wrong type) with a 400
listing the errors (vllm/entrypoints/serve/exception_handling/handlers/validation.py), each as the repr of
pydantic's error dict with its `input` summarised: a container as `'<dict of N items>'`, never its contents:

    1 validation error:\n  {'type': 'missing', 'loc': 'body.messages', 'msg': 'Field required',
    'input': '<dict of 3 items>'}   (one line)

An error's input is the request body itself exactly when a top-level member is missing (`type` missing, `loc`
`body.<member>`) or the body as a whole is at fault (`loc` `body`); every other input is a member's own value
(a nested dict of the same size must stay as it is). Into a body that had no `stream_options` the tap injects one
member (so vLLM's dict has exactly one more item than the client's), always valid, so undoing it means counting
one item less in those summaries, and nothing else. (Into a client's own `stream_options` it merges a copy under
the same key: the count stays, and so does the echo.)
"""

from __future__ import annotations

import re

_BODY_SUMMARY = re.compile(
    rb"\{'type': '(?P<type>[a-z_]+)', 'loc': '(?P<loc>body(?:\.[^'.]*)?)', 'msg': '[^'\\]*', "
    rb"'input': '<dict of (?P<n>\d+) items>'"
)


def undo_echo(answer: bytes) -> bytes:
    """vLLM's error answer as it would have read for the request without the injected member."""

    def one_less(m: re.Match[bytes]) -> bytes:
        if m["type"] != b"missing" and m["loc"] != b"body":
            return m[0]
        start, end = m.span("n")
        n = int(m["n"])
        return m[0][: start - m.start()] + str(n - 1).encode() + m[0][end - m.start() :] if n > 0 else m[0]

    return _BODY_SUMMARY.sub(one_less, answer)


__all__ = ["undo_echo"]
