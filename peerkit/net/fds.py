"""The process's file descriptors: how many it may open, and whether there is room for one more.

Every connection holds a file descriptor, and a process that reaches its limit (``RLIMIT_NOFILE``)
can neither accept nor dial nor open its own database. A listener asks :meth:`FdBudget.room`
before it accepts a connection; when the descriptors in use come within :attr:`FdBudget.reserve` of
the limit it stops accepting (the kernel keeps the waiting connections in the listen backlog), and
resumes once some are closed. Nothing spins and nothing floods the log: one warning when accepting
pauses, one line when it resumes.

The count of descriptors in use is read from ``/proc/self/fd`` (or ``/dev/fd``) and kept as an
estimate between readings: each accepted connection adds one, and the estimate is read again when
it nears the limit, or after a second.
"""

from __future__ import annotations

import errno
import logging
import os
import time
from typing import Final

import anyio

__all__ = ("RESOURCE_ERRNOS", "FdBudget", "fd_budget", "soft_fd_limit")

log = logging.getLogger(__name__)

#: What ``accept`` fails with when the process or the system is out of descriptors or memory.
RESOURCE_ERRNOS: Final = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})
#: Seconds between readings while accepting is paused.
PAUSE_POLL: Final = 0.1
#: Seconds an estimate is trusted before it is read again.
ESTIMATE_AGE: Final = 1.0


def soft_fd_limit() -> int | None:
    """This process's soft ``RLIMIT_NOFILE``, or None when there is none (or no way to read it)."""
    try:
        import resource
    except ImportError:  # Windows
        return None
    soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    return None if soft == resource.RLIM_INFINITY or soft <= 0 else int(soft)


def _fd_dir() -> str | None:
    for path in ("/proc/self/fd", "/dev/fd"):
        if os.path.isdir(path):
            return path
    return None


class FdBudget:
    """Room for file descriptors under a limit, with a reserve (see the module docstring).

    :param limit: descriptors the process may hold (default: the soft ``RLIMIT_NOFILE``; None:
        no limit is known, and there is always room).
    :param reserve: descriptors kept free for the node's own dials, files and databases (default:
        an eighth of the limit, at least 16).
    """

    def __init__(self, limit: int | None = None, reserve: int | None = None) -> None:
        #: The limit, or None when there is none.
        self.limit = soft_fd_limit() if limit is None else limit
        #: Descriptors kept free: accepting pauses when fewer would be left.
        self.reserve = reserve if reserve is not None else max(16, (self.limit or 0) // 8)
        self._dir = _fd_dir()
        self._estimate = 0
        self._read_at = float("-inf")
        self._paused = False
        self._hold_until = 0.0

    @property
    def usable(self) -> int | None:
        """Descriptors connections may take in all (the limit less the reserve), or None."""
        return None if self.limit is None else max(self.limit - self.reserve, 0)

    def in_use(self) -> int:
        """Descriptors open in this process now (read, not estimated; 0 when it cannot be read)."""
        if self._dir is None:
            return 0
        try:
            count = len(os.listdir(self._dir)) - 1  # listing the directory opens one itself
        except OSError:
            return self._estimate
        self._estimate, self._read_at = count, time.monotonic()
        return count

    def room(self) -> bool:
        """Whether one more descriptor can be taken without eating into the reserve."""
        if self._hold_until and time.monotonic() < self._hold_until:
            return False
        usable = self.usable
        if usable is None or self._dir is None:
            return True
        if self._estimate < usable and time.monotonic() - self._read_at < ESTIMATE_AGE:
            return True
        return self.in_use() < usable

    def opened(self) -> None:
        """A descriptor was taken (an accepted connection): counted until the next reading."""
        self._estimate += 1

    def accept_failed(self, error: OSError) -> None:
        """``accept`` failed with ``error``: for want of descriptors (or of memory, system-wide),
        there is no room for a tenth of a second, then the count is read again; any other error
        is raised again."""
        if error.errno not in RESOURCE_ERRNOS:
            raise error
        self._read_at = float("-inf")
        self._hold_until = time.monotonic() + PAUSE_POLL

    async def wait_for_room(self) -> None:
        """Return when there is room; while there is none, pause (reading the count again every
        tenth of a second), with one warning when the pause starts and one line when it ends."""
        if self.room():
            return
        if not self._paused:
            self._paused = True
            log.warning(
                "%d of %d file descriptors are in use: not accepting connections until some close",
                self._estimate,
                self.limit,
            )
        try:
            while not self.room():  # noqa: ASYNC110 (a count read on a timer: nothing to wait on)
                await anyio.sleep(PAUSE_POLL)
        finally:
            if self._paused:
                self._paused = False
                log.warning("file descriptors are free again (%d in use): accepting", self._estimate)


_budgets: list[FdBudget] = []


def fd_budget() -> FdBudget:
    """The process's budget (made on first use; descriptors belong to the whole process)."""
    if not _budgets:
        _budgets.append(FdBudget())
    return _budgets[0]
