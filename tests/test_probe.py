"""`spec-exporter probe` against a stand-in vLLM whose acceptance depends on the temperature."""

from __future__ import annotations

import io
import json
from typing import Any

import aiohttp
import pytest

from spec_exporter import cli
from spec_exporter.commands.probe import ProbeSettings, probe_main, render_json, render_table, run_probe
from spec_exporter.types import SpecCounters
from tests.system.scenario_vllm import ScenarioVLLM


def by_temperature(t: float) -> float:
    return 0.82 if t < 0.5 else 0.38  # round(60 * .82) = 49 and round(60 * .38) = 23 of 60 draft tokens


async def probed(aiohttp_server: Any, scenario: ScenarioVLLM, **kw: Any):  # type: ignore[no-untyped-def]
    server = await aiohttp_server(scenario.app())
    settings = ProbeSettings(target=str(server.make_url("")), requests=5, temperatures=(0.0, 0.8), **kw)
    async with aiohttp.ClientSession() as session:
        phases, warnings = await run_probe(settings, session)
    return settings, phases, warnings


async def test_per_request_metrics_give_percentiles_per_temperature(aiohttp_server: Any) -> None:
    settings, phases, warnings = await probed(
        aiohttp_server, ScenarioVLLM("m", acceptance_by_temperature=by_temperature)
    )
    assert warnings == []
    greedy, hot = (p.summary(settings.thresholds) for p in phases)
    assert greedy["acceptance_source"] == "per-request metrics"
    assert greedy["acceptance_rate"] == 49 / 60 and greedy["acceptance_percentiles"]["p10"] == 49 / 60
    assert greedy["mean_acceptance_length"] == 1 + 49 * 5 / (20 * 5)
    assert greedy["verdict"] == "beneficial" and hot["verdict"] == "disable"
    assert hot["acceptance_rate"] == 23 / 60 and hot["draft_tokens"] == 300
    # The stand-in's usage chunk carries vLLM's own per-request TPOT (mean_itl_ms of the captured response).
    assert greedy["tpot_seconds"]["p50"] == pytest.approx(9.271997322582225 / 1000)
    assert greedy["ttft_seconds"]["p50"] is not None and greedy["failed"] == 0
    # The engine's counters over each phase agree with the per-request sums.
    assert phases[0].engine == SpecCounters(drafts=100, draft_tokens=300, accepted_tokens=49 * 5)


async def test_without_per_request_metrics_acceptance_comes_from_the_counters(aiohttp_server: Any) -> None:
    scenario = ScenarioVLLM("m", acceptance_by_temperature=by_temperature, per_request_spec_metrics=False)
    settings, phases, warnings = await probed(aiohttp_server, scenario)
    greedy, hot = (p.summary(settings.thresholds) for p in phases)
    assert greedy["acceptance_source"] == "vLLM counters over the phase"
    assert greedy["acceptance_rate"] == 49 / 60 and hot["acceptance_rate"] == 23 / 60
    assert greedy["acceptance_percentiles"] == {}
    assert any("--per-request-spec-decode-metrics summary" in w for w in warnings)


async def test_a_target_without_speculative_decoding_is_called_out(aiohttp_server: Any) -> None:
    settings, phases, warnings = await probed(aiohttp_server, ScenarioVLLM("m", spec_enabled=False))
    assert any("speculative decoding looks off" in w for w in warnings)
    assert all(p.summary(settings.thresholds)["verdict"] == "insufficient_data" for p in phases)


async def test_reports_render_every_temperature(aiohttp_server: Any) -> None:
    settings, phases, warnings = await probed(
        aiohttp_server, ScenarioVLLM("m", acceptance_by_temperature=by_temperature)
    )
    table = render_table(settings, phases, warnings)
    assert "0.817" in table and "0.383" in table and "T=0.8: disable" in table and "T=0: beneficial" in table
    doc = json.loads(render_json(settings, phases, warnings))
    assert [t["temperature"] for t in doc["temperatures"]] == [0.0, 0.8]


async def test_an_unreachable_target_fails_with_a_clear_message() -> None:
    err = io.StringIO()
    code = await probe_main(ProbeSettings(target="http://127.0.0.1:9", requests=1), "table", out=io.StringIO(), err=err)
    assert code == 1 and "cannot reach http://127.0.0.1:9" in err.getvalue()


def test_bad_arguments_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["probe", "--target", "http://x", "--temperatures", "hot", "--requests", "0"]) == 2
    err = capsys.readouterr().err
    assert "--temperatures" in err and "--requests" in err
