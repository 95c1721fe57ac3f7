"""
Tests for L{artifactvault.background}: the commit thread runs at a lower
priority than the reactor's, with real threads (a priority is per thread on
Linux: a fake could not tell one thread's from the process's).
"""

from __future__ import annotations

import os
import sys
import threading

from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.threads import deferToThreadPool
from twisted.trial.unittest import TestCase

from artifactvault.background import NICER, BackgroundPool, lower_priority


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
