"""Command line: `spec-exporter` serves; `spec-exporter check` answers once. Flags follow Prometheus exporters."""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import aiohttp
import structlog

from spec_exporter import __version__
from spec_exporter.config import (
    ConfigError,
    Settings,
    load_config,
    parse_duration,
    settings_from_mapping,
    target_from_url,
)
from spec_exporter.logs import LEVELS, setup_logging

ENV_PREFIX = "SPEC_EXPORTER_"
DEFAULT_LISTEN = ":9811"
EXIT_CONFIG = 2


def _env(name: str, default: str | None = None) -> str | None:
    return os.environ.get(ENV_PREFIX + name, default)


def _env_list(name: str) -> list[str]:
    value = _env(name)
    return [v.strip() for v in value.split(",") if v.strip()] if value else []


def _add_common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config.file",
        dest="config_file",
        default=_env("CONFIG_FILE"),
        metavar="PATH",
        help="YAML configuration file (env SPEC_EXPORTER_CONFIG_FILE)",
    )
    parser.add_argument(
        "--log.level",
        dest="log_level",
        default=_env("LOG_LEVEL", "info"),
        choices=LEVELS,
        help="only log messages at this level or above (env SPEC_EXPORTER_LOG_LEVEL; default %(default)s)",
    )
    parser.add_argument(
        "--log.format",
        dest="log_format",
        default=_env("LOG_FORMAT", "logfmt"),
        choices=("logfmt", "json"),
        help="log line format (env SPEC_EXPORTER_LOG_FORMAT; default %(default)s)",
    )


def serve_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="spec-exporter",
        description="Poll vLLM /metrics and export speculative-decoding health for Prometheus. "
        "Run `spec-exporter check --help` for the one-shot report, `spec-exporter probe --help` to measure "
        "acceptance by temperature.",
    )
    p.add_argument(
        "--web.listen-address",
        dest="listen_address",
        default=_env("WEB_LISTEN_ADDRESS", DEFAULT_LISTEN),
        metavar="[HOST]:PORT",
        help="address to serve metrics on (env SPEC_EXPORTER_WEB_LISTEN_ADDRESS; default %(default)s)",
    )
    p.add_argument(
        "--web.telemetry-path",
        dest="telemetry_path",
        default=_env("WEB_TELEMETRY_PATH", "/metrics"),
        metavar="PATH",
        help="path under which to expose metrics (default %(default)s)",
    )
    p.add_argument(
        "--target",
        dest="targets",
        action="append",
        default=None,
        metavar="URL",
        help="vLLM base URL to poll, repeatable; added to the config file's targets "
        "(env SPEC_EXPORTER_TARGETS, comma-separated)",
    )
    p.add_argument(
        "--baseline-target",
        dest="baseline_targets",
        action="append",
        default=None,
        metavar="URL",
        help="vLLM base URL of a pool without speculative decoding to compare against, repeatable "
        "(env SPEC_EXPORTER_BASELINE_TARGETS)",
    )
    p.add_argument(
        "--poll.interval",
        dest="poll_interval",
        default=_env("POLL_INTERVAL"),
        metavar="DURATION",
        help="how often to poll each target (overrides poll.interval; default 5s)",
    )
    p.add_argument(
        "--tap.listen-address",
        dest="tap_listen_address",
        default=_env("TAP_LISTEN_ADDRESS"),
        metavar="[HOST]:PORT",
        help="serve the request-path tap here, forwarding to the tap target's vLLM "
        "(env SPEC_EXPORTER_TAP_LISTEN_ADDRESS; default off, or tap.listen_address in the config file)",
    )
    p.add_argument(
        "--config.check", dest="config_check", action="store_true", help="validate the configuration, print it and exit"
    )
    p.add_argument("--version", action="version", version=f"spec-exporter {__version__}")
    _add_common(p)
    return p


def check_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="spec-exporter check",
        description="Poll one vLLM twice, WINDOW apart, and say whether speculative decoding is paying off. "
        "Exit code: 0 beneficial, 1 break-even, 2 disable, 3 insufficient data or unreachable.",
    )
    p.add_argument("--target", required=True, metavar="URL", help="vLLM base URL, e.g. http://127.0.0.1:8000")
    p.add_argument(
        "--window", default="60s", metavar="DURATION", help="time between the two polls (default %(default)s)"
    )
    p.add_argument("--timeout", default="5s", metavar="DURATION", help="per-poll timeout (default %(default)s)")
    p.add_argument("--output", choices=("table", "json"), default="table", help="report format")
    _add_common(p)
    return p


def _base_config(path: str | None) -> dict[str, Any]:
    return load_config(path) if path else {}


def serve_settings(args: argparse.Namespace) -> Settings:
    data = _base_config(args.config_file)
    targets = list(data.get("targets") or [])
    targets += [target_from_url(u) for u in (args.targets if args.targets is not None else _env_list("TARGETS"))]
    baselines = args.baseline_targets if args.baseline_targets is not None else _env_list("BASELINE_TARGETS")
    targets += [target_from_url(u, "baseline") for u in baselines]
    data["targets"] = targets
    if args.poll_interval:
        data["poll"] = {**(data.get("poll") or {}), "interval": args.poll_interval}
    if args.tap_listen_address:
        data["tap"] = {**(data.get("tap") or {}), "listen_address": args.tap_listen_address}
    return settings_from_mapping(data)


def check_settings(args: argparse.Namespace) -> Settings:
    data = _base_config(args.config_file)
    try:
        window = parse_duration(args.window)
        timeout = parse_duration(args.timeout)
    except ValueError as e:
        raise ConfigError([str(e)]) from None
    # The check is the poller with a single window, polled twice one window apart by run_check. The interval is
    # half the window only because a window must span two intervals; its slack keeps the first poll as the base.
    data.update(
        targets=[target_from_url(args.target)],
        windows=[window],
        verdict_window=None,
        poll={
            "interval": window / 2,
            "timeout": min(timeout, window / 2),
            "max_body_bytes": (data.get("poll") or {}).get("max_body_bytes", 16 * 1024**2),
        },
    )
    return settings_from_mapping(data)


def _listen(address: str) -> tuple[str, int]:
    from spec_exporter.app import listen_address

    try:
        return listen_address(address)
    except ValueError:
        raise ConfigError([f"--web.listen-address: {address!r} is not [HOST]:PORT"]) from None


def _config_failed(e: ConfigError) -> int:
    print("spec-exporter: " + str(e), file=sys.stderr)
    return EXIT_CONFIG


def serve(argv: Sequence[str]) -> int:
    args = serve_parser().parse_args(argv)
    setup_logging(args.log_level, args.log_format)
    log = structlog.get_logger("spec_exporter")
    try:
        settings = serve_settings(args)
        host, port = _listen(args.listen_address)
    except ConfigError as e:
        return _config_failed(e)
    if args.config_check:
        print(settings.model_dump_json(indent=2))
        return 0
    from spec_exporter.app import serve as serve_app

    tap_listen = settings.tap.listen_address
    log.info(
        "starting",
        version=__version__,
        targets=[t.name for t in settings.targets],
        interval_seconds=settings.poll.interval,
    )

    async def run() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        log.info("listening", address=f"{host}:{port}", telemetry_path=args.telemetry_path)
        if tap_listen:
            log.info("tap listening", address=tap_listen, upstream=str(settings.tap_target.url))
        await serve_app(
            settings, listen=args.listen_address, telemetry_path=args.telemetry_path, tap_listen=tap_listen, stop=stop
        )
        log.info("stopped")

    asyncio.run(run())
    return 0


def check(
    argv: Sequence[str],
    *,
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    clock: Callable[[], float] = time.monotonic,
) -> int:
    args = check_parser().parse_args(argv)
    setup_logging(args.log_level, args.log_format)
    try:
        settings = check_settings(args)
    except ConfigError as e:
        return _config_failed(e)
    from spec_exporter.report import render_json, render_table, run_check

    async def go() -> Any:
        async with aiohttp.ClientSession() as session:
            return await run_check(settings, session, sleep=sleep, clock=clock)

    result = asyncio.run(go())
    sys.stdout.write(render_json(result) if args.output == "json" else render_table(result))
    return result.exit_code


def probe_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="spec-exporter probe",
        description="Send requests at each temperature to a vLLM and report, per temperature, acceptance "
        "(P10/P50/P90 across requests when vLLM gives per-request metrics, else from its counters over that "
        "temperature's phase), mean acceptance length, TTFT and TPOT p50/p99, and the verdict with advice. "
        "Exit status 0 when the probe ran, 1 when it could not.",
    )
    p.add_argument("--target", required=True, metavar="URL", help="vLLM base URL, e.g. http://127.0.0.1:8000")
    p.add_argument(
        "--temperatures",
        default="0,0.4,0.8,1.0",
        metavar="LIST",
        help="comma-separated temperatures, one phase each (default %(default)s)",
    )
    p.add_argument("--requests", type=int, default=20, metavar="N", help="requests per temperature (default 20)")
    p.add_argument("--concurrency", type=int, default=1, metavar="N", help="requests in flight (default 1)")
    p.add_argument("--prompts", metavar="FILE", help="prompts, one per line (default: a few built-in ones)")
    p.add_argument("--model", help="model name (default: the first one /v1/models lists)")
    p.add_argument("--max-tokens", type=int, default=64, metavar="N", help="max_tokens per request (default 64)")
    p.add_argument("--output", choices=("table", "json"), default="table", help="report format")
    _add_common(p)
    return p


def probe_settings(args: argparse.Namespace) -> Any:
    from spec_exporter.probe import DEFAULT_PROMPTS, ProbeSettings

    problems = []
    try:
        temperatures = tuple(float(t) for t in args.temperatures.split(",") if t.strip())
    except ValueError:
        temperatures = ()
    if not temperatures or any(not 0 <= t <= 2 for t in temperatures):
        problems.append("--temperatures: a comma-separated list of numbers in [0, 2]")
    if args.requests < 1:
        problems.append("--requests: at least 1")
    if args.concurrency < 1:
        problems.append("--concurrency: at least 1")
    prompts: tuple[str, ...] = DEFAULT_PROMPTS
    if args.prompts:
        try:
            with open(args.prompts, encoding="utf-8") as f:
                prompts = tuple(line.rstrip("\n") for line in f if line.strip())
        except OSError as e:
            problems.append(f"--prompts: {e.strerror or e}")
        if not prompts:
            problems.append("--prompts: the file has no prompts")
    if problems:
        raise ConfigError(problems)
    return ProbeSettings(
        target=args.target,
        temperatures=temperatures,
        requests=args.requests,
        concurrency=args.concurrency,
        prompts=prompts,
        model=args.model,
        max_tokens=args.max_tokens,
    )


def probe(argv: Sequence[str]) -> int:
    args = probe_parser().parse_args(argv)
    setup_logging(args.log_level, args.log_format)
    try:
        settings = probe_settings(args)
    except ConfigError as e:
        return _config_failed(e)
    from spec_exporter.probe import probe_main

    return asyncio.run(probe_main(settings, args.output))


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "check":
        return check(argv[1:])
    if argv and argv[0] == "probe":
        return probe(argv[1:])
    if argv and argv[0] == "serve":
        argv = argv[1:]
    return serve(argv)
