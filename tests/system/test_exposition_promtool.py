"""The golden /metrics files pass promtool check metrics."""

from __future__ import annotations

import shutil
import subprocess

import pytest

from tests.unit.test_exposition import GOLDEN


@pytest.mark.parametrize("name", ["v0.32_idle_to_load.prom", "v0.32_dp2_idle_to_load.prom", "v0.32_with_tap.prom"])
def test_golden_files_pass_promtool_check_metrics(name: str) -> None:
    promtool = shutil.which("promtool")
    assert promtool, "promtool not found: install Debian's prometheus package (.ci/run does)"
    result = subprocess.run(
        [promtool, "check", "metrics"], input=(GOLDEN / name).read_bytes(), capture_output=True, timeout=60
    )
    assert result.returncode == 0, result.stdout.decode() + result.stderr.decode()
