"""Sender: one logical request, with redirects followed and credentials kept at the origin they are for.

Redirects are followed here rather than by httpx so that headers configured for an entry (credentials) are
only ever sent to the origin the user wrote down; the final location is remembered while it works and
resolved again from the configured URL when it stops working (an expired signed URL answers 403 or 410).
Errors are left to the caller's one translation point.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import httpx

from rangefs.errors import InvalidResponse

log = logging.getLogger(__name__)

Headers = tuple[tuple[str, str], ...]

MAX_REDIRECTS = 10
_REDIRECTS = frozenset({301, 302, 303, 307, 308})
# A remembered redirect target answering one of these has expired: start again from the configured URL.
_EXPIRED_TARGET = frozenset({401, 403, 404, 410})


class Sender:
    """Sends requests over ``client``, which must not follow redirects itself."""

    def __init__(self, client: httpx.AsyncClient) -> None:
        self._client = client
        # Configured URL -> where it last redirected to, while that keeps answering.
        self._redirected: dict[str, httpx.URL] = {}

    def __repr__(self) -> str:
        return f"<Sender {len(self._redirected)} redirects remembered>"

    @asynccontextmanager
    async def request(
        self, method: str, url: str, configured: Headers, extra: dict[str, str] | None = None
    ) -> AsyncIterator[httpx.Response]:
        """Send a request, following redirects; configured headers go to the configured origin only."""
        origin = httpx.URL(url)
        remembered = self._redirected.get(url)
        target = remembered or origin
        for _ in range(MAX_REDIRECTS + 1):
            headers = httpx.Headers(extra or {})
            if _same_origin(target, origin):
                for name, value in configured:
                    headers[name] = value
            response = await self._client.send(self._client.build_request(method, target, headers=headers), stream=True)
            location = response.headers.get("location")
            if remembered is not None and response.status_code in _EXPIRED_TARGET:
                await response.aclose()
                log.info("redirect target of %s answered %d; resolving %s again", url, response.status_code, url)
                # Concurrent requests can all find the same expired target: whichever comes first forgets it.
                self._redirected.pop(url, None)
                remembered, target = None, origin
                continue
            if response.status_code not in _REDIRECTS or location is None:
                if target != origin and response.status_code < 300:
                    self._redirected[url] = target
                try:
                    yield response
                finally:
                    await response.aclose()
                return
            await response.aclose()
            target = target.join(location)
            if method == "GET" and response.status_code == 303:
                raise InvalidResponse(url, "redirected with 303 See Other, which does not point to the file itself")
        raise InvalidResponse(url, f"more than {MAX_REDIRECTS} redirects")


def _same_origin(a: httpx.URL, b: httpx.URL) -> bool:
    return (a.scheme, a.host, a.port) == (b.scheme, b.host, b.port)
