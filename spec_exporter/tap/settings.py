"""The tap's settings: the one definition of their defaults and their validation.

Three readers, one model: the exporter's config file (`tap:`, where `config.TapConfig` adds where the proxy listens
and forwards), the middleware's environment (`SPEC_EXPORTER_TAP_<FIELD>`, read by `settings_from_env`), and both
front ends, which run on a `TapSettings`.

The environment is read inside vLLM's API server, where a monitoring setting must never keep vLLM from serving:
a variable that does not validate is logged, naming it, its value and the reason, and its default is used.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from functools import cached_property
from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, field_validator

from spec_exporter.tap.temperature_bands import MAX_TEMPERATURE, TemperatureBands, check_edges
from spec_exporter.tap.voice import say_once
from spec_exporter.tap.workload import DEFAULT, MAX_WORKLOAD_CHARS, OTHER, WorkloadClasses, WorkloadSource

ENV_PREFIX = "SPEC_EXPORTER_TAP_"


# An HTTP field name (RFC 9110 §5.1: a token).
_HEADER_RE = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")
_SIZE_RE = re.compile(r"^(\d+)\s*(B|KiB|MiB|GiB|KB|MB|GB)?$")
_SIZE_UNITS = {None: 1, "B": 1, "KiB": 1024, "MiB": 1024**2, "GiB": 1024**3, "KB": 1000, "MB": 1000**2, "GB": 1000**3}


def parse_size(value: Any) -> Any:
    """A number of bytes, or a size such as 16MiB (here because the middleware cannot import config.py)."""
    if isinstance(value, bool):
        raise ValueError("expected a size such as 16MiB")
    if isinstance(value, int):
        return value
    if isinstance(value, str):
        m = _SIZE_RE.match(value.strip())
        if m:
            return int(m.group(1)) * _SIZE_UNITS[m.group(2)]
    raise ValueError(f"{value!r} is not a size (use e.g. 16MiB or a number of bytes)")


ByteSize = Annotated[int, BeforeValidator(parse_size), Field(gt=0)]


class TapSettings(BaseModel):
    """What the tap does with a request, whichever front end it runs in."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    # Edges of the temperature bands: 0 (greedy), 0-0.3, 0.3-0.5, 0.5-0.7, 0.7-1.0, 1.0+ by default.
    temperature_bands: list[float] = Field(default_factory=lambda: [0.3, 0.5, 0.7, 1.0], min_length=1, max_length=12)
    # The temperature of a request that sets none (vLLM's default unless the model's generation_config has one).
    default_temperature: float = Field(default=1.0, ge=0, le=MAX_TEMPERATURE)
    # Ask vLLM for the final usage chunk of a stream whose client did not (and withhold it from that client).
    inject_usage: bool = True
    # Distinct model_name label values per process; the rest fold into "other".
    max_models: int = Field(default=20, ge=1, le=1000)
    # Request bodies (and JSON responses) larger than this are forwarded without being read.
    max_inspect_bytes: ByteSize = 8 * 1024**2
    # Where a request's workload class comes from, first match wins: this request header (e.g. x-workload), the
    # served model alias it asks for, the route prefix in front of the endpoint; none of them → "default".
    workload_header: str | None = None
    workload_from_model: bool = False
    workload_from_route: bool = False
    # The classes kept as label values; others fold into "other". Empty: the first max_workloads distinct values.
    workloads: list[str] = Field(default_factory=list, max_length=50)
    max_workloads: int = Field(default=8, ge=1, le=50)

    @field_validator("temperature_bands")
    @classmethod
    def _edges(cls, edges: list[float]) -> list[float]:
        check_edges(edges)
        return edges

    @field_validator("workload_header")
    @classmethod
    def _header(cls, name: str | None) -> str | None:
        if name is not None and not _HEADER_RE.match(name):
            raise ValueError(f"{name!r} is not an HTTP header name")
        return name.lower() if name else None

    @field_validator("workloads")
    @classmethod
    def _classes(cls, classes: list[str]) -> list[str]:
        for value in classes:
            if not value or len(value) > MAX_WORKLOAD_CHARS or not value.isprintable():
                raise ValueError(f"workload class {value!r} must be 1-{MAX_WORKLOAD_CHARS} printable characters")
            if value in (DEFAULT, OTHER):
                raise ValueError(f"{value!r} is a reserved workload class")
        if len(set(classes)) != len(classes):
            raise ValueError("workload classes must be distinct")
        return classes

    @cached_property
    def workload_source(self) -> WorkloadSource:
        return WorkloadSource(self.workload_header, self.workload_from_model, self.workload_from_route)

    def workload_classes(self) -> WorkloadClasses:
        """A fresh closed set of class labels (one per process: the front ends share the tap's metrics' one)."""
        return WorkloadClasses(tuple(self.workloads), self.max_workloads)

    @cached_property
    def bands(self) -> TemperatureBands:
        return TemperatureBands(tuple(self.temperature_bands), self.default_temperature)


def _env_value(field: str, raw: str) -> Any:
    if field in ("temperature_bands", "workloads"):
        return [item.strip() for item in raw.split(",")]
    return raw.strip()


def settings_from_env(env: Mapping[str, str]) -> TapSettings:
    """`TapSettings` from `SPEC_EXPORTER_TAP_<FIELD>` variables (unset or blank: the default).

    Never raises for what the variables hold: each one that does not validate is logged and left at its default.
    """
    raw = {
        field: value
        for field in TapSettings.model_fields
        if (value := env.get(ENV_PREFIX + field.upper())) is not None and value.strip()
    }
    values = {field: _env_value(field, value) for field, value in raw.items()}
    # Each pass drops the fields that failed; the defaults always validate, so this ends.
    while True:
        try:
            return TapSettings.model_validate(values)
        except ValidationError as e:
            refused: dict[str, str] = {}
            for error in e.errors():
                field = str(error["loc"][0]) if error["loc"] else ""
                refused.setdefault(field, error["msg"].removeprefix("Value error, "))
            if not refused.keys() & values.keys():
                say_once(
                    ("settings", str(e)),
                    logging.WARNING,
                    "spec_exporter: ignoring every SPEC_EXPORTER_TAP_* variable (%s); using defaults",
                    e,
                )
                return TapSettings()
            for field, reason in refused.items():
                if values.pop(field, None) is not None:
                    say_once(
                        ("setting", field, raw[field]),
                        logging.WARNING,
                        "spec_exporter: ignoring %s%s=%r (%s); using the default %r",
                        ENV_PREFIX,
                        field.upper(),
                        raw[field],
                        reason,
                        TapSettings.model_fields[field].get_default(call_default_factory=True),
                    )


__all__ = ["ENV_PREFIX", "ByteSize", "TapSettings", "parse_size", "settings_from_env"]
