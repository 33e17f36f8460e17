"""The rules the chart renders into its PrometheusRule pass promtool check rules."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import helm_python as helm
import pytest
import yaml

from mixin.chart import LAYERS
from tests.unit import test_chart
from tests.unit.test_chart import ci_values, rule_objects

# The unit tests' fixture, shared.
chart = test_chart.chart


@pytest.mark.parametrize("values", ["monitoring", "custom-thresholds"])
def test_rules_in_the_rendered_prometheus_rule_pass_promtool(chart: helm.Chart, values: str, tmp_path: Path) -> None:
    promtool = shutil.which("promtool")
    assert promtool, "promtool not found: install Debian's prometheus package (.ci/run does)"
    layers = rule_objects(chart, ci_values(values))
    assert layers.keys() == set(LAYERS)
    for layer, rule in layers.items():
        rules = tmp_path / f"{layer}.yaml"
        rules.write_text(yaml.safe_dump(rule["spec"], sort_keys=False))
        result = subprocess.run([promtool, "check", "rules", str(rules)], capture_output=True, text=True, timeout=60)
        assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout
