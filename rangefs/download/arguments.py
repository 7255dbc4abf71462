"""The arguments of ``rangefs get`` (``command.py`` says what they become), apart so that defining them loads
nothing but the settings."""

from __future__ import annotations

import argparse

from rangefs.config import options

_SHARED_SETTINGS = (
    "cache_dir",
    "cache_size",
    "block_size",
    "connections",
    "timeout",
    "connect_timeout",
    "read_timeout",
    "ca_bundle",
    "http2",
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("urls", nargs="+", metavar="URL", help="what to download; a last '-' means stdout")
    parser.add_argument("-o", "--output", metavar="DIR|FILE|-", help="a directory, a file (one URL) or - for stdout")
    parser.add_argument("-j", "--jobs", type=int, default=4, help="files downloaded at once (default: 4)")
    parser.add_argument("--sha256", metavar="HEX", help="expected SHA-256 of the (one) file; a mismatch fails")
    parser.add_argument("--md5", metavar="HEX", help="expected MD5 of the (one) file; a mismatch fails")
    parser.add_argument("-f", "--force", action="store_true", help="replace output files that exist")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    parser.add_argument("-H", "--header", action="append", default=[], metavar="'NAME: VALUE'", help="request header")
    parser.add_argument(
        "--fill-cache",
        action="store_true",
        help="a file download also fills the disk cache (and shares fetches with mounts on it); slower",
    )
    # The mount's own options, with its defaults: a download shares the cache (keys, limit) with mounts.
    options.add_settings_arguments(parser, only=_SHARED_SETTINGS)
