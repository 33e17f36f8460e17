"""--web.config.file: real certificates made here, a real aiohttp server on 127.0.0.1 with the context and middleware
the config produces, and real TLS clients (aiohttp's, on the ssl module) with right and wrong credentials."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import ssl
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import bcrypt
import pytest

from spec_exporter.config import ConfigError
from spec_exporter.webconfig import WebConfig, load_web_config
from tests.tlskit import PKI, issue, serving, tls_section, web_config

# The lowest bcrypt cost keeps the suite fast; the non-blocking test uses a realistic one.
PASSWORD = "s3cret-scrape"
HASH = bcrypt.hashpw(PASSWORD.encode(), bcrypt.gensalt(4)).decode()


def client_context(
    pki: PKI,
    *,
    cert: str | None = None,
    minimum: ssl.TLSVersion | None = None,
    maximum: ssl.TLSVersion | None = None,
    ciphers: str | None = None,
) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(pki.path("ca.crt")))
    if cert:
        ctx.load_cert_chain(str(pki.path(f"{cert}.crt")), str(pki.path(f"{cert}.key")))
    if minimum:
        ctx.minimum_version = minimum
    if maximum:
        ctx.maximum_version = maximum
    if ciphers:
        ctx.set_ciphers(ciphers)
    return ctx


# --- a real server --------------------------------------------------------------------------------------------------


class Refused(Exception):
    """The server would not talk: the handshake failed or the connection closed without an HTTP answer."""


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    body: str
    tls_version: str | None
    cipher: str | None
    server_serial: int | None


async def get(
    url: str,
    *,
    ctx: ssl.SSLContext | None = None,
    user: str | None = None,
    password: str = "",
    headers: dict[str, str] | None = None,
) -> Answer:
    """One HTTP/1.1 request on a fresh connection, TLS when `url` is https (verified by `ctx`)."""
    parts = urlsplit(url)
    assert parts.hostname and parts.port
    tls = parts.scheme == "https"
    request_headers = {"Host": parts.netloc, "Connection": "close", **(headers or {})}
    if user is not None:
        request_headers["Authorization"] = "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()
    request = f"GET {parts.path} HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in request_headers.items()) + "\r\n"
    try:
        async with asyncio.timeout(20):
            reader, writer = await asyncio.open_connection(
                parts.hostname, parts.port, ssl=(ctx or ssl.create_default_context()) if tls else None
            )
            try:
                ssl_object = writer.get_extra_info("ssl_object")
                writer.write(request.encode())
                await writer.drain()
                raw = await reader.read()
            finally:
                writer.close()
                with contextlib.suppress(OSError):
                    await writer.wait_closed()
    except (OSError, asyncio.IncompleteReadError) as e:  # ssl.SSLError is an OSError
        raise Refused(repr(e)) from e
    if not raw:
        raise Refused("closed without an answer")
    head, _, body = raw.partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    answer_headers = dict(line.split(": ", 1) for line in header_lines)
    return Answer(
        int(status_line.split()[1]),
        answer_headers,
        body.decode(),
        ssl_object.version() if ssl_object else None,
        ssl_object.cipher()[0] if ssl_object else None,
        int(ssl_object.getpeercert()["serialNumber"], 16) if ssl_object else None,
    )


# --- TLS with basic auth --------------------------------------------------------------------------------------------


@pytest.fixture
def secured(pki: PKI, tmp_path: Path) -> WebConfig:
    return web_config(tmp_path, tls_section(pki) + f"basic_auth_users:\n  prometheus: '{HASH}'\n")


async def test_right_credentials_over_tls_get_the_metrics(secured: WebConfig, pki: PKI) -> None:
    async with serving(secured) as port:
        a = await get(
            f"https://127.0.0.1:{port}/metrics", ctx=client_context(pki), user="prometheus", password=PASSWORD
        )
    assert a.status == 200 and "build_info" in a.body
    assert a.tls_version in ("TLSv1.2", "TLSv1.3")  # it really was TLS, verified against our CA


@pytest.mark.parametrize(
    ("user", "password", "headers"),
    [
        ("prometheus", "wrong", None),
        ("nobody", PASSWORD, None),
        (None, "", None),
        (None, "", {"Authorization": "Bearer " + PASSWORD}),
        (None, "", {"Authorization": "Basic !!not-base64!!"}),
        ("prometheus", PASSWORD[:-1], None),
        ("prometheus", PASSWORD + "x", None),
    ],
    ids=["wrong-password", "unknown-user", "no-header", "not-basic", "bad-base64", "prefix", "longer"],
)
async def test_anything_but_the_right_credentials_is_401_with_a_basic_challenge(
    secured: WebConfig, pki: PKI, user: str | None, password: str, headers: dict[str, str] | None
) -> None:
    async with serving(secured) as port:
        url = f"https://127.0.0.1:{port}/metrics"
        a = await get(url, ctx=client_context(pki), user=user, password=password, headers=headers)
        control = await get(url, ctx=client_context(pki), user="prometheus", password=PASSWORD)
    assert a.status == 401 and a.headers.get("WWW-Authenticate") == "Basic"
    assert "build_info" not in a.body
    assert control.status == 200


async def test_plain_http_to_the_tls_port_gets_nothing(secured: WebConfig, pki: PKI) -> None:
    async with serving(secured) as port:
        with pytest.raises(Refused):
            await get(f"http://127.0.0.1:{port}/metrics", user="prometheus", password=PASSWORD)
        assert (await get(f"https://127.0.0.1:{port}/healthz", ctx=client_context(pki))).status == 401


async def test_a_client_that_does_not_trust_the_ca_refuses_the_server(secured: WebConfig, pki: PKI) -> None:
    async with serving(secured) as port:
        with pytest.raises(Refused) as e:
            await get(f"https://127.0.0.1:{port}/metrics", ctx=ssl.create_default_context())
    assert isinstance(e.value.__cause__, ssl.SSLCertVerificationError)


async def test_a_verified_password_is_not_bcrypt_checked_again(secured: WebConfig, pki: PKI) -> None:
    assert secured.auth is not None
    async with serving(secured) as port:
        url, ctx = f"https://127.0.0.1:{port}/metrics", client_context(pki)
        for _ in range(3):
            assert (await get(url, ctx=ctx, user="prometheus", password=PASSWORD)).status == 200
        assert secured.auth.bcrypt_checks == 1
        # A wrong password is never served from the cache, and does not evict the right one.
        for _ in range(2):
            assert (await get(url, ctx=ctx, user="prometheus", password="wrong")).status == 401
        assert secured.auth.bcrypt_checks == 3
        assert (await get(url, ctx=ctx, user="prometheus", password=PASSWORD)).status == 200
        assert secured.auth.bcrypt_checks == 3


async def test_an_unknown_user_costs_a_bcrypt_check_like_a_known_one(secured: WebConfig, pki: PKI) -> None:
    # Otherwise the response time would tell which user names exist.
    assert secured.auth is not None
    async with serving(secured) as port:
        a = await get(f"https://127.0.0.1:{port}/metrics", ctx=client_context(pki), user="nobody", password="x")
    assert a.status == 401 and secured.auth.bcrypt_checks == 1


async def test_htpasswd_style_2y_hashes_are_accepted(tmp_path: Path) -> None:
    # `htpasswd -nBC 4` writes $2y$; bcrypt libraries write $2b$ for the same algorithm.
    hashed = "$2y$" + bcrypt.hashpw(b"pw", bcrypt.gensalt(4)).decode()[4:]
    config = web_config(tmp_path, f"basic_auth_users:\n  admin: '{hashed}'\n")
    async with serving(config) as port:
        assert (await get(f"http://127.0.0.1:{port}/metrics", user="admin", password="pw")).status == 200
        assert (await get(f"http://127.0.0.1:{port}/metrics", user="admin", password="px")).status == 401


async def test_bcrypt_does_not_block_the_event_loop(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # While one scrape's password is being checked, the loop still answers others, as the tap's client requests on
    # the same loop must be. The check is held until /healthz has answered, so the order is certain, not raced.

    from spec_exporter import webconfig

    checking, release = threading.Event(), threading.Event()
    real_check = webconfig._checkpw

    def held(password: bytes, hashed: bytes) -> bool:
        checking.set()
        release.wait(10)
        return real_check(password, hashed)

    monkeypatch.setattr(webconfig, "_checkpw", held)
    config = web_config(tmp_path, f"basic_auth_users:\n  p: '{bcrypt.hashpw(b'pw', bcrypt.gensalt(4)).decode()}'\n")
    async with serving(config, public_paths={"/healthz"}) as port:
        scrape = asyncio.create_task(get(f"http://127.0.0.1:{port}/metrics", user="p", password="pw"))
        assert await asyncio.to_thread(checking.wait, 10), "the password was never checked"
        health = await get(f"http://127.0.0.1:{port}/healthz")
        assert health.status == 200 and not scrape.done()
        release.set()
        assert (await scrape).status == 200


async def test_public_paths_skip_auth_and_nothing_else_does(tmp_path: Path) -> None:
    config = web_config(tmp_path, f"basic_auth_users:\n  p: '{HASH}'\n")
    async with serving(config, public_paths={"/healthz"}) as port:
        assert (await get(f"http://127.0.0.1:{port}/healthz")).status == 200
        assert (await get(f"http://127.0.0.1:{port}/metrics")).status == 401
        assert (await get(f"http://127.0.0.1:{port}/nothing-here")).status == 401  # no probing for routes either


async def test_configured_headers_are_on_every_response(tmp_path: Path) -> None:
    config = web_config(
        tmp_path,
        "http_server_config:\n  headers:\n    X-Frame-Options: deny\n    X-Content-Type-Options: nosniff\n"
        f"    Content-Security-Policy: \"default-src 'none'\"\n    X-XSS-Protection: ''\n"
        f"basic_auth_users:\n  p: '{HASH}'\n",
    )
    async with serving(config) as port:
        answers = [
            await get(f"http://127.0.0.1:{port}/metrics", user="p", password=PASSWORD),
            await get(f"http://127.0.0.1:{port}/metrics"),
            await get(f"http://127.0.0.1:{port}/missing", user="p", password=PASSWORD),
        ]
    assert [a.status for a in answers] == [200, 401, 404]
    for a in answers:
        assert a.headers["X-Frame-Options"] == "deny" and a.headers["X-Content-Type-Options"] == "nosniff"
        assert a.headers["Content-Security-Policy"] == "default-src 'none'"
        assert "X-XSS-Protection" not in a.headers  # blank means unset, as in the toolkit


# --- TLS versions, client certificates, cipher suites ---------------------------------------------------------------


async def test_min_version_tls13_rejects_a_tls12_client(pki: PKI, tmp_path: Path) -> None:
    config = web_config(tmp_path, tls_section(pki, "  min_version: TLS13\n"))
    async with serving(config) as port:
        url = f"https://127.0.0.1:{port}/metrics"
        with pytest.raises(Refused):
            await get(url, ctx=client_context(pki, maximum=ssl.TLSVersion.TLSv1_2))
        assert (await get(url, ctx=client_context(pki))).tls_version == "TLSv1.3"


async def test_max_version_tls12_caps_the_handshake(pki: PKI, tmp_path: Path) -> None:
    config = web_config(tmp_path, tls_section(pki, "  max_version: TLS12\n"))
    async with serving(config) as port:
        url = f"https://127.0.0.1:{port}/metrics"
        with pytest.raises(Refused):
            await get(url, ctx=client_context(pki, minimum=ssl.TLSVersion.TLSv1_3))
        assert (await get(url, ctx=client_context(pki))).tls_version == "TLSv1.2"


async def test_require_and_verify_client_cert_admits_only_clients_of_the_ca(pki: PKI, tmp_path: Path) -> None:
    config = web_config(
        tmp_path,
        tls_section(pki, f"  client_auth_type: RequireAndVerifyClientCert\n  client_ca_file: {pki.path('ca.crt')}\n"),
    )
    async with serving(config) as port:
        url = f"https://127.0.0.1:{port}/metrics"
        with pytest.raises(Refused):
            await get(url, ctx=client_context(pki))  # no client certificate
        with pytest.raises(Refused):
            await get(url, ctx=client_context(pki, cert="stranger"))  # signed by another CA
        assert (await get(url, ctx=client_context(pki, cert="client"))).status == 200


async def test_verify_client_cert_if_given_admits_anonymous_clients_but_not_strangers(pki: PKI, tmp_path: Path) -> None:
    config = web_config(
        tmp_path,
        tls_section(pki, f"  client_auth_type: VerifyClientCertIfGiven\n  client_ca_file: {pki.path('ca.crt')}\n"),
    )
    async with serving(config) as port:
        url = f"https://127.0.0.1:{port}/metrics"
        assert (await get(url, ctx=client_context(pki))).status == 200
        assert (await get(url, ctx=client_context(pki, cert="client"))).status == 200
        with pytest.raises(Refused):
            await get(url, ctx=client_context(pki, cert="stranger"))


async def test_inline_client_ca_verifies_like_the_file(pki: PKI, tmp_path: Path) -> None:
    pem = pki.path("ca.crt").read_text().replace("\n", "\n    ")
    config = web_config(
        tmp_path, tls_section(pki, f"  client_auth_type: RequireAndVerifyClientCert\n  client_ca: |\n    {pem}\n")
    )
    async with serving(config) as port:
        url = f"https://127.0.0.1:{port}/metrics"
        with pytest.raises(Refused):
            await get(url, ctx=client_context(pki, cert="stranger"))
        assert (await get(url, ctx=client_context(pki, cert="client"))).status == 200


async def test_cipher_suites_restrict_tls12(pki: PKI, tmp_path: Path) -> None:
    config = web_config(
        tmp_path,
        tls_section(pki, "  max_version: TLS12\n  cipher_suites:\n    - TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384\n"),
    )
    async with serving(config) as port:
        url = f"https://127.0.0.1:{port}/metrics"
        with pytest.raises(Refused):
            await get(url, ctx=client_context(pki, ciphers="ECDHE-ECDSA-AES128-GCM-SHA256"))
        a = await get(
            url, ctx=client_context(pki, ciphers="ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-ECDSA-AES256-GCM-SHA384")
        )
    assert a.status == 200 and a.cipher == "ECDHE-ECDSA-AES256-GCM-SHA384"


# --- certificate rotation -------------------------------------------------------------------------------------------


async def test_a_renewed_certificate_is_served_from_the_next_connection(pki: PKI, tmp_path: Path) -> None:
    first = issue(pki, "server", tmp_path)
    config = web_config(tmp_path, "tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\n")
    async with serving(config) as port:
        url = f"https://127.0.0.1:{port}/metrics"
        assert (await get(url, ctx=client_context(pki))).server_serial == first
        renewed = issue(pki, "server", tmp_path)
        assert (await get(url, ctx=client_context(pki))).server_serial == renewed
        assert (await get(url, ctx=client_context(pki))).server_serial == renewed
    assert config.tls is not None and config.tls.reloads == 1  # reloaded once, not at every handshake


async def test_a_half_written_rotation_keeps_serving_the_previous_certificate(pki: PKI, tmp_path: Path) -> None:
    first = issue(pki, "server", tmp_path)
    config = web_config(tmp_path, "tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\n")
    old_key = (tmp_path / "server.key").read_bytes()
    async with serving(config) as port:
        url = f"https://127.0.0.1:{port}/metrics"
        renewed = issue(pki, "server", tmp_path)
        new_key = (tmp_path / "server.key").read_bytes()
        (tmp_path / "server.key").write_bytes(old_key)  # the new certificate is there, its key not yet
        assert (await get(url, ctx=client_context(pki))).server_serial == first
        (tmp_path / "server.key").write_bytes(new_key)
        assert (await get(url, ctx=client_context(pki))).server_serial == renewed


async def test_a_rotated_client_ca_decides_from_the_next_connection(pki: PKI, tmp_path: Path) -> None:
    (tmp_path / "clients.pem").write_bytes(pki.path("ca.crt").read_bytes())
    config = web_config(
        tmp_path,
        tls_section(pki, "  client_auth_type: RequireAndVerifyClientCert\n  client_ca_file: clients.pem\n"),
    )
    async with serving(config) as port:
        url = f"https://127.0.0.1:{port}/metrics"
        assert (await get(url, ctx=client_context(pki, cert="client"))).status == 200
        with pytest.raises(Refused):
            await get(url, ctx=client_context(pki, cert="stranger"))
        (tmp_path / "clients.pem").write_bytes(pki.path("other-ca.crt").read_bytes())
        assert (await get(url, ctx=client_context(pki, cert="stranger"))).status == 200
        with pytest.raises(Refused):
            await get(url, ctx=client_context(pki, cert="client"))


# --- loading and validation ----------------------------------------------------------------------------------------


def errors(tmp_path: Path, text: str) -> list[str]:
    with pytest.raises(ConfigError) as e:
        web_config(tmp_path, text)
    return e.value.details


def test_an_empty_file_serves_plain_http_without_auth(tmp_path: Path) -> None:
    config = web_config(tmp_path, "")
    assert config.ssl_context() is None and config.middleware() is None


def test_relative_paths_are_relative_to_the_config_file(
    pki: PKI, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "conf").mkdir()
    for name in ("server.crt", "server.key", "ca.crt"):
        (tmp_path / "conf" / name).write_bytes(pki.path(name).read_bytes())
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    path = tmp_path / "conf" / "web.yml"
    path.write_text(
        "tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\n"
        "  client_auth_type: RequireAndVerifyClientCert\n  client_ca_file: ca.crt\n"
    )
    ctx = load_web_config(path).ssl_context()
    assert ctx is not None and ctx.verify_mode == ssl.CERT_REQUIRED
    # The same names relative to the working directory are not looked up there.
    (tmp_path / "conf" / "server.key").rename(tmp_path / "elsewhere" / "server.key")
    with pytest.raises(ConfigError) as e:
        load_web_config(path)
    expected = f"tls_server_config.key_file: {tmp_path / 'conf' / 'server.key'} does not exist or is not a file"
    assert e.value.details == [f"web config {path}: {expected}"]


def test_missing_cert_and_key_files_are_each_named(tmp_path: Path) -> None:
    details = errors(tmp_path, "tls_server_config:\n  cert_file: /nonexistent/a.crt\n  key_file: /nonexistent/a.key\n")
    assert len(details) == 2
    assert "tls_server_config.cert_file: /nonexistent/a.crt does not exist" in details[0]
    assert "tls_server_config.key_file: /nonexistent/a.key does not exist" in details[1]


def test_a_key_that_does_not_match_the_certificate_is_an_error(pki: PKI, tmp_path: Path) -> None:
    (detail,) = errors(
        tmp_path, f"tls_server_config:\n  cert_file: {pki.path('server.crt')}\n  key_file: {pki.path('client.key')}\n"
    )
    assert "tls_server_config.cert_file/key_file: cannot load" in detail


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("tls_config:\n  cert_file: a\n", "tls_config: Extra inputs are not permitted"),
        ("tls_server_config:\n  cert_file: a\n  key_file: b\n  certfile: c\n", "tls_server_config.certfile: Extra"),
        ("tls_server_config:\n  cert_file: a\n", "key_file is required"),
        ("tls_server_config:\n  min_version: TLS13\n", "cert_file is required"),
        (
            "tls_server_config:\n  cert_file: a\n  key_file: b\n  client_ca_file: c\n",
            "a client CA is configured but client_auth_type is NoClientCert",
        ),
        (
            "tls_server_config:\n  cert_file: a\n  key_file: b\n  client_auth_type: RequireAndVerifyClientCert\n",
            "needs client_ca_file",
        ),
        (
            "tls_server_config:\n  cert_file: a\n  key_file: b\n  client_auth_type: RequireAnyClientCert\n",
            "RequireAnyClientCert (a client certificate that is not verified) is not supported",
        ),
        ("tls_server_config:\n  cert_file: a\n  key_file: b\n  client_auth_type: Sometimes\n", "is not one of"),
        ("tls_server_config:\n  cert_file: a\n  key_file: b\n  min_version: TLS14\n", "min_version: Input should be"),
        (
            "tls_server_config:\n  cert_file: a\n  key_file: b\n  min_version: TLS13\n  max_version: TLS12\n",
            "min_version TLS13 is above max_version TLS12",
        ),
        (
            "tls_server_config:\n  cert_file: a\n  key_file: b\n  cipher_suites: [TLS_RSA_WITH_RC4_128_SHA]\n",
            "unknown or insecure cipher suite TLS_RSA_WITH_RC4_128_SHA",
        ),
        ("tls_server_config:\n  cert: PEM\n  key: PEM\n", "tls_server_config.cert: inline certificates"),
        (
            "tls_server_config:\n  cert_file: a\n  key_file: b\n  client_allowed_sans: [x]\n",
            "client_allowed_sans: not supported",
        ),
        ("tls_server_config:\n  cert_file: a\n  key_file: b\n  curve_preferences: [X25519, CurveP256]\n", "single"),
        ("basic_auth_users:\n  admin: plaintext-password\n", 'not a bcrypt hash (as from `htpasswd -nBC 10 ""`)'),
        (f"basic_auth_users:\n  'a:b': '{HASH}'\n", "cannot contain ':'"),
        ("http_server_config:\n  headers:\n    Server: nginx\n", "header 'Server' can not be configured"),
        ("http_server_config:\n  headers:\n    X-Frame-Options: allow\n", "X-Frame-Options must be one of deny"),
        ("rate_limit:\n  interval: 1s\n  burst: 5\n", "rate_limit: not supported"),
        ("- a\n- b\n", "the top level must be a mapping"),
        ("basic_auth_users: [\n", "not valid YAML"),
    ],
)
def test_bad_fields_are_rejected_with_their_location(tmp_path: Path, text: str, expected: str) -> None:
    details = errors(tmp_path, text)
    assert any(expected in d for d in details), details
    assert all(d.startswith(f"web config {tmp_path}") for d in details)


def test_every_bad_field_is_listed_at_once(tmp_path: Path) -> None:
    details = errors(
        tmp_path,
        "basic_auth_users:\n  admin: nope\nhttp_server_config:\n  headers:\n    Server: x\nbogus: 1\n",
    )
    assert len(details) == 3


def test_a_missing_config_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as e:
        load_web_config(tmp_path / "absent.yml")
    assert e.value.details == [f"web config {tmp_path / 'absent.yml'}: No such file or directory"]


async def test_curve_preferences_limit_the_key_exchange(pki: PKI, tmp_path: Path) -> None:
    config = web_config(tmp_path, tls_section(pki, "  curve_preferences: [CurveP384]\n"))
    async with serving(config) as port:
        url = f"https://127.0.0.1:{port}/metrics"
        only_p256 = client_context(pki)
        only_p256.set_ecdh_curve("prime256v1")
        with pytest.raises(Refused):
            await get(url, ctx=only_p256)
        assert (await get(url, ctx=client_context(pki))).status == 200


async def test_a_password_may_contain_colons(tmp_path: Path) -> None:
    hashed = bcrypt.hashpw(b"a:b:c", bcrypt.gensalt(4)).decode()
    config = web_config(tmp_path, f"basic_auth_users:\n  admin: '{hashed}'\n")
    async with serving(config) as port:
        assert (await get(f"http://127.0.0.1:{port}/metrics", user="admin", password="a:b:c")).status == 200
        assert (await get(f"http://127.0.0.1:{port}/metrics", user="admin", password="a:b")).status == 401


# --- the real Prometheus scraping the real exporter app -------------------------------------------------------------


def test_the_exporter_process_serves_tls_and_basic_auth_from_web_config_file(pki: PKI, tmp_path: Path) -> None:
    """`spec-exporter --web.config.file` end to end: the flag reaches the listener, /healthz stays open."""
    import base64
    import subprocess
    import sys
    import urllib.error
    import urllib.request

    from harness.ports import free_port

    config = tmp_path / "web-config.yml"
    config.write_text(tls_section(pki) + f"basic_auth_users:\n  prometheus: '{HASH}'\n")
    port = free_port()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "spec_exporter",
            "--target",
            "http://127.0.0.1:9",
            "--web.listen-address",
            f"127.0.0.1:{port}",
            "--web.config.file",
            str(config),
            "--log.level",
            "warn",
        ],
        stderr=subprocess.PIPE,
    )
    ctx = client_context(pki)

    def status(path: str, auth: str | None = None) -> int:
        request = urllib.request.Request(f"https://127.0.0.1:{port}{path}")
        if auth is not None:
            request.add_header("Authorization", "Basic " + base64.b64encode(auth.encode()).decode())
        try:
            with urllib.request.urlopen(request, context=ctx, timeout=5) as r:
                return int(r.status)
        except urllib.error.HTTPError as e:
            return int(e.code)

    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                healthz = status("/healthz")
                break
            except (urllib.error.URLError, ConnectionError):
                assert proc.poll() is None, proc.stderr.read().decode() if proc.stderr else ""
                assert time.monotonic() < deadline, "the exporter did not listen"
                time.sleep(0.1)
        assert healthz == 200
        assert status("/metrics") == 401
        assert status("/metrics", "prometheus:wrong") == 401
        assert status("/metrics", f"prometheus:{PASSWORD}") == 200
        assert status("/readyz", f"prometheus:{PASSWORD}") == 200
        # Plain HTTP to the TLS listener gets no answer.
        with pytest.raises((urllib.error.URLError, ConnectionError)):
            urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5)
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def test_a_bad_web_config_file_exits_2_before_listening(tmp_path: Path) -> None:
    from spec_exporter import cli

    config = tmp_path / "web-config.yml"
    config.write_text("tls_server_config:\n  cert_file: /nope.crt\n  key_file: /nope.key\nsurprise: 1\n")
    assert cli.main(["--target", "http://127.0.0.1:9", "--web.config.file", str(config), "--config.check"]) == 2
