"""Log lines for journald when systemd collects stderr.

systemd sets ``JOURNAL_STREAM=DEVICE:INODE`` for a service whose stdout or stderr is connected to the journal.
The variable is inherited by children whose stderr may go elsewhere, so it counts only when it names the
very stream stderr is (systemd.exec(5)). Then a line drops the timestamp (journald stamps every entry) and
starts with ``<N>``, its syslog priority (sd-daemon(3); journald honours it with the default
``SyslogLevelPrefix=yes``), so ``journalctl -p warning`` finds warnings.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping

# syslog(3) priorities: LOG_CRIT 2, LOG_ERR 3, LOG_WARNING 4, LOG_INFO 6, LOG_DEBUG 7.
_PRIORITIES = ((logging.CRITICAL, 2), (logging.ERROR, 3), (logging.WARNING, 4), (logging.INFO, 6))
_DEBUG_PRIORITY = 7


def stream_is_journal(environ: Mapping[str, str], fd: int = 2) -> bool:
    """True if ``fd`` (stderr by default) is the stream systemd connected to the journal."""
    device, _, inode = environ.get("JOURNAL_STREAM", "").partition(":")
    if not device.isdigit() or not inode.isdigit():
        return False
    try:
        status = os.fstat(fd)
    except OSError:
        return False
    return (status.st_dev, status.st_ino) == (int(device), int(inode))


def syslog_priority(level: int) -> int:
    return next((priority for threshold, priority in _PRIORITIES if level >= threshold), _DEBUG_PRIORITY)


class JournalFormatter(logging.Formatter):
    """``<N>logger: message``; every line of a multi-line record (a traceback) carries the prefix."""

    def __init__(self) -> None:
        super().__init__("%(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        prefix = f"<{syslog_priority(record.levelno)}>"
        return "\n".join(prefix + line for line in super().format(record).splitlines())
