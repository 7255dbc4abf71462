"""Credentials of one entry: the URL requests go to and the headers they carry, refreshed by its commands.

A plain entry's credentials are fixed. With ``header-command`` or ``url-command`` they are what the commands
printed last, used until the server refuses them (401/403: ``renew``) or, for a URL whose query string says
when it expires, until shortly before then (``grant`` refreshes on its own): then the commands run again.

Refreshes are single flight: however many readers find the credentials refused or expiring at once, the
commands run once and every reader goes on with their output. A refresh is bounded by the caller: the client
renews once per operation, and a refusal of fresh credentials fails that operation (``CredentialError``).

Commands run through ``sh -c`` (so ``$NAME`` and pipes work), with a timeout, and their stdout stripped:
a header-command prints one or more ``Name: value`` lines, a url-command one URL.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

import trio

from rangefs.config import Command, parse_header, url_problem
from rangefs.errors import CredentialError
from rangefs.remote.expiry import expiry_of
from rangefs.remote.sender import Headers

log = logging.getLogger(__name__)

# Seconds a command may run. `aws s3 presign` takes about a second; a vault or SSO helper a few.
COMMAND_TIMEOUT = 30.0
# A URL is re-signed this many seconds before its expiry (at most a quarter of its lifetime, so a URL
# signed for 8 s is used for 6): a request started just before the expiry must not arrive after it.
_EXPIRY_MARGIN = 60.0
# Refreshes a reader waits through when the one it joined was cancelled (its owner was interrupted).
_JOIN_LIMIT = 3


@dataclass(frozen=True)
class Grant:
    """One set of credentials: where to send requests and what to send with them."""

    url: str
    headers: Headers
    generation: int  # 0 for fixed credentials, then one more for each run of the commands
    obtained_at: float = 0.0  # time.time() when the commands ran
    expires_at: float | None = None  # time.time() at which ``url`` stops working, if it says so

    def expiring(self, now: float) -> bool:
        if self.expires_at is None:
            return False
        margin = min(_EXPIRY_MARGIN, max(0.0, self.expires_at - self.obtained_at) / 4)
        return now >= self.expires_at - margin


@dataclass(eq=False)
class _Refresh:
    """A run of the commands under way; set ``done`` with ``grant`` or ``error`` (neither: cancelled)."""

    done: trio.Event = field(default_factory=trio.Event)
    grant: Grant | None = None
    error: CredentialError | None = None


class Credentials:
    """What requests for the entry at ``url`` carry.

    Attributes and their invariants:
    ``_current``: the last grant the commands produced (for fixed credentials, from the start); None only
    before the first run. ``_refreshing``: set exactly while a run of the commands is under way.
    ``runs``: how many times the commands ran (for statistics and tests)."""

    def __init__(
        self,
        url: str,
        headers: Headers = (),
        *,
        header_command: Command | None = None,
        url_command: Command | None = None,
        command_timeout: float = COMMAND_TIMEOUT,
    ) -> None:
        self.url = url
        self.headers = headers
        self.header_command = header_command
        self.url_command = url_command
        self.command_timeout = command_timeout
        self.runs = 0
        self._current: Grant | None = None if self.refreshable else Grant(url, headers, 0)
        self._refreshing: _Refresh | None = None

    def __repr__(self) -> str:
        current = self._current
        state = f"generation {current.generation}" if current else "not obtained"
        return f"<Credentials {self.url} {state}, commands ran {self.runs} times>"

    @property
    def refreshable(self) -> bool:
        return self.header_command is not None or self.url_command is not None

    def describe(self) -> str:
        """The commands, as the urls file gives them, for log lines and errors."""
        commands = [(option, command) for option, command in self._commands() if command is not None]
        return ", ".join(f"{option} '{command.text}' ({command.source})" for option, command in commands)

    def _commands(self) -> tuple[tuple[str, Command | None], ...]:
        return (("url-command", self.url_command), ("header-command", self.header_command))

    async def grant(self) -> Grant:
        """The credentials to use now: the current ones, or fresh ones if there are none yet or they expire."""
        current = self._current
        if current is not None and not current.expiring(time.time()):
            await trio.lowlevel.checkpoint()
            return current
        return await self._refresh(current)

    async def renew(self, refused: Grant) -> Grant:
        """Fresh credentials after the server refused ``refused``; another reader's refresh since counts."""
        return await self._refresh(refused)

    async def _refresh(self, stale: Grant | None) -> Grant:
        for _ in range(_JOIN_LIMIT):
            current = self._current
            if current is not None and current is not stale and not current.expiring(time.time()):
                await trio.lowlevel.checkpoint()
                return current  # refreshed by someone else meanwhile
            refresh = self._refreshing
            if refresh is None:
                refresh = self._refreshing = _Refresh()
                try:
                    refresh.grant = self._current = await self._obtain()
                except CredentialError as error:
                    refresh.error = error
                finally:
                    self._refreshing = None
                    refresh.done.set()
            else:
                await refresh.done.wait()
            if refresh.error is not None:
                raise refresh.error
            if refresh.grant is not None:
                return refresh.grant
        raise CredentialError(self.url, f"the refresh of {self.describe()} was cancelled {_JOIN_LIMIT} times")

    async def _obtain(self) -> Grant:
        url, headers = self.url, list(self.headers)
        if self.url_command is not None:
            url = await self._run("url-command", self.url_command)
            problem = url_problem(url)
            if problem is not None or "\n" in url:
                raise CredentialError(
                    self.url, f"{self.url_command.source}: url-command '{self.url_command.text}' printed no URL"
                )
        if self.header_command is not None:
            output = await self._run("header-command", self.header_command)
            for number, line in enumerate(output.splitlines(), start=1):
                header, problem = parse_header(line)
                if header is None:
                    # The output is a secret: say where it is wrong, not what it says.
                    raise CredentialError(
                        self.url,
                        f"{self.header_command.source}: header-command '{self.header_command.text}' printed"
                        f" an unusable header on line {number} of its output: {problem}",
                    )
                headers = [old for old in headers if old[0].lower() != header[0].lower()] + [header]
        self.runs += 1
        now = time.time()
        log.info("obtained credentials for %s from %s", self.url, self.describe())
        return Grant(url, tuple(headers), self.runs, now, expiry_of(url) if self.url_command else None)

    async def _run(self, option: str, command: Command) -> str:
        where = f"{command.source}: {option} '{command.text}'"
        try:
            with trio.fail_after(self.command_timeout):
                result = await trio.run_process(
                    ["sh", "-c", command.text], capture_stdout=True, capture_stderr=True, check=False
                )
        except trio.TooSlowError:
            raise CredentialError(self.url, f"{where} did not finish within {self.command_timeout:g} s") from None
        except OSError as error:
            raise CredentialError(self.url, f"{where} cannot be run: {error}") from None
        if result.returncode != 0:
            stderr = result.stderr.decode(errors="replace").strip().splitlines()
            detail = f": {stderr[-1]}" if stderr else ""
            raise CredentialError(self.url, f"{where} failed with exit status {result.returncode}{detail}")
        output = result.stdout.decode(errors="replace").strip()
        if not output:
            raise CredentialError(self.url, f"{where} printed nothing")
        return output
