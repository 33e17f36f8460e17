"""Dashboard queries evaluated by promtool against input series: what a panel shows, not only what it says."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import yaml

from tests.unit.test_dashboards import _grafana, overview, panel


def test_verdict_query_works_without_a_cluster_label_and_keeps_tap_bands_for_any_engine(tmp_path: Path) -> None:
    (query,) = [t["expr"] for t in panel(overview(), "Verdict by model and temperature band")["targets"]]
    pod = 'job="vllm-spec-exporter",namespace="llm",pod="vllm-0",target="vllm",model_name="m"'
    series = [
        # No cluster label anywhere (a single-cluster Prometheus); engine 0's own verdict and a tap band's.
        (f'spec_decode_verdict{{{pod},engine="0",temperature_band="all",verdict="beneficial"}}', "1x20"),
        (f'spec_decode_verdict{{{pod},engine="0",temperature_band="all",verdict="disable"}}', "0x20"),
        (f'spec_decode_verdict{{{pod},engine="",temperature_band="0.7-1.0",verdict="disable"}}', "1x20"),
        (f'spec_decode_verdict{{{pod},engine="1",temperature_band="all",verdict="break_even"}}', "1x20"),
    ]
    all_rows = 'model_name="m",temperature_band="all",verdict="beneficial"'
    tap = '{model_name="m",temperature_band="0.7-1.0",verdict="disable"}'
    engine_1 = '{model_name="m",temperature_band="all",verdict="break_even"}'
    _promql(
        tmp_path,
        series,
        [
            (_grafana(query), ["{" + all_rows + "}", tap, engine_1]),
            # One engine picked: its own verdict, and the tap's bands all the same.
            (_grafana(query, engine="0"), ["{" + all_rows + "}", tap]),
            (_grafana(query, cluster="eu-1"), []),
        ],
    )


def test_restart_annotation_marks_vllm_restarts_not_the_exporters(tmp_path: Path) -> None:
    annotation = next(a for a in overview()["annotations"]["list"] if a["name"] == "vLLM restarts")
    vllm = 'job="vllm",namespace="llm",pod="vllm-0",instance="10.0.0.5:8000"'
    exporter = 'job="vllm-spec-exporter",namespace="llm",pod="vllm-0",instance="10.0.0.5:9400"'
    series = [
        # vLLM restarts at 7m (its container restarted in place); so does the exporter's process in the same pod.
        (f"process_start_time_seconds{{{vllm}}}", "100x6 520x13"),
        (f'vllm:num_requests_running{{{vllm},model_name="m",engine="0"}}', "1x20"),
        (f"process_start_time_seconds{{{exporter}}}", "90x6 530x13"),
    ]
    _promql(tmp_path, series, [(_grafana(annotation["expr"]), ["{" + vllm + "}"])])


def _promql(tmp_path: Path, series: list[tuple[str, str]], cases: list[tuple[str, list[str]]]) -> None:
    promtool = shutil.which("promtool")
    assert promtool, "promtool not found: install Debian's prometheus package (.ci/run does)"
    test = {
        "rule_files": [],
        "evaluation_interval": "1m",
        "tests": [
            {
                "interval": "1m",
                "input_series": [{"series": s, "values": v} for s, v in series],
                "promql_expr_test": [
                    {"expr": expr, "eval_time": "10m", "exp_samples": [{"labels": lbl, "value": 1} for lbl in want]}
                    for expr, want in cases
                ],
            }
        ],
    }
    path = tmp_path / "dashboard.test.yaml"
    path.write_text(yaml.safe_dump(test, sort_keys=False))
    result = subprocess.run(
        [promtool, "test", "rules", path.name], cwd=tmp_path, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stdout + result.stderr
