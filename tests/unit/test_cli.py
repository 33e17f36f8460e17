"""The command line: flags, environment, config errors, and `check` end to end against a stand-in vLLM."""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from spec_exporter import cli
from spec_exporter.commands import check as check_command
from spec_exporter.commands import serve as serve_command
from tests.conftest import FakeClock
from tests.standin import V032_IDLE, V032_LOAD, V085_V0, Reply, StandIn, rewrite, sample

ACCEPTED = 'vllm:spec_decode_num_accepted_tokens_total{engine="0",model_name="tiny"}'


@contextmanager
def standin_thread(*replies: Reply | str) -> Iterator[str]:
    """A stand-in vLLM on its own event loop, for code that runs its own loop (the CLI)."""
    loop = asyncio.new_event_loop()
    started = threading.Event()
    holder: dict[str, Any] = {}

    async def start() -> None:
        s = StandIn()
        s.push(*replies)
        runner = web.AppRunner(s.app())
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        holder["runner"] = runner
        holder["url"] = f"http://127.0.0.1:{runner.addresses[0][1]}"
        started.set()

    thread = threading.Thread(target=lambda: (loop.run_until_complete(start()), loop.run_forever()), daemon=True)
    thread.start()
    assert started.wait(10)
    try:
        yield holder["url"]
    finally:
        asyncio.run_coroutine_threadsafe(holder["runner"].cleanup(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)


def run_check(argv: list[str]) -> int:
    clock = FakeClock()
    return check_command.check(argv, sleep=clock.sleep, clock=clock)


@pytest.mark.parametrize(
    ("accepted", "verdict", "code"),
    [(120, "BENEFICIAL", 0), (80, "BREAK_EVEN", 1), (55, "DISABLE", 2)],
)
def test_check_prints_a_table_and_exits_with_the_verdict(
    accepted: int, verdict: str, code: int, capsys: pytest.CaptureFixture[str]
) -> None:
    load = rewrite(sample(V032_LOAD), {ACCEPTED: accepted})
    with standin_thread(sample(V032_IDLE), load) as url:
        assert run_check(["--target", url, "--window", "60s"]) == code
    out = capsys.readouterr().out
    assert "over 1m" in out
    rate = re.escape(f"{accepted / 147:.3f} ({accepted:g} of 147 draft tokens accepted)")
    assert re.search(r"\ndraft acceptance rate +" + rate + "\n", out), out
    assert re.search(r"\nmean acceptance length +" + re.escape(f"{1 + accepted / 49:.2f}") + "\n", out)
    assert re.search(r"\nacceptance by position +0.71  0.20  0.20\n", out)
    assert re.search(r"\nTTFT p50 / p99 +30.0 ms / 59.2 ms\n", out)
    assert "TPOT p50 / p99" in out and "P99/P50 divergence" in out
    assert re.search(r"\nverdict +" + verdict + "\n", out)
    assert "advice: " in out


def test_check_json_output_for_scripts(capsys: pytest.CaptureFixture[str]) -> None:
    with standin_thread(sample(V032_IDLE), sample(V032_LOAD)) as url:
        assert run_check(["--target", url, "--window", "30s", "--output", "json"]) == 2
    doc = json.loads(capsys.readouterr().out)
    assert doc["verdict"] == "disable" and doc["exit_code"] == 2 and doc["window_seconds"] == 30
    a = doc["all_engines"]["acceptance"]
    assert a["rate"] == 55 / 147 and a["draft_tokens"] == 147 and a["per_position"][0] == 35 / 49
    assert doc["all_engines"]["latency_seconds"]["ttft"]["0.5"] == pytest.approx(0.03)
    assert doc["engines"][0]["num_speculative_tokens"] == 3


def test_check_with_no_traffic_is_insufficient_data(capsys: pytest.CaptureFixture[str]) -> None:
    with standin_thread(sample(V032_IDLE), sample(V032_IDLE)) as url:
        assert run_check(["--target", url]) == 3
    assert "INSUFFICIENT_DATA" in capsys.readouterr().out


def test_check_on_an_unreachable_target_exits_3(capsys: pytest.CaptureFixture[str]) -> None:
    with standin_thread(Reply("no", status=502)) as url:
        assert run_check(["--target", url, "--output", "json"]) == 3
    doc = json.loads(capsys.readouterr().out)
    assert doc["error"] == "http_status" and doc["verdict"] == "insufficient_data"


def test_invalid_config_exits_2_listing_every_bad_field(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "config.yaml"
    config.write_text(
        "targets:\n"
        "  - name: a\n    url: not a url\n    role: primary\n"
        "poll:\n  interval: 5q\n  max_body_bytes: lots\n"
        "thresholds:\n  disable_below: 1.5\n"
        "surprise: true\n"
    )
    assert cli.main(["--config.file", str(config)]) == 2
    err = capsys.readouterr().err
    for field in (
        "targets.0.url",
        "targets.0.role",
        "poll.interval",
        "poll.max_body_bytes",
        "thresholds.disable_below",
        "surprise",
    ):
        assert f"  {field}: " in err, err


def test_config_check_prints_the_effective_config(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "config.yaml"
    config.write_text("windows: [30s, 2m]\nthresholds:\n  min_draft_tokens: 10\n")
    code = cli.main(["--config.file", str(config), "--target", "http://127.0.0.1:8000", "--config.check"])
    assert code == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["windows"] == [30.0, 120.0] and doc["thresholds"]["min_draft_tokens"] == 10
    assert doc["targets"][0]["name"] == "127.0.0.1:8000"


def test_environment_supplies_defaults_and_flags_win(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SPEC_EXPORTER_TARGETS", "http://a:8000, http://b:8000")
    monkeypatch.setenv("SPEC_EXPORTER_WEB_LISTEN_ADDRESS", "127.0.0.1:9999")
    args = serve_command.serve_parser().parse_args([])
    assert args.listen_address == "127.0.0.1:9999"
    assert [t.name for t in serve_command.serve_settings(args).targets] == ["a:8000", "b:8000"]
    args = serve_command.serve_parser().parse_args(["--target", "http://c:8000", "--baseline-target", "http://d:8000"])
    settings = serve_command.serve_settings(args)
    assert [(t.name, t.role) for t in settings.targets] == [("c:8000", "spec"), ("d:8000", "baseline")]
    assert settings.baseline_for(settings.targets[0]).name == "d:8000"


def test_no_target_at_all_is_a_config_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main([]) == 2
    assert "targets: List should have at least 1 item" in capsys.readouterr().err


def test_the_console_script_entry_point_runs() -> None:
    result = subprocess.run([sys.executable, "-m", "spec_exporter", "--version"], capture_output=True, timeout=60)
    assert result.returncode == 0 and result.stdout.decode().startswith("spec-exporter ")


def test_check_json_gives_a_v0_engine_its_lifetime_verdict(capsys: pytest.CaptureFixture[str]) -> None:
    with standin_thread(sample(V085_V0), sample(V085_V0)) as url:
        assert run_check(["--target", url, "--output", "json"]) == 2
    doc = json.loads(capsys.readouterr().out)
    (engine,) = doc["engines"]
    assert engine["lifetime_acceptance"] == pytest.approx(0.49583333333333335)
    assert engine["verdict"] == doc["verdict"] == "disable"


SIDECAR_CONFIG = """\
# The chart's sidecar config: the pod's vLLM as the one target, the proxy tap in front of it.
targets:
  - name: vllm
    url: http://127.0.0.1:8000
tap:
  listen_address: ":8001"
  target: vllm
thresholds:
  disable_below: 0.4
  beneficial_at: 0.6
  min_draft_tokens: 50
"""


def test_check_accepts_the_sidecars_own_config_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Issue: check replaced the targets but kept `tap`, so the chart's config failed with exit 2."""
    config = tmp_path / "config.yaml"
    config.write_text(SIDECAR_CONFIG)
    # 66 of 147 draft tokens: 0.449, `disable` by the defaults, `break_even` by this file's 0.4 / 0.6.
    load = rewrite(sample(V032_LOAD), {ACCEPTED: 66})
    with standin_thread(sample(V032_IDLE), load) as url:
        code = run_check(["--target", url, "--config.file", str(config), "--output", "json"])
    doc = json.loads(capsys.readouterr().out)
    assert doc["verdict"] == "break_even" and code == 1


def test_probe_reads_thresholds_from_the_config_file_and_rejects_a_missing_one(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Issue: probe accepted --config.file and ignored it, even a file that does not exist."""
    from spec_exporter.commands.probe import probe_parser, probe_settings

    missing = tmp_path / "nope.yaml"
    assert cli.main(["probe", "--target", "http://127.0.0.1:9", "--config.file", str(missing)]) == 2
    assert "nope.yaml" in capsys.readouterr().err
    config = tmp_path / "config.yaml"
    config.write_text(SIDECAR_CONFIG)
    args = probe_parser().parse_args(["--target", "http://127.0.0.1:9", "--config.file", str(config)])
    thresholds = probe_settings(args).thresholds
    assert (thresholds.disable_below, thresholds.beneficial_at, thresholds.min_draft_tokens) == (0.4, 0.6, 50)


RUNNING = 'vllm:num_requests_running{engine="0",model_name="tiny"}'
POSITION_2 = 'vllm:spec_decode_num_accepted_tokens_per_pos_total{engine="0",model_name="tiny",position="2"}'


def c_config(tmp_path: Path, c: float = 0.1) -> str:
    config = tmp_path / "config.yaml"
    config.write_text(f"targets: [{{name: x, url: 'http://127.0.0.1:9'}}]\nspeculation: {{draft_cost_ratio: {c}}}\n")
    return str(config)


def test_check_on_the_real_pair_prints_and_exports_the_prior_in_vllms_units(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Issue 17: break-even 0.100 (not the i.i.d. 0.233) and speedup AL / 1.3 at k = 3, c = 0.1; a speedup above
    1 beside `disable` only with the sentence that says the acceptance policy decides and why."""
    with standin_thread(sample(V032_IDLE), sample(V032_LOAD)) as url:
        assert run_check(["--target", url, "--config.file", c_config(tmp_path)]) == 2
    out = capsys.readouterr().out
    assert re.search(r"\neffective k +3.00 draft tokens per draft; 100% of decode steps drafted\n", out), out
    assert re.search(r"\nstep cost rho +1.300 \(prior: 1 \+ k_eff\*c with k_eff 3.00; ignores load\)\n", out)
    assert re.search(r"\nbreak-even acceptance +0.100 \(vLLM's rate, \(rho - 1\) / k_eff; this pool's: 0.374\)\n", out)
    assert re.search(r"\nmodelled speedup +1.63x \(acceptance length 2.12 / rho 1.300\)\n", out)
    assert re.search(r"\nbest k \(modelled\) +3 \(1.63x\): the configured k is the best measured; a larger k", out)
    # Its three requests finished between the two polls, which saw none running: at least one ran.
    assert re.search(r"\nload +1.0 running requests per engine: band 1\n", out)
    assert re.search(r"\nverdict +DISABLE\n", out)
    assert "\nrule: the verdict follows the acceptance policy on vLLM's rate (below 0.5 disable" in out
    assert "ignores load, so it does not decide" in out and "--write-profile" in out
    assert "speedup at band" not in out
    # Every TPOT of the pair is inside vLLM's lowest bucket (10 ms): no digits that aren't there.
    assert re.search(r"\nTPOT p50 / p99 +< 10 ms / < 10 ms\n", out)
    with standin_thread(sample(V032_IDLE), sample(V032_LOAD)) as url:
        run_check(["--target", url, "--config.file", c_config(tmp_path), "--output", "json"])
    doc = json.loads(capsys.readouterr().out)
    window = doc["all_engines"]
    assert window["step_cost"]["source"] == "prior" and window["step_cost"]["rho"] == pytest.approx(1.3)
    assert window["break_even_acceptance_rate"] == pytest.approx(0.1)
    assert window["expected_speedup"] == pytest.approx((1 + 55 / 49) / 1.3)
    assert window["latency_lowest_bucket_seconds"]["tpot"] == 0.01
    assert doc["verdict"] == "disable" and "acceptance policy" in doc["rule"]


def test_check_says_when_fewer_speculative_tokens_would_do_better(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # The third draft token is never accepted: it costs a draft step and brings nothing.
    load = rewrite(sample(V032_LOAD), {POSITION_2: 0, ACCEPTED: 45})
    with standin_thread(sample(V032_IDLE), load) as url:
        run_check(["--target", url, "--output", "json", "--config.file", c_config(tmp_path)])
    best = json.loads(capsys.readouterr().out)["all_engines"]["recommended_num_speculative_tokens"]
    assert best == {"k": 2, "speedup": pytest.approx((1 + 45 / 49) / 1.2), "at_configured_k": False}
    with standin_thread(sample(V032_IDLE), load) as url:
        run_check(["--target", url, "--config.file", c_config(tmp_path)])
    assert "2 (1.60x): fewer speculative tokens would do better than k=3" in capsys.readouterr().out


def stretched(name: str, running: float, factor: float) -> str:
    from tests.standin import stretch_latency

    text = rewrite(sample(name), {RUNNING: running})
    return stretch_latency(text, "vllm:request_time_per_output_token_seconds", factor)


def check_against_baseline(*extra: str) -> None:
    # At 12 running requests per engine, speculation takes twice the baseline's time per token.
    spec = (stretched(V032_IDLE, 12, 2.0), stretched(V032_LOAD, 12, 2.0))
    base = (stretched(V032_IDLE, 12, 1.0), stretched(V032_LOAD, 12, 1.0))
    with standin_thread(*spec) as url, standin_thread(*base) as b:
        run_check(["--target", url, "--baseline-target", b, *extra])


def test_check_with_a_baseline_prints_the_speedup_at_the_load_band(capsys: pytest.CaptureFixture[str]) -> None:
    check_against_baseline()
    out = capsys.readouterr().out
    assert re.search(r"\nload +12.0 running requests per engine: band 9-16\n", out), out
    assert re.search(r"\nspeedup at band 9-16 +0.50x \(TPOT p50 .* ms vs baseline .* ms, 3 requests\)\n", out)
    assert re.search(r"\nTPOT speedup vs baseline +0.50x", out)
    # The baseline at the band is the step cost's evidence: rho = AL / 0.5, and the speedup decides.
    assert re.search(r"\nstep cost rho +4.245 \(baseline: measured against the baseline pool at 12.0 running", out)
    assert re.search(r"\nmodelled speedup +0.50x \(acceptance length 2.12 / rho 4.245\)\n", out)
    assert "rule: the verdict follows the speedup at the current load (baseline evidence)" in out
    check_against_baseline("--output", "json")
    doc = json.loads(capsys.readouterr().out)
    assert doc["load"]["load_band"] == "9-16" and doc["load"]["baseline"]["tpot_speedup_at_load_band"] == 0.5
    assert doc["load"]["baseline"]["load_bands"] == {"9-16": {"tpot_speedup": 0.5, "requests": 3.0}}


def test_check_prints_best_k_per_workload_and_band(capsys: pytest.CaptureFixture[str]) -> None:
    """A greedy code class that pays at the full k beside a hot chat class that should not speculate (issue 21)."""
    from prometheus_client import CollectorRegistry, generate_latest

    from spec_exporter.tap.metrics import Outcome, TapMetrics
    from spec_exporter.tap.workload import WorkloadClasses

    registry = CollectorRegistry()
    metrics = TapMetrics(registry, workloads=WorkloadClasses(("code", "chat"), 8))
    before = sample(V032_IDLE) + generate_latest(registry).decode()
    for _ in range(4):
        metrics.request(
            "tiny", "0", Outcome.MEASURED, accepted=34, drafted=48, steps=16, per_position=(14, 12, 8), workload="code"
        )
        metrics.request(
            "tiny",
            "0.7-1.0",
            Outcome.MEASURED,
            accepted=1,
            drafted=48,
            steps=16,
            per_position=(1, 0, 0),
            workload="chat",
        )
    after = sample(V032_LOAD) + generate_latest(registry).decode()
    with standin_thread(before, after) as url:
        run_check(["--target", url])
    out = capsys.readouterr().out
    assert re.search(r"\nby workload and band +chat \(T 0\.7-1\.0\): turn off; code \(T = 0\): best k 3 ", out), out
    with standin_thread(before, after) as url:
        run_check(["--target", url, "--output", "json"])
    rows = {(r["workload"], r["temperature_band"]): r for r in json.loads(capsys.readouterr().out)["workloads"]}
    assert rows[("code", "0")]["best_k"] == 3 and rows[("code", "0")]["acceptance_length"] == 1 + 34 / 16
    assert rows[("chat", "0.7-1.0")]["best_k"] == 0 and rows[("chat", "0.7-1.0")]["advice"] == "turn off"
