"""What every command shares: the common flags, environment overrides, and the one way settings are built."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Mapping, Sequence
from typing import Any

from spec_exporter.config import ConfigError, Settings, load_config, settings_from_mapping, target_from_url
from spec_exporter.logs import LEVELS

ENV_PREFIX = "SPEC_EXPORTER_"
EXIT_CONFIG = 2


def env(name: str, default: str | None = None) -> str | None:
    return os.environ.get(ENV_PREFIX + name, default)


def env_list(name: str) -> list[str]:
    value = env(name)
    return [v.strip() for v in value.split(",") if v.strip()] if value else []


def add_common_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config.file",
        dest="config_file",
        default=env("CONFIG_FILE"),
        metavar="PATH",
        help="YAML configuration file (env SPEC_EXPORTER_CONFIG_FILE)",
    )
    parser.add_argument(
        "--log.level",
        dest="log_level",
        default=env("LOG_LEVEL", "info"),
        choices=LEVELS,
        help="only log messages at this level or above (env SPEC_EXPORTER_LOG_LEVEL; default %(default)s)",
    )
    parser.add_argument(
        "--log.format",
        dest="log_format",
        default=env("LOG_FORMAT", "logfmt"),
        choices=("logfmt", "json"),
        help="log line format (env SPEC_EXPORTER_LOG_FORMAT; default %(default)s)",
    )


def _merged(base: Mapping[str, Any], overrides: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in overrides.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = _merged(out[key], value)
        else:
            out[key] = value
    return out


def build_settings(
    config_file: str | None,
    *,
    targets: Sequence[str] = (),
    baselines: Sequence[str] = (),
    only_these_targets: bool = False,
    overrides: Mapping[str, Any] | None = None,
) -> Settings:
    """The config file (if any), then targets from flags, then `overrides`, validated once.

    `only_these_targets` is for the one-target commands (`check`, `probe`): the file's targets are replaced, and
    with them the tap's listener and the target it forwards to, so a sidecar's config file still gives its
    thresholds, windows, cost model and what the tap does with requests (its workload header, for `probe`).
    """
    data = load_config(config_file) if config_file else {}
    listed = [] if only_these_targets else list(data.get("targets") or [])
    if only_these_targets and isinstance(data.get("tap"), dict):
        data["tap"] = {k: v for k, v in data["tap"].items() if k not in ("listen_address", "target", "upstream_url")}
    listed += [target_from_url(u) for u in targets]
    listed += [target_from_url(u, "baseline") for u in baselines]
    data["targets"] = listed
    return settings_from_mapping(_merged(data, overrides or {}))


def config_failed(e: ConfigError) -> int:
    print("spec-exporter: " + str(e), file=sys.stderr)
    return EXIT_CONFIG
