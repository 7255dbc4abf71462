"""A network namespace with a kernel-level round-trip time, for origins in tests and benchmarks.

A thin wrapper over ``../shared/netem/netns.sh`` (see its header): ``namespace()`` creates the namespace, yields
the address inside it, and always takes it down again. A server runs inside with ``exec_argv(name, argv)``;
clients on the host connect to the yielded address, so the kernel's own TCP (handshake, slow start, the window
after idle) runs end to end over the delayed link. A user-space delaying proxy would hide all of that.

``isolated()`` is a namespace with nothing but loopback and a resolv.conf of its own, for tests whose DNS must
never reach a real resolver (see tests/fakedns.py).

The script is found beside the repository (``<repo>/../shared/netem/netns.sh``; for a linked git worktree, beside
the main checkout), or wherever the environment variable ``RANGEFS_NETNS_SH`` points.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

ENV_SCRIPT = "RANGEFS_NETNS_SH"
# netns.sh's addresses are 10.77.INDEX.1 (host side) and 10.77.INDEX.2 (inside); INDEX also picks the NFQUEUE
# number (100 + INDEX), so every live namespace needs its own.
_ADDRESS = re.compile(r"\b10\.77\.(\d+)\.\d+/")
_COMMAND_TIMEOUT = 60.0
# apt packages the script needs, by the command each provides.
REQUIREMENTS = {"ip": "iproute2", "iptables": "iptables", "cc": "gcc"}


def script() -> Path:
    """Where netns.sh is: ``$RANGEFS_NETNS_SH``, else ``../shared/netem/netns.sh`` from the repository root, or
    from the main checkout's root when this is a linked git worktree (which lives elsewhere)."""
    override = os.environ.get(ENV_SCRIPT)
    if override:
        return Path(override)
    relative = Path("..", "shared", "netem", "netns.sh")
    root = Path(__file__).resolve().parent.parent
    candidate = (root / relative).resolve()
    if candidate.exists():
        return candidate
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        common = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "--path-format=absolute", "--git-common-dir"],
            capture_output=True, text=True, timeout=10, check=True,
        ).stdout.strip()  # fmt: skip
        return (Path(common).parent / relative).resolve()
    return candidate


def skip_reason() -> str | None:
    """Why namespaces cannot be made here, or None."""
    if os.geteuid() != 0:
        return "network namespaces need root"
    if not script().is_file():
        return f"{script()} is missing (set {ENV_SCRIPT})"
    missing = [f"{command} (apt {package})" for command, package in REQUIREMENTS.items() if not shutil.which(command)]
    if missing:
        return "missing " + ", ".join(missing)
    if not Path("/usr/include/libnetfilter_queue/libnetfilter_queue.h").exists():
        return "missing libnetfilter-queue-dev (apt)"
    return None


def free_index(start: int = 200) -> int:
    """An INDEX that no address on this host uses yet (so neither the subnet nor the queue is taken)."""
    shown = subprocess.run(["ip", "-o", "-4", "addr", "show"], capture_output=True, text=True, check=True, timeout=10)
    taken = {int(found) for found in _ADDRESS.findall(shown.stdout)}
    for index in range(start, 255):
        if index not in taken:
            return index
    raise RuntimeError("no free 10.77.x.0/30 subnet left")


def exec_argv(name: str, argv: list[str]) -> list[str]:
    """``argv`` run inside namespace ``name``; ``ip netns exec`` execs it, so the PID is the program's own."""
    return ["ip", "netns", "exec", name, *argv]


def _run(*args: str) -> str:
    # A session of its own: a Ctrl-C on the terminal must not kill the script half-way, nor the netdelay
    # process it leaves running (packets would then pass undelayed, and the figures would be wrong).
    done = subprocess.run(
        ["bash", str(script()), *args],
        capture_output=True, text=True, timeout=_COMMAND_TIMEOUT, start_new_session=True, check=False,
    )  # fmt: skip
    if done.returncode != 0:
        raise RuntimeError(f"netns.sh {' '.join(args)} failed ({done.returncode}): {done.stderr.strip()[-300:]}")
    return done.stdout.strip()


def down(name: str) -> None:
    """Take namespace ``name`` down (its delayer, veth pair and files); SIGINT is ignored meanwhile, so a second
    Ctrl-C cannot leave it half removed."""
    main = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN) if main else None
    try:
        _run("down", name)
    finally:
        if main:
            signal.signal(signal.SIGINT, previous)


@contextmanager
def namespace(name: str, rtt_ms: float, index: int | None = None) -> Iterator[str]:
    """Namespace ``name`` with ``rtt_ms`` of round-trip time; yields the address inside it (10.77.INDEX.2).
    It is taken down however the block exits (also when bringing it up failed half-way)."""
    if index is None:
        index = free_index()
    try:
        address = _run("up", name, str(round(rtt_ms)), str(index)).splitlines()[-1]
        yield address
    finally:
        down(name)


def isolated_skip_reason() -> str | None:
    """Why ``isolated`` namespaces cannot be made here, or None (they need only root and iproute2)."""
    if os.geteuid() != 0:
        return "network namespaces need root"
    return None if shutil.which("ip") else "missing ip (apt iproute2)"


@contextmanager
def isolated(name: str, resolv_conf: str) -> Iterator[str]:
    """Namespace ``name`` with nothing but its own loopback (no packet can leave it), whose programs, run with
    ``exec_argv``, read ``resolv_conf`` as /etc/resolv.conf (``ip netns exec`` bind-mounts
    /etc/netns/NAME/resolv.conf over it, in a mount namespace of their own). Taken down however the block exits."""
    config = Path("/etc/netns") / name
    try:
        subprocess.run(["ip", "netns", "add", name], check=True, capture_output=True, timeout=_COMMAND_TIMEOUT)
        subprocess.run(exec_argv(name, ["ip", "link", "set", "lo", "up"]), check=True, timeout=_COMMAND_TIMEOUT)
        config.mkdir(parents=True, exist_ok=True)
        (config / "resolv.conf").write_text(resolv_conf)
        yield name
    finally:
        shutil.rmtree(config, ignore_errors=True)
        subprocess.run(["ip", "netns", "del", name], check=False, capture_output=True, timeout=_COMMAND_TIMEOUT)
