# -*- test-case-name: tests.test_background -*-
"""
Threads for work that no client waits on: the disk store's commits.

A commit (fsync, rename, the metadata) is done after its download has been
served: the clients read the temp file, not the commit. But its thread
competes for the CPU with the reactor's, which does serve them, and on a
busy machine (two cores shared with the clients themselves: a CI runner,
a build host) the reactor then waits on the run queue behind it. Run at a
lower priority (nice +10), the commit thread gets the CPU when the reactor
does not want it: in a cold ``apt-get install`` of 50 packages through the
vault the reactor waited 5–6 ms on the run queue instead of 8–9, the
install 74 ms instead of 77–78 (``bench/apt_burst.py --phases``; more in
docs/benchmarks.md). The commits still run, later: the lowest priority
still gets a share of a busy CPU, never none.

Linux only: there a thread is a task of its own, with its own priority
(C{setpriority} of its thread id). Elsewhere the threads run as any other.
"""

from __future__ import annotations

import os
import sys
import threading

from twisted.python.threadpool import ThreadPool

#: How much nicer (lower in priority) than the daemon a background thread runs.
NICER = 10


def lower_priority(by: int = NICER) -> bool:
    """
    Make the calling thread C{by} nicer than it is (at most 19); True if
    done. Never raises: a system that refuses is a thread at the usual
    priority, not a failure.
    """
    if not sys.platform.startswith("linux"):
        return False  # (elsewhere PRIO_PROCESS with a thread id names a process, or nothing)
    tid = threading.get_native_id()
    try:
        os.setpriority(os.PRIO_PROCESS, tid, min(19, os.getpriority(os.PRIO_PROCESS, tid) + by))
    except OSError:
        return False
    return True


class _BackgroundThread(threading.Thread):
    """A thread that lowers its own priority before it runs its work (see the module's docstring)."""

    def run(self) -> None:
        lower_priority()
        super().run()


class BackgroundPool(ThreadPool):
    """A L{ThreadPool} whose threads run at a lower priority: for work no client waits on."""

    threadFactory = _BackgroundThread
