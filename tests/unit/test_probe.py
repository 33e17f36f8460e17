"""`spec-exporter probe` against a stand-in vLLM whose acceptance depends on the temperature."""

from __future__ import annotations

import io
import json
from typing import Any

import aiohttp
import pytest

from spec_exporter import cli
from spec_exporter.commands.probe import probe_main
from spec_exporter.commands.probe_analysis import cell_summary, compare_cell, crossovers, suggest_schedule
from spec_exporter.commands.probe_document import probe_document
from spec_exporter.commands.probe_load import PhaseResult, ProbeRun, ProbeSettings, RequestResult, run_probe
from spec_exporter.commands.probe_render import render_json, render_table
from spec_exporter.types import SpecCounters
from tests.system.scenario_vllm import ScenarioVLLM


def _run(cells, baseline, warnings):  # type: ignore[no-untyped-def]
    return ProbeRun(list(cells), None if baseline is None else list(baseline), list(warnings))


def by_temperature(t: float) -> float:
    return 0.82 if t < 0.5 else 0.38  # round(60 * .82) = 49 and round(60 * .38) = 23 of 60 draft tokens


async def probed(aiohttp_server: Any, scenario: ScenarioVLLM, **kw: Any):  # type: ignore[no-untyped-def]
    server = await aiohttp_server(scenario.app())
    settings = ProbeSettings(target=str(server.make_url("")), requests=5, temperatures=(0.0, 0.8), **kw)
    async with aiohttp.ClientSession() as session:
        run = await run_probe(settings, session)
    return settings, run.cells, run.warnings


async def test_per_request_metrics_give_percentiles_per_temperature(aiohttp_server: Any) -> None:
    settings, phases, warnings = await probed(
        aiohttp_server, ScenarioVLLM("m", acceptance_by_temperature=by_temperature)
    )
    assert warnings == []
    greedy, hot = (cell_summary(p, settings) for p in phases)
    assert greedy["acceptance_source"] == "per-request metrics"
    assert greedy["acceptance_rate"] == 49 / 60 and greedy["acceptance_percentiles"]["p10"] == 49 / 60
    assert greedy["mean_acceptance_length"] == 1 + 49 * 5 / (20 * 5)
    assert greedy["verdict"] == "beneficial" and hot["verdict"] == "disable"
    assert hot["acceptance_rate"] == 23 / 60 and hot["draft_tokens"] == 300
    # The stand-in's usage chunk carries vLLM's own per-request TPOT (mean_itl_ms of the captured response).
    assert greedy["tpot_seconds"]["p50"] == pytest.approx(9.271997322582225 / 1000)
    assert greedy["ttft_seconds"]["p50"] is not None and greedy["failed"] == 0
    # The engine's counters over each phase agree with the per-request sums (positions: the stand-in's shares).
    assert phases[0].engine == SpecCounters(
        drafts=100, draft_tokens=300, accepted_tokens=49 * 5, per_position=(49 * 5 * 0.5, 49 * 5 * 0.3, 49 * 5 * 0.2)
    )
    # Output tokens per second: the captured response's completion tokens over the phase's time.
    assert greedy["output_tokens"] == 5 * phases[0].requests[0].tokens > 0 and greedy["output_tokens_per_second"] > 0


async def test_without_per_request_metrics_acceptance_comes_from_the_counters(aiohttp_server: Any) -> None:
    scenario = ScenarioVLLM("m", acceptance_by_temperature=by_temperature, per_request_spec_metrics=False)
    settings, phases, warnings = await probed(aiohttp_server, scenario)
    greedy, hot = (cell_summary(p, settings) for p in phases)
    assert greedy["acceptance_source"] == "vLLM counters over the phase"
    assert greedy["acceptance_rate"] == 49 / 60 and hot["acceptance_rate"] == 23 / 60
    assert greedy["acceptance_percentiles"] == {}
    assert any("--per-request-spec-decode-metrics summary" in w for w in warnings)


async def test_a_target_without_speculative_decoding_is_called_out(aiohttp_server: Any) -> None:
    settings, phases, warnings = await probed(aiohttp_server, ScenarioVLLM("m", spec_enabled=False))
    assert any("speculative decoding looks off" in w for w in warnings)
    assert all(cell_summary(p, settings)["verdict"] == "insufficient_data" for p in phases)


async def test_reports_render_every_temperature(aiohttp_server: Any) -> None:
    settings, phases, warnings = await probed(
        aiohttp_server, ScenarioVLLM("m", acceptance_by_temperature=by_temperature)
    )
    run_doc = probe_document(settings, _run(phases, None, warnings))
    table = render_table(run_doc)
    assert "0.817" in table and "0.383" in table and "T=0.8: disable (" in table and "T=0: beneficial (" in table
    # Without a baseline nothing claims a load-aware number, and the report says how to get one.
    assert "ignore load" in table and "--baseline-target" in table and "TPOT speedup" not in table
    doc = json.loads(render_json(run_doc))
    assert [(c["concurrency"], c["temperature"]) for c in doc["cells"]] == [(1, 0.0), (1, 0.8)]
    assert doc["suggested_speculative_config"] is None and doc["crossover"] == []


async def test_an_unreachable_target_fails_with_a_clear_message() -> None:
    err = io.StringIO()
    settings = ProbeSettings(target="http://127.0.0.1:9", requests=1)
    code = await probe_main(settings, "table", out=io.StringIO(), err=err)
    assert code == 1 and "cannot reach http://127.0.0.1:9" in err.getvalue()


def test_bad_arguments_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["probe", "--target", "http://x", "--temperatures", "hot", "--requests", "0"]) == 2
    err = capsys.readouterr().err
    assert "--temperatures" in err and "--requests" in err


def test_bad_concurrency_lists_and_too_few_requests_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["probe", "--target", "http://x", "--concurrency", "1,x"]) == 2
    assert "--concurrency" in capsys.readouterr().err
    assert cli.main(["probe", "--target", "http://x", "--concurrency", "1,0"]) == 2
    assert cli.main(["probe", "--target", "http://x", "--concurrency", "1,16", "--requests", "8"]) == 2
    assert "at least the largest --concurrency (16)" in capsys.readouterr().err


# The speculative stand-in is faster alone and slower once requests share it; the baseline degrades gently.
def spec_itl(in_flight: int) -> float:
    return 5.0 if in_flight == 1 else 20.0


def base_itl(in_flight: int) -> float:
    return 8.0 if in_flight == 1 else 12.0


async def swept(aiohttp_server: Any, **kw: Any):  # type: ignore[no-untyped-def]
    spec = await aiohttp_server(
        ScenarioVLLM("m", acceptance_by_temperature=by_temperature, mean_itl_ms_at=spec_itl).app()
    )
    base = await aiohttp_server(ScenarioVLLM("m", spec_enabled=False, mean_itl_ms_at=base_itl).app())
    settings = ProbeSettings(
        target=str(spec.make_url("")),
        baseline_target=str(base.make_url("")),
        requests=4,
        temperatures=(0.0, 0.8),
        concurrency=(1, 4),
        **kw,
    )
    async with aiohttp.ClientSession() as session:
        run = await run_probe(settings, session)
    return settings, run


async def test_a_sweep_runs_every_temperature_at_every_concurrency_on_both_pools(aiohttp_server: Any) -> None:
    settings, run = await swept(aiohttp_server)
    assert [(c.concurrency, c.temperature) for c in run.cells] == [(1, 0.0), (1, 0.8), (4, 0.0), (4, 0.8)]
    assert [(c.concurrency, c.temperature) for c in run.baseline] == [(1, 0.0), (1, 0.8), (4, 0.0), (4, 0.8)]
    assert all(len(c.requests) == 4 and all(r.ok for r in c.requests) for c in [*run.cells, *run.baseline])
    assert all(c.engine is None for c in run.baseline)
    doc = json.loads(render_json(probe_document(settings, run)))
    cells = {(c["concurrency"], c["temperature"]): c for c in doc["cells"]}
    # Acceptance does not depend on load here; the speedup does: 8/5 alone, 12/20 when shared.
    assert cells[(1, 0.0)]["acceptance_rate"] == cells[(4, 0.0)]["acceptance_rate"] == 49 / 60
    assert cells[(1, 0.0)]["tpot_source"] == "vLLM per-request metrics"
    assert cells[(1, 0.0)]["tpot_speedup"] == pytest.approx(8 / 5)
    assert cells[(4, 0.8)]["tpot_speedup"] == pytest.approx(12 / 20)
    assert cells[(1, 0.8)]["baseline"]["tpot_seconds"]["p50"] == pytest.approx(0.008)
    assert all(c["throughput_ratio"] is not None and c["throughput_ratio"] > 0 for c in doc["cells"])
    assert doc["crossover"] == [
        {"temperature": 0.0, "concurrency": 4, "measured_concurrencies": [1, 4]},
        {"temperature": 0.8, "concurrency": 4, "measured_concurrencies": [1, 4]},
    ]
    # At concurrency 1 the step cost measured there (rho = AL / TPOT speedup) is high on this stand-in: the third
    # position's 0.36 per draft does not pay its third of rho - 1, so k = 2 (the prior's 1 + 3 * 0.1 said 3); at 4,
    # off.
    basis = {b["concurrency"]: b for b in doc["schedule_basis"]}
    assert basis[1]["step_cost_ratio"] > 1.5 and basis[1]["modelled_best_k"] == 2
    assert doc["suggested_speculative_config"] == {"num_speculative_tokens_per_batch_size": [[1, 3, 2], [4, 4, 0]]}
    assert [b["modelled_best_k"] for b in doc["schedule_basis"]] == [2, 0]
    assert not any("ignore load" in w for w in doc["warnings"])
    table = render_table(probe_document(settings, run))
    assert "crossover T=0: stops paying at concurrency 4" in table
    # One rule: with the baseline measured at each cell, the speedup there decides. T=0.8's 0.38 acceptance pays
    # at concurrency 1 (1.60x) and T=0's 0.82 does not at 4 (0.60x): acceptance alone said the opposite of both.
    assert "T=0.8: beneficial at concurrency 1 (per-request metrics)." in table
    assert "T=0: disable at concurrency 4 (per-request metrics)." in table and table.count("disable: ") == 1
    assert "rule: the verdict follows the speedup at the current load (baseline evidence)" in table
    # The calibration profile: rho = AL / TPOT speedup per concurrency, all temperatures pooled.
    profile = doc["calibration_profile"]
    assert profile["num_speculative_tokens"] == 3 and profile["model"] == "m"
    for point in profile["points"]:
        speedup = 8 / 5 if point["batch_size"] == 1 else 12 / 20
        assert point["step_cost_ratio"] == pytest.approx(point["acceptance_length"] / speedup)
    assert '{"num_speculative_tokens_per_batch_size": [[1, 3, 2], [4, 4, 0]]}' in table
    assert "1.60" in table and "0.60" in table


async def test_a_baseline_that_speculates_is_called_out(aiohttp_server: Any) -> None:
    spec = await aiohttp_server(ScenarioVLLM("m").app())
    base = await aiohttp_server(ScenarioVLLM("m").app())
    settings = ProbeSettings(target=str(spec.make_url("")), baseline_target=str(base.make_url("")), requests=2)
    async with aiohttp.ClientSession() as session:
        run = await run_probe(settings, session)
    assert any("has speculative decoding on" in w for w in run.warnings)


SETTINGS = ProbeSettings(target="http://spec", draft_cost_ratio=0.1)


def cell(concurrency: int, temperature: float, tpot: float, per_position=(0.0, 0.0, 0.0), drafts=0.0):  # type: ignore[no-untyped-def]
    requests = [RequestResult(ok=True, tpot=tpot, client_tpot=tpot, tokens=10) for _ in range(3)]
    engine = SpecCounters(drafts, drafts * 3, sum(per_position), tuple(per_position))
    return PhaseResult(temperature, requests, engine, concurrency, seconds=1.0)


def base_cell(concurrency: int, temperature: float, tpot: float) -> PhaseResult:
    return PhaseResult(temperature, [RequestResult(ok=True, tpot=tpot, tokens=10)] * 3, None, concurrency, 1.0)


def test_the_schedule_turns_speculation_off_where_it_stops_paying_and_uses_the_best_k_where_it_pays() -> None:
    # Position 3 is rarely accepted: at c = 0.1 the model prefers k = 2 (see test_load), and the level pays.
    spec = [cell(1, 0.0, 0.005, (80, 60, 5), 100), cell(2, 0.0, 0.006, (80, 60, 5), 100)]
    spec += [cell(8, 0.0, 0.02, (80, 60, 5), 100), cell(32, 0.0, 0.05, (80, 60, 5), 100)]
    base = [base_cell(1, 0.0, 0.01), base_cell(2, 0.0, 0.01), base_cell(8, 0.0, 0.012), base_cell(32, 0.0, 0.02)]
    schedule, basis = suggest_schedule(spec, base, SETTINGS)
    assert [b["k"] for b in basis] == [2, 2, 0, 0]
    # 1 and 2 merge into one range up to the next level; vLLM carries the last range on past 32.
    assert schedule == [[1, 7, 2], [8, 32, 0]]
    # A measured speedup the model cannot explain keeps the configured k rather than guessing.
    never = [cell(1, 0.0, 0.005, (0, 0, 0), 100)]
    assert suggest_schedule(never, [base_cell(1, 0.0, 0.01)], SETTINGS)[0] == [[1, 1, 3]]
    # Without any measured pair there is nothing to suggest.
    assert suggest_schedule(spec, [], SETTINGS) == (None, [])


def test_crossover_is_the_lowest_concurrency_where_speculation_stops_paying() -> None:
    rows = [
        {"temperature": 0.0, "concurrency": 1, "tpot_speedup": 1.4},
        {"temperature": 0.0, "concurrency": 4, "tpot_speedup": 1.1},
        {"temperature": 0.0, "concurrency": 16, "tpot_speedup": 0.9},
        {"temperature": 1.0, "concurrency": 1, "tpot_speedup": 1.0},
        {"temperature": 1.0, "concurrency": 4, "tpot_speedup": 1.2},
        {"temperature": 0.4, "concurrency": 1, "tpot_speedup": 1.3},
        {"temperature": 0.4, "concurrency": 4, "tpot_speedup": None},
    ]
    assert crossovers(rows, (0.0, 0.4, 1.0, 0.8)) == [
        {"temperature": 0.0, "concurrency": 16, "measured_concurrencies": [1, 4, 16]},
        {"temperature": 0.4, "concurrency": None, "measured_concurrencies": [1]},
        {"temperature": 1.0, "concurrency": 1, "measured_concurrencies": [1, 4]},
        {"temperature": 0.8, "concurrency": None, "measured_concurrencies": []},
    ]


def test_tpot_comparisons_use_one_clock_for_both_pools() -> None:
    # The speculative pool reports vLLM's TPOT, the baseline does not: both sides fall back to the probe's own.
    spec = PhaseResult(0.0, [RequestResult(ok=True, tpot=0.001, client_tpot=0.01, tokens=5)], None, 1, 1.0)
    base = PhaseResult(0.0, [RequestResult(ok=True, tpot=None, client_tpot=0.02, tokens=5)], None, 1, 1.0)

    assert compare_cell(spec, base) == {
        "tpot_speedup": 2.0,
        "tpot_source": "measured by the probe",
        "throughput_ratio": 1.0,
    }


async def test_write_profile_gives_a_file_the_exporter_loads_and_refuses_for_another_k(
    aiohttp_server: Any, tmp_path: Any
) -> None:
    import dataclasses

    from spec_exporter.commands.probe import probe_main as main
    from spec_exporter.config import ConfigError, settings_from_mapping
    from spec_exporter.derive.cost import interpolate

    settings, _ = await swept(aiohttp_server)
    path = tmp_path / "profile.yaml"
    settings = dataclasses.replace(settings, write_profile=str(path), hardware="test box")
    assert await main(settings, "json", out=io.StringIO(), err=io.StringIO()) == 0
    target = {"name": "vllm", "url": "http://127.0.0.1:8000"}
    loaded = settings_from_mapping({"targets": [target], "speculation": {"cost_profile": str(path)}})
    profile = loaded.derive_params(loaded.targets[0]).cost_profile
    assert profile is not None and profile.hardware == "test box" and profile.num_speculative_tokens == 3
    assert [p.batch_size for p in profile.points] == [1, 4]
    at_1 = profile.points[0].step_cost_ratio
    assert interpolate(profile, 1.0) == pytest.approx(at_1)
    with pytest.raises(ConfigError) as e:
        settings_from_mapping(
            {"targets": [target], "speculation": {"cost_profile": str(path), "num_speculative_tokens": 4}}
        )
    assert any("speculation.cost_profile" in d and "num_speculative_tokens=3" in d for d in e.value.details)
    path.write_text(path.read_text().replace("version: 1", "version: 7"))
    with pytest.raises(ConfigError) as e:
        settings_from_mapping({"targets": [target], "speculation": {"cost_profile": str(path)}})
    assert any(d.startswith("speculation.cost_profile.version:") for d in e.value.details)


async def test_each_workload_runs_as_its_own_class_with_its_prompts(aiohttp_server: Any, tmp_path: Any) -> None:
    """`--workload NAME=FILE`: each class's prompts go out with the class header, and every cell says its class
    (issue 21)."""
    from aiohttp import web

    seen: list[tuple[str | None, str]] = []

    @web.middleware
    async def record(request: web.Request, handler: Any) -> Any:
        if request.path == "/v1/chat/completions":
            body = await request.json()
            seen.append((request.headers.get("x-team"), body["messages"][0]["content"]))
        return await handler(request)

    app = ScenarioVLLM("m", acceptance_by_temperature=by_temperature).app()
    app.middlewares.append(record)
    server = await aiohttp_server(app)
    code, chat = tmp_path / "code.txt", tmp_path / "chat.txt"
    code.write_text("def fib(n):\n\nclass Stack:\n")
    chat.write_text("Tell me a story.\n")
    config = tmp_path / "config.yaml"
    config.write_text(f"targets: [{{name: vllm, url: '{server.make_url('')}'}}]\ntap: {{workload_header: x-team}}\n")
    args = cli_probe_args(
        [
            "--target",
            str(server.make_url("")),
            "--requests",
            "2",
            "--temperatures",
            "0,0.8",
            "--config.file",
            str(config),
            "--workload",
            f"code={code}",
            "--workload",
            f"chat={chat}",
        ]
    )
    from spec_exporter.commands.probe import probe_settings

    settings = probe_settings(args)
    assert settings.workloads == (("code", ("def fib(n):", "class Stack:")), ("chat", ("Tell me a story.",)))
    assert settings.workload_header == "x-team"
    async with aiohttp.ClientSession() as session:
        run = await run_probe(settings, session)
    assert [(c.workload, c.temperature) for c in run.cells] == [
        ("code", 0.0),
        ("code", 0.8),
        ("chat", 0.0),
        ("chat", 0.8),
    ]
    assert {(h, p) for h, p in seen} == {
        ("code", "def fib(n):"),
        ("code", "class Stack:"),
        ("chat", "Tell me a story."),
    }
    doc = probe_document(settings, run)
    assert doc["workloads"] == ["code", "chat"]
    assert [(c["workload"], c["temperature"]) for c in doc["cells"]] == [
        ("code", 0.0),
        ("code", 0.8),
        ("chat", 0.0),
        ("chat", 0.8),
    ]
    table = render_table(doc)
    assert "code T=0: beneficial" in table and "chat T=0.8: disable" in table


def cli_probe_args(argv: list[str]) -> Any:
    from spec_exporter.commands.probe import probe_parser

    return probe_parser().parse_args(argv)


def test_bad_workload_flags_are_refused(tmp_path: Any) -> None:
    from spec_exporter.commands.probe import probe_settings
    from spec_exporter.config import ConfigError

    empty = tmp_path / "empty.txt"
    empty.write_text("\n")
    for flag in ("noequals", "bad name=x", f"a={empty}", f"a={tmp_path / 'missing.txt'}"):
        with pytest.raises(ConfigError):
            probe_settings(cli_probe_args(["--target", "http://x", "--workload", flag]))
    ok = tmp_path / "ok.txt"
    ok.write_text("hi\n")
    with pytest.raises(ConfigError, match="each NAME once"):
        probe_settings(cli_probe_args(["--target", "http://x", "--workload", f"a={ok}", "--workload", f"a={ok}"]))


async def test_an_implausible_step_cost_writes_no_profile_and_says_which_level(
    aiohttp_server: Any, tmp_path: Any
) -> None:
    """A baseline TPOT that collapses at one level (a starved client reading a stream in one burst) gives a rho far
    outside any hardware's: the sweep's document still comes out, and the profile is refused with a sentence naming
    the level and its TPOTs, never a traceback."""
    from spec_exporter.commands.probe import probe_main as main

    spec = await aiohttp_server(
        ScenarioVLLM("m", acceptance_by_temperature=by_temperature, mean_itl_ms_at=spec_itl).app()
    )
    collapsing = await aiohttp_server(
        ScenarioVLLM("m", spec_enabled=False, mean_itl_ms_at=lambda n: 8.0 if n == 1 else 0.001).app()
    )
    path = tmp_path / "profile.yaml"
    settings = ProbeSettings(
        target=str(spec.make_url("")),
        baseline_target=str(collapsing.make_url("")),
        requests=4,
        temperatures=(0.0, 0.8),
        concurrency=(1, 4),
        write_profile=str(path),
    )
    out, err = io.StringIO(), io.StringIO()
    assert await main(settings, "json", out=out, err=err) == 1
    doc = json.loads(out.getvalue())
    assert doc["calibration_profile"] is None and len(doc["cells"]) == 4
    assert "implausible step costs" in err.getvalue() and "concurrency 4: rho" in err.getvalue()
    assert "concurrency 1" not in err.getvalue() and not path.exists()
