"""Configuration: defaults, durations and sizes, and errors listed per field."""

from __future__ import annotations

from pathlib import Path

import pytest

from spec_exporter.config import ConfigError, format_duration, load_config, parse_duration, settings_from_mapping

TARGET = {"name": "a", "url": "http://127.0.0.1:8000"}


def test_defaults_match_the_documented_ones() -> None:
    s = settings_from_mapping({"targets": [TARGET]})
    assert s.poll.interval == 5.0 and s.poll.timeout == 4.0 and s.poll.max_body_bytes == 16 * 1024**2
    assert s.windows == [60.0, 300.0] and s.verdict_window_seconds == 300.0
    assert (s.thresholds.disable_below, s.thresholds.beneficial_at, s.thresholds.min_draft_tokens) == (0.5, 0.65, 100)
    assert s.targets[0].metrics_url == "http://127.0.0.1:8000/metrics"


@pytest.mark.parametrize(
    ("text", "seconds"), [("500ms", 0.5), ("5s", 5), ("1m", 60), ("1m30s", 90), ("2h", 7200), (15, 15.0)]
)
def test_durations(text: str | int, seconds: float) -> None:
    assert parse_duration(text) == seconds


def test_window_labels() -> None:
    assert [format_duration(s) for s in (60, 300, 90, 3600, 0.5)] == ["1m", "5m", "90s", "1h", "500ms"]


def test_a_short_interval_brings_the_default_timeout_down_with_it() -> None:
    s = settings_from_mapping({"targets": [TARGET], "poll": {"interval": "1s"}, "windows": ["10s"]})
    assert s.poll.timeout == 1.0


@pytest.mark.parametrize(
    ("data", "problem"),
    [
        ({"targets": []}, "targets: List should have at least 1 item"),
        ({"targets": [TARGET, TARGET]}, "target names must be unique: a"),
        ({"targets": [{**TARGET, "baseline": "b"}]}, "baseline 'b' is not a target with role baseline"),
        ({"targets": [TARGET], "poll": {"interval": "5s", "timeout": "10s"}}, "timeout must not exceed interval"),
        ({"targets": [TARGET], "windows": ["5s"]}, "every window must span at least two poll intervals"),
        ({"targets": [TARGET], "windows": ["1m", "60s"]}, "windows must be unique"),
        ({"targets": [TARGET], "verdict_window": "2m"}, "verdict_window must be one of windows"),
        ({"targets": [TARGET], "thresholds": {"disable_below": 0.7}}, "beneficial_at must be >= disable_below"),
        ({"targets": [{**TARGET, "name": "has space"}]}, "targets.0.name: String should match pattern"),
        ({"targets": [TARGET], "speculation": {"draft_cost_ratio": -1}}, "speculation.draft_cost_ratio"),
    ],
)
def test_each_problem_is_named(data: dict, problem: str) -> None:
    with pytest.raises(ConfigError) as excinfo:
        settings_from_mapping(data)
    assert any(problem in d for d in excinfo.value.details), excinfo.value.details


def test_unreadable_and_non_mapping_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="No such file"):
        load_config(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("targets: [\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)
    bad.write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="must be a mapping"):
        load_config(bad)


def test_target_names_and_urls_take_variables_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """One ConfigMap for every pod of a Deployment: each sidecar names its target after its own pod."""
    monkeypatch.setenv("POD_NAME", "vllm-7d9f-x2k4q")
    monkeypatch.setenv("VLLM_PORT", "8001")
    target = {"name": "${POD_NAME}", "url": "https://127.0.0.1:${VLLM_PORT}"}
    s = settings_from_mapping({"targets": [target], "tap": {"target": "${POD_NAME}"}})
    assert s.targets[0].name == "vllm-7d9f-x2k4q" and s.tap_target.name == "vllm-7d9f-x2k4q"
    assert s.targets[0].metrics_url == "https://127.0.0.1:8001/metrics"


def test_an_unset_variable_is_named_not_read_as_empty(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("POD_NAME", raising=False)
    with pytest.raises(ConfigError) as excinfo:
        settings_from_mapping({"targets": [{"name": "${POD_NAME}", "url": TARGET["url"]}]})
    assert excinfo.value.details == ["targets.0.name: ${POD_NAME} is not set in the environment"]
