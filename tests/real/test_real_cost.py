"""The real tier for the cost model: `probe --write-profile` measures rho per concurrency on the trained pair
against a plain vLLM, the exporter loaded with that profile prices its step at the live load from it
(`source="calibration"`, exactly acceptance length / rho(load)), and a separate sweep measures how close that
prediction comes to the baseline at the same concurrency (a benchmark: recorded, not asserted; docs/models.md).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from harness.ports import free_port
from harness.processes import exporter_cmd, running
from harness.vllm import MODEL_NAME, running_vllm
from spec_exporter.config import settings_from_mapping
from spec_exporter.derive.cost import interpolate
from tests.real.scrape import http, probe, samples, settle

CONCURRENCY = (1, 2, 4)


def probe_at(spec: str, plain: str, concurrency: str, *extra: str) -> dict[str, Any]:
    doc, _ = probe(
        *("--target", spec, "--baseline-target", plain, "--concurrency", concurrency, "--temperatures", "0"),
        *(
            "--requests",
            "12",
            "--max-tokens",
            "48",
            "--prompts",
            str(Path(__file__).parents[2] / "harness" / "prompts.txt"),
        ),
        *extra,
        timeout=900,
    )
    return doc


def sample(s: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str, **labels: str) -> float | None:
    wanted = tuple(sorted(labels.items()))
    return s.get((name, wanted))


def test_a_probe_profile_prices_the_exporters_step_at_the_live_load(tmp_path: Path, trained: Any) -> None:
    profile_path = tmp_path / "profile.yaml"
    with (
        running_vllm(tmp_path / "spec.log") as spec,
        running_vllm(tmp_path / "plain.log", speculative=False) as plain,
    ):
        doc = probe_at(spec.url, plain.url, ",".join(map(str, CONCURRENCY)), "--write-profile", str(profile_path))
        (tmp_path / "probe.json").write_text(json.dumps(doc, indent=2))
        profile = settings_from_mapping(
            {"targets": [{"name": "vllm", "url": spec.url}], "speculation": {"cost_profile": str(profile_path)}}
        ).speculation.cost_profile
        assert profile is not None and profile.model == MODEL_NAME and profile.num_speculative_tokens == 3
        assert [p.batch_size for p in profile.points] == list(CONCURRENCY)
        assert all(p.step_cost_ratio > 0 and p.acceptance_length is not None for p in profile.points)

        exporter = f"127.0.0.1:{free_port()}"
        settings = {
            "targets": [{"name": "vllm", "url": spec.url}],
            "poll": {"interval": "1s", "timeout": "900ms"},
            "windows": ["30s", "10m"],
            "speculation": {"cost_profile": str(profile_path)},
        }
        (tmp_path / "exporter.yaml").write_text(yaml.safe_dump(settings))
        with running(exporter_cmd(tmp_path / "exporter.yaml", exporter), f"http://{exporter}/readyz",
                     tmp_path / "exporter.log"):  # fmt: skip
            settle(f"http://{exporter}")
            body = {"model": MODEL_NAME, "messages": [{"role": "user", "content": "def dedent(text):"}],
                    "max_tokens": 48, "temperature": 0}  # fmt: skip
            assert json.loads(http(f"{spec.url}/v1/chat/completions", body))["usage"]["completion_tokens"] > 1
            settle(f"http://{exporter}")
            seen = samples(f"http://{exporter}")

        # A separate sweep at one concurrency: the measured speedup against the baseline there, beside what the
        # profile predicts from that sweep's own acceptance length.
        separate = probe_at(spec.url, plain.url, "2")
    window = {"target": "vllm", "model_name": MODEL_NAME, "engine": "0", "window": "10m"}
    calibrated = {**window, "source": "calibration"}
    load = sample(seen, "spec_decode_load_running_requests", **window)
    length = sample(seen, "spec_decode_mean_acceptance_length", **window)
    rho = sample(seen, "spec_decode_step_cost_ratio", **calibrated)
    assert load is not None and length is not None and rho is not None, sorted(k for k in seen if "cost" in k[0])
    k_eff = sample(seen, "spec_decode_effective_num_speculative_tokens", **window)
    at_load = interpolate(profile, load)
    assert at_load is not None and k_eff is not None
    # The profile's rho at the live load, for the k drafted (a lone request drafts all 3: rho itself).
    expected_rho = 1 + (k_eff / 3) * (at_load - 1)
    assert rho == pytest.approx(expected_rho)
    assert sample(seen, "spec_decode_expected_speedup", **calibrated) == pytest.approx(length / expected_rho)
    assert sample(seen, "spec_decode_expected_speedup", **window, source="prior") is None

    (cell,) = separate["cells"]
    predicted = cell["mean_acceptance_length"] / interpolate(profile, 2.0)
    record = {
        "profile": [p.model_dump() for p in profile.points],
        "exporter": {"load": load, "acceptance_length": length, "rho": rho},
        "separate_run_concurrency_2": {"measured_tpot_speedup": cell["tpot_speedup"], "predicted": predicted},
    }
    (tmp_path / "prediction.json").write_text(json.dumps(record, indent=2))
    print("cost-model benchmark:", json.dumps(record))
