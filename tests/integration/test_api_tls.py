"""TLS for the API (issue 16 item 9), against the gateway's real API over TCP.

A local CA made by the test with the ``openssl`` command signs the server's certificate and
a client's; the clients are aiohttp with an :class:`ssl.SSLContext`.

* HTTPS works for a client that trusts the CA; plain HTTP to the TLS port gets no answer;
* with ``client_ca_file`` a client without a certificate is refused and one with a
  certificate signed by that CA is served;
* a missing file, a key that is not the certificate's and a CA file that holds no
  certificate are configuration errors naming the file.
"""

from __future__ import annotations

import json
import shutil
import ssl
import subprocess
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from gateway.config import load_settings_from_text
from gateway.errors import ConfigError
from gateway.ports import free_port
from gateway.runtime import Gateway

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command"),
]

TOKEN = "tls-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
_EC = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]


@dataclass(frozen=True)
class Pki:
    """A local CA and the certificates it signed (PEM files)."""

    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    other_key: Path       # a key that belongs to no certificate here


def _openssl(*args: str | Path, cwd: Path) -> None:
    subprocess.run(["openssl", *map(str, args)], cwd=cwd, check=True, capture_output=True, timeout=30)


def _signed(d: Path, ca: Path, ca_key: Path, name: str, subject: str, ext: str) -> tuple[Path, Path]:
    _openssl("req", *_EC, "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", subject, cwd=d)
    (d / f"{name}.ext").write_text(ext + "\n")
    _openssl("x509", "-req", "-in", f"{name}.csr", "-CA", ca, "-CAkey", ca_key, "-CAcreateserial",
             "-out", f"{name}.pem", "-days", "2", "-extfile", f"{name}.ext", cwd=d)
    return d / f"{name}.pem", d / f"{name}.key"


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    d = tmp_path / "pki"
    d.mkdir()
    _openssl("req", "-x509", *_EC, "-keyout", "ca.key", "-out", "ca.pem", "-days", "2",
             "-subj", "/CN=amr test CA", cwd=d)
    server_cert, server_key = _signed(d, d / "ca.pem", d / "ca.key", "server", "/CN=127.0.0.1",
                                      "subjectAltName=IP:127.0.0.1")
    client_cert, client_key = _signed(d, d / "ca.pem", d / "ca.key", "client", "/CN=scada",
                                      "extendedKeyUsage=clientAuth")
    _openssl("genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:prime256v1",
             "-out", "other.key", cwd=d)
    return Pki(d / "ca.pem", server_cert, server_key, client_cert, client_key, d / "other.key")


def _config(tmp_path: Path, port: int, tls: str) -> str:
    return f"""\
gateway: {{id: tls, timezone: UTC, data_dir: {tmp_path / 'data'}}}
buses:
  - {{id: lan, type: tcp, host: 127.0.0.1, port: {free_port()}, protocol: modbus-tcp, timeout_ms: 200}}
meters:
  - {{id: m1, customer: C1, bus: lan, address: 1, profile: simulator}}
schedules:
  interval: {{every: 15m, points: ["energy_*"]}}
api:
  listen: "127.0.0.1:{port}"
  token: {TOKEN}
  tls: {tls}
"""


async def _running(tmp_path: Path, tls: str) -> tuple[Gateway, int]:
    port = free_port()
    settings = load_settings_from_text(_config(tmp_path, port, tls), "<test>", tmp_path, {})
    gw = Gateway(settings, enable_sinks=False)
    await gw.start()
    return gw, port


def _client_context(pki: Pki, with_certificate: bool) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(pki.ca))
    if with_certificate:
        ctx.load_cert_chain(str(pki.client_cert), str(pki.client_key))
    return ctx


async def _get(url: str, ssl_context: ssl.SSLContext | None) -> tuple[int, Any]:
    timeout = aiohttp.ClientTimeout(total=10)
    async with aiohttp.ClientSession(timeout=timeout) as http, \
            http.get(url, headers=AUTH, ssl=ssl_context if ssl_context is not None else False) as resp:
        return resp.status, json.loads(await resp.text())


@pytest.fixture
async def https_api(tmp_path: Path, pki: Pki) -> AsyncIterator[int]:
    gw, port = await _running(tmp_path, f"{{cert_file: {pki.server_cert}, key_file: {pki.server_key}}}")
    try:
        yield port
    finally:
        await gw.stop()


async def test_https_works_with_the_ca_and_plain_http_gets_no_answer(https_api: int, pki: Pki) -> None:
    status, body = await _get(f"https://127.0.0.1:{https_api}/api/v1/meters", _client_context(pki, False))
    assert status == 200
    assert [m["id"] for m in body["meters"]] == ["m1"]
    with pytest.raises(aiohttp.ClientError):
        await _get(f"http://127.0.0.1:{https_api}/api/v1/meters", None)
    # a client that does not trust the CA refuses the server
    with pytest.raises(aiohttp.ClientConnectorCertificateError):
        await _get(f"https://127.0.0.1:{https_api}/api/v1/meters", ssl.create_default_context())


async def test_with_a_client_ca_only_clients_with_a_certificate_are_served(tmp_path: Path, pki: Pki) -> None:
    gw, port = await _running(tmp_path, f"{{cert_file: {pki.server_cert}, key_file: {pki.server_key}, "
                                        f"client_ca_file: {pki.ca}}}")
    try:
        url = f"https://127.0.0.1:{port}/api/v1/meters"
        with pytest.raises(aiohttp.ClientError):
            await _get(url, _client_context(pki, with_certificate=False))
        status, body = await _get(url, _client_context(pki, with_certificate=True))
        assert status == 200
        assert [m["id"] for m in body["meters"]] == ["m1"]
    finally:
        await gw.stop()


def _load_error(tmp_path: Path, tls: str) -> str:
    with pytest.raises(ConfigError) as info:
        load_settings_from_text(_config(tmp_path, free_port(), tls), "<test>", tmp_path, {})
    return str(info.value)


def test_unusable_tls_files_are_configuration_errors_naming_the_file(tmp_path: Path, pki: Pki) -> None:
    missing = tmp_path / "nowhere.pem"
    message = _load_error(tmp_path, f"{{cert_file: {missing}, key_file: {pki.server_key}}}")
    assert "api.tls: cert_file" in message and str(missing) in message and "cannot be read" in message

    message = _load_error(tmp_path, f"{{cert_file: {pki.server_cert}, key_file: {pki.other_key}}}")
    assert "api.tls: key_file" in message and str(pki.other_key) in message
    assert f"private key of {pki.server_cert}" in message

    not_pem = tmp_path / "garbage.pem"
    not_pem.write_text("not a certificate\n")
    message = _load_error(tmp_path, f"{{cert_file: {not_pem}, key_file: {pki.server_key}}}")
    assert "api.tls: cert_file" in message and str(not_pem) in message and "no PEM certificate" in message

    message = _load_error(tmp_path, f"{{cert_file: {pki.server_cert}, key_file: {pki.server_key}, "
                                    f"client_ca_file: {not_pem}}}")
    assert "api.tls: client_ca_file" in message and str(not_pem) in message

    message = _load_error(tmp_path, f"{{cert_file: {pki.server_cert}}}")
    assert 'api.tls: the required key "key_file" is missing' in message


def test_relative_tls_paths_start_at_the_configuration_directory(tmp_path: Path, pki: Pki) -> None:
    text = _config(tmp_path, free_port(), "{cert_file: pki/server.pem, key_file: pki/server.key}")
    tls = load_settings_from_text(text, "<test>", tmp_path, {}).api.tls
    assert tls is not None
    assert (tls.cert_file, tls.key_file, tls.client_ca_file) == (pki.server_cert, pki.server_key, None)
