"""The tools scenario: real programs (unzip, bsdtar, 7z, Python's zipfile, ffprobe and ffmpeg, sqlite3, tar) on
real files through a FUSE mount, and what each command costs at the origin.

A group is a file and the commands run on it one after the other in one mount (``unzip -p`` after
``unzip -l``, the ffmpeg seeks after ffprobe). Every group gets a fresh mount and a fresh cache directory,
then drop_caches; each command runs twice, cold and then warm. The same commands on the local file give the
expected output (compared by digest, with the file's path replaced) and a reference time. Every command runs
in a child process with a timeout.
"""

from __future__ import annotations

import contextlib
import hashlib
import random
import re
import shutil
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from benchlib import procs, tools
from benchlib.origin import Profile
from benchlib.results import CommandResult, CommandRun
from benchlib.scenarios import Bench, Case, MountFailed, mounted

# What benchmarks/makefiles.py writes (it imports these).
ZIP_MEMBERS = 3000
SQLITE_ROWS = 100_000
TAR_MEMBERS = 120
VIDEO_GROUPS = (("mp4-plain", "plain.mp4"), ("mp4-fast", "fast.mp4"))  # moov at the end; moov first

ZIP_MEMBER = "dir7/member-01207.dat"  # a stored member in the middle of the archive
SEEKS = (31, 95, 151)  # seconds into the 210-second videos
LOOKUPS = 20  # SQLite rows looked up by id
OFF = "--no-format-prefetch"
PREFETCH_COMMANDS = (("zip-unzip", "unzip -l"), ("mp4-plain", "ffprobe"))  # (group, command) compared on/off

Argv = Callable[[Path, Path], list[str]]  # (file, scratch directory) -> the command


@dataclass(frozen=True)
class Command:
    """One program run on the group's file; ``writes`` is a file it writes into the scratch directory;
    ``program`` is what must be installed, when the command is not run directly (a shell redirection)."""

    label: str
    argv: Argv
    writes: str | None = None
    program: str | None = None


@dataclass(frozen=True)
class Group:
    """A file and the commands run on it in one mount, in order."""

    key: str
    file_name: str
    commands: tuple[Command, ...]


@dataclass
class ToolsBench:
    """The tools scenario's state: the served files, their sizes and the local runs' outputs."""

    bench: Bench
    files: Path  # the served directory (www/tools)
    timeout: float
    groups: list[Group]
    sizes: dict[str, int] = field(default_factory=dict)
    expected: dict[tuple[str, str], str | None] = field(default_factory=dict)  # (group, command) -> digest

    def uri(self, group: Group) -> str:
        return f"/{self.files.name}/{group.file_name}"


# --- the commands ----------------------------------------------------------------------------------------


def _zipfile_listing(file: Path, _scratch: Path) -> list[str]:
    code = "import sys, zipfile; print('\\n'.join(zipfile.ZipFile(sys.argv[1]).namelist()))"
    return [sys.executable, "-c", code, str(file)]


def _unzip_member(file: Path, scratch: Path) -> list[str]:
    return ["sh", "-c", 'exec unzip -p "$1" "$2" > "$3"', "sh", str(file), ZIP_MEMBER, str(scratch / "member")]


def _ffmpeg_frame(seconds: int) -> Argv:
    """ffmpeg seeking to ``seconds`` and writing the frame there as a PNG."""

    def argv(file: Path, scratch: Path) -> list[str]:
        return ["ffmpeg", "-v", "error", "-nostdin", "-y", "-ss", str(seconds), "-i", str(file), "-frames:v", "1",
                str(scratch / "frame.png")]  # fmt: skip

    return argv


def _video_commands() -> tuple[Command, ...]:
    probe = Command("ffprobe", lambda file, _s: ["ffprobe", "-v", "error", "-show_format", str(file)])
    seeks = tuple(Command(f"ffmpeg -ss {at}", _ffmpeg_frame(at), writes="frame.png") for at in SEEKS)
    return (probe, *seeks)


def _sqlite_query(seed: int) -> str:
    ids = sorted(random.Random(seed).sample(range(SQLITE_ROWS), LOOKUPS))
    return f"SELECT count(*) FROM items WHERE id IN ({','.join(map(str, ids))})"


def make_groups(seed: int) -> list[Group]:
    """Every group of the scenario, in the order they run."""
    query = _sqlite_query(seed)
    return [
        Group(
            "zip-unzip",
            "archive.zip",
            (
                Command("unzip -l", lambda file, _s: ["unzip", "-l", str(file)]),
                Command(f"unzip -p {ZIP_MEMBER}", _unzip_member, writes="member", program="unzip"),
            ),
        ),
        Group("zip-bsdtar", "archive.zip", (Command("bsdtar -tf", lambda file, _s: ["bsdtar", "-tf", str(file)]),)),
        Group("zip-7z", "archive.zip", (Command("7z l", lambda file, _s: ["7z", "l", str(file)]),)),
        Group("zip-python", "archive.zip", (Command("python zipfile namelist", _zipfile_listing),)),
        *(Group(key, name, _video_commands()) for key, name in VIDEO_GROUPS),
        Group(
            "sqlite",
            "items.sqlite",
            (
                Command(
                    f"sqlite3 immutable, {LOOKUPS} ids",
                    lambda file, _s: ["sqlite3", "-batch", "-init", "/dev/null", f"file:{file}?immutable=1", query],
                ),
            ),
        ),
        Group("tar", "files.tar", (Command("tar -tf", lambda file, _s: ["tar", "-tf", str(file)]),)),
    ]


def prefetch_groups(groups: list[Group]) -> list[Group]:
    """The one-command groups compared with format-aware prefetch on and off."""
    wanted = dict(PREFETCH_COMMANDS)
    return [
        Group(f"{group.key}-prefetch", group.file_name, (command,))
        for group in groups
        for command in group.commands
        if wanted.get(group.key) == command.label
    ]


# --- the files -------------------------------------------------------------------------------------------


def make_files(tb: ToolsBench) -> None:
    """benchmarks/makefiles.py into the served directory; groups whose file could not be made are dropped."""
    script = Path(__file__).resolve().parent.parent / "makefiles.py"
    argv = [sys.executable, str(script), str(tb.files)]
    if shutil.which("ffmpeg") is None:
        argv.append("--no-video")
        tb.bench.note("tools: ffmpeg is not installed (benchmarks/setup.sh): no MP4 files, no ffprobe/ffmpeg rows")
    done = procs.run(argv, timeout=600)
    if not done.ok:
        raise RuntimeError(f"making the tools scenario's files failed: {done.problem()}")
    tb.sizes = {path.name: path.stat().st_size for path in tb.files.iterdir() if path.is_file()}
    tb.groups = [group for group in tb.groups if group.file_name in tb.sizes]


# --- running commands ------------------------------------------------------------------------------------


def _digest(file: Path, stdout: str, written: Path | None) -> str:
    """What the command printed, with the file's path replaced, and the bytes of the file it wrote."""
    digest = hashlib.sha256(stdout.replace(str(file), "FILE").encode())
    if written is not None:
        try:
            digest.update(written.read_bytes())
            written.unlink()
        except OSError:
            digest.update(b"(no output file)")
    return digest.hexdigest()[:16]


def run_command(tb: ToolsBench, command: Command, file: Path, scratch: Path, uri: str | None) -> CommandRun:
    """Run ``command`` on ``file`` and count what nginx sent for ``uri`` meanwhile (None: a local file)."""
    argv = command.argv(file, scratch)
    program = command.program or argv[0]
    if shutil.which(program) is None:
        return CommandRun(status=f"{program} not installed")
    mark = tb.bench.access.mark() if uri else 0
    done = procs.run(argv, tb.timeout)
    traffic = tb.bench.access.traffic_since(mark, uri) if uri else None
    if not done.ok:
        return CommandRun(status=done.problem(), seconds=done.seconds, traffic=traffic)
    written = scratch / command.writes if command.writes else None
    return CommandRun(seconds=done.seconds, traffic=traffic, output=_digest(file, done.stdout, written))


def _check(tb: ToolsBench, group: Group, row: CommandResult) -> None:
    """Mark a run whose output differs from the same command's on the local file."""
    expected = tb.expected.get((group.key, row.command))
    for run in (row.cold, row.warm):
        if run is not None and run.ok and expected is not None and run.output != expected:
            run.status = "WRONG OUTPUT"
            where = f"{row.filesystem} ({row.profile})"
            tb.bench.note(f"tools: `{row.command}` on {row.file_name} through {where}: output differs from local")


def run_group(
    tb: ToolsBench, group: Group, file: Path, scratch: Path, where: tuple[str, str], *, warm: bool
) -> list[CommandResult]:
    """Every command of ``group`` on ``file`` in order, each cold and (when ``warm``) again right away.
    ``where`` is (profile, filesystem); the origin's requests are counted unless the profile is "-" (local)."""
    profile, filesystem = where
    uri = None if profile == "-" else tb.uri(group)
    rows = []
    for command in group.commands:
        row = CommandResult(profile, filesystem, group.file_name, tb.sizes[group.file_name], command.label)
        row.cold = run_command(tb, command, file, scratch, uri)
        if warm:
            row.warm = run_command(tb, command, file, scratch, uri)
        _check(tb, group, row)
        rows.append(row)
    return rows


@contextlib.contextmanager
def _scratch(tb: ToolsBench, label: str) -> Iterator[Path]:
    """A directory for what the commands write (ffmpeg's frame, unzip's member), removed afterwards."""
    path = tb.bench.work / "scratch" / label
    path.mkdir(parents=True, exist_ok=True)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def local_runs(tb: ToolsBench) -> list[CommandResult]:
    """Every group on the local file after drop_caches: the reference outputs and times."""
    rows = []
    for group in tb.groups:
        tb.bench.drop_caches()
        with _scratch(tb, f"local-{group.key}") as scratch:
            found = run_group(tb, group, tb.files / group.file_name, scratch, ("-", "local"), warm=True)
        for row in found:
            tb.expected[(group.key, row.command)] = row.cold.output if row.cold.ok else None
        rows += found
    return rows


def mounted_group(
    tb: ToolsBench, case: Case, group: Group, *, extra: list[str], label: str, warm: bool = True
) -> list[CommandResult]:
    """``group`` on a fresh mount of ``case.tool`` with a fresh cache directory, after drop_caches."""
    filesystem = f"{case.tool} {OFF}" if OFF in extra else case.tool
    cache = tb.bench.work / "cache" / label
    spec = tools.mount_spec(
        case.tool,
        base_url=f"{case.base_url}{tb.files.name}/",
        file_name=group.file_name,
        mountpoint=tb.bench.work / "mnt" / label,
        cache_dir=cache,
        logs=tb.bench.logs,
        label=label,
        extra_args=extra,
    )
    try:
        with mounted(tb.bench, spec, tb.sizes[group.file_name]), _scratch(tb, label) as scratch:
            tb.bench.drop_caches()
            return run_group(tb, group, spec.file_path, scratch, (case.profile.name, filesystem), warm=warm)
    finally:
        shutil.rmtree(cache, ignore_errors=True)


def _failed(tb: ToolsBench, profile: str, filesystem: str, group: Group, status: str) -> list[CommandResult]:
    size = tb.sizes[group.file_name]
    return [
        CommandResult(profile, filesystem, group.file_name, size, command.label, cold=CommandRun(status=status))
        for command in group.commands
    ]


def filesystem_runs(tb: ToolsBench, case: Case, extra: list[str], log: Callable[[str], None]) -> list[CommandResult]:
    """Every group through one filesystem under one profile; after a failed mount the rest is skipped."""
    rows: list[CommandResult] = []
    broken: str | None = None
    for group in tb.groups:
        if broken is not None:
            rows += _failed(tb, case.profile.name, case.tool, group, "skipped: an earlier mount failed")
            continue
        try:
            found = mounted_group(tb, case, group, extra=extra, label=f"tools-{case.label}-{group.key}")
        except MountFailed as error:
            broken = str(error)
            found = _failed(tb, case.profile.name, case.tool, group, broken)
        except Exception as error:  # one tool's failure is a row in the table, not the end of the run
            tb.bench.note(f"tools: {case.label} {group.key} broke: {type(error).__name__}: {error}")
            found = _failed(tb, case.profile.name, case.tool, group, f"error: {type(error).__name__}")
        log(f"{case.profile.name} {case.tool} {group.file_name}: " + "; ".join(_summary(row) for row in found))
        rows += found
    return rows


def _summary(row: CommandResult) -> str:
    cold = row.cold
    text = f"{row.command}: {cold.status}"
    if cold.seconds is not None:
        text += f" {cold.seconds:.2f} s"
    if cold.traffic is not None:
        text += f" {cold.traffic.requests} req {cold.traffic.body_bytes / 1024:.0f} KiB"
    return text


def prefetch_runs(
    tb: ToolsBench, profile: Profile, base_url: str, repeats: int, extra: list[str]
) -> list[CommandResult]:
    """The first open of a zip and of an MP4 with format-aware prefetch on and off, ``repeats`` times each, in
    alternating order; each on a fresh mount and cache after drop_caches, cold only."""
    rows: list[CommandResult] = []
    case = Case(profile, "rangefs", base_url)
    for repeat in range(repeats):
        for off in (False, True) if repeat % 2 == 0 else (True, False):
            args = [*extra, OFF] if off else [arg for arg in extra if arg != OFF]
            for group in prefetch_groups(tb.groups):
                label = f"prefetch-{profile.name}-{group.key}-{'off' if off else 'on'}-{repeat}"
                try:
                    rows += mounted_group(tb, case, group, extra=args, label=label, warm=False)
                except Exception as error:  # a row saying so, not the end of the run
                    tb.bench.note(f"tools: {label} broke: {type(error).__name__}: {error}")
                    filesystem = f"rangefs {OFF}" if off else "rangefs"
                    rows += _failed(tb, profile.name, filesystem, group, f"error: {type(error).__name__}")
    return rows


# --- the whole scenario ----------------------------------------------------------------------------------


def run_scenario(
    tb: ToolsBench,
    urls: dict[Profile, str],
    filesystems: list[str],
    prefetch_repeats: int,
    log: Callable[[str], None],
) -> tuple[list[CommandResult], list[CommandResult]]:
    """The local reference, then every group through every filesystem under every profile, then prefetch on
    and off under the wan profile; returns (command rows, prefetch rows)."""
    log("tools: the commands on the local file")
    rows = local_runs(tb)
    for profile, base_url in urls.items():
        for tool in filesystems:
            if tools.executable(tool) is None:
                for group in tb.groups:
                    rows += _failed(tb, profile.name, tool, group, "not installed (benchmarks/setup.sh)")
                continue
            log(f"tools {profile.name}: {tool}")
            extra = tb.bench.rangefs_args if tool == "rangefs" else []
            rows += filesystem_runs(tb, Case(profile, tool, base_url), extra, log)
    wan = [profile for profile in urls if profile.name == "wan"]
    if not wan or "rangefs" not in filesystems or prefetch_repeats < 1:
        tb.bench.note("tools: format-aware prefetch on/off was not measured (it needs rangefs and the wan profile)")
        return rows, []
    log(f"tools wan: format-aware prefetch on and off, {prefetch_repeats} times each")
    prefetch = prefetch_runs(tb, wan[0], urls[wan[0]], prefetch_repeats, tb.bench.rangefs_args)
    return rows, prefetch


_VERSION = re.compile(r"\d+\.\d+(?:\.\d+)?")
VERSION_COMMANDS = {
    "unzip": ["unzip", "-v"],
    "bsdtar": ["bsdtar", "--version"],
    "7z": ["7z", "i"],
    "ffmpeg": ["ffmpeg", "-version"],
    "sqlite3": ["sqlite3", "--version"],
    "tar": ["tar", "--version"],
}


def program_versions() -> dict[str, str]:
    """The version of each program the scenario runs: the first version number it prints."""
    found = {}
    for name, argv in VERSION_COMMANDS.items():
        if shutil.which(argv[0]) is None:
            found[name] = "not installed"
            continue
        done = procs.run(argv, timeout=10)
        match = _VERSION.search(done.stdout + done.stderr)
        found[name] = match.group(0) if match else "unknown"
    return found
