"""mount(8)-style ``-o`` options, sorted into rangefs's own, mount(8)'s and FUSE's.

An fstab line has one comma-separated option list for everyone; mount(8) hands it to the helper
(contrib/mount.fuse.rangefs), which passes it on as ``rangefs mount -o LIST``. Each item is one of:

- a rangefs option, named as its long flag with ``_`` for ``-``: ``cache_dir=/srv/cache`` is
  ``--cache-dir=/srv/cache``, a bare flag ``http2`` is ``--http2``. The names come from the argument parser,
  so every new option works in fstab without an edit here;
- an option mount(8) itself acts on (``ro``, ``nofail``, ``_netdev``, ``x-systemd.*``, ...): dropped;
- anything else, a FUSE mount option (``allow_other``, ``noatime``, ...), passed to libfuse.
"""

from __future__ import annotations

import argparse
from collections.abc import Iterable, Mapping

from rangefs.errors import UsageError

# Options for mount(8) (mount(8) "FILESYSTEM-INDEPENDENT MOUNT OPTIONS" that are not kernel flags): the
# mount is read-only whatever they say, and mount(8) has done its part by the time rangefs runs.
MOUNT_COMMAND_OPTIONS = frozenset(
    {"rw", "ro", "auto", "noauto", "user", "nouser", "users", "owner", "group", "nofail", "_netdev", "defaults"}
)
_MOUNT_COMMAND_PREFIXES = ("x-", "comment=")
# Parser options that make no sense as mount options: --foreground would make mount(8) wait forever.
_NOT_MOUNT_OPTIONS = frozenset({"help", "foreground"})


def rangefs_options(parser: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    """The parser's long options by their mount-option name (``--cache-dir`` as ``cache_dir``)."""
    options: dict[str, argparse.Action] = {}
    # argparse offers no public view of a parser's options; _actions is stable since Python 3.2.
    for action in parser._actions:
        if action.help == argparse.SUPPRESS:
            continue  # internal (--ready-fd)
        for flag in action.option_strings:
            name = flag.removeprefix("--").replace("-", "_")
            if flag.startswith("--") and name not in _NOT_MOUNT_OPTIONS:
                options[name] = action
    return options


def split_options(groups: Iterable[str], options: Mapping[str, argparse.Action]) -> tuple[list[str], list[str]]:
    """(arguments for rangefs, FUSE options) from ``-o`` groups such as ``ro,cache_dir=/x,allow_other``."""
    arguments: list[str] = []
    fuse_options: list[str] = []
    for item in (item for group in groups for item in group.split(",") if item):
        name, has_value, value = item.partition("=")
        action = options.get(name)
        if action is None:
            if item not in MOUNT_COMMAND_OPTIONS and not item.startswith(_MOUNT_COMMAND_PREFIXES):
                fuse_options.append(item)
            continue
        flag = f"--{name.replace('_', '-')}"
        takes_value = action.nargs != 0
        if takes_value and not has_value:
            raise UsageError(f"mount option {name} needs a value: {name}=...")
        if has_value and not takes_value:
            raise UsageError(f"mount option {name} takes no value: write just {name}")
        arguments.append(f"{flag}={value}" if takes_value else flag)
    return arguments, fuse_options
