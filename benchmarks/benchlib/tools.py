"""The tools compared: how to run each one, and whether it is installed."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

_VERSION = re.compile(r"\d+\.\d+(?:\.\d+)?(?:-\w+)?")

DOWNLOADERS = ("curl", "aria2c")
FUSE_TOOLS = ("rangefs", "rclone", "httpdirfs")
ALL_TOOLS = ("curl", "aria2c", "rangefs", "rclone", "httpdirfs")  # curl first: the others are compared with it

# The Debian package that brings each command (benchmarks/setup.sh installs them).
PACKAGES = {
    "nginx": "nginx-light",
    "curl": "curl",
    "aria2c": "aria2",
    "rclone": "rclone",
    "httpdirfs": "httpdirfs",
    "fusermount3": "fuse3",
    "dd": "coreutils",
    "cmp": "diffutils",
}


def rangefs_command() -> Path:
    """The rangefs of the virtual environment running this script."""
    return Path(sys.executable).parent / "rangefs"


def rangefs_env(source: Path | None) -> dict[str, str] | None:
    """The environment in which the venv's rangefs command imports rangefs from the checkout ``source`` (its
    directory first on PYTHONPATH, ahead of the editable install) instead of the installed one; None: as is."""
    if source is None:
        return None
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(source), *([env["PYTHONPATH"]] if env.get("PYTHONPATH") else [])])
    return env


def executable(tool: str) -> str | None:
    """Path of a tool's command, or None when it is not installed."""
    if tool == "rangefs":
        command = rangefs_command()
        return str(command) if command.exists() else None
    return shutil.which(tool)


def download_argv(tool: str, url: str, scratch: Path, ca_bundle: Path | None = None) -> list[str]:
    """The command that downloads ``url`` with a plain downloader (its output goes nowhere or to scratch),
    trusting the CA ``ca_bundle`` (an HTTPS origin's) if given."""
    if tool == "curl":
        trust = ["--cacert", str(ca_bundle)] if ca_bundle else []
        return ["curl", "--silent", "--show-error", "--fail", *trust, "--output", "/dev/null", url]
    if tool == "aria2c":
        return [
            *(["aria2c", f"--ca-certificate={ca_bundle}"] if ca_bundle else ["aria2c"]),
            "-x8",
            "-s8",
            "-k1M",
            "--file-allocation=none",
            "--dir",
            str(scratch),
            "--allow-overwrite=true",
            "--auto-file-renaming=false",
            "--console-log-level=warn",
            "--summary-interval=0",
            "--download-result=hide",
            "--disable-ipv6=true",
            "--max-tries=1",
            url,
        ]
    raise ValueError(f"not a downloader: {tool}")


@dataclass
class MountSpec:
    """How to mount one FUSE tool in the foreground, as a child process whose PID we own."""

    tool: str
    argv: list[str]
    mountpoint: Path
    file_path: Path
    cache_dir: Path
    output: Path  # the child's stdout and stderr
    log_file: Path | None = None  # the tool's own log, when it has one
    pid_file: Path | None = None
    ready_text: str | None = None  # a log line that says the mount is fully set up
    env: dict[str, str] | None = None  # the daemon's environment (None: this process's)


def mount_spec(
    tool: str,
    *,
    base_url: str,
    file_name: str,
    mountpoint: Path,
    cache_dir: Path,
    logs: Path,
    label: str,
    extra_args: list[str],
    rangefs_source: Path | None = None,
    ca_bundle: Path | None = None,
) -> MountSpec:
    """The mount of ``base_url`` (a directory served with an index) for ``tool``; rangefs from the checkout
    ``rangefs_source`` if given. ``ca_bundle``: the CA an HTTPS origin's certificate is signed by, which each
    tool is told to trust (rangefs ``--ca-bundle``, rclone ``--ca-cert``, httpdirfs ``--cacert``): verified,
    not skipped, as a user would run them."""
    output = logs / f"{label}.out"
    if tool == "rangefs":
        trust = ["--ca-bundle", str(ca_bundle)] if ca_bundle else []
        return _rangefs_spec(
            base_url=base_url,
            file_name=file_name,
            mountpoint=mountpoint,
            cache_dir=cache_dir,
            logs=logs,
            label=label,
            extra_args=[*trust, *extra_args],
            source=rangefs_source,
        )
    if tool == "rclone":
        config = logs / "rclone.conf"
        config.touch()
        argv = ["rclone", "mount", ":http:", str(mountpoint), "--http-url", base_url, "--config", str(config)]
        argv += ["--vfs-cache-mode", "full", "--cache-dir", str(cache_dir), "--read-only", "--log-level", "NOTICE"]
        argv += ["--ca-cert", str(ca_bundle)] if ca_bundle else []
        return MountSpec(tool, argv + extra_args, mountpoint, mountpoint / file_name, cache_dir, output)
    if tool == "httpdirfs":
        # --no-range-check: httpdirfs 1.2.x's own check wrongly decides that nginx does not support ranges and
        # exits on the first read (httpdirfs issue #188); nginx does support them.
        argv = ["httpdirfs", "-f", "--no-range-check", "--cache", "--cache-location", str(cache_dir), *extra_args]
        argv += ["--cacert", str(ca_bundle)] if ca_bundle else []
        argv.append(base_url)
        return MountSpec(tool, [*argv, str(mountpoint)], mountpoint, mountpoint / file_name, cache_dir, output)
    raise ValueError(f"not a FUSE tool: {tool}")


def _rangefs_spec(
    *,
    base_url: str,
    file_name: str,
    mountpoint: Path,
    cache_dir: Path,
    logs: Path,
    label: str,
    extra_args: list[str],
    source: Path | None,
) -> MountSpec:
    urls = logs / f"{label}.urls"
    urls.write_text(f"{base_url}{file_name}\n")
    log_file = logs / f"{label}.log"
    pid_file = logs / f"{label}.pid"
    argv = [str(rangefs_command()), "mount", str(urls), str(mountpoint), "--foreground"]
    argv += ["--cache-dir", str(cache_dir), "--log-file", str(log_file), "--pid-file", str(pid_file)]
    # Logging at info level, unless the extra arguments choose a level (rangefs's --log-level beats -v).
    chosen = any(arg == "--log-level" or arg.startswith(("-v", "--verbose", "--log-level=")) for arg in extra_args)
    argv += [*([] if chosen else ["--log-level", "info"]), *extra_args]
    return MountSpec(
        "rangefs",
        argv,
        mountpoint,
        mountpoint / file_name,
        cache_dir,
        logs / f"{label}.out",
        log_file=log_file,
        pid_file=pid_file,
        ready_text=f"on {mountpoint} (kernel:",
        env=rangefs_env(source),
    )


def version(tool: str, env: dict[str, str] | None = None) -> str:
    """The installed version of a tool (the first version number it prints), or why there is none."""
    command = executable(tool)
    if command is None:
        return "not installed"
    flag = {"rclone": "version", "nginx": "-v"}.get(tool, "--version")
    try:
        done = subprocess.run([command, flag], capture_output=True, text=True, timeout=10, check=False, env=env)
    except (OSError, subprocess.TimeoutExpired) as error:
        return f"unknown ({error})"
    name = "aria2" if tool == "aria2c" else tool
    for line in (done.stdout + "\n" + done.stderr).splitlines():
        found = _VERSION.search(line)
        if name.lower() in line.lower() and found:
            return found.group(0)
    return "unknown"
