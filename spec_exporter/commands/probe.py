"""`spec-exporter probe`: send requests at each temperature and concurrency, and measure what speculation does.

The recipe users are told to run before trusting speculative decoding, as a command. Acceptance does not say
whether speculation pays at a load: only a baseline pool without it, measured on the same grid, does; so speedup,
crossover, schedule and the calibration profile need `--baseline-target`. This module is the command line; the
load generator, the analysis, the document and its rendering each have their own (probe_load, probe_analysis,
probe_document, probe_render).
"""

from __future__ import annotations

import argparse
import asyncio
import re
import sys
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import TextIO

import aiohttp
import yaml

from spec_exporter.commands.common import add_common_flags, build_settings, config_failed
from spec_exporter.commands.probe_document import probe_document
from spec_exporter.commands.probe_load import DEFAULT_PROMPTS, ProbeError, ProbeSettings, run_probe
from spec_exporter.commands.probe_render import progress_bar, render_json, render_table
from spec_exporter.config import ConfigError
from spec_exporter.types import DeriveParams

DEFAULT_WORKLOAD_HEADER = "x-workload"
WORKLOAD_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
EXIT_OK = 0
EXIT_FAILED = 1
PROFILE_HEADER = (
    "# Step-cost profile written by `spec-exporter probe --write-profile`: rho (one speculative step / one plain\n"
    "# step) per batch size, for this hardware, model pair and k. Commit it next to your values and point\n"
    "# speculation.cost_profile at it; the exporter interpolates rho at the live load (docs/models.md).\n"
)


async def probe_main(
    settings: ProbeSettings,
    output: str,
    *,
    report: str | None = None,
    out: TextIO = sys.stdout,
    err: TextIO = sys.stderr,
) -> int:
    try:
        async with aiohttp.ClientSession() as session:
            run = await run_probe(settings, session, progress=progress_bar(err))
    except ProbeError as e:
        err.write(f"spec-exporter probe: {e}\n")
        return EXIT_FAILED
    except (aiohttp.ClientError, OSError, TimeoutError) as e:
        err.write(f"spec-exporter probe: cannot reach {settings.target}: {type(e).__name__}: {e}\n")
        return EXIT_FAILED
    doc = probe_document(settings, run, datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"))
    out.write(render_json(doc) if output == "json" else render_table(doc))
    if settings.write_profile is not None:
        profile = doc["calibration_profile"]
        if profile is None:
            err.write(f"spec-exporter probe: no profile written: {doc['calibration_profile_error']}\n")
            return EXIT_FAILED
        try:
            with open(settings.write_profile, "w", encoding="utf-8") as f:
                f.write(PROFILE_HEADER + yaml.safe_dump(profile, sort_keys=False))
        except OSError as e:
            err.write(f"spec-exporter probe: cannot write the profile {settings.write_profile}: {e.strerror or e}\n")
            return EXIT_FAILED
    if report is not None:
        from spec_exporter.commands.probe_report import render_html

        try:
            with open(report, "w", encoding="utf-8") as f:
                f.write(render_html(doc))
        except OSError as e:
            err.write(f"spec-exporter probe: cannot write the report {report}: {e.strerror or e}\n")
            return EXIT_FAILED
    return EXIT_OK


def probe_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="spec-exporter probe",
        description="Send requests at each temperature and each concurrency to a vLLM and report, per cell, "
        "acceptance (P10/P50/P90 across requests when vLLM gives per-request metrics, else from its counters over "
        "that cell's phase), mean acceptance length, TTFT and TPOT p50/p99, output tokens per second, and the "
        "verdict with advice. With --baseline-target, the same grid on a pool without speculative decoding gives "
        "the measured TPOT speedup and throughput ratio per cell, the crossover concurrency per temperature and a "
        "suggested num_speculative_tokens_per_batch_size schedule, and --write-profile FILE writes the step-cost "
        "ratio measured at each concurrency as a calibration profile for the exporter (speculation.cost_profile). "
        "Thresholds and the draft cost ratio come from --config.file when given. Exit status 0 when the probe ran, "
        "1 when it could not.",
    )
    p.add_argument("--target", required=True, metavar="URL", help="vLLM base URL, e.g. http://127.0.0.1:8000")
    p.add_argument(
        "--baseline-target",
        metavar="URL",
        help="the same model served without speculative decoding: run the same grid there and compare",
    )
    p.add_argument(
        "--temperatures",
        default="0,0.4,0.8,1.0",
        metavar="LIST",
        help="comma-separated temperatures, one phase each (default %(default)s)",
    )
    p.add_argument("--requests", type=int, default=20, metavar="N", help="requests per cell (default 20)")
    p.add_argument(
        "--concurrency",
        default="1",
        metavar="LIST",
        help="comma-separated requests in flight; every temperature runs at each (default %(default)s)",
    )
    p.add_argument("--prompts", metavar="FILE", help="prompts, one per line (default: a few built-in ones)")
    p.add_argument(
        "--workload",
        action="append",
        default=[],
        metavar="NAME=PROMPTS_FILE",
        help="repeatable: run the grid once per workload class with its own prompts (one per line), sending the "
        "class in the tap's workload header (tap.workload_header, default x-workload), so one probe compares "
        "e.g. a code and a chat workload on the same server",
    )
    p.add_argument("--model", help="model name (default: the first one /v1/models lists)")
    p.add_argument("--max-tokens", type=int, default=64, metavar="N", help="max_tokens per request (default 64)")
    p.add_argument("--output", choices=("table", "json"), default="table", help="report format")
    p.add_argument("--report", metavar="FILE.html", help="also write a self-contained HTML report with charts")
    p.add_argument(
        "--write-profile",
        metavar="FILE.yaml",
        help="with --baseline-target: write rho per concurrency (a calibration profile for speculation.cost_profile)",
    )
    p.add_argument("--hardware", help="free text recorded in the profile, e.g. 'H200, CUDA graphs'")
    p.add_argument("--draft-model", help="the draft model's name, recorded in the profile")
    add_common_flags(p)
    return p


def _int_list(text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        return ()
    return values


def probe_settings(args: argparse.Namespace) -> ProbeSettings:
    problems = []
    try:
        temperatures = tuple(float(t) for t in args.temperatures.split(",") if t.strip())
    except ValueError:
        temperatures = ()
    if not temperatures or any(not 0 <= t <= 2 for t in temperatures):
        problems.append("--temperatures: a comma-separated list of numbers in [0, 2]")
    concurrency = _int_list(args.concurrency)
    if not concurrency or any(c < 1 for c in concurrency) or len(set(concurrency)) != len(concurrency):
        problems.append("--concurrency: a comma-separated list of distinct whole numbers, each at least 1")
        concurrency = (1,)
    if args.requests < 1:
        problems.append("--requests: at least 1")
    elif args.requests < max(concurrency):
        problems.append(
            f"--requests: at least the largest --concurrency ({max(concurrency)}), or that level never fills up"
        )
    prompts = _read_prompts(args.prompts, "--prompts", problems) if args.prompts else DEFAULT_PROMPTS
    workloads = []
    for spec in args.workload:
        name, sep, path = spec.partition("=")
        if not sep or not WORKLOAD_NAME.match(name) or not path:
            problems.append(f"--workload {spec!r}: NAME=PROMPTS_FILE, NAME 1-64 of [A-Za-z0-9_.-]")
            continue
        workloads.append((name, _read_prompts(path, f"--workload {name}", problems)))
    if len({name for name, _ in workloads}) != len(workloads):
        problems.append("--workload: each NAME once")
    baselines = [args.baseline_target] if args.baseline_target else []
    try:
        config = build_settings(args.config_file, targets=[args.target], baselines=baselines, only_these_targets=True)
        params = config.derive_params(config.targets[0])
        header = config.tap.workload_header or DEFAULT_WORKLOAD_HEADER
    except ConfigError as e:
        problems += e.details
        params = DeriveParams(windows=(), verdict_window="")
        header = DEFAULT_WORKLOAD_HEADER
    if args.write_profile and not args.baseline_target:
        problems.append("--write-profile: needs --baseline-target (rho is measured against the baseline)")
    if problems:
        raise ConfigError(problems)
    return ProbeSettings(
        target=args.target,
        temperatures=temperatures,
        requests=args.requests,
        concurrency=tuple(sorted(concurrency)),
        prompts=prompts,
        model=args.model,
        max_tokens=args.max_tokens,
        thresholds=params.thresholds,
        baseline_target=args.baseline_target,
        num_speculative_tokens=params.num_speculative_tokens,
        draft_cost_ratio=params.draft_cost_ratio,
        write_profile=args.write_profile,
        hardware=args.hardware,
        draft_model=args.draft_model,
        cost_profile=params.cost_profile,
        workloads=tuple(workloads),
        workload_header=header,
    )


def _read_prompts(path: str, flag: str, problems: list[str]) -> tuple[str, ...]:
    """The prompts in a file, one per line; a problem noted (and none returned) if there are none."""
    prompts: tuple[str, ...] = ()
    try:
        with open(path, encoding="utf-8") as f:
            prompts = tuple(line.rstrip("\n") for line in f if line.strip())
    except OSError as e:
        problems.append(f"{flag}: {e.strerror or e}")
        return ()
    if not prompts:
        problems.append(f"{flag}: the file has no prompts")
    return prompts


def probe(argv: Sequence[str]) -> int:
    from spec_exporter.logs import setup_logging

    args = probe_parser().parse_args(argv)
    setup_logging(args.log_level, args.log_format)
    try:
        settings = probe_settings(args)
    except ConfigError as e:
        return config_failed(e)
    return asyncio.run(probe_main(settings, args.output, report=args.report))
