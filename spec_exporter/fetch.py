"""GET a target's /metrics with a timeout and a cap on the body, over the TLS its `tls_config` asks for; every
failure becomes a `FetchError(reason)`."""

from __future__ import annotations

import asyncio
import ssl
from dataclasses import dataclass, field

import aiohttp
import structlog

from spec_exporter.config import ConfigError, Settings, TLSConfig, file_contents
from spec_exporter.types import PollError

log = structlog.get_logger("spec_exporter.fetch")

ACCEPT = "text/plain;version=0.0.4;q=1.0,*/*;q=0.1"


class FetchError(Exception):
    def __init__(self, reason: PollError, message: str) -> None:
        super().__init__(message)
        self.reason = reason


def client_ssl_context(tls: TLSConfig, where: str = "tls_config") -> ssl.SSLContext:
    """The context Prometheus would build from the same `tls_config`: verify against ca_file (else the system's
    roots), present cert_file/key_file, or verify nothing with insecure_skip_verify. `where` names the setting in
    errors."""
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    if tls.insecure_skip_verify:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    elif tls.ca_file is not None:
        try:
            ctx.load_verify_locations(cafile=str(tls.ca_file))
        except (ssl.SSLError, OSError) as e:
            raise ConfigError([f"{where}.ca_file: no usable CA certificate in {tls.ca_file}: {e}"]) from None
    if tls.cert_file is not None and tls.key_file is not None:
        try:
            ctx.load_cert_chain(str(tls.cert_file), str(tls.key_file))
        except (ssl.SSLError, OSError) as e:
            raise ConfigError([f"{where}.cert_file: cannot load {tls.cert_file} with its key: {e}"]) from None
    return ctx


@dataclass
class TargetTLS:
    """A target's client TLS, rebuilt when its files change: the next poll after a renewal uses the new files. A
    renewal that does not load (a certificate written before its key) keeps the last good context."""

    config: TLSConfig
    where: str = "tls_config"
    context: ssl.SSLContext = field(init=False)
    _seen: tuple[bytes | None, ...] = field(init=False)

    def __post_init__(self) -> None:
        self._seen = file_contents(self.config.files)
        self.context = client_ssl_context(self.config, self.where)

    def current(self) -> ssl.SSLContext:
        seen = file_contents(self.config.files)
        if seen != self._seen:
            self._seen = seen
            try:
                self.context = client_ssl_context(self.config, self.where)
            except ConfigError as e:
                log.warning("tls_reload_failed", error=str(e), action="keeping the previous certificates")
            else:
                log.info("tls_reloaded", files=[str(f) for f in self.config.files])
        return self.context

    @property
    def server_name(self) -> str | None:
        return self.config.server_name


def target_tls(settings: Settings) -> dict[str, TargetTLS]:
    """Each https target's TLS by target name; raises ConfigError naming the target when a file does not load."""
    return {
        t.name: TargetTLS(t.tls_config, f"targets.{i}.tls_config")
        for i, t in enumerate(settings.targets)
        if t.tls_config is not None
    }


async def fetch_metrics(
    session: aiohttp.ClientSession, url: str, timeout: float, max_bytes: int, tls: TargetTLS | None = None
) -> str:
    """The body as text, complete, within `timeout` seconds and `max_bytes` (after decompression)."""
    # aiohttp's default (True) verifies against the system's roots, as Prometheus does without a tls_config.
    ssl_arg: ssl.SSLContext | bool = tls.current() if tls is not None else True
    try:
        async with session.get(
            url,
            timeout=aiohttp.ClientTimeout(total=timeout),
            headers={"Accept": ACCEPT},
            allow_redirects=False,
            ssl=ssl_arg,
            server_hostname=tls.server_name if tls is not None else None,
        ) as response:
            if response.status != 200:
                raise FetchError(PollError.HTTP_STATUS, f"HTTP {response.status}")
            if response.content_length is not None and response.content_length > max_bytes:
                raise FetchError(
                    PollError.BODY_TOO_LARGE, f"Content-Length {response.content_length} exceeds {max_bytes} bytes"
                )
            chunks = []
            size = 0
            async for chunk in response.content.iter_chunked(1 << 16):
                size += len(chunk)
                if size > max_bytes:
                    # Stop reading: the connection is dropped rather than drained.
                    raise FetchError(PollError.BODY_TOO_LARGE, f"body exceeds {max_bytes} bytes")
                chunks.append(chunk)
    except FetchError:
        raise
    except TimeoutError:
        raise FetchError(PollError.TIMEOUT, f"no complete response within {timeout:g}s") from None
    except aiohttp.ClientPayloadError as e:
        raise FetchError(PollError.TRUNCATED, f"body cut short: {e}") from None
    except aiohttp.ClientSSLError as e:
        # A certificate that does not verify, a name that does not match, a client certificate refused.
        raise FetchError(PollError.TLS, f"{type(e).__name__}: {e}") from None
    except (aiohttp.ClientError, OSError) as e:
        raise FetchError(PollError.CONNECTION, f"{type(e).__name__}: {e}") from None
    except asyncio.CancelledError:
        raise
    try:
        text = b"".join(chunks).decode("utf-8")
    except UnicodeDecodeError as e:
        raise FetchError(PollError.PARSE_ERROR, f"body is not UTF-8: {e.reason} at byte {e.start}") from None
    # The text format has no end marker; prometheus_client always ends the body with a newline, so a body
    # without one stopped mid-line.
    if text and not text.endswith("\n"):
        raise FetchError(PollError.TRUNCATED, "body does not end with a newline")
    return text
