"""Listen addresses such as ``9464``, ``127.0.0.1:9464`` or ``[::1]:9464`` (``--metrics-listen``).

A bare port listens on loopback only: nothing rangefs serves is authenticated, so reaching it from other
machines must be asked for by writing the address out (``0.0.0.0:9464``, ``192.0.2.7:9464``). Hosts are IP
literals, never names: a name would need a resolver, and which interface it means could change under us.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from rangefs.errors import UsageError

_EXAMPLE = "use PORT (loopback), or ADDRESS:PORT with an IP address, e.g. 9464, 127.0.0.1:9464, [::1]:9464"


@dataclass(frozen=True)
class ListenAddress:
    host: str  # an IP literal, without brackets
    port: int  # 1-65535, or 0 for a port the system picks (the log names it)

    @property
    def is_loopback(self) -> bool:
        return ipaddress.ip_address(self.host).is_loopback

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


def parse_listen_address(text: str) -> ListenAddress:
    """``PORT`` is 127.0.0.1:PORT; ``HOST:PORT`` and ``[IPV6]:PORT`` take the host as written."""
    value = text.strip()
    host, separator, port_text = value.rpartition(":")
    if not separator:
        host = "127.0.0.1"
    elif host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    elif ":" in host:
        raise UsageError(f"invalid listen address {text!r}: write an IPv6 address in brackets, e.g. [::1]:9464")
    if not port_text.isdigit() or int(port_text) > 65535:
        raise UsageError(f"invalid listen address {text!r}: {_EXAMPLE}")
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        raise UsageError(f"invalid listen address {text!r}: {host!r} is not an IP address; {_EXAMPLE}") from None
    return ListenAddress(str(address), int(port_text))
