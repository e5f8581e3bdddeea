"""TLS for the API: one server :class:`ssl.SSLContext` built from ``api.tls``.

The configuration loader builds it once to check the files (so a wrong path, a key that
does not match the certificate or a CA file that is not PEM is a configuration error that
names the file), and the API server builds it again when it starts serving.
"""

from __future__ import annotations

import ssl
from pathlib import Path

from gateway.settings import ApiTlsSettings


class TlsFileError(Exception):
    """One file of ``api.tls`` cannot be used; ``key`` names its setting, ``path`` the file."""

    def __init__(self, key: str, path: Path, reason: str) -> None:
        self.key = key
        self.path = path
        self.reason = reason
        super().__init__(f"api.tls.{key}: {path} {reason}")


def _readable(key: str, path: Path) -> None:
    try:
        with path.open("rb"):
            pass
    except OSError as exc:
        raise TlsFileError(key, path, f"cannot be read ({exc.strerror or exc}); create it or fix the path") from exc


def server_context(tls: ApiTlsSettings) -> ssl.SSLContext:
    """A server context for ``tls``: TLS 1.2 or newer, client certificates required when a
    client CA is given. Raises :class:`TlsFileError` naming the first unusable file."""
    _readable("cert_file", tls.cert_file)
    _readable("key_file", tls.key_file)
    try:    # the certificate alone first, so a bad one is not blamed on the key
        ssl.create_default_context(cafile=str(tls.cert_file))
    except (ssl.SSLError, ValueError) as exc:
        raise TlsFileError("cert_file", tls.cert_file,
                           f"holds no PEM certificate ({exc}); give the server's certificate in PEM form") from exc
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        # an empty password: an encrypted key fails here instead of prompting on a terminal
        ctx.load_cert_chain(str(tls.cert_file), str(tls.key_file), password=b"")
    except ssl.SSLError as exc:
        raise TlsFileError("key_file", tls.key_file,
                           f"is not the PEM private key of {tls.cert_file} ({exc}); give the matching, "
                           "unencrypted key") from exc
    if tls.client_ca_file is not None:
        _readable("client_ca_file", tls.client_ca_file)
        try:
            ctx.load_verify_locations(cafile=str(tls.client_ca_file))
        except (ssl.SSLError, ValueError) as exc:
            raise TlsFileError("client_ca_file", tls.client_ca_file,
                               f"holds no PEM CA certificate ({exc}); give the CA that signs the "
                               "clients' certificates") from exc
        ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx
