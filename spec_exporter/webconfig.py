"""`--web.config.file`: the Prometheus exporter-toolkit web configuration (TLS, basic auth, response headers),
loaded and checked once, turned into an `ssl.SSLContext` and an aiohttp middleware. The YAML is read at start-up
only; the certificate files it names are re-read when they change, so a renewed certificate needs no restart.

The format is the toolkit's (docs/web-configuration.md in prometheus/exporter-toolkit), so the file written for
node_exporter works here. Where Python's ssl cannot do what Go's crypto/tls does, the key is refused with the reason
rather than accepted and ignored: a security setting that silently does nothing is worse than an error.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import hmac
import re
import secrets
import ssl
from collections.abc import Awaitable, Callable, Collection, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

import bcrypt
import structlog
import yaml
from aiohttp import web
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from spec_exporter.config import ConfigError, file_contents

log = structlog.get_logger("spec_exporter.webconfig")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
Middleware = Callable[[web.Request, Handler], Awaitable[web.StreamResponse]]

TLS_VERSIONS = {
    "TLS10": ssl.TLSVersion.TLSv1,
    "TLS11": ssl.TLSVersion.TLSv1_1,
    "TLS12": ssl.TLSVersion.TLSv1_2,
    "TLS13": ssl.TLSVersion.TLSv1_3,
}
CLIENT_AUTH = {
    "NoClientCert": ssl.CERT_NONE,
    "VerifyClientCertIfGiven": ssl.CERT_OPTIONAL,
    "RequireAndVerifyClientCert": ssl.CERT_REQUIRED,
}
# Go can ask for a certificate without verifying it; OpenSSL through Python's ssl verifies whatever it asks for.
UNVERIFIED_CLIENT_AUTH = ("RequestClientCert", "RequireAnyClientCert", "RequireClientCert")
# The suites Go's tls.CipherSuites() offers for TLS 1.0-1.2, by their Go (IANA) names, as OpenSSL names them.
CIPHER_SUITES = {
    "TLS_RSA_WITH_AES_128_CBC_SHA": "AES128-SHA",
    "TLS_RSA_WITH_AES_256_CBC_SHA": "AES256-SHA",
    "TLS_RSA_WITH_AES_128_GCM_SHA256": "AES128-GCM-SHA256",
    "TLS_RSA_WITH_AES_256_GCM_SHA384": "AES256-GCM-SHA384",
    "TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA": "ECDHE-ECDSA-AES128-SHA",
    "TLS_ECDHE_ECDSA_WITH_AES_256_CBC_SHA": "ECDHE-ECDSA-AES256-SHA",
    "TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA": "ECDHE-RSA-AES128-SHA",
    "TLS_ECDHE_RSA_WITH_AES_256_CBC_SHA": "ECDHE-RSA-AES256-SHA",
    "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256": "ECDHE-ECDSA-AES128-GCM-SHA256",
    "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384": "ECDHE-ECDSA-AES256-GCM-SHA384",
    "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256": "ECDHE-RSA-AES128-GCM-SHA256",
    "TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384": "ECDHE-RSA-AES256-GCM-SHA384",
    "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256": "ECDHE-ECDSA-CHACHA20-POLY1305",
    "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256": "ECDHE-RSA-CHACHA20-POLY1305",
}
# TLS 1.3 suites are accepted as Go accepts them, and like Go's cipher_suites they do not restrict TLS 1.3.
TLS13_CIPHER_SUITES = ("TLS_AES_128_GCM_SHA256", "TLS_AES_256_GCM_SHA384", "TLS_CHACHA20_POLY1305_SHA256")
CURVES = {"CurveP256": "prime256v1", "CurveP384": "secp384r1", "CurveP521": "secp521r1", "X25519": "X25519"}
# The toolkit's closed set of settable headers, with the values allowed where the header is an enumeration.
HEADERS: dict[str, tuple[str, ...]] = {
    "Strict-Transport-Security": (),
    "X-Content-Type-Options": ("nosniff",),
    "X-Frame-Options": ("deny", "sameorigin"),
    "X-XSS-Protection": (),
    "Content-Security-Policy": (),
}
_BCRYPT_HASH = re.compile(r"^\$2[aby]\$(0[4-9]|[12]\d|3[01])\$[./A-Za-z0-9]{53}$")


def _refused(reason: str) -> AfterValidator:
    """A key the toolkit knows but spec-exporter cannot honour: an error with the reason, never silently ignored."""

    def check(value: Any) -> Any:
        if value not in (None, [], {}, ""):
            raise ValueError(reason)
        return None

    return AfterValidator(check)


Inline = Annotated[
    Any, _refused("inline certificates and keys are not supported: put them in files and use cert_file and key_file")
]
ClientSANs = Annotated[Any, _refused("not supported: Python's ssl has no hook to match client SANs in the handshake")]
RateLimit = Annotated[Any, _refused("not supported by spec-exporter")]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class TLSServerConfig(_Model):
    cert_file: str | None = None
    key_file: str | None = None
    cert: Inline = None
    key: Inline = None
    client_auth_type: str = "NoClientCert"
    client_ca_file: str | None = None
    client_ca: str | None = None
    client_allowed_sans: ClientSANs = None
    min_version: Literal["TLS10", "TLS11", "TLS12", "TLS13"] = "TLS12"
    max_version: Literal["TLS10", "TLS11", "TLS12", "TLS13"] = "TLS13"
    cipher_suites: list[str] = Field(default_factory=list)
    prefer_server_cipher_suites: bool = True
    curve_preferences: list[Literal["CurveP256", "CurveP384", "CurveP521", "X25519"]] = Field(default_factory=list)

    @field_validator("client_auth_type")
    @classmethod
    def _client_auth(cls, value: str) -> str:
        if value == "":
            return "NoClientCert"
        if value in UNVERIFIED_CLIENT_AUTH:
            raise ValueError(
                f"{value} (a client certificate that is not verified) is not supported; "
                "use RequireAndVerifyClientCert, or VerifyClientCertIfGiven"
            )
        if value not in CLIENT_AUTH:
            raise ValueError(f"{value!r} is not one of {', '.join(CLIENT_AUTH)}")
        return value

    @field_validator("cipher_suites")
    @classmethod
    def _ciphers(cls, value: list[str]) -> list[str]:
        unknown = [c for c in value if c not in CIPHER_SUITES and c not in TLS13_CIPHER_SUITES]
        if unknown:
            raise ValueError(f"unknown or insecure cipher suite {', '.join(unknown)} (use names as in Go's crypto/tls)")
        return value

    @field_validator("curve_preferences")
    @classmethod
    def _curves(cls, value: list[str]) -> list[str]:
        if len(value) > 1:
            raise ValueError("Python's ssl sets a single curve: list one, or leave curve_preferences out")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> TLSServerConfig:
        problems = []
        if self.cert_file is None:
            problems.append("cert_file is required to serve TLS")
        if self.key_file is None:
            problems.append("key_file is required to serve TLS")
        has_ca = self.client_ca_file is not None or self.client_ca is not None
        if has_ca and self.client_auth_type == "NoClientCert":
            problems.append("a client CA is configured but client_auth_type is NoClientCert")
        if not has_ca and self.client_auth_type != "NoClientCert":
            problems.append(f"client_auth_type {self.client_auth_type} needs client_ca_file to verify clients against")
        if self.client_ca_file is not None and self.client_ca is not None:
            problems.append("give client_ca_file or client_ca, not both")
        if TLS_VERSIONS[self.min_version] > TLS_VERSIONS[self.max_version]:
            problems.append(f"min_version {self.min_version} is above max_version {self.max_version}")
        if problems:
            raise ValueError("; ".join(problems))
        return self


class HTTPServerConfig(_Model):
    # Accepted for compatibility; aiohttp serves HTTP/1.1 only, so there is nothing to switch.
    http2: bool = True
    headers: dict[str, str] = Field(default_factory=dict)

    @field_validator("headers")
    @classmethod
    def _headers(cls, value: dict[str, str]) -> dict[str, str]:
        for name, v in value.items():
            if name not in HEADERS:
                raise ValueError(f"header {name!r} can not be configured (one of {', '.join(HEADERS)})")
            allowed = HEADERS[name]
            if allowed and v not in allowed:
                raise ValueError(f"{name} must be one of {', '.join(allowed)}, not {v!r}")
        # An empty value means "unset", as in the toolkit.
        return {k: v for k, v in value.items() if v}


class WebConfigFile(_Model):
    tls_server_config: TLSServerConfig | None = None
    http_server_config: HTTPServerConfig = Field(default_factory=HTTPServerConfig)
    basic_auth_users: dict[str, str] = Field(default_factory=dict)
    rate_limit: RateLimit = None

    @field_validator("tls_server_config", mode="before")
    @classmethod
    def _empty_tls_is_no_tls(cls, value: Any) -> Any:
        # The toolkit serves plain HTTP when no TLS field is set; an empty section is that too.
        return None if value in (None, {}) else value

    @field_validator("basic_auth_users")
    @classmethod
    def _bcrypt_hashes(cls, value: dict[str, str]) -> dict[str, str]:
        bad = [user for user, hashed in value.items() if not _BCRYPT_HASH.match(hashed)]
        if bad:
            raise ValueError(f'not a bcrypt hash (as from `htpasswd -nBC 10 ""`) for user {", ".join(bad)}')
        if any(":" in user for user in value):
            raise ValueError("a user name cannot contain ':' (basic auth splits on it)")
        return value


def _errors(path: Path, e: ValidationError) -> list[str]:
    details = []
    for err in e.errors():
        location = ".".join(str(p) for p in err["loc"]) or "(top level)"
        details.append(f"web config {path}: {location}: {err['msg'].removeprefix('Value error, ')}")
    return details


def _resolve(directory: Path, name: str | None) -> Path | None:
    # As the toolkit's JoinDir: a relative path is relative to the web config file, not to the working directory.
    if name is None:
        return None
    p = Path(name)
    return p if p.is_absolute() else directory / p


def _tls_error(path: Path, key: str, problem: str) -> ConfigError:
    return ConfigError([f"web config {path}: tls_server_config.{key}: {problem}"])


def _tls_files(tls: TLSServerConfig, directory: Path) -> dict[str, Path | None]:
    return {
        "cert_file": _resolve(directory, tls.cert_file),
        "key_file": _resolve(directory, tls.key_file),
        "client_ca_file": _resolve(directory, tls.client_ca_file),
    }


def _build_ssl_context(tls: TLSServerConfig, directory: Path, path: Path) -> ssl.SSLContext:
    files = _tls_files(tls, directory)
    missing = [
        f"web config {path}: tls_server_config.{key}: {file} does not exist or is not a file"
        for key, file in files.items()
        if file is not None and not file.is_file()
    ]
    if missing:
        raise ConfigError(missing)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = TLS_VERSIONS[tls.min_version]
    ctx.maximum_version = TLS_VERSIONS[tls.max_version]
    try:
        ctx.load_cert_chain(str(files["cert_file"]), str(files["key_file"]))
    except (ssl.SSLError, OSError) as e:
        raise _tls_error(path, "cert_file/key_file", f"cannot load {files['cert_file']} with its key: {e}") from None
    if tls.client_auth_type != "NoClientCert":
        try:
            if files["client_ca_file"] is not None:
                ctx.load_verify_locations(cafile=str(files["client_ca_file"]))
            else:
                ctx.load_verify_locations(cadata=tls.client_ca)
        except (ssl.SSLError, OSError, ValueError) as e:
            where = "client_ca_file" if files["client_ca_file"] is not None else "client_ca"
            raise _tls_error(path, where, f"no usable CA certificate: {e}") from None
        ctx.verify_mode = CLIENT_AUTH[tls.client_auth_type]
    tls12 = [CIPHER_SUITES[c] for c in tls.cipher_suites if c in CIPHER_SUITES]
    if tls12:
        try:
            ctx.set_ciphers(":".join(tls12))
        except ssl.SSLError as e:
            raise _tls_error(path, "cipher_suites", f"OpenSSL refused them all: {e}") from None
    if tls.prefer_server_cipher_suites:
        ctx.options |= ssl.OP_CIPHER_SERVER_PREFERENCE
    else:
        ctx.options &= ~ssl.OP_CIPHER_SERVER_PREFERENCE
    for curve in tls.curve_preferences:
        ctx.set_ecdh_curve(CURVES[curve])
    return ctx


class CertificateReloader:
    """Renewed certificate files (cert-manager, a rotated Secret) are served from the next handshake on, as the
    toolkit re-reads them per connection. A rotation that does not load (a certificate written before its key)
    keeps the last good context until the files change again."""

    def __init__(self, build: Callable[[], ssl.SSLContext], files: Collection[Path]) -> None:
        self._build = build
        self._files = tuple(files)
        self._seen = self._signature()
        self.listening = build()
        self.current = self.listening
        self.reloads = 0
        self.listening.sni_callback = self._on_client_hello

    def _signature(self) -> tuple[bytes | None, ...]:
        return file_contents(self._files)

    def _on_client_hello(self, connection: ssl.SSLObject, _server_name: str | None, _ctx: ssl.SSLContext) -> None:
        seen = self._signature()
        if seen != self._seen:
            self._seen = seen
            try:
                self.current = self._build()
            except ConfigError as e:
                log.warning("tls_reload_failed", error=str(e), action="serving the previous certificate")
            else:
                self.reloads += 1
                log.info("tls_reloaded", files=[str(f) for f in self._files])
        if self.current is not self.listening:
            connection.context = self.current


def _credentials(header: str | None) -> tuple[str, bytes] | None:
    """`Basic base64(user:password)` → (user, password bytes); anything else → None."""
    if not header:
        return None
    scheme, _, encoded = header.partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        decoded = base64.b64decode(encoded.strip(), validate=True)
    except (binascii.Error, ValueError):
        return None
    user, sep, password = decoded.partition(b":")
    if not sep:
        return None
    try:
        return user.decode(), password
    except UnicodeDecodeError:
        return None


def _checkpw(password: bytes, hashed: bytes) -> bool:
    try:
        return bcrypt.checkpw(password, hashed)
    except ValueError:  # over 72 bytes: bcrypt 5 refuses rather than truncating, so it cannot match
        return False


@dataclass
class BasicAuth:
    """bcrypt-checked basic auth. A verified (user, password) is remembered as a keyed digest, one per user, so a
    scrape every few seconds costs one bcrypt per process instead of one per request; bcrypt runs one at a time
    in a worker thread, so the event loop (and the tap's requests on it) never waits for it."""

    users: Mapping[str, bytes]
    bcrypt_checks: int = 0
    _secret: bytes = field(default_factory=lambda: secrets.token_bytes(32))
    _verified: dict[str, bytes] = field(default_factory=dict)
    _decoy: bytes | None = None
    _lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    def _digest(self, user: str, hashed: bytes, password: bytes) -> bytes:
        u = user.encode()
        return hmac.digest(self._secret, len(u).to_bytes(4, "big") + u + hashed + password, hashlib.sha256)

    async def verify(self, user: str, password: bytes) -> bool:
        hashed = self.users.get(user)
        if hashed is not None:
            remembered = self._verified.get(user)
            if remembered is not None and hmac.compare_digest(remembered, self._digest(user, hashed, password)):
                return True
        async with self._lock:
            if hashed is None and self._decoy is None:
                # An unknown user costs one bcrypt like a known one, so response times do not tell which exist.
                cost = min(int(h[4:6]) for h in self.users.values())
                self._decoy = await asyncio.to_thread(bcrypt.hashpw, secrets.token_bytes(16), bcrypt.gensalt(cost))
            self.bcrypt_checks += 1
            ok = await asyncio.to_thread(_checkpw, password, hashed if hashed is not None else self._decoy)  # type: ignore[arg-type]
        if ok and hashed is not None:
            self._verified[user] = self._digest(user, hashed, password)
            return True
        return False


@dataclass(frozen=True)
class WebConfig:
    """A checked web config. `ssl_context()` for aiohttp's TCPSite, `middleware()` for web.Application."""

    path: Path | None = None
    tls: CertificateReloader | None = None
    headers: Mapping[str, str] = field(default_factory=dict)
    auth: BasicAuth | None = None

    def ssl_context(self) -> ssl.SSLContext | None:
        return self.tls.listening if self.tls is not None else None

    def middleware(self, *, public_paths: Collection[str] = ()) -> Middleware | None:
        """Basic auth on every path but `public_paths`, and the configured headers on every response (401s and
        errors included). None when the file asks for neither."""
        if self.auth is None and not self.headers:
            return None
        auth = self.auth
        headers = dict(self.headers)
        public = frozenset(public_paths)

        @web.middleware
        async def web_config(request: web.Request, handler: Handler) -> web.StreamResponse:
            try:
                if auth is not None and request.path not in public:
                    credentials = _credentials(request.headers.get("Authorization"))
                    if credentials is None or not await auth.verify(*credentials):
                        raise web.HTTPUnauthorized(headers={"WWW-Authenticate": "Basic"}, text="Unauthorized\n")
                response = await handler(request)
            except web.HTTPException as e:
                e.headers.update(headers)
                raise
            if not response.prepared:
                response.headers.update(headers)
            return response

        return web_config


def load_web_config(path: Path | str) -> WebConfig:
    """Read and check a web config file; every problem is a ConfigError line naming the file and the field."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text())
    except OSError as e:
        raise ConfigError([f"web config {path}: {e.strerror or e}"]) from None
    except yaml.YAMLError as e:
        raise ConfigError([f"web config {path}: not valid YAML: {e}"]) from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError([f"web config {path}: the top level must be a mapping"])
    try:
        parsed = WebConfigFile.model_validate(data)
    except ValidationError as e:
        raise ConfigError(_errors(path, e)) from None
    reloader = None
    if (tls := parsed.tls_server_config) is not None:
        directory = path.resolve().parent
        files = [f for f in _tls_files(tls, directory).values() if f is not None]
        reloader = CertificateReloader(lambda: _build_ssl_context(tls, directory, path), files)
    users = {user: hashed.encode() for user, hashed in parsed.basic_auth_users.items()}
    return WebConfig(path, reloader, parsed.http_server_config.headers, BasicAuth(users) if users else None)
