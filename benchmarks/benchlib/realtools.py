"""The tools scenario: real programs (unzip, ffprobe, ffmpeg, mpv, sqlite3, ...) on real files through a FUSE
mount, and what each command costs at the origin.

Every command runs cold: on a fresh mount with a fresh cache directory, after drop_caches, and then once more
in the same mount (warm). The same command on the local file after drop_caches is the floor and gives the
expected output (compared by digest, with the file's path replaced). Every command runs in a child process
with a timeout.
"""

from __future__ import annotations

import contextlib
import hashlib
import random
import re
import shutil
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from benchlib import procs, tools
from benchlib.origin import AccessLog, Origin, started_at, summarize
from benchlib.results import CommandResult, CommandRun
from benchlib.scenarios import Bench, Case, MountFailed, mounted

# What benchmarks/makefiles.py writes (it imports these).
ZIP_MEMBERS = 3000
SQLITE_ROWS = 100_000
TAR_MEMBERS = 120
VIDEO_FILES = ("plain.mp4", "fast.mp4")  # made together by makefiles.py (moov at the end; moov first)

ZIP_MEMBER = "dir7/member-01207.dat"  # a stored member in the middle of the archive
SEEK_SECONDS = 120  # into the 210-second video
LOOKUPS = 20  # rows of the extra SQLite command
OFF = "--no-format-prefetch"
PREFETCH_COMMANDS = ("unzip-l", "ffprobe")  # compared with format-aware prefetch on and off

Argv = Callable[[Path, Path], list[str]]  # (file, scratch directory) -> the command


@dataclass(frozen=True)
class Command:
    """One program run on one file. ``key`` names it on the command line (``--commands``); ``writes`` is a file
    it writes into the scratch directory; ``program`` is what must be installed, when the command is not run
    directly (a shell redirection); ``default``: part of a run without ``--commands``."""

    key: str
    label: str
    file_name: str
    argv: Argv
    writes: str | None = None
    program: str | None = None
    default: bool = True


@dataclass
class ToolsBench:
    """The tools scenario's state: the served files, their sizes and the local runs' outputs."""

    bench: Bench
    files: Path  # the served directory (www/tools)
    timeout: float
    commands: list[Command]
    sizes: dict[str, int] = field(default_factory=dict)
    expected: dict[str, str | None] = field(default_factory=dict)  # command key -> digest of the local run

    def uri(self, command: Command) -> str:
        return f"/{self.files.name}/{command.file_name}"


# --- the commands ----------------------------------------------------------------------------------------


def _unzip_member(file: Path, scratch: Path) -> list[str]:
    return ["sh", "-c", 'exec unzip -p "$1" "$2" > "$3"', "sh", str(file), ZIP_MEMBER, str(scratch / "member")]


def _ffmpeg_frame(file: Path, scratch: Path) -> list[str]:
    return ["ffmpeg", "-v", "error", "-nostdin", "-y", "-ss", str(SEEK_SECONDS), "-i", str(file), "-frames:v", "1",
            str(scratch / "frame.png")]  # fmt: skip


def _mpv_frame(file: Path, scratch: Path) -> list[str]:
    """mpv as a user starts it, half way in, writing the first frame it shows as a PNG (no window, no audio)."""
    return ["mpv", "--no-config", "--really-quiet", "--no-audio", "--ao=null", "--vo=image", "--vo-image-format=png",
            f"--vo-image-outdir={scratch}", "--frames=1", "--start=50%", str(file)]  # fmt: skip


def _sqlite(query: str) -> Argv:
    def argv(file: Path, _scratch: Path) -> list[str]:
        return ["sqlite3", "-batch", "-init", "/dev/null", f"file:{file}?immutable=1", query]

    return argv


def _zipfile_listing(file: Path, _scratch: Path) -> list[str]:
    code = "import sys, zipfile; print('\\n'.join(zipfile.ZipFile(sys.argv[1]).namelist()))"
    return [sys.executable, "-c", code, str(file)]


def _on_file(*program: str) -> Argv:
    return lambda file, _scratch: [*program, str(file)]


def all_commands(seed: int) -> list[Command]:
    """Every command of the scenario, in the order they run: the default ones first."""
    rng = random.Random(seed)
    row = rng.randrange(SQLITE_ROWS)
    ids = sorted(rng.sample(range(SQLITE_ROWS), LOOKUPS))
    return [
        Command("unzip-l", "unzip -l", "archive.zip", _on_file("unzip", "-l")),
        Command("unzip-p", f"unzip -p {ZIP_MEMBER}", "archive.zip", _unzip_member, writes="member", program="unzip"),
        Command(
            "ffprobe", "ffprobe (moov at the end)", "plain.mp4", _on_file("ffprobe", "-v", "error", "-show_format")
        ),
        Command("ffmpeg-ss", f"ffmpeg -ss {SEEK_SECONDS}, one frame", "plain.mp4", _ffmpeg_frame, writes="frame.png"),
        Command("mpv-start", "mpv --start=50%, one frame", "plain.mp4", _mpv_frame, writes="00000001.png"),
        Command(
            "sqlite-pk",
            "sqlite3, one primary-key lookup",
            "items.sqlite",
            _sqlite(f"SELECT hex(payload) FROM items WHERE id = {row}"),
        ),
        # Extras (``--commands all`` or by key).
        Command("bsdtar-tf", "bsdtar -tf", "archive.zip", _on_file("bsdtar", "-tf"), default=False),
        Command("7z-l", "7z l", "archive.zip", _on_file("7z", "l"), default=False),
        Command("zipfile", "python zipfile namelist", "archive.zip", _zipfile_listing, default=False),
        Command(
            "ffprobe-fast",
            "ffprobe (moov first)",
            "fast.mp4",
            _on_file("ffprobe", "-v", "error", "-show_format"),
            default=False,
        ),
        Command(
            "sqlite-20",
            f"sqlite3, {LOOKUPS} lookups",
            "items.sqlite",
            _sqlite(f"SELECT count(*) FROM items WHERE id IN ({','.join(map(str, ids))})"),
            default=False,
        ),
        Command("tar-tf", "tar -tf", "files.tar", _on_file("tar", "-tf"), default=False),
    ]


COMMAND_KEYS = tuple(command.key for command in all_commands(0))
DEFAULT_COMMANDS = tuple(command.key for command in all_commands(0) if command.default)


def choose(commands: list[Command], keys: list[str], bench: Bench) -> list[Command]:
    """The commands named by ``keys`` whose program is installed; a note for each one left out."""
    chosen = []
    for command in commands:
        if command.key not in keys:
            continue
        program = command.program or command.argv(Path("FILE"), Path("SCRATCH"))[0]
        if shutil.which(program) is None:
            bench.note(f"tools: `{command.label}` not run: {program} is not installed (benchmarks/setup.sh)")
            continue
        chosen.append(command)
    return chosen


def prefetch_commands(commands: list[Command]) -> list[Command]:
    return [command for command in commands if command.key in PREFETCH_COMMANDS]


# --- the files -------------------------------------------------------------------------------------------


def make_files(tb: ToolsBench) -> None:
    """benchmarks/makefiles.py into the served directory, only the files the chosen commands read; commands
    whose file could not be made are dropped."""
    needed = {command.file_name for command in tb.commands}
    wanted = sorted({"video" if name in VIDEO_FILES else name for name in needed})
    if "video" in wanted and shutil.which("ffmpeg") is None:
        wanted.remove("video")
        tb.bench.note("tools: ffmpeg is not installed (benchmarks/setup.sh): no MP4 files, no video commands")
    script = Path(__file__).resolve().parent.parent / "makefiles.py"
    if wanted:
        done = procs.run([sys.executable, str(script), str(tb.files), "--only", ",".join(wanted)], timeout=600)
        if not done.ok:
            raise RuntimeError(f"making the tools scenario's files failed: {done.problem()}")
    tb.sizes = {path.name: path.stat().st_size for path in tb.files.iterdir() if path.is_file()}
    tb.commands = [command for command in tb.commands if command.file_name in tb.sizes]


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


def run_command(
    tb: ToolsBench, command: Command, file: Path, scratch: Path, access: AccessLog | None, *, chain: Path | None
) -> CommandRun:
    """Run ``command`` on ``file`` and count what nginx sent for it meanwhile (``access`` None: a local file);
    the access log's lines of the run go to ``chain``."""
    mark = access.mark() if access else 0
    started = time.time()
    done = procs.run(command.argv(file, scratch), tb.timeout)
    traffic = None
    if access is not None:
        lines = access.lines_since(mark)
        traffic = summarize(lines, tb.uri(command))
        if chain is not None:  # nginx's $msec is the same clock
            span = f"# {command.label}: started {started:.3f}, ended {started + done.seconds:.3f}\n"
            chain.write_text(span + "".join(line + "\n" for line in lines))
    if not done.ok:
        return CommandRun(status=done.problem(), seconds=done.seconds, traffic=traffic)
    written = scratch / command.writes if command.writes else None
    return CommandRun(seconds=done.seconds, traffic=traffic, output=_digest(file, done.stdout, written))


def _check(tb: ToolsBench, command: Command, row: CommandResult) -> None:
    """Mark a run whose output differs from the same command's on the local file."""
    expected = tb.expected.get(command.key)
    for run in (row.cold, row.warm):
        if run is not None and run.ok and expected is not None and run.output != expected:
            run.status = "WRONG OUTPUT"
            where = f"{row.filesystem} ({row.profile})"
            tb.bench.note(f"tools: `{row.command}` on {row.file_name} through {where}: output differs from local")


@contextlib.contextmanager
def _scratch(tb: ToolsBench, label: str) -> Iterator[Path]:
    """A directory for what the commands write (ffmpeg's frame, unzip's member), removed afterwards."""
    path = tb.bench.work / "scratch" / label
    path.mkdir(parents=True, exist_ok=True)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def _row(tb: ToolsBench, command: Command, profile: str, filesystem: str) -> CommandResult:
    return CommandResult(profile, filesystem, command.file_name, tb.sizes[command.file_name], command.label)


def local_runs(tb: ToolsBench) -> list[CommandResult]:
    """Every command on the local file after drop_caches, then again: the floor and the expected outputs."""
    rows = []
    for command in tb.commands:
        row = _row(tb, command, "-", "local")
        file = tb.files / command.file_name
        with _scratch(tb, f"local-{command.key}") as scratch:
            tb.bench.drop_caches()
            row.cold = run_command(tb, command, file, scratch, None, chain=None)
            row.warm = run_command(tb, command, file, scratch, None, chain=None)
        tb.expected[command.key] = row.cold.output if row.cold.ok else None
        rows.append(row)
    return rows


def mounted_run(
    tb: ToolsBench, case: Case, command: Command, *, extra: list[str], warm: bool = True, tag: str = ""
) -> CommandResult:
    """``command`` on a fresh mount of ``case.tool`` with a fresh cache directory, after drop_caches; then again
    in the same mount when ``warm``. ``tag`` tells repeats apart in the logs' names."""
    filesystem = f"{case.tool} {OFF}" if OFF in extra else case.tool
    label = f"tools-{case.label}-{command.key}{tag}"
    cache = tb.bench.work / "cache" / label
    spec = tools.mount_spec(
        case.tool,
        base_url=f"{case.base_url}{tb.files.name}/",
        file_name=command.file_name,
        mountpoint=tb.bench.work / "mnt" / label,
        cache_dir=cache,
        logs=tb.bench.logs,
        label=label,
        extra_args=extra,
        rangefs_source=tb.bench.rangefs_source,
        ca_bundle=case.ca_bundle,
    )
    row = _row(tb, command, case.profile.name, filesystem)
    try:
        with mounted(tb.bench, spec, tb.sizes[command.file_name]), _scratch(tb, label) as scratch:
            tb.bench.drop_caches()
            chain = tb.bench.logs / f"{label}.chain"
            row.cold = run_command(tb, command, spec.file_path, scratch, case.access, chain=chain)
            if warm:
                row.warm = run_command(tb, command, spec.file_path, scratch, case.access, chain=None)
    finally:
        shutil.rmtree(cache, ignore_errors=True)
    _check(tb, command, row)
    return row


def _failed(tb: ToolsBench, command: Command, profile: str, filesystem: str, status: str) -> CommandResult:
    row = _row(tb, command, profile, filesystem)
    row.cold = CommandRun(status=status)
    return row


def filesystem_runs(tb: ToolsBench, case: Case, extra: list[str], log: Callable[[str], None]) -> list[CommandResult]:
    """Every command through one filesystem under one profile; after a failed mount the rest is skipped."""
    rows: list[CommandResult] = []
    broken: str | None = None
    profile = case.profile.name
    for command in tb.commands:
        if broken is not None:
            rows.append(_failed(tb, command, profile, case.tool, "skipped: an earlier mount failed"))
            continue
        try:
            row = mounted_run(tb, case, command, extra=extra)
        except MountFailed as error:
            broken = str(error)
            row = _failed(tb, command, profile, case.tool, broken)
        except Exception as error:  # one tool's failure is a row in the table, not the end of the run
            tb.bench.note(f"tools: {case.label} {command.key} broke: {type(error).__name__}: {error}")
            row = _failed(tb, command, profile, case.tool, f"error: {type(error).__name__}")
        log(f"{profile} {case.tool}: {_summary(row)}")
        rows.append(row)
    return rows


def _summary(row: CommandResult) -> str:
    cold = row.cold
    text = f"{row.command}: {cold.status}"
    if cold.seconds is not None:
        text += f" {cold.seconds:.2f} s"
    if cold.traffic is not None:
        text += f" {cold.traffic.requests} req {cold.traffic.body_bytes / 1024:.0f} KiB"
    return text


def prefetch_runs(tb: ToolsBench, origin: Origin, repeats: int, extra: list[str]) -> list[CommandResult]:
    """The first open of a zip and of an MP4 with format-aware prefetch on and off, ``repeats`` times each, in
    alternating order; each on a fresh mount and cache after drop_caches, cold only."""
    rows: list[CommandResult] = []
    case = Case(origin, "rangefs")
    for repeat in range(repeats):
        for off in (False, True) if repeat % 2 == 0 else (True, False):
            args = [*extra, OFF] if off else [arg for arg in extra if arg != OFF]
            for command in prefetch_commands(tb.commands):
                try:
                    tag = f"-prefetch-{'off' if off else 'on'}-{repeat}"
                    rows.append(mounted_run(tb, case, command, extra=args, warm=False, tag=tag))
                except Exception as error:  # a row saying so, not the end of the run
                    tb.bench.note(f"tools: prefetch {command.key} broke: {type(error).__name__}: {error}")
                    filesystem = f"rangefs {OFF}" if off else "rangefs"
                    rows.append(_failed(tb, command, origin.profile.name, filesystem, f"error: {type(error).__name__}"))
    return rows


def consistency_runs(
    tb: ToolsBench, origin: Origin, repeats: int, extra: list[str], late: float
) -> list[CommandResult]:
    """What close-to-open consistency costs: `unzip -l` and ``ffprobe`` on a fresh rangefs mount and cache after
    drop_caches, opened at once (cold, then warm straight after) and opened ``late`` seconds after the mount was
    ready (cold, then warm ``late`` seconds after the cold run ended: an open that finds the file's metadata
    older than --revalidate-after revalidates it first). ``repeats`` times each, alternating."""
    rows: list[CommandResult] = []
    case = Case(origin, "rangefs")
    for repeat in range(repeats):
        for wait in (0.0, late) if repeat % 2 == 0 else (late, 0.0):
            for command in prefetch_commands(tb.commands):
                try:
                    rows.append(_opened_after(tb, case, command, extra, wait=wait, tag=f"-open-{wait:g}s-{repeat}"))
                except Exception as error:  # a row saying so, not the end of the run
                    tb.bench.note(f"tools: consistency {command.key} broke: {type(error).__name__}: {error}")
                    row = _failed(tb, command, origin.profile.name, "rangefs", f"error: {type(error).__name__}")
                    row.variant = _opened(wait)
                    rows.append(row)
    return rows


def _opened(wait: float) -> str:
    return f"{wait:g} s after mount" if wait else "at once"


def _opened_after(
    tb: ToolsBench, case: Case, command: Command, extra: list[str], *, wait: float, tag: str
) -> CommandResult:
    """One cold and one warm run of ``command`` on a fresh mount, the cold one ``wait`` seconds after the mount
    was ready (at once: 0) and the warm one ``wait`` seconds after the cold one. The access log is read once at
    the end (so nothing waits for it between the runs) and its lines split between the two runs by when each
    request started."""
    label = f"tools-{case.label}-{command.key}{tag}"
    cache = tb.bench.work / "cache" / label
    spec = tools.mount_spec(
        case.tool,
        base_url=f"{case.base_url}{tb.files.name}/",
        file_name=command.file_name,
        mountpoint=tb.bench.work / "mnt" / label,
        cache_dir=cache,
        logs=tb.bench.logs,
        label=label,
        extra_args=extra,
        rangefs_source=tb.bench.rangefs_source,
        ca_bundle=case.ca_bundle,
    )
    row = _row(tb, command, case.profile.name, case.tool)
    row.variant = _opened(wait)
    try:
        with mounted(tb.bench, spec, tb.sizes[command.file_name]), _scratch(tb, label) as scratch:
            ready = time.time()
            mark = case.access.mark()
            tb.bench.drop_caches()
            time.sleep(max(0.0, ready + wait - time.time()))
            cold_started = time.time()
            row.cold = run_command(tb, command, spec.file_path, scratch, None, chain=None)
            time.sleep(wait)
            warm_started = time.time()
            row.warm = run_command(tb, command, spec.file_path, scratch, None, chain=None)
            lines = case.access.lines_since(mark)
    finally:
        shutil.rmtree(cache, ignore_errors=True)
    cold_lines: list[str] = []
    warm_lines: list[str] = []
    for line in lines:
        (cold_lines if (started_at(line) or 0.0) < warm_started else warm_lines).append(line)
    row.cold.traffic, row.warm.traffic = summarize(cold_lines, tb.uri(command)), summarize(warm_lines, tb.uri(command))
    chain = (
        f"# {command.label}: mount ready {ready:.3f}; cold started {cold_started:.3f} (+{cold_started - ready:.2f} s)\n"
    )
    chain += "".join(f"{line}\n" for line in cold_lines)
    chain += f"# warm started {warm_started:.3f} (+{warm_started - ready:.2f} s)\n" + "".join(
        f"{x}\n" for x in warm_lines
    )
    (tb.bench.logs / f"{label}.chain").write_text(chain)
    _check(tb, command, row)
    return row


def profile_runs(
    tb: ToolsBench, origin: Origin, filesystems: list[str], log: Callable[[str], None]
) -> list[CommandResult]:
    """Every command through every filesystem under one profile."""
    rows: list[CommandResult] = []
    for tool in filesystems:
        if tools.executable(tool) is None:
            missing = "not installed (benchmarks/setup.sh)"
            rows += [_failed(tb, command, origin.profile.name, tool, missing) for command in tb.commands]
            continue
        log(f"tools {origin.profile.name}: {tool}")
        extra = tb.bench.rangefs_args if tool == "rangefs" else []
        rows += filesystem_runs(tb, Case(origin, tool), extra, log)
    return rows


_VERSION = re.compile(r"\d+\.\d+(?:\.\d+)?")
VERSION_COMMANDS = {
    "unzip": ["unzip", "-v"],
    "ffmpeg": ["ffmpeg", "-version"],
    "mpv": ["mpv", "--version"],
    "sqlite3": ["sqlite3", "--version"],
    "bsdtar": ["bsdtar", "--version"],
    "7z": ["7z", "i"],
    "tar": ["tar", "--version"],
}


def program_versions(commands: list[Command]) -> dict[str, str]:
    """The version of each program the chosen commands run: the first version number it prints."""
    programs = {command.program or command.argv(Path("F"), Path("S"))[0] for command in commands}
    programs |= {"ffmpeg"} if "ffprobe" in programs else set()
    found = {}
    for name, argv in VERSION_COMMANDS.items():
        if name not in programs:
            continue
        if shutil.which(argv[0]) is None:
            found[name] = "not installed"
            continue
        done = procs.run(argv, timeout=10)
        match = _VERSION.search(done.stdout + done.stderr)
        found[name] = match.group(0) if match else "unknown"
    return found
