"""`spec-exporter` (or `spec-exporter serve`): poll vLLM and serve /metrics, and the proxy tap if asked."""

from __future__ import annotations

import argparse
import asyncio
import signal
from collections.abc import Sequence

import structlog

from spec_exporter import __version__
from spec_exporter.commands.common import add_common_flags, build_settings, config_failed, env, env_list
from spec_exporter.config import ConfigError, Settings
from spec_exporter.logs import setup_logging

DEFAULT_LISTEN = ":9811"


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
        default=env("WEB_LISTEN_ADDRESS", DEFAULT_LISTEN),
        metavar="[HOST]:PORT",
        help="address to serve metrics on (env SPEC_EXPORTER_WEB_LISTEN_ADDRESS; default %(default)s)",
    )
    p.add_argument(
        "--web.telemetry-path",
        dest="telemetry_path",
        default=env("WEB_TELEMETRY_PATH", "/metrics"),
        metavar="PATH",
        help="path under which to expose metrics (default %(default)s)",
    )
    p.add_argument(
        "--web.config.file",
        dest="web_config_file",
        default=env("WEB_CONFIG_FILE"),
        metavar="PATH",
        help="exporter-toolkit web config: TLS and basic auth for the exporter's endpoints "
        "(env SPEC_EXPORTER_WEB_CONFIG_FILE; default plain HTTP, no auth)",
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
        default=env("POLL_INTERVAL"),
        metavar="DURATION",
        help="how often to poll each target (overrides poll.interval; default 5s)",
    )
    p.add_argument(
        "--tap.listen-address",
        dest="tap_listen_address",
        default=env("TAP_LISTEN_ADDRESS"),
        metavar="[HOST]:PORT",
        help="serve the request-path tap here, forwarding to the tap target's vLLM "
        "(env SPEC_EXPORTER_TAP_LISTEN_ADDRESS; default off, or tap.listen_address in the config file)",
    )
    p.add_argument(
        "--config.check", dest="config_check", action="store_true", help="validate the configuration, print it and exit"
    )
    p.add_argument("--version", action="version", version=f"spec-exporter {__version__}")
    add_common_flags(p)
    return p


def serve_settings(args: argparse.Namespace) -> Settings:
    overrides: dict[str, object] = {}
    if args.poll_interval:
        overrides["poll"] = {"interval": args.poll_interval}
    if args.tap_listen_address:
        overrides["tap"] = {"listen_address": args.tap_listen_address}
    return build_settings(
        args.config_file,
        targets=args.targets if args.targets is not None else env_list("TARGETS"),
        baselines=args.baseline_targets if args.baseline_targets is not None else env_list("BASELINE_TARGETS"),
        overrides=overrides,
    )


def _listen(address: str) -> tuple[str, int]:
    from spec_exporter.app import listen_address

    try:
        return listen_address(address)
    except ValueError:
        raise ConfigError([f"--web.listen-address: {address!r} is not [HOST]:PORT"]) from None


def serve(argv: Sequence[str]) -> int:
    args = serve_parser().parse_args(argv)
    setup_logging(args.log_level, args.log_format)
    log = structlog.get_logger("spec_exporter")
    from spec_exporter.fetch import target_tls
    from spec_exporter.webconfig import WebConfig, load_web_config

    try:
        settings = serve_settings(args)
        # Loads every target's certificates once, so that one that does not load stops the start with its name.
        target_tls(settings)
        host, port = _listen(args.listen_address)
        web_config = load_web_config(args.web_config_file) if args.web_config_file else WebConfig()
    except ConfigError as e:
        return config_failed(e)
    if args.config_check:
        print(settings.model_dump_json(indent=2))
        return 0
    from spec_exporter import buildinfo
    from spec_exporter.app import serve as serve_app

    # Read once before serving, so git (in a checkout) never runs during a scrape.
    build = buildinfo.current()

    tap_listen = settings.tap.listen_address
    log.info(
        "starting",
        version=__version__,
        revision=build.revision,
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
        # /healthz stays open: it is the kubelet's liveness probe, and says nothing but "ok".
        auth = web_config.middleware(public_paths=("/healthz",))
        await serve_app(
            settings,
            listen=args.listen_address,
            telemetry_path=args.telemetry_path,
            tap_listen=tap_listen,
            stop=stop,
            ssl_context=web_config.ssl_context(),
            middlewares=[auth] if auth is not None else [],
        )
        log.info("stopped")

    asyncio.run(run())
    return 0
