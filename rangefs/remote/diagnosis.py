"""Say why a connection failed, and what to do about it, from the exception httpx raised.

httpx wraps the real cause several layers deep and its own message is often empty: a certificate that does not
verify arrives as ``httpx.ConnectError('')``, whose cause is an ``httpcore.ConnectError`` caused by a
``trio.BrokenResourceError`` caused by the ``ssl.SSLCertVerificationError`` that says what is wrong. An address
with several IPs (``localhost``) fails as an ``OSError`` caused by an ExceptionGroup of one error per address.
``explain`` walks that chain (causes, contexts and group members) for the first cause it knows and words it
for a user: what failed, at which host, and the option or check that fixes it. What it does not know keeps
httpx's own words.
"""

from __future__ import annotations

import errno
import socket
import ssl
from collections.abc import Iterator

import httpx

# OpenSSL's X509_V_ERR_* codes (ssl.SSLCertVerificationError.verify_code) and what to do about each.
_UNTRUSTED_ISSUER = frozenset({18, 19, 20, 21})  # self-signed leaf or chain, issuer unknown or unverifiable
_NOT_YET_VALID, _EXPIRED = 9, 10
_NAME_MISMATCH = frozenset({62, 64})  # hostname, IP address
# getaddrinfo errors that mean the name has no address (NXDOMAIN, no A/AAAA record), not that DNS is down.
_NO_SUCH_NAME = frozenset({socket.EAI_NONAME, getattr(socket, "EAI_NODATA", socket.EAI_NONAME)})
_UNREACHABLE = frozenset({errno.ENETUNREACH, errno.EHOSTUNREACH})


def explain(error: BaseException, origin: str, timeout: httpx.Timeout) -> str:
    """One line for ``error`` raised talking to ``origin`` (``scheme://host:port``) with ``timeout``: the cause,
    then what to do."""
    host = origin.split("://", 1)[-1]
    name = host.rsplit(":", 1)[0].strip("[]")
    for cause in _causes(error):
        if isinstance(cause, ssl.SSLCertVerificationError):
            return _certificate(cause, host)
        if isinstance(cause, ssl.SSLError):
            return _handshake(cause, host)
        if isinstance(cause, socket.gaierror):
            return _resolution(cause, name)
        if isinstance(cause, ConnectionRefusedError):
            return f"connection refused by {host}: nothing listens there; check the server runs and the URL's port"
        if isinstance(cause, OSError) and cause.errno in _UNREACHABLE:
            return f"cannot reach {host}: {cause.strerror}; check the network and the URL's host"
    if isinstance(error, httpx.ConnectTimeout):
        return (
            f"no connection to {host} within {_seconds(timeout.connect)}: the host does not answer"
            " (it is down, or a firewall drops the packets); check the URL's host and port (--connect-timeout"
            " waits longer)"
        )
    if isinstance(error, httpx.ReadTimeout):
        return (
            f"{host} sent nothing for {_seconds(timeout.read)} (read timeout): the server is stuck or overloaded;"
            " --read-timeout waits longer"
        )
    detail = next((str(cause) for cause in _causes(error) if str(cause)), "") or "no details given"
    return f"cannot talk to {host}: {type(error).__name__}: {detail}"


def deadline_passed(budget: float, host: str | None, *, connecting: bool, answered: bool) -> str:
    """Why an operation used up its time ``budget`` (seconds, retries included), by how far its last attempt
    got with ``host``."""
    if host is None:  # no request went out: every connection to the host was busy the whole time
        return f"no free connection to the host within {budget:g} s; a larger --timeout waits longer"
    where = host.split("://", 1)[-1]
    if connecting:
        return (
            f"no connection to {where} within {budget:g} s: the host does not answer"
            " (it is down, or a firewall drops the packets); check the URL's host and port"
        )
    if not answered:
        return (
            f"{where} accepted the connection but sent no answer within {budget:g} s: the server is stuck or overloaded"
        )
    return f"the answer from {where} did not complete within {budget:g} s; a larger --timeout gives it longer"


def _seconds(value: float | None) -> str:
    return "its timeout" if value is None else f"{value:g} s"


def _certificate(error: ssl.SSLCertVerificationError, host: str) -> str:
    what = f"TLS certificate of {host} does not verify: {(error.verify_message or error.reason).rstrip('.')}"
    code = error.verify_code
    if code in _UNTRUSTED_ISSUER:
        return f"{what}; pass --ca-bundle FILE with the CA that signed it"
    if code == _EXPIRED:
        return f"{what}; the server must renew it (or this machine's clock is wrong)"
    if code == _NOT_YET_VALID:
        return f"{what}; check this machine's clock"
    if code in _NAME_MISMATCH:
        return f"{what}; use a URL with a host name the certificate names"
    return what


def _handshake(error: ssl.SSLError, host: str) -> str:
    reason = error.reason or str(error)
    if reason == "WRONG_VERSION_NUMBER":
        return f"TLS handshake with {host} failed ({reason}): the port speaks plain HTTP; use an http:// URL"
    return f"TLS handshake with {host} failed: {reason}"


def _resolution(error: socket.gaierror, name: str) -> str:
    if error.errno in _NO_SUCH_NAME:
        return f"host name {name} does not resolve ({error.strerror}); check the URL's host name"
    return f"cannot resolve {name}: {error.strerror}; check the DNS servers in /etc/resolv.conf and the network"


def _causes(error: BaseException) -> Iterator[BaseException]:
    """``error`` and everything behind it, nearest first: causes, contexts, members of exception groups."""
    pending, seen = [error], set()
    while pending:
        current = pending.pop(0)
        if id(current) in seen:
            continue
        seen.add(id(current))
        yield current
        if isinstance(current, BaseExceptionGroup):
            pending.extend(current.exceptions)
        for behind in (current.__cause__, current.__context__):
            if behind is not None:
                pending.append(behind)
