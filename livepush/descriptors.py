"""Watching the process's open files against its limit, so running out is said, not silent.

When every descriptor is taken, accept() fails with EMFILE. libuv (under uvloop) then
accepts each waiting connection with a descriptor it keeps in reserve and closes it at
once: the client sees its connection closed, cleanly and without waiting, and the
node takes connections again as soon as descriptors free up. Nothing tells the
operator, so a timer counts the open descriptors and logs, at most once per
LOG_EVERY seconds, while the process stands within HEADROOM of its limit.

Its cost: every CHECK_SECONDS, HEADROOM + 1 descriptors opened and closed at once
(`has_room`: microseconds); only a process that has no room for them lists
/proc/self/fd to count its descriptors for the log (about 1 ms per thousand: a node
of 20,000 sockets would otherwise stall 20 ms every 5 s, fan-outs included).
"""

from __future__ import annotations

import errno
import logging
import os
import resource

log = logging.getLogger("livepush.descriptors")

CHECK_SECONDS = 5.0
LOG_EVERY = 60.0
# Descriptors a process needs beyond its sockets (Redis, logs, the listening socket):
# within this many of the limit, new connections are about to be refused.
HEADROOM = 16


# The most descriptor slots `reserve_table` asks for: 64 Ki slots are 512 KiB.
TABLE_CAP = 65536


def reserve_table() -> int:
    """Grow this process's descriptor table to its open-files limit now (at most
    TABLE_CAP), and return the highest descriptor number it was grown for (0: not grown).

    The kernel doubles the table as descriptors are taken, and in a process with
    threads (this one has a few) each doubling waits for an RCU grace period inside
    the accept() that crosses it: `perf trace` on a node in a connect storm showed
    accept() calls of 7 to 22 ms returning descriptors 256, 512, ..., 8,192 exactly,
    the loop standing still meanwhile. The table never shrinks, so growing it once at
    start-up (a dup2 to the top slot, closed at once) takes those stalls away; it
    costs 8 bytes per slot.
    """
    limit = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    top = TABLE_CAP if limit == resource.RLIM_INFINITY else min(limit, TABLE_CAP)
    top -= 1
    try:
        os.fstat(top)
        return 0  # in use (descriptors go lowest first: the table is that big already)
    except OSError:
        pass
    try:
        fd = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return 0
    try:
        os.dup2(fd, top, inheritable=False)
        os.close(top)
    except OSError:
        return 0
    finally:
        os.close(fd)
    return top


def open_descriptors(limit: int) -> int | None:
    """How many descriptors this process holds (None where /proc is not there).

    Listing them takes a descriptor itself: when that fails with EMFILE, every one
    is taken, which is the answer (`limit`).
    """
    try:
        return len(os.listdir("/proc/self/fd"))
    except OSError as error:
        return limit if error.errno in (errno.EMFILE, errno.ENFILE) else None


def has_room(count: int) -> bool:
    """Whether this process can open `count` more descriptors: tried (on /dev/null) and
    closed at once. Any failure but running out says yes: the listing decides then."""
    taken: list[int] = []
    try:
        taken.append(os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC))
        while len(taken) < count:
            taken.append(os.dup(taken[0]))
    except OSError as error:
        return error.errno not in (errno.EMFILE, errno.ENFILE)
    finally:
        for fd in taken:
            os.close(fd)
    return True


class DescriptorWatch:
    """Logs once per LOG_EVERY while the process is at its open-files limit, and once
    when it has room again. `check(now)` is the timer's callback."""

    def __init__(self) -> None:
        self.at_limit = False
        self._logged = -LOG_EVERY
        self.refusals_logged = 0

    def check(self, now: float) -> None:
        limit = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        if limit == resource.RLIM_INFINITY:
            return
        if not self.at_limit and has_room(HEADROOM + 1):
            return  # far from the limit: nothing to count, nothing to say
        count = open_descriptors(limit)
        if count is None:
            return
        if count >= limit - HEADROOM:
            if not self.at_limit or now - self._logged >= LOG_EVERY:
                log.warning(
                    "open files at the limit (%d of %d): new connections are closed at "
                    "once until some end; raise the limit (ulimit -n, LimitNOFILE) or "
                    "add a node",
                    count,
                    limit,
                )
                self._logged = now
                self.refusals_logged += 1
            self.at_limit = True
        elif self.at_limit:
            log.warning("open files below the limit again (%d of %d)", count, limit)
            self.at_limit = False
