"""Settings on the command line: argparse options built from MountSettings' declarations, the settings read
back from parsed arguments, and the argv that reproduces given settings (a background mount's child).

Options left out are left out of the parsed namespace too (argparse.SUPPRESS), so only what the user gave
overrides MountSettings' own defaults: the dataclass stays the one place a default is written.
"""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Iterable
from typing import Any

from rangefs.config.settings import MountSettings, Option

# FUSE options are repeatable groups (-o allow_other -o uid=1000,gid=1000), not a value of their own option.
_FUSE_OPTIONS = "fuse_options"


def _options() -> list[tuple[dataclasses.Field[Any], Option]]:
    return [
        (setting, setting.metadata["option"])
        for setting in dataclasses.fields(MountSettings)
        if "option" in setting.metadata
    ]


def _flag_name(setting: dataclasses.Field[Any], spec: Option) -> str:
    return "--" + (spec.name or setting.name.replace("_", "-"))


def _default(setting: dataclasses.Field[Any]) -> Any:
    if setting.default_factory is not dataclasses.MISSING:
        return setting.default_factory()
    return setting.default


def add_settings_arguments(parser: argparse.ArgumentParser, only: Iterable[str] | None = None) -> None:
    """Add an option for every setting that has one (or for those named in ``only``), plus ``-o``."""
    wanted = set(only) if only is not None else None
    for setting, spec in _options():
        if wanted is not None and setting.name not in wanted:
            continue
        if spec.flag:
            parser.add_argument(
                _flag_name(setting, spec), dest=setting.name, action="store_const", const=not _default(setting),
                default=argparse.SUPPRESS, help=spec.help,
            )  # fmt: skip
            continue
        shown = spec.default_text if spec.default_text is not None else _shown_default(setting, spec)
        parser.add_argument(
            _flag_name(setting, spec),
            dest=setting.name,
            default=argparse.SUPPRESS,
            type=spec.parse,
            metavar=spec.metavar,
            help=f"{spec.help} (default: {shown})",
        )
    if wanted is None or _FUSE_OPTIONS in wanted:
        parser.add_argument(
            "-o", dest=_FUSE_OPTIONS, action="append", metavar="OPT[,OPT...]", help="FUSE options, e.g. -o allow_other"
        )


def _shown_default(setting: dataclasses.Field[Any], spec: Option) -> str:
    value = _default(setting)
    return "none" if value is None else spec.show(value)


def settings_from_arguments(args: argparse.Namespace) -> MountSettings:
    """MountSettings with what ``args`` give; options left out keep their defaults."""
    given: dict[str, Any] = {
        setting.name: getattr(args, setting.name) for setting, _ in _options() if hasattr(args, setting.name)
    }
    groups = getattr(args, _FUSE_OPTIONS, None)
    if groups:
        given[_FUSE_OPTIONS] = frozenset(option for group in groups for option in group.split(",") if option)
    return MountSettings(**given)


def settings_argv(settings: MountSettings) -> list[str]:
    """Options that make ``settings_from_arguments`` return ``settings`` again (those that differ from the
    defaults, and the cache directory, which a child must not resolve for another user or environment)."""
    defaults = MountSettings()
    argv: list[str] = []
    for setting, spec in _options():
        value = getattr(settings, setting.name)
        if value == getattr(defaults, setting.name) and setting.name != "cache_dir":
            continue
        if spec.flag:
            argv.append(_flag_name(setting, spec))
        else:
            argv += [_flag_name(setting, spec), spec.show(value)]
    if settings.fuse_options:
        argv += ["-o", ",".join(sorted(settings.fuse_options))]
    return argv
