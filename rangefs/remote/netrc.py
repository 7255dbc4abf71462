"""Basic credentials from a netrc file (``$NETRC``, else ``~/.netrc``) for the hosts it lists.

Automatic when the file exists, as for git, wget and pip: a user who wrote credentials for a host there wants
them used; ``NETRC=/dev/null`` turns it off. A header an entry configures (or its header-command prints)
wins over the file's: an explicit ``Authorization`` is never replaced. netrc matches by host, so a redirect
to another host gets that host's credentials, if any, never the first one's (a ``default`` line in the file
matches every host, as in curl).
"""

from __future__ import annotations

import netrc
import os
from collections.abc import Generator, Mapping
from pathlib import Path

import httpx

from rangefs.errors import MountError


class NetrcAuth(httpx.Auth):
    """httpx's NetRCAuth, but a request that already has an Authorization header keeps it."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self._netrc = httpx.NetRCAuth(str(path) if path is not None else None)

    def __repr__(self) -> str:
        return f"<NetrcAuth {self.path or '~/.netrc'}>"

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        if "authorization" in request.headers:
            yield request
        else:
            yield from self._netrc.auth_flow(request)


def netrc_auth(environ: Mapping[str, str]) -> NetrcAuth | None:
    """The netrc credentials to use, or None without a file; a file that cannot be used is a MountError."""
    configured = environ.get("NETRC")
    # None lets the netrc module find ~/.netrc itself: it then refuses one that others can read.
    path = Path(configured) if configured else None
    if not (path or Path(os.path.expanduser("~/.netrc"))).is_file():
        return None
    try:
        return NetrcAuth(path)
    except (OSError, netrc.NetrcParseError) as error:
        raise MountError(f"cannot use the netrc file: {error}") from None
