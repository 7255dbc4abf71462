"""The service notification protocol of sd_notify(3), spoken directly.

systemd passes a ``Type=notify`` service the address of a datagram socket in ``NOTIFY_SOCKET``: a path, or
``@name`` for a socket in the abstract namespace (the ``@`` stands for a leading NUL byte). A message is
newline-separated ``KEY=VALUE`` assignments in one datagram: ``READY=1`` once the service works (here: the
mount is live), ``STOPPING=1`` when it begins to shut down, ``STATUS=`` free text for ``systemctl status``,
``MAINPID=`` the daemon's process id (it lets a unit with ``NotifyAccess=all`` follow a background mount's
child). Sending never blocks (``MSG_DONTWAIT``) and never fails the mount: systemd not listening is logged.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Mapping

log = logging.getLogger(__name__)


def socket_address(environ: Mapping[str, str]) -> str | bytes | None:
    """Where to send notifications, or None when not run by systemd as a notify service."""
    address = environ.get("NOTIFY_SOCKET", "")
    if address.startswith("@"):
        return b"\0" + address[1:].encode()
    if address.startswith("/"):
        return address
    return None  # unset, or a vsock address (not for a local daemon)


def notify(environ: Mapping[str, str], *assignments: str) -> bool:
    """Send ``KEY=VALUE`` assignments to systemd; True if they were sent, False if not run by systemd."""
    address = socket_address(environ)
    if address is None:
        return False
    message = "\n".join(assignments).encode()
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sender:
            sender.sendto(message, socket.MSG_DONTWAIT | socket.MSG_NOSIGNAL, address)
    except OSError as error:
        log.warning("cannot notify systemd at %s: %s", environ["NOTIFY_SOCKET"], error.strerror or error)
        return False
    return True


def ready(environ: Mapping[str, str], status: str) -> bool:
    return notify(environ, "READY=1", f"STATUS={status}", f"MAINPID={os.getpid()}")


def stopping(environ: Mapping[str, str], status: str) -> bool:
    return notify(environ, "STOPPING=1", f"STATUS={status}")
