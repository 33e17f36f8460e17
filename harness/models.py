"""The target/draft pair the demo and the real tier serve: shipped in harness/pair/, checked against its SHA256SUMS.

Training is deterministic on one machine but not across machines (another CPU's kernels round differently, and a
thousand optimiser steps amplify that: one machine's pair accepted 0.81 of its greedy drafts, another's 0.57), so
every machine serves the same shipped weights, and the numbers docs/models.md quotes are theirs.

    .venv/bin/python -m harness.models            # retrain into the cache (make models) and print where
    .venv/bin/python -m harness.models --ship     # ... and replace harness/pair with that pair and its checksums

SPEC_EXPORTER_PAIR=DIR (a directory with target/, draft/ and training.json, such as the one `make models` prints)
serves that pair instead of the shipped one.
"""

from __future__ import annotations

import argparse
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
SHIPPED = ROOT / "harness" / "pair"
CHECKSUMS = "SHA256SUMS"
# Code-completion prompts in the corpus's own style: the beginnings of standard-library-like functions.
PROMPTS_FILE = ROOT / "harness" / "prompts.txt"
NUM_SPECULATIVE_TOKENS = 3

__all__ = [
    "NUM_SPECULATIVE_TOKENS",
    "PROMPTS_FILE",
    "SHIPPED",
    "TrainedPair",
    "pair",
    "prompts",
    "shipped_pair",
    "trained_pair",
    "verify",
]


@dataclass(frozen=True)
class TrainedPair:
    target: Path
    draft: Path
    # scripts/train_models.py's training.json: parameters, seconds and final loss of each model.
    report: dict[str, Any]
    # Where the pair comes from: shipped (checksums checked), SPEC_EXPORTER_PAIR's, or trained into the cache.
    origin: str = "shipped"

    def describe(self) -> str:
        t, d = self.report["target"], self.report["draft"]
        return (
            f"target {t['parameters'] / 1e6:.2f}M parameters, draft {d['parameters'] / 1e3:.0f}k "
            f"({self.report['parameter_ratio']:g}x smaller), trained on "
            f"{self.report['corpus_characters'] / 1e6:.1f} MB of Python {self.report['python']}'s standard library; "
            f"{self.origin}"
        )


def _files(directory: Path) -> list[Path]:
    return sorted(p for p in directory.rglob("*") if p.is_file() and p.name != CHECKSUMS)


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def checksums(directory: Path) -> str:
    """SHA256SUMS text (sha256sum's format, `sha256sum -c` reads it) for every file of a pair directory."""
    return "".join(f"{_sha256(p)}  {p.relative_to(directory).as_posix()}\n" for p in _files(directory))


def verify(directory: Path) -> None:
    """Raise unless every file of `directory` is listed in its SHA256SUMS with that content, and none is missing."""
    listed: dict[str, str] = {}
    for line in (directory / CHECKSUMS).read_text().splitlines():
        digest, name = line.split(maxsplit=1)
        listed[name] = digest
    present = {p.relative_to(directory).as_posix(): p for p in _files(directory)}
    wrong = [
        f"{name}: sha256 {_sha256(present[name]) if name in present else 'missing'}, expected {digest}"
        for name, digest in listed.items()
        if name not in present or _sha256(present[name]) != digest
    ]
    wrong += [f"{name}: not in {CHECKSUMS}" for name in present if name not in listed]
    if wrong:
        raise ValueError(
            f"{directory} is not the pair its {CHECKSUMS} describes ({'; '.join(wrong)}); `make models` retrains "
            "into the cache, `python -m harness.models --ship` replaces the shipped pair"
        )


def shipped_pair(directory: Path = SHIPPED) -> TrainedPair:
    verify(directory)
    report = json.loads((directory / "training.json").read_text())
    return TrainedPair(directory / "target", directory / "draft", report, "shipped in harness/pair, sha256 checked")


def pair() -> TrainedPair:
    """The pair to serve: SPEC_EXPORTER_PAIR's directory when set, else the shipped one (checked)."""
    chosen = os.environ.get("SPEC_EXPORTER_PAIR")
    if not chosen:
        return shipped_pair()
    directory = Path(chosen)
    report = json.loads((directory / "training.json").read_text())
    return TrainedPair(directory / "target", directory / "draft", report, f"SPEC_EXPORTER_PAIR={directory}")


def cache_dir(cache: Path) -> Path:
    digest = hashlib.sha256(SCRIPT.read_bytes()).hexdigest()[:16]
    return cache / "models" / digest


def trained_pair(python: str, cache: Path, env: dict[str, str] | None = None) -> TrainedPair:
    """The pair trained on this machine and cached, training it first (a few minutes on 2 cores) when this
    version of the script has none."""
    out = cache_dir(cache)
    origin = f"trained earlier on this machine into {out}"
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
        origin = f"trained now on this machine in {time.monotonic() - started:.0f} s into {out}"
    report = json.loads((out / "training.json").read_text())
    return TrainedPair(out / "target", out / "draft", report, origin)


def ship(trained: TrainedPair, directory: Path = SHIPPED) -> None:
    """Replace the shipped pair with `trained` and write its checksums."""
    shutil.rmtree(directory, ignore_errors=True)
    directory.mkdir(parents=True)
    shutil.copytree(trained.target, directory / "target")
    shutil.copytree(trained.draft, directory / "draft")
    shutil.copy(trained.target.parent / "training.json", directory / "training.json")
    (directory / CHECKSUMS).write_text(checksums(directory))


def prompts() -> list[str]:
    return [line.rstrip("\n") for line in PROMPTS_FILE.read_text(encoding="utf-8").splitlines() if line.strip()]


if __name__ == "__main__":
    from harness.vllm import CACHE, QUIET_OFFLINE, vllm_python

    parser = argparse.ArgumentParser(prog="python -m harness.models", description=__doc__)
    parser.add_argument("--ship", action="store_true", help="replace harness/pair with the pair trained here")
    args = parser.parse_args()
    trained = trained_pair(vllm_python(), CACHE, {**os.environ, **QUIET_OFFLINE})
    print(f"target: {trained.target}\ndraft:  {trained.draft}\n{trained.describe()}")
    if args.ship:
        ship(trained)
        print(f"shipped into {SHIPPED}: review docs/models.md's numbers against it before committing")
    else:
        print(f"serve it with SPEC_EXPORTER_PAIR={trained.target.parent} (the demo and the real tier)")
