"""A target's `tls_config`: a real TLS server on 127.0.0.1 (the exporter's own, from a --web.config.file) that asks
for a client certificate of its CA, polled with certificates made in the test; and the configuration errors, one
per field."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from spec_exporter.config import ConfigError, Settings, settings_from_mapping
from spec_exporter.fetch import FetchError, TargetTLS, fetch_metrics, target_tls
from spec_exporter.poller import Poller
from spec_exporter.state import StateStore
from spec_exporter.types import PollError
from tests.standin import V032_LOAD, sample
from tests.tlskit import PKI, issue, serving, tls_section, web_config

MUTUAL = "  client_auth_type: RequireAndVerifyClientCert\n  client_ca_file: {ca}\n"
BODY = "vllm:num_requests_running 0\n"


def tls(pki: PKI, **overrides: Any) -> dict[str, Any]:
    """A tls_config trusting the test CA, presenting the client certificate, as Prometheus spells it."""
    config = {
        "ca_file": str(pki.path("ca.crt")),
        "cert_file": str(pki.path("client.crt")),
        "key_file": str(pki.path("client.key")),
    }
    config.update(overrides)
    return {k: v for k, v in config.items() if v is not None}


def target_settings(port: int, tls_config: dict[str, Any]) -> Settings:
    return settings_from_mapping(
        {"targets": [{"name": "vllm", "url": f"https://127.0.0.1:{port}", "tls_config": tls_config}]}
    )


async def fetch(port: int, tls_config: dict[str, Any], *, target: TargetTLS | None = None) -> str:
    settings = target_settings(port, tls_config)
    target = target or target_tls(settings)["vllm"]
    async with aiohttp.ClientSession() as session:
        return await fetch_metrics(session, settings.targets[0].metrics_url, 5.0, 1 << 20, target)


async def test_a_target_behind_mutual_tls_is_read_with_the_ca_and_client_certificate(pki: PKI, tmp_path: Path) -> None:
    server = web_config(tmp_path, tls_section(pki, MUTUAL.format(ca=pki.path("ca.crt"))))
    async with serving(server, body=BODY) as port:
        assert await fetch(port, tls(pki)) == BODY
        # Without the client certificate the server refuses: in TLS 1.3 the client's side of the handshake is done
        # by then, so the refusal arrives as a closed connection.
        with pytest.raises(FetchError) as refused:
            await fetch(port, tls(pki, cert_file=None, key_file=None))
        assert refused.value.reason in (PollError.TLS, PollError.CONNECTION), refused.value
        # A certificate from another CA is refused the same way.
        with pytest.raises(FetchError):
            await fetch(port, tls(pki, cert_file=str(pki.path("stranger.crt")), key_file=str(pki.path("stranger.key"))))


async def test_the_servers_certificate_is_verified_against_ca_file_and_server_name(pki: PKI, tmp_path: Path) -> None:
    async with serving(web_config(tmp_path, tls_section(pki)), body=BODY) as port:
        # The system's roots do not know the test CA.
        with pytest.raises(FetchError) as untrusted:
            await fetch(port, {"server_name": "localhost"})
        assert untrusted.value.reason is PollError.TLS
        # server_name replaces the URL's host (127.0.0.1) in the name check: one the certificate lacks fails.
        with pytest.raises(FetchError) as wrong_name:
            await fetch(port, tls(pki, server_name="vllm.other.example"))
        assert wrong_name.value.reason is PollError.TLS and "vllm.other.example" in str(wrong_name.value)
        assert await fetch(port, tls(pki, server_name="localhost")) == BODY
        # insecure_skip_verify: encrypted, verified by nothing.
        assert await fetch(port, {"insecure_skip_verify": True}) == BODY


async def test_renewed_client_certificates_are_used_from_the_next_poll(pki: PKI, tmp_path: Path) -> None:
    """cert-manager rewrites the Secret's files in place: the target's TLS follows them without a restart."""
    mine = tmp_path / "mine"
    mine.mkdir()
    issue(pki, "client", mine, ca="other-ca")  # a certificate the server does not accept, at the configured path
    config = tls(pki, cert_file=str(mine / "client.crt"), key_file=str(mine / "client.key"))
    server = web_config(tmp_path, tls_section(pki, MUTUAL.format(ca=pki.path("ca.crt"))))
    async with serving(server, body=BODY) as port:
        target = target_tls(target_settings(port, config))["vllm"]
        with pytest.raises(FetchError):
            await fetch(port, config, target=target)
        issue(pki, "client", mine)  # renewed by the right CA
        assert await fetch(port, config, target=target) == BODY
        # A half-written renewal (a key that is not a key) keeps the last good certificates.
        (mine / "client.key").write_text("not a key\n")
        assert await fetch(port, config, target=target) == BODY


async def test_the_poller_reads_an_https_target_and_reports_a_refused_handshake_as_tls_error(
    pki: PKI, tmp_path: Path, make_poller: Callable[[Settings], tuple[Poller, StateStore]]
) -> None:
    async with serving(web_config(tmp_path, tls_section(pki)), body=sample(V032_LOAD)) as port:
        poller, store = make_poller(target_settings(port, tls(pki)))
        await poller.poll_once()
        assert store.current().targets["vllm"].up
        poller, store = make_poller(target_settings(port, {"server_name": "localhost"}))
        await poller.poll_once()
        state = store.current().targets["vllm"]
        assert not state.up and state.errors[PollError.TLS] == 1


@pytest.mark.parametrize(
    ("tls_config", "url", "detail"),
    [
        ({"cert_file": "client.crt"}, "https", "targets.0.tls_config: cert_file and key_file go together"),
        ({"ca_file": "missing.crt"}, "https", "targets.0.tls_config.ca_file: missing.crt does not exist"),
        ({"insecure_skip_verify": True, "ca_file": "ca.crt"}, "https", "targets.0.tls_config: insecure_skip_verify"),
        ({"server_name": "a b"}, "https", "targets.0.tls_config.server_name: String should match pattern"),
        ({"insecure": True}, "https", "targets.0.tls_config.insecure: Extra inputs are not permitted"),
        ({"ca_file": "ca.crt"}, "http", "targets.0: tls_config applies to https URLs only"),
    ],
)
def test_each_tls_config_problem_is_named(
    pki: PKI, tls_config: dict[str, Any], url: str, detail: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(pki.directory)  # relative file names, as a config file next to its certificates has them
    with pytest.raises(ConfigError) as excinfo:
        settings_from_mapping({"targets": [{"name": "a", "url": f"{url}://vllm:8000", "tls_config": tls_config}]})
    assert [d for d in excinfo.value.details if d.startswith(detail)], excinfo.value.details


def test_a_ca_file_that_holds_no_certificate_is_refused_at_start_with_its_target(pki: PKI, tmp_path: Path) -> None:
    bad = tmp_path / "ca.crt"
    shutil.copy(pki.path("client.key"), bad)
    settings = target_settings(8443, {"ca_file": str(bad)})
    with pytest.raises(ConfigError) as excinfo:
        target_tls(settings)
    assert excinfo.value.details[0].startswith(f"targets.0.tls_config.ca_file: no usable CA certificate in {bad}")
