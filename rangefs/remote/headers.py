"""Reading untrusted header values: ASCII only, bounded, and never raising.

A header value is whatever a server, proxy or attacker sent, and Python's own parsers accept more than HTTP
does: ``"²".isdigit()`` is True but ``int("²")`` raises ValueError, ``int("٣")`` is 3, and ``int()`` of more
than 4300 digits raises ValueError (the int max str digits limit). So numbers are read here, by one
ASCII-only pattern of at most 19 digits (enough for any size below 2**63), and dates by one wrapper that
turns every failure of the standard library's parser into None.
"""

from __future__ import annotations

import re
from datetime import UTC
from email.utils import parsedate_to_datetime

_DIGITS = re.compile(r"[0-9]{1,19}", re.ASCII)
# Optional whitespace around a field value (RFC 9110 5.6.3): only space and tab, not Unicode spaces.
_OWS = " \t"


def parse_digits(value: str | None) -> int | None:
    """A non-negative decimal number such as a Content-Length; None if absent or anything else."""
    if value is None:
        return None
    value = value.strip(_OWS)
    return int(value) if _DIGITS.fullmatch(value) else None


def parse_http_date(value: str | None) -> float | None:
    """An HTTP date (Last-Modified, Retry-After) as seconds since the epoch; None if absent or invalid."""
    if not value:
        return None
    try:
        when = parsedate_to_datetime(value.strip(_OWS))
        # A date without a zone ("-0000") comes back naive; HTTP dates are always UTC. Aware arithmetic also
        # avoids mktime, which overflows for far years.
        return (when if when.tzinfo else when.replace(tzinfo=UTC)).timestamp()
    except (TypeError, ValueError, IndexError, OverflowError):
        return None


def opaque_tag(etag: str) -> str:
    """The opaque part of an entity tag: ``W/"x"`` and ``"x"`` name the same tag (RFC 9110 8.8.3.2)."""
    etag = etag.strip(_OWS)
    return etag[2:] if etag.startswith("W/") else etag
