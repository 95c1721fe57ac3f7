"""
Tests for L{artifactvault.background}: the commit thread runs at a lower
priority than the reactor's, with real threads (a priority is per thread on
Linux: a fake could not tell one thread's from the process's), and in the
real daemon.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading

from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.threads import deferToThreadPool
from twisted.trial.unittest import TestCase

from artifactvault.background import NICER, BackgroundPool, lower_priority
from tests import support


def _own_priority() -> int:
    return os.getpriority(os.PRIO_PROCESS, threading.get_native_id())


class BackgroundPoolTests(TestCase):

    if not sys.platform.startswith("linux"):
        skip = "a thread's own priority is Linux's (elsewhere the pool's threads run as any other)"

    def run_in_pool(self, f: object) -> Deferred:
        pool = BackgroundPool(minthreads=1, maxthreads=1, name="test-background")
        pool.start()
        self.addCleanup(pool.stop)
        return deferToThreadPool(reactor, pool, f)

    async def test_threads_run_nicer(self) -> None:
        """Work in the pool runs NICER (or up to 19) nicer than the thread that made the pool, which is unchanged."""
        before = _own_priority()
        theirs = await self.run_in_pool(_own_priority)
        self.assertEqual(theirs, min(19, before + NICER))
        self.assertEqual(_own_priority(), before)

    def test_lower_priority_of_this_thread_only(self) -> None:
        """L{lower_priority} changes the calling thread's priority, not its process's other threads'."""
        here = _own_priority()
        seen: list[int] = []

        def other() -> None:
            seen.append(int(lower_priority(3)))
            seen.append(_own_priority())
        t = threading.Thread(target=other)
        t.start()
        t.join()
        self.assertEqual(seen, [1, min(19, here + 3)])
        self.assertEqual(_own_priority(), here)


def _thread_priorities(pid: int) -> list[int]:
    """The nice value of each of process C{pid}'s threads (``/proc/PID/task/TID/stat``'s 19th field)."""
    out = []
    for tid in os.listdir(f"/proc/{pid}/task"):
        with open(f"/proc/{pid}/task/{tid}/stat") as f:
            out.append(int(f.read().rsplit(")", 1)[1].split()[16]))
    return out


class DaemonTests(TestCase):

    if not sys.platform.startswith("linux"):
        skip = "a thread's own priority is Linux's"

    def test_commit_thread_nicer(self) -> None:
        """
        The real daemon, after curl fetched a file through it (a commit made):
        one thread, the commit thread, runs NICER nicer than the daemon; the
        reactor and every other thread at the daemon's own priority.
        """
        daemon = support.Daemon([{"type": "http", "config": {"prefix": "/files/",
                                                             "base_url": support.upstream_url("files")}}])
        self.addCleanup(daemon.cleanup)
        daemon.start()
        subprocess.run(["curl", "-sf", "-o", os.devnull, daemon.url("/files/small.bin")], check=True, timeout=30)
        daemon.wait_log("stored /files/small.bin")
        base = _own_priority()  # (the daemon inherits this process's)
        priorities = sorted(_thread_priorities(daemon.proc.pid))  # type: ignore[union-attr]
        self.assertEqual(priorities[-1], min(19, base + NICER))
        self.assertEqual(priorities[:-1], [base] * (len(priorities) - 1))
