"""When a signed URL expires, read from its query string. Pure; never raises on what a command printed.

Three forms are understood:

- S3 presigned (SigV4): ``X-Amz-Date=20250101T120000Z`` plus ``X-Amz-Expires=3600`` (seconds);
- GCS signed (V4): ``X-Goog-Date`` plus ``X-Goog-Expires``, the same forms;
- generic ``Expires=1735732800`` (seconds since the epoch: CloudFront, S3 SigV2, many CDNs).

Query keys are compared case-insensitively; an unparseable value means "no known expiry", and the URL is
then used until the server refuses it.
"""

from __future__ import annotations

from datetime import UTC, datetime
from urllib.parse import parse_qsl, urlsplit

from rangefs.remote.headers import parse_digits

_SIGNING_DATE = "%Y%m%dT%H%M%SZ"
_SIGNED_FORMS = (("x-amz-date", "x-amz-expires"), ("x-goog-date", "x-goog-expires"))


def expiry_of(url: str) -> float | None:
    """Seconds since the epoch at which ``url`` stops working, if its query string says so."""
    try:
        query = {key.lower(): value for key, value in parse_qsl(urlsplit(url).query, keep_blank_values=True)}
    except ValueError:
        return None
    for date_key, lifetime_key in _SIGNED_FORMS:
        if date_key in query and lifetime_key in query:
            lifetime = parse_digits(query[lifetime_key])
            try:
                signed = datetime.strptime(query[date_key], _SIGNING_DATE).replace(tzinfo=UTC)
            except ValueError:
                return None
            return None if lifetime is None else signed.timestamp() + lifetime
    epoch = parse_digits(query.get("expires"))
    return None if epoch is None else float(epoch)
