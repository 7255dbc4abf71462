"""--metrics-listen addresses: a bare port is loopback; anything else is written out, as an IP literal."""

from __future__ import annotations

import pytest

from rangefs.config.listen import ListenAddress, parse_listen_address
from rangefs.errors import UsageError


@pytest.mark.parametrize(
    ("text", "expected", "loopback"),
    [
        ("9464", ListenAddress("127.0.0.1", 9464), True),
        ("127.0.0.2:9464", ListenAddress("127.0.0.2", 9464), True),
        ("[::1]:9464", ListenAddress("::1", 9464), True),
        ("0.0.0.0:9464", ListenAddress("0.0.0.0", 9464), False),
        ("[::]:9464", ListenAddress("::", 9464), False),
        ("0", ListenAddress("127.0.0.1", 0), True),
    ],
)
def test_addresses(text: str, expected: ListenAddress, loopback: bool) -> None:
    parsed = parse_listen_address(text)
    assert parsed == expected
    assert parsed.is_loopback == loopback


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("localhost:9464", "'localhost' is not an IP address"),
        ("example.org:80", "is not an IP address"),
        ("::1:9464", "in brackets"),
        ("127.0.0.1:", "invalid listen address"),
        ("127.0.0.1:65536", "invalid listen address"),
        ("-1", "invalid listen address"),
        (":9464", "is not an IP address"),
    ],
)
def test_mistakes_are_explained(text: str, message: str) -> None:
    with pytest.raises(UsageError, match=message):
        parse_listen_address(text)


def test_ipv6_is_shown_in_brackets() -> None:
    assert str(ListenAddress("::1", 9464)) == "[::1]:9464"
