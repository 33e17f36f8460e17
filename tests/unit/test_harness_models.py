"""The shipped target/draft pair is what its checksums say, and the check catches a changed, missing or extra file."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest

from harness.models import SHIPPED, shipped_pair, verify


def test_the_shipped_pair_matches_its_checksums() -> None:
    pair = shipped_pair()
    assert (pair.target / "model.safetensors").is_file() and (pair.draft / "model.safetensors").is_file()
    assert pair.report["target"]["parameters"] > pair.report["draft"]["parameters"]


@pytest.fixture
def copy(tmp_path: Path) -> Path:
    shutil.copytree(SHIPPED, tmp_path / "pair")
    return tmp_path / "pair"


def test_a_changed_weight_fails_the_check(copy: Path) -> None:
    weights = copy / "draft" / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 1
    weights.write_bytes(bytes(data))
    with pytest.raises(ValueError, match=re.escape("draft/model.safetensors: sha256")):
        verify(copy)


def test_a_missing_or_unlisted_file_fails_the_check(copy: Path) -> None:
    (copy / "target" / "tokenizer.json").unlink()
    with pytest.raises(ValueError, match=re.escape("target/tokenizer.json: sha256 missing")):
        verify(copy)
    shutil.copy(SHIPPED / "target" / "tokenizer.json", copy / "target" / "tokenizer.json")
    verify(copy)
    (copy / "target" / "extra.bin").write_bytes(b"")
    with pytest.raises(ValueError, match=re.escape("extra.bin: not in SHA256SUMS")):
        verify(copy)
