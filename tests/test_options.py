"""Mount options come from MountSettings' declarations: parsing, defaults, and the child's argv round trip."""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

import certifi
import pytest
from hypothesis import given
from hypothesis import strategies as st

from rangefs.cli import build_parser
from rangefs.config import MountSettings, options
from rangefs.config.settings import KiB, format_size, parse_size
from rangefs.errors import UsageError


def _parse(*argv: str) -> MountSettings:
    parser = argparse.ArgumentParser()
    options.add_settings_arguments(parser)
    return options.settings_from_arguments(parser.parse_args(argv))


def test_no_options_give_the_dataclass_defaults() -> None:
    assert _parse() == MountSettings()


def test_every_declared_option_is_on_the_mount_command_line() -> None:
    mount_help = build_parser()._subparsers._group_actions[0].choices["mount"].format_help()  # type: ignore[union-attr]
    declared = [f for f in dataclasses.fields(MountSettings) if "option" in f.metadata]
    assert len(declared) >= 15
    for setting in declared:
        spelled = setting.metadata["option"].name or setting.name.replace("_", "-")
        assert f"--{spelled}" in mount_help


def test_zero_means_none_for_optional_sizes() -> None:
    settings = _parse("--cache-size", "0", "--kernel-readahead", "0")
    assert settings.cache_size is None
    assert settings.kernel_readahead is None


def test_flags_set_the_opposite_of_their_default() -> None:
    settings = _parse("--http2", "--no-format-prefetch")
    assert settings.http2 is True
    assert settings.format_prefetch is False


def test_fuse_option_groups_are_merged() -> None:
    assert _parse("-o", "allow_other", "-o", "uid=1,gid=2").fuse_options == {"allow_other", "uid=1", "gid=2"}


def test_invalid_values_are_refused_with_the_option_name() -> None:
    with pytest.raises(UsageError, match="--block-size"):
        _parse("--block-size", "5000")
    with pytest.raises(UsageError, match="--connections"):
        _parse("--connections", "0")


@given(st.integers(min_value=0, max_value=2**50))
def test_format_size_reads_back(size: int) -> None:
    assert parse_size(format_size(size)) == size


_settings = st.builds(
    MountSettings,
    cache_dir=st.sampled_from([Path("/tmp/a"), Path("/var/cache/rangefs x")]),
    block_size=st.integers(1, 16 * 1024).map(lambda n: n * 4 * KiB),
    cache_size=st.none() | st.integers(1, 2**40),
    timeout=st.floats(0.1, 1000, allow_nan=False),
    connect_timeout=st.floats(0.1, 100),
    read_timeout=st.floats(0.1, 100),
    ca_bundle=st.none() | st.just(Path(certifi.where())),
    http2=st.booleans(),
    connections=st.integers(1, 64),
    max_readahead=st.integers(1, 2**30),
    max_inflight=st.integers(64 * 1024 * KiB, 2**31),
    format_prefetch=st.booleans(),
    metadata_ttl=st.floats(0, 10**6),
    revalidate_after=st.floats(0, 10**6),
    kernel_readahead=st.none() | st.integers(1, 2**24),
    fuse_options=st.frozensets(st.sampled_from(["allow_other", "uid=1000", "gid=1000", "default_permissions"])),
)


@given(_settings)
def test_a_background_mount_child_gets_the_same_settings(settings: MountSettings) -> None:
    """settings -> argv -> settings is the identity: nothing given to `rangefs mount` is lost in the child."""
    assert _parse(*options.settings_argv(settings)) == settings


def test_the_readme_table_lists_every_option_with_its_default() -> None:
    readme = (Path(__file__).parent.parent / "README.md").read_text()
    rows = {line.split("`")[1].split()[0]: line for line in readme.splitlines() if line.startswith("| `--")}
    for setting in dataclasses.fields(MountSettings):
        spec = setting.metadata.get("option")
        if spec is None:
            continue
        name = "--" + (spec.name or setting.name.replace("_", "-"))
        assert name in rows, f"README's option table lacks {name}"
        default = getattr(MountSettings(), setting.name)
        if not spec.flag and default is not None and spec.default_text is None:
            assert f"default `{spec.show(default)}`" in rows[name], rows[name]


def test_a_ca_bundle_that_cannot_be_used_is_refused_at_once(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="no such file"):
        _parse("--ca-bundle", str(tmp_path / "missing.pem"))
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a certificate\n")
    with pytest.raises(UsageError, match="cannot be used as a PEM CA bundle"):
        _parse("--ca-bundle", str(garbage))
