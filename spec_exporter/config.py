"""The exporter's configuration: strict pydantic models, YAML loading, and errors listed per field."""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Mapping
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
    field_validator,
    model_validator,
)

from spec_exporter.tap.settings import ByteSize, TapSettings
from spec_exporter.types import DEFAULT_DRAFT_COST_RATIO, CostProfile, DeriveParams, Thresholds, Window

_DURATION_RE = re.compile(
    r"^(?:(\d+(?:\.\d+)?)h)?(?:(\d+(?:\.\d+)?)m(?!s))?(?:(\d+(?:\.\d+)?)s)?(?:(\d+(?:\.\d+)?)ms)?$"
)


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
_ENV_RE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


def expand_env(value: Any) -> Any:
    """`${VAR}` from the environment, so that one ConfigMap serves every pod: a sidecar's target is named after its
    pod (`name: ${POD_NAME}`, from the downward API) and per-pod alerts name the pod. An unset variable is an error,
    never an empty name."""
    if not isinstance(value, str):
        return value

    def lookup(m: re.Match[str]) -> str:
        found = os.environ.get(m.group(1))
        if not found:
            raise ValueError(f"${{{m.group(1)}}} is not set in the environment")
        return found

    return _ENV_RE.sub(lookup, value)


Profile = Annotated[CostProfile | None, BeforeValidator(read_profile)]
# A target name becomes the `target` label value: keep it short and printable.
TargetName = Annotated[str, BeforeValidator(expand_env), Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.:/-]{0,62}$")]


class Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def file_contents(files: Iterable[Path]) -> tuple[bytes | None, ...]:
    """What certificate files hold now (None where unreadable), to see a renewal: the contents, not the mtimes, as two
    writes within one clock tick share an mtime, and a few KiB read per connection or poll cost next to nothing."""
    out: list[bytes | None] = []
    for f in files:
        try:
            out.append(f.read_bytes())
        except OSError:
            out.append(None)
    return tuple(out)


class TLSConfig(Model):
    """How an https target is verified and what the exporter shows it: Prometheus' `tls_config`, same names.

    Files are read when the exporter starts and again whenever their contents change (a renewed certificate from
    cert-manager needs no restart)."""

    # CA bundle the target's certificate must chain to; unset: the system's trust store.
    ca_file: Path | None = None
    # Client certificate and key, for a target that asks for one (mutual TLS); both or neither.
    cert_file: Path | None = None
    key_file: Path | None = None
    # Name the certificate must carry, and the SNI sent, when the URL's host is not it (127.0.0.1 in a pod).
    server_name: str | None = Field(default=None, min_length=1, max_length=253, pattern=r"^[A-Za-z0-9.*-]+$")
    # Accept any certificate: encryption without authentication, for a self-signed vLLM on localhost.
    insecure_skip_verify: bool = False

    @field_validator("ca_file", "cert_file", "key_file")
    @classmethod
    def _readable(cls, value: Path | None) -> Path | None:
        if value is not None and not value.is_file():
            raise ValueError(f"{value} does not exist or is not a file")
        return value

    @model_validator(mode="after")
    def _pair(self) -> TLSConfig:
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("cert_file and key_file go together: give both or neither")
        if self.insecure_skip_verify and (self.ca_file is not None or self.server_name is not None):
            raise ValueError("insecure_skip_verify verifies nothing: drop ca_file and server_name, or set it false")
        return self

    @property
    def files(self) -> tuple[Path, ...]:
        return tuple(f for f in (self.ca_file, self.cert_file, self.key_file) if f is not None)


class TargetConfig(Model):
    """One vLLM server (or one pool behind a Service) to poll."""

    name: TargetName
    url: Annotated[AnyHttpUrl, BeforeValidator(expand_env)]
    role: Literal["spec", "baseline"] = "spec"
    metrics_path: str = Field(default="/metrics", pattern=r"^/")
    baseline: TargetName | None = None
    num_speculative_tokens: int | None = Field(default=None, ge=1, le=64)
    draft_cost_ratio: float | None = Field(default=None, ge=0, le=10)
    tls_config: TLSConfig | None = None
    cost_profile: Profile = None

    @model_validator(mode="after")
    def _tls_needs_https(self) -> TargetConfig:
        if self.tls_config is not None and self.url.scheme != "https":
            raise ValueError("tls_config applies to https URLs only; this target's URL is " + self.url.scheme)
        return self

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
    # What the proxy tap exports on spec_tap_speculative_config_info (the middleware reads vLLM's own config):
    # vLLM's --speculative-config method, its draft model, and how drafts are sampled and verified.
    method: str | None = Field(default=None, pattern=r"^[a-z0-9_]{1,40}$")
    draft_model: str | None = Field(default=None, min_length=1, max_length=200)
    draft_sample_method: Literal["greedy", "probabilistic"] | None = None
    rejection_sample_method: Literal["standard", "synthetic", "block"] | None = None


class TapConfig(TapSettings):
    """The request-path tap: off unless `listen_address` is set (or --tap.listen-address is given).

    What it does with requests (and every default) is `TapSettings`, shared with the middleware's environment;
    this adds where the proxy listens and forwards.
    """

    listen_address: str | None = Field(default=None, pattern=r"^(\[[0-9a-fA-F:.]+\]|[A-Za-z0-9_.-]*):\d{1,5}$")
    target: TargetName | None = None
    # Where requests go; default the tap target's own URL (vLLM serves its API and /metrics on one port).
    upstream_url: AnyHttpUrl | None = None


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
