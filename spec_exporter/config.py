"""The exporter's configuration: strict pydantic models, YAML loading, and errors listed per field."""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    AnyHttpUrl,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    model_validator,
)

from spec_exporter.types import DEFAULT_DRAFT_COST_RATIO, CostProfile, DeriveParams, Thresholds, Window

_DURATION_RE = re.compile(
    r"^(?:(\d+(?:\.\d+)?)h)?(?:(\d+(?:\.\d+)?)m(?!s))?(?:(\d+(?:\.\d+)?)s)?(?:(\d+(?:\.\d+)?)ms)?$"
)
_SIZE_RE = re.compile(r"^(\d+)\s*(B|KiB|MiB|GiB|KB|MB|GB)?$")
_SIZE_UNITS = {None: 1, "B": 1, "KiB": 1024, "MiB": 1024**2, "GiB": 1024**3, "KB": 1000, "MB": 1000**2, "GB": 1000**3}


def parse_duration(value: Any) -> Any:
    """Prometheus-style durations ("500ms", "5s", "1m", "1m30s", "2h"); a bare number is seconds."""
    if isinstance(value, bool):
        raise ValueError("expected a duration such as 5s or 1m")
    if isinstance(value, int | float):
        return float(value)
    if not isinstance(value, str) or not value:
        raise ValueError("expected a duration such as 5s or 1m")
    m = _DURATION_RE.match(value.strip())
    if m is None or not any(m.groups()):
        raise ValueError(f"{value!r} is not a duration (use e.g. 500ms, 5s, 1m, 1m30s)")
    h, mins, s, ms = (float(g) if g else 0.0 for g in m.groups())
    return h * 3600 + mins * 60 + s + ms / 1000


def parse_size(value: Any) -> Any:
    if isinstance(value, bool):
        raise ValueError("expected a size such as 16MiB")
    if isinstance(value, int):
        return value
    if isinstance(value, str):
        m = _SIZE_RE.match(value.strip())
        if m:
            return int(m.group(1)) * _SIZE_UNITS[m.group(2)]
    raise ValueError(f"{value!r} is not a size (use e.g. 16MiB or a number of bytes)")


def format_duration(seconds: float) -> str:
    """The label form of a window: 1m, 5m, 90s, 1h."""
    if seconds >= 3600 and seconds % 3600 == 0:
        return f"{int(seconds // 3600)}h"
    if seconds >= 60 and seconds % 60 == 0:
        return f"{int(seconds // 60)}m"
    if seconds == int(seconds):
        return f"{int(seconds)}s"
    return f"{int(seconds * 1000)}ms"


def read_profile(value: Any) -> Any:
    """A calibration profile's path (YAML or JSON) becomes its content; pydantic then checks it field by field."""
    if not isinstance(value, str | Path):
        return value
    try:
        data = yaml.safe_load(Path(value).read_text())
    except OSError as e:
        raise ValueError(f"cannot read the profile {value}: {e.strerror or e}") from None
    except yaml.YAMLError as e:
        raise ValueError(f"the profile {value} is not valid YAML: {e}") from None
    if not isinstance(data, dict):
        raise ValueError(f"the profile {value} must be a mapping")
    return data


Duration = Annotated[float, BeforeValidator(parse_duration), Field(gt=0)]
Profile = Annotated[CostProfile | None, BeforeValidator(read_profile)]
ByteSize = Annotated[int, BeforeValidator(parse_size), Field(gt=0)]
# A target name becomes the `target` label value: keep it short and printable.
TargetName = Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.:/-]{0,62}$")]


class Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class TargetConfig(Model):
    """One vLLM server (or one pool behind a Service) to poll."""

    name: TargetName
    url: AnyHttpUrl
    role: Literal["spec", "baseline"] = "spec"
    metrics_path: str = Field(default="/metrics", pattern=r"^/")
    baseline: TargetName | None = None
    num_speculative_tokens: int | None = Field(default=None, ge=1, le=64)
    draft_cost_ratio: float | None = Field(default=None, ge=0, le=10)
    cost_profile: Profile = None

    @property
    def metrics_url(self) -> str:
        return str(self.url).rstrip("/") + self.metrics_path


class PollConfig(Model):
    interval: Duration = 5.0
    timeout: Duration = 4.0
    max_body_bytes: ByteSize = 16 * 1024**2
    # model_name values per target with their own label (LoRA adapters count); the rest fold into "other".
    max_models: int = Field(default=50, ge=1, le=10_000)

    @model_validator(mode="before")
    @classmethod
    def _default_timeout(cls, data: Any) -> Any:
        # Like Prometheus' scrape_timeout: unset means the default, but never longer than the interval.
        if isinstance(data, dict) and "timeout" not in data and "interval" in data:
            try:
                interval = parse_duration(data["interval"])
            except ValueError:
                return data
            return {**data, "timeout": min(4.0, interval)}
        return data

    @model_validator(mode="after")
    def _timeout_within_interval(self) -> PollConfig:
        if self.timeout > self.interval:
            raise ValueError("timeout must not exceed interval")
        return self


class SpeculationConfig(Model):
    """The step cost behind every modelled number (derive/cost.py): a calibration profile, else the prior 1 + k*c."""

    num_speculative_tokens: int | None = Field(default=None, ge=1, le=64)
    draft_cost_ratio: float = Field(default=DEFAULT_DRAFT_COST_RATIO, ge=0, le=10)
    # A file written by `spec-exporter probe --baseline-target URL --write-profile FILE`.
    cost_profile: Profile = None


class TapConfig(Model):
    """The request-path tap: off unless `listen_address` is set (or --tap.listen-address is given)."""

    listen_address: str | None = Field(default=None, pattern=r"^(\[[0-9a-fA-F:.]+\]|[A-Za-z0-9_.-]*):\d{1,5}$")
    target: TargetName | None = None
    # Where requests go; default the tap target's own URL (vLLM serves its API and /metrics on one port).
    upstream_url: AnyHttpUrl | None = None
    temperature_bands: list[float] = Field(default_factory=lambda: [0.3, 0.5, 0.7, 1.0], min_length=1, max_length=12)
    default_temperature: float = Field(default=1.0, ge=0, le=2)
    inject_usage: bool = True
    max_models: int = Field(default=20, ge=1, le=1000)
    max_inspect_bytes: ByteSize = 8 * 1024**2

    @model_validator(mode="after")
    def _bands(self) -> TapConfig:
        edges = self.temperature_bands
        if any(e <= 0 or e > 2 for e in edges) or edges != sorted(set(edges)):
            raise ValueError("temperature_bands must be strictly increasing edges in (0, 2]")
        return self


class Settings(Model):
    targets: list[TargetConfig] = Field(min_length=1)
    poll: PollConfig = PollConfig()
    windows: list[Duration] = Field(default_factory=lambda: [60.0, 300.0], min_length=1, max_length=6)
    verdict_window: Duration | None = None
    thresholds: Thresholds = Thresholds()
    speculation: SpeculationConfig = SpeculationConfig()
    tap: TapConfig = TapConfig()

    @model_validator(mode="after")
    def _consistent(self) -> Settings:
        names = [t.name for t in self.targets]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"target names must be unique: {', '.join(duplicates)}")
        baselines = {t.name for t in self.targets if t.role == "baseline"}
        for t in self.targets:
            if t.baseline is not None and t.baseline not in baselines:
                raise ValueError(f"target {t.name!r}: baseline {t.baseline!r} is not a target with role baseline")
        labels = [format_duration(w) for w in self.windows]
        if len(set(labels)) != len(labels):
            raise ValueError("windows must be unique")
        if any(w < 2 * self.poll.interval for w in self.windows):
            raise ValueError("every window must span at least two poll intervals")
        if self.verdict_window is not None and self.verdict_window not in self.windows:
            raise ValueError("verdict_window must be one of windows")
        if self.tap.target is not None and self.tap.target not in names:
            raise ValueError(f"tap.target {self.tap.target!r} is not a configured target")
        for t in self.targets:
            profile = self.cost_profile_for(t)
            k = t.num_speculative_tokens or self.speculation.num_speculative_tokens
            if profile is not None and k is not None and profile.num_speculative_tokens != k:
                where = f"targets.{t.name}.cost_profile" if t.cost_profile is not None else "speculation.cost_profile"
                raise ValueError(
                    f"{where}: the profile was measured at num_speculative_tokens={profile.num_speculative_tokens}, "
                    f"target {t.name!r} runs k={k}; measure a profile at this k (probe --write-profile)"
                )
        return self

    def cost_profile_for(self, target: TargetConfig) -> CostProfile | None:
        return target.cost_profile if target.cost_profile is not None else self.speculation.cost_profile

    @property
    def tap_target(self) -> TargetConfig:
        """The vLLM the tap forwards to: the configured one, else the first spec target."""
        if self.tap.target is not None:
            return next(t for t in self.targets if t.name == self.tap.target)
        return next((t for t in self.targets if t.role == "spec"), self.targets[0])

    @property
    def verdict_window_seconds(self) -> float:
        return self.verdict_window if self.verdict_window is not None else max(self.windows)

    def derive_params(self, target: TargetConfig) -> DeriveParams:
        """What the derivations of `target` need: windows, verdict window, thresholds and the cost model."""
        return DeriveParams(
            windows=tuple(Window(format_duration(w), w) for w in sorted(self.windows)),
            verdict_window=format_duration(self.verdict_window_seconds),
            thresholds=self.thresholds,
            num_speculative_tokens=target.num_speculative_tokens or self.speculation.num_speculative_tokens,
            draft_cost_ratio=(
                target.draft_cost_ratio if target.draft_cost_ratio is not None else self.speculation.draft_cost_ratio
            ),
            cost_profile=self.cost_profile_for(target),
        )

    def comparison_pairs(self) -> tuple[tuple[str, str], ...]:
        """(spec target, its baseline) for every spec target that has one."""
        return tuple((t.name, b.name) for t in self.targets if (b := self.baseline_for(t)) is not None)

    def baseline_for(self, target: TargetConfig) -> TargetConfig | None:
        """The baseline a spec target is compared with: its own, or the only one configured."""
        if target.role != "spec":
            return None
        baselines = [t for t in self.targets if t.role == "baseline"]
        if target.baseline is not None:
            return next(t for t in baselines if t.name == target.baseline)
        return baselines[0] if len(baselines) == 1 else None


class ConfigError(Exception):
    """Invalid configuration; `details` has one "location: problem" line per bad field."""

    def __init__(self, details: list[str]) -> None:
        super().__init__("invalid configuration:\n" + "\n".join(f"  {d}" for d in details))
        self.details = details


def settings_from_mapping(data: Mapping[str, Any]) -> Settings:
    try:
        return Settings.model_validate(data)
    except ValidationError as e:
        details = []
        for err in e.errors():
            location = ".".join(str(p) for p in err["loc"]) or "(top level)"
            message = err["msg"].removeprefix("Value error, ")
            details.append(f"{location}: {message}")
        raise ConfigError(details) from None


def load_config(path: Path | str) -> dict[str, Any]:
    """Read a YAML config file into a mapping (validation happens once flags are merged in)."""
    try:
        data = yaml.safe_load(Path(path).read_text())
    except OSError as e:
        raise ConfigError([f"{path}: {e.strerror or e}"]) from None
    except yaml.YAMLError as e:
        raise ConfigError([f"{path}: not valid YAML: {e}"]) from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError([f"{path}: the top level must be a mapping"])
    return data


def target_from_url(url: str, role: Literal["spec", "baseline"] = "spec") -> dict[str, Any]:
    """A target entry for `--target URL`: named after its host and port."""
    from urllib.parse import urlsplit

    parts = urlsplit(url if "://" in url else f"http://{url}")
    name = parts.netloc or url
    return {"name": name, "url": parts.geturl(), "role": role}
