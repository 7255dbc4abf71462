"""The urls-file parser: every mistake is reported with its line; valid files give the expected tree."""

from __future__ import annotations

from pathlib import PurePosixPath
from urllib.parse import urlsplit

import pytest
from hypothesis import given
from hypothesis import strategies as st

from rangefs.config import Command, parse_size, parse_urls
from rangefs.config.urls import split_simple_url
from rangefs.errors import ConfigError, UsageError


def problems(text: str, environ: dict[str, str] | None = None) -> list[str]:
    with pytest.raises(ConfigError) as raised:
        parse_urls(text, "u.txt", environ or {})
    return raised.value.problems


def test_names_paths_options_and_comments() -> None:
    entries = parse_urls(
        "# datasets\n"
        "https://example.org/a/data%20set.zip   # trailing comment\n"
        "\n"
        "videos/talk.mp4 https://cdn.example.org/v?id=7#frag\n"
        "    header = Authorization: Bearer ${TOKEN}\n"
        "\theader = X-Trace: 1\n"
        "    size = 1234\n",
        "u.txt",
        {"TOKEN": "s3cret"},
    )
    assert [(str(e.path), e.url, e.line) for e in entries] == [
        ("data set.zip", "https://example.org/a/data%20set.zip", 2),
        ("videos/talk.mp4", "https://cdn.example.org/v?id=7#frag", 4),
    ]
    assert entries[1].headers == (("Authorization", "Bearer s3cret"), ("X-Trace", "1"))
    assert entries[1].expected_size == 1234


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("ftp://x/y\n", "u.txt:1: invalid URL 'ftp://x/y': only http:// and https://"),
        ("https:///nohost\n", "u.txt:1: invalid URL 'https:///nohost': no host name"),
        ("http://h:99999/x\n", "u.txt:1: invalid URL"),
        ("https://h/\n", "u.txt:1: cannot name a file after 'https://h/'"),
        ("https://h/..\n", "u.txt:1: cannot name a file after"),
        ("/etc/passwd https://h/x\n", "u.txt:1: path '/etc/passwd' is absolute"),
        ("a/../b https://h/x\n", "u.txt:1: path 'a/../b' is unsafe"),
        ("a//b https://h/x\n", "u.txt:1: path 'a//b' is unsafe"),
        ("a b https://h/x\n", "u.txt:1: expected 'URL' or 'PATH URL'"),
        ("  header = X: 1\n", "u.txt:1: indented option without an entry above it"),
        ("https://h/x\n  colour = red\n", "u.txt:2: unknown option 'colour'"),
        ("https://h/x\n  header = nocolon\n", "u.txt:2: expected 'header = Name: value'"),
        ("https://h/x\n  header = Range: bytes=0-1\n", "u.txt:2: header 'Range' is set by rangefs itself"),
        ("https://h/x\n  size = big\n", "u.txt:2: size must be a whole number"),
        ("https://h/x\n  header = A: ${NOPE}\n", "u.txt:2: environment variable NOPE is not set"),
        ("https://h/x\nhttps://g/x\n", "u.txt:2: duplicate path 'x' (first used on line 1)"),
        ("d https://h/x\nd/e https://h/y\n", "u.txt:2: 'd/e' needs 'd' to be a directory, but line 1"),
        ("# only comments\n\n", "u.txt: no URLs found"),
        ("https://h/x\n  header-command =\n", "u.txt:2: header-command needs a shell command"),
        ("https://h/x\n  url-command = a\n  url-command = b\n", "u.txt:3: url-command given twice"),
    ],
)
def test_each_mistake_is_reported_with_its_line(text: str, expected: str) -> None:
    assert any(problem.startswith(expected) for problem in problems(text)), problems(text)


def test_commands_keep_their_place_and_are_not_expanded() -> None:
    (entry,) = parse_urls(
        "https://h/x\n  header-command = vault read ${PATH_TO}\n  url-command = sign x\n", "u.txt", {}
    )
    assert entry.header_command == Command("vault read ${PATH_TO}", "u.txt:2")
    assert entry.url_command == Command("sign x", "u.txt:3")
    moved = parse_urls(
        "\n\nhttps://h/x\n  header-command = vault read ${PATH_TO}\n  url-command = sign x\n", "u.txt", {}
    )
    assert moved[0].definition() == entry.definition() and moved[0].line != entry.line


def test_all_problems_are_reported_at_once() -> None:
    found = problems("ftp://a/b\nhttps://h/ok\n../x https://h/y\nhttps://h/z\n  bad = 1\n")
    assert [p.split(":")[1] for p in found] == ["1", "3", "5"]


@given(st.text(st.characters(blacklist_categories=["Cs"]), min_size=1, max_size=40))
def test_derived_names_are_always_single_safe_components(segment: str) -> None:
    from urllib.parse import quote

    url = f"https://example.org/dir/{quote(segment, safe='')}"
    try:
        entries = parse_urls(url + "\n", "u.txt", {})
    except ConfigError:
        return  # refusing is fine; producing an unsafe path is not
    (path,) = [e.path for e in entries]
    assert len(path.parts) == 1 and path.parts[0] not in ("", ".", "..")
    assert not path.is_absolute() and "\0" not in str(path) and path == PurePosixPath(path.name)


@pytest.mark.parametrize(("text", "value"), [("4096", 4096), ("1M", 1 << 20), ("64MiB", 64 << 20), ("2g", 2 << 30)])
def test_sizes(text: str, value: int) -> None:
    assert parse_size(text) == value


def test_bad_size() -> None:
    with pytest.raises(UsageError, match="invalid size"):
        parse_size("lots")


_URLS = st.tuples(
    st.sampled_from(["http://", "https://", "HTTP://", "ftp://", ""]),
    st.text(alphabet="ab:/?#@[]\\%.-_~=&+ \t\x00\x7fé0123456789", max_size=30),
).map("".join)


@given(_URLS)
def test_the_quick_split_of_a_plain_url_is_urlsplit(url: str) -> None:
    """split_simple_url answers only for URLs it splits exactly as urlsplit does (the parser takes its parts)."""
    quick = split_simple_url(url)
    if quick is not None:
        assert quick == urlsplit(url)
        assert quick.scheme in ("http", "https")


@pytest.mark.parametrize(
    "url",
    ["http://h:80/a/b?x=1#f", "https://h/", "http://h", "http://h?", "http://h#", "http://h/p?q?r#s#t", "http://h:x/"],
)
def test_plain_urls_take_the_quick_split(url: str) -> None:
    assert split_simple_url(url) == urlsplit(url)


def test_a_bad_port_is_reported_for_each_line_that_has_it() -> None:
    """What is wrong with a host is worked out once per list, but reported on every line."""
    with pytest.raises(ConfigError) as raised:
        parse_urls("http://h:99999/a\nhttp://h:99999/b\nhttp://h:80/c\n", "u.txt", {})
    assert [problem.split(":")[1] for problem in raised.value.problems] == ["1", "2"]
    assert all("out of range" in problem for problem in raised.value.problems)
