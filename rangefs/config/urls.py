"""Parse a urls file into entries.

Format (one entry per line, ``#`` starts a comment)::

    https://example.org/data/archive.zip          # file named archive.zip
    videos/talk.mp4 https://example.org/v?id=7    # explicit path, creates the directory videos/
        header = Authorization: Bearer ${TOKEN}   # indented lines are options of the entry above
        size = 104857600                          # expected size in bytes
    private.bin https://example.org/private.bin
        header-command = vault read -field=header secret/origin   # prints 'Name: value', run again on 401/403
    big.tar https://bucket.s3.amazonaws.com/big.tar
        url-command = aws s3 presign s3://bucket/big.tar          # prints a signed URL, run again before it expires

Every problem is collected, not just the first, and reported as ``FILE:LINE: message`` so a user can fix the
whole file in one pass. ``${NAME}`` is expanded from the environment so secrets stay out of the file.
Pure: no I/O besides reading the file in :func:`read_urls_file`.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from urllib.parse import SplitResult, unquote, urlsplit

from rangefs.errors import ConfigError

_ENV_REFERENCE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")
_HEADER_NAME = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")
# Headers rangefs sets itself on every request; letting a user override them would break the range protocol.
RESERVED_HEADERS = frozenset({"range", "if-range", "accept-encoding", "host", "content-length"})
_MAX_NAME_BYTES = 255
_UNSAFE_COMPONENTS = frozenset({"", ".", ".."})


@dataclass(frozen=True)
class Command:
    """A shell command of an entry (``header-command``, ``url-command``) and where the urls file gives it."""

    text: str
    source: str  # FILE:LINE, for every error the command causes


@dataclass(frozen=True)
class Entry:
    """One remote file: where it appears in the mount and how to fetch it.

    ``url`` names the file (its default name, and part of its cache identity); with a ``url_command`` the
    requests go to the URL the command prints instead, so re-signing a URL keeps the cached blocks."""

    path: PurePosixPath
    url: str
    line: int
    headers: tuple[tuple[str, str], ...] = ()
    expected_size: int | None = None
    header_command: Command | None = None
    url_command: Command | None = None

    def definition(self) -> tuple[object, ...]:
        """Everything that decides what the entry serves, without where it is written: a reload keeps an
        entry whose definition is unchanged, even if lines above it moved it."""
        commands = tuple(command and command.text for command in (self.header_command, self.url_command))
        return (self.path, self.url, self.headers, self.expected_size, commands)


_COMMENT = re.compile(r"(^|\s)#")


@dataclass
class _Draft:
    path: PurePosixPath
    url: str
    line: int
    headers: list[tuple[str, str]] = field(default_factory=list)
    expected_size: int | None = None
    header_command: Command | None = None
    url_command: Command | None = None

    def freeze(self) -> Entry:
        return Entry(
            self.path,
            self.url,
            self.line,
            tuple(self.headers),
            self.expected_size,
            self.header_command,
            self.url_command,
        )


def read_urls_file(path: str | Path, environ: Mapping[str, str]) -> list[Entry]:
    """Read and parse a urls file; unreadable files are a ConfigError too."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise ConfigError([f"{path}: cannot read urls file: {error}"]) from None
    return parse_urls(text, str(path), environ)


def parse_urls(text: str, filename: str, environ: Mapping[str, str]) -> list[Entry]:
    """Parse the text of a urls file; raises ConfigError listing every bad line."""
    problems: list[str] = []
    drafts: list[_Draft] = []
    current: _Draft | None = None
    current_ok = False  # options under a rejected entry are skipped silently: its line is already reported
    hosts: dict[str, str | None] = {}  # what is wrong with each scheme://host:port seen (see _split_url)

    for number, raw in enumerate(text.splitlines(), start=1):
        line = _strip_comment(raw)
        if not line.strip():
            continue
        where = f"{filename}:{number}"
        if line[0] in " \t":
            if current is None:
                problems.append(f"{where}: indented option without an entry above it")
            elif current_ok:
                problem = _apply_option(current, line.strip(), environ, where)
                if problem:
                    problems.append(f"{where}: {problem}")
            continue
        current, problem = _parse_entry(line.strip(), number, hosts)
        current_ok = problem is None
        if problem:
            problems.append(f"{where}: {problem}")
        elif current is not None:
            drafts.append(current)

    problems.extend(_layout_problems(drafts, filename))
    if problems:
        raise ConfigError(problems)
    if not drafts:
        raise ConfigError([f"{filename}: no URLs found; write one URL per line"])
    return [draft.freeze() for draft in drafts]


def _strip_comment(line: str) -> str:
    # A '#' starts a comment only at the line start or after white space: URLs keep their fragments. Most lines
    # have none: the search cost a quarter of parsing 100,000 lines.
    if "#" not in line:
        return line
    match = _COMMENT.search(line)
    return line[: match.start()] if match else line


def _parse_entry(line: str, number: int, hosts: dict[str, str | None]) -> tuple[_Draft | None, str | None]:
    fields = line.split()
    if len(fields) > 2:
        return None, "expected 'URL' or 'PATH URL' (spaces in URLs must be written as %20)"
    url = fields[-1]
    parts, problem = _split_url(url, hosts)
    if parts is None:
        return None, problem
    if len(fields) == 2:
        path, problem = _safe_path(fields[0])
    else:
        path, problem = _name_from_parts(url, parts)
    if problem or path is None:
        return None, problem
    return _Draft(path, url, number), None


def url_problem(url: str) -> str | None:
    """Why ``url`` cannot be read by rangefs (not http(s), no host, a bad port), or None."""
    return _split_url(url)[1]


def _split_url(url: str, hosts: dict[str, str | None] | None = None) -> tuple[SplitResult | None, str | None]:
    """The URL's parts, or why rangefs cannot read it. ``hosts`` remembers what was wrong (None: nothing) with
    each scheme and host:port already seen, for the URLs ``split_simple_url`` splits: a list's lines mostly
    share a few."""
    parts = split_simple_url(url)
    if parts is not None and hosts is not None:
        origin = url[: len(parts.scheme) + 3 + len(parts.netloc)]
        if origin not in hosts:
            hosts[origin] = _host_problem(parts)
        problem = hosts[origin]
    else:
        try:
            parts = parts or urlsplit(url)
        except ValueError as error:
            return None, f"invalid URL {url!r}: {error}"
        problem = _host_problem(parts)
    return (None, f"invalid URL {url!r}: {problem}") if problem else (parts, None)


def _host_problem(parts: SplitResult) -> str | None:
    try:
        parts.port  # noqa: B018 - raises ValueError for a bad port
    except ValueError as error:
        return str(error)
    if parts.scheme not in ("http", "https"):
        return "only http:// and https:// URLs can be mounted"
    if not parts.hostname:
        return "no host name"
    return None


# http(s)://HOST[:PORT]PATH[?QUERY][#FRAGMENT] in printable ASCII, without user info, IPv6 brackets or
# backslashes in the host: what urlsplit makes of such a URL is plain to see, and this costs a fifth of it.
_SIMPLE_URL = re.compile(r"(https?)://([^/?#@\[\]\\\s]+)(/[^?#\s]*)?(?:\?([^#\s]*))?(?:#(\S*))?\Z", re.ASCII)


def split_simple_url(url: str) -> SplitResult | None:
    """``urlsplit(url)`` for a URL of the plainest form (tests/test_config.py checks it is the same), or None
    for any other: urlsplit was most of the time a 100,000-line list took to parse."""
    if not (url.isascii() and url.isprintable()):
        return None  # urlsplit strips control characters and checks non-ASCII hosts
    match = _SIMPLE_URL.match(url)
    if match is None:
        return None
    scheme, netloc, path, query, fragment = match.groups()
    return SplitResult(scheme, netloc, path or "", query or "", fragment or "")


def name_from_url(url: str) -> tuple[PurePosixPath | None, str | None]:
    """The file name a bare URL gets (its last path segment, percent-decoded, made safe), or the problem."""
    return _name_from_parts(url, urlsplit(url))


def _name_from_parts(url: str, parts: SplitResult) -> tuple[PurePosixPath | None, str | None]:
    segment = unquote(parts.path.rstrip("/").rpartition("/")[2])
    name = segment.replace("/", "_").replace("\0", "_").strip()
    if name in ("", ".", ".."):
        return None, f"cannot name a file after {url!r}; write a path before the URL, e.g. 'data.bin {url}'"
    return _safe_path(name)


def _safe_path(text: str) -> tuple[PurePosixPath | None, str | None]:
    if text.startswith("/"):
        return None, f"path {text!r} is absolute; paths are relative to the mountpoint"
    parts = text.split("/")
    if _UNSAFE_COMPONENTS.intersection(parts):
        return None, f"path {text!r} is unsafe: no empty, '.' or '..' components allowed"
    if "\0" in text:
        return None, f"path {text!r} contains a NUL byte"
    if len(text) > _MAX_NAME_BYTES // 4 and any(len(part.encode()) > _MAX_NAME_BYTES for part in parts):
        return None, f"path {text!r} has a component longer than {_MAX_NAME_BYTES} bytes"
    return PurePosixPath(text), None


def _apply_option(draft: _Draft, text: str, environ: Mapping[str, str], where: str) -> str | None:
    key, sep, value = text.partition("=")
    key, value = key.strip(), value.strip()
    if not sep:
        return f"expected 'option = value' under the entry, got {text!r}"
    if key in _COMMAND_OPTIONS:
        # Not expanded here: the shell expands $NAME itself, at each run, and a secret stays out of `ps`.
        return _set_command(draft, key, value, where)
    value, problem = _expand(value, environ)
    if problem:
        return problem
    if key == "header":
        header, problem = parse_header(value)
        if header is None:
            return f"expected 'header = Name: value', got {text!r}" if problem == _NOT_A_HEADER else problem
        draft.headers.append(header)
        return None
    if key == "size":
        if not value.isdigit():
            return f"size must be a whole number of bytes, got {value!r}"
        draft.expected_size = int(value)
        return None
    return f"unknown option {key!r}; known options: header, header-command, size, url-command"


_COMMAND_OPTIONS = ("header-command", "url-command")
_NOT_A_HEADER = "expected 'Name: value'"


def _set_command(draft: _Draft, key: str, value: str, where: str) -> str | None:
    if not value:
        return f"{key} needs a shell command, e.g. '{key} = cat /run/secrets/token'"
    attribute = key.replace("-", "_")
    if getattr(draft, attribute) is not None:
        return f"{key} given twice for '{draft.path}'"
    setattr(draft, attribute, Command(value, where))
    return None


def parse_header(text: str) -> tuple[tuple[str, str] | None, str | None]:
    """``Name: value`` as a header rangefs may send (a header option, or a header-command's output)."""
    name, colon, value = text.partition(":")
    name, value = name.strip(), value.strip()
    if not colon or not _HEADER_NAME.match(name):
        return None, _NOT_A_HEADER
    if name.lower() in RESERVED_HEADERS:
        return None, f"header {name!r} is set by rangefs itself and cannot be configured"
    if "\r" in value or "\n" in value:
        return None, f"header {name!r} value contains a line break"
    return (name, value), None


def _expand(value: str, environ: Mapping[str, str]) -> tuple[str, str | None]:
    missing = [name for name in _ENV_REFERENCE.findall(value) if name not in environ]
    if missing:
        return value, f"environment variable {missing[0]} is not set (used as ${{{missing[0]}}})"
    return _ENV_REFERENCE.sub(lambda match: environ[match.group(1)], value), None


def _layout_problems(drafts: list[_Draft], filename: str) -> list[str]:
    """Duplicate paths, and a path that is both a file and a directory."""
    problems = []
    files: dict[PurePosixPath, int] = {}
    for draft in drafts:
        if draft.path in files:
            problems.append(
                f"{filename}:{draft.line}: duplicate path '{draft.path}' (first used on line {files[draft.path]});"
                " write a different path before the URL"
            )
        else:
            files[draft.path] = draft.line
    names = {str(path): line for path, line in files.items()}
    for draft in drafts:
        text = str(draft.path)
        # Parents by string: PurePosixPath.parents cost most of a 100,000-line list's parse.
        for cut in (index for index, char in enumerate(text) if char == "/"):
            if text[:cut] in names:
                parent = PurePosixPath(text[:cut])
                problems.append(
                    f"{filename}:{draft.line}: '{draft.path}' needs '{parent}' to be a directory,"
                    f" but line {files[parent]} makes it a file"
                )
    return problems
