"""The trained target/draft pair the demo and the real tier serve, trained on first use and cached.

    .venv/bin/python -m harness.models     # trains if needed, prints the two directories and how they were made

The pair lives under SPEC_EXPORTER_CACHE (default ~/.cache/spec-exporter)/models/<hash of scripts/train_models.py>/,
so editing the script retrains and an unchanged script never does.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "scripts" / "train_models.py"
# Code-completion prompts in the corpus's own style: the beginnings of standard-library-like functions.
PROMPTS_FILE = ROOT / "harness" / "prompts.txt"
NUM_SPECULATIVE_TOKENS = 3

__all__ = ["NUM_SPECULATIVE_TOKENS", "PROMPTS_FILE", "TrainedPair", "prompts", "trained_pair"]


@dataclass(frozen=True)
class TrainedPair:
    target: Path
    draft: Path
    # scripts/train_models.py's training.json: parameters, seconds and final loss of each model.
    report: dict[str, Any]
    # Wall-clock seconds this call spent training, or None when the cache already had the pair.
    trained_now: float | None = None

    def describe(self) -> str:
        t, d = self.report["target"], self.report["draft"]
        return (
            f"target {t['parameters'] / 1e6:.2f}M parameters, draft {d['parameters'] / 1e3:.0f}k "
            f"({self.report['parameter_ratio']:g}x smaller), trained here in {self.report['seconds']:.0f} s on "
            f"{self.report['corpus_characters'] / 1e6:.1f} MB of Python {self.report['python']}'s standard library"
        )


def cache_dir(cache: Path) -> Path:
    digest = hashlib.sha256(SCRIPT.read_bytes()).hexdigest()[:16]
    return cache / "models" / digest


def trained_pair(python: str, cache: Path, env: dict[str, str] | None = None) -> TrainedPair:
    """The cached pair, training it first (a few minutes on 2 cores) when this version of the script has none."""
    out = cache_dir(cache)
    trained_now = None
    if not (out / "training.json").exists():
        # Train beside the final directory and rename, so that an interrupted run never leaves a half pair behind.
        partial = out.with_name(out.name + f".partial-{os.getpid()}")
        shutil.rmtree(partial, ignore_errors=True)
        print(f"training the target and draft models into {out} (once per version of {SCRIPT.name})...", flush=True)
        started = time.monotonic()
        subprocess.run([python, str(SCRIPT), str(partial)], check=True, env=env)
        if (out / "training.json").exists():  # someone else finished first: theirs is identical
            shutil.rmtree(partial, ignore_errors=True)
        else:
            partial.rename(out)
        trained_now = time.monotonic() - started
        print(f"trained in {trained_now:.0f} s", flush=True)
    report = json.loads((out / "training.json").read_text())
    return TrainedPair(out / "target", out / "draft", report, trained_now)


def prompts() -> list[str]:
    return [line.rstrip("\n") for line in PROMPTS_FILE.read_text(encoding="utf-8").splitlines() if line.strip()]


if __name__ == "__main__":
    from harness.vllm import CACHE, QUIET_OFFLINE, vllm_python

    pair = trained_pair(vllm_python(), CACHE, {**os.environ, **QUIET_OFFLINE})
    print(f"target: {pair.target}\ndraft:  {pair.draft}\n{pair.describe()}")
