"""Certificates made with `cryptography` (a CA, a server and a client certificate, and a stranger from another CA)
and a real aiohttp server on 127.0.0.1 with a --web.config.file's TLS and authentication: shared by the tests of the
exporter's own endpoint (test_webconfig.py) and of its https targets (test_fetch_tls.py)."""

from __future__ import annotations

import contextlib
import datetime
import ipaddress
from collections.abc import AsyncIterator, Collection
from dataclasses import dataclass
from pathlib import Path

from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from spec_exporter.webconfig import WebConfig, load_web_config


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _cert(
    subject: str, key: ec.EllipticCurvePrivateKey, issuer: tuple[x509.Certificate, ec.EllipticCurvePrivateKey] | None
) -> x509.Certificate:
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(issuer[0].subject if issuer else _name(subject))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
    )
    if issuer is None:
        builder = builder.add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True).add_extension(
            x509.KeyUsage(True, False, False, False, False, True, True, False, False), critical=True
        )
        builder = builder.add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
    else:
        builder = builder.add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        builder = builder.add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer[1].public_key()), critical=False
        )
        if subject == "server":
            sans = [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
            builder = builder.add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        else:
            builder = builder.add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
    return builder.sign(issuer[1] if issuer else key, hashes.SHA256())


def _write(directory: Path, name: str, cert: x509.Certificate, key: ec.EllipticCurvePrivateKey) -> None:
    (directory / f"{name}.crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (directory / f"{name}.key").write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )


@dataclass(frozen=True)
class PKI:
    directory: Path

    def path(self, name: str) -> Path:
        return self.directory / name


def make_pki(d: Path) -> PKI:
    """ca → server, client; other-ca → stranger (a client certificate the server must not accept)."""
    for ca_name, leaves in (("ca", ("server", "client")), ("other-ca", ("stranger",))):
        ca_key = ec.generate_private_key(ec.SECP256R1())
        ca = _cert(ca_name, ca_key, None)
        _write(d, ca_name, ca, ca_key)
        for leaf in leaves:
            key = ec.generate_private_key(ec.SECP256R1())
            _write(d, leaf, _cert(leaf, key, (ca, ca_key)), key)
    return PKI(d)


def issue(pki: PKI, leaf: str, directory: Path, *, ca: str = "ca") -> int:
    """A new certificate and key for `leaf` from `ca`, written into `directory`; returns its serial number."""
    ca_cert = x509.load_pem_x509_certificate(pki.path(f"{ca}.crt").read_bytes())
    ca_key = serialization.load_pem_private_key(pki.path(f"{ca}.key").read_bytes(), None)
    assert isinstance(ca_key, ec.EllipticCurvePrivateKey)
    key = ec.generate_private_key(ec.SECP256R1())
    cert = _cert(leaf, key, (ca_cert, ca_key))
    _write(directory, leaf, cert, key)
    return cert.serial_number


def web_config(tmp_path: Path, text: str) -> WebConfig:
    path = tmp_path / "web-config.yml"
    path.write_text(text)
    return load_web_config(path)


def tls_section(pki: PKI, extra: str = "") -> str:
    return f"tls_server_config:\n  cert_file: {pki.path('server.crt')}\n  key_file: {pki.path('server.key')}\n{extra}"


@contextlib.asynccontextmanager
async def serving(
    config: WebConfig, *, public_paths: Collection[str] = (), body: str = "spec_decode_exporter_build_info 1\n"
) -> AsyncIterator[int]:
    """The config's context and middleware on a real aiohttp server, the way app.py wires them; /metrics answers
    `body`."""
    middleware = config.middleware(public_paths=public_paths)
    app = web.Application(middlewares=[middleware] if middleware else [])

    async def metrics(_: web.Request) -> web.Response:
        return web.Response(text=body)

    async def healthz(_: web.Request) -> web.Response:
        return web.Response(text="ok\n")

    app.router.add_get("/metrics", metrics)
    app.router.add_get("/healthz", healthz)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    try:
        await web.TCPSite(runner, "127.0.0.1", 0, ssl_context=config.ssl_context()).start()
        yield runner.addresses[0][1]
    finally:
        await runner.cleanup()
