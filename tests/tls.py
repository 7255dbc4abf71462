"""Certificates made at test time with the openssl CLI: a private CA and server certificates it signed.

``make_certificates`` writes a CA (``ca.pem``, what ``--ca-bundle`` gets) and three server certificates for
127.0.0.1, each as a chain file (leaf, then the CA, as real servers send it) and a key: ``good``, ``expired``
(its validity ended a day ago) and ``wrong_host`` (issued for ``other.invalid`` only). ``server_context`` turns
one into the ssl context of a loopback origin.
"""

from __future__ import annotations

import shutil
import ssl
import subprocess
from dataclasses import dataclass
from pathlib import Path

OPENSSL = shutil.which("openssl")
_TIMEOUT = 60.0


@dataclass(frozen=True)
class ServerCertificate:
    chain: Path  # the leaf, then the CA that signed it (PEM)
    key: Path

    def server_context(self) -> ssl.SSLContext:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(self.chain, self.key)
        return context


@dataclass(frozen=True)
class Certificates:
    ca: Path
    good: ServerCertificate
    expired: ServerCertificate
    wrong_host: ServerCertificate


def skip_reason() -> str | None:
    return None if OPENSSL else "openssl is not installed (Debian package openssl)"


def _openssl(*args: str | Path) -> None:
    assert OPENSSL is not None
    subprocess.run([OPENSSL, *map(str, args)], check=True, capture_output=True, timeout=_TIMEOUT)


def _leaf(directory: Path, name: str, ca: Path, ca_key: Path, *, san: str, days: int) -> ServerCertificate:
    key, request, leaf = directory / f"{name}.key", directory / f"{name}.csr", directory / f"{name}.pem"
    extensions = directory / f"{name}.ext"
    extensions.write_text(f"subjectAltName={san}\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n")
    _openssl("req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
             "-keyout", key, "-out", request, "-subj", f"/CN={name}")  # fmt: skip
    # A negative -days puts the end of validity before its start (now): an expired certificate.
    _openssl("x509", "-req", "-in", request, "-CA", ca, "-CAkey", ca_key, "-CAcreateserial",
             "-days", str(days), "-extfile", extensions, "-out", leaf)  # fmt: skip
    chain = directory / f"{name}-chain.pem"
    chain.write_text(leaf.read_text() + ca.read_text())
    return ServerCertificate(chain, key)


def make_certificates(directory: Path) -> Certificates:
    directory.mkdir(parents=True, exist_ok=True)
    ca, ca_key = directory / "ca.pem", directory / "ca.key"
    _openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
             "-keyout", ca_key, "-out", ca, "-subj", "/CN=rangefs test CA", "-days", "2")  # fmt: skip
    return Certificates(
        ca=ca,
        good=_leaf(directory, "good", ca, ca_key, san="IP:127.0.0.1", days=2),
        expired=_leaf(directory, "expired", ca, ca_key, san="IP:127.0.0.1", days=-1),
        wrong_host=_leaf(directory, "wrong-host", ca, ca_key, san="DNS:other.invalid", days=2),
    )


def make_server_certificate(directory: Path, address: str) -> tuple[Path, ServerCertificate]:
    """A fresh CA and a certificate it signed for the IP ``address`` (the benchmark's HTTPS origin): the CA
    (what clients are told to trust, e.g. rangefs's ``--ca-bundle``) and the server's chain and key."""
    directory.mkdir(parents=True, exist_ok=True)
    ca, ca_key = directory / "ca.pem", directory / "ca.key"
    _openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
             "-keyout", ca_key, "-out", ca, "-subj", "/CN=rangefs benchmark CA", "-days", "2")  # fmt: skip
    return ca, _leaf(directory, "origin", ca, ca_key, san=f"IP:{address}", days=2)
