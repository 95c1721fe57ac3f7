"""
Tests for L{artifactvault.memory}: glibc's malloc_trim(0), called in a pool
thread on a timer, gives the freed heap back and harms nothing.
"""

from __future__ import annotations

import hashlib
import os
import platform

from twisted.internet.testing import MemoryReactorClock
from twisted.trial.unittest import SkipTest, SynchronousTestCase

from artifactvault import memory
from tests.test_tap import ThreadlessReactor


class MallocTrimTests(SynchronousTestCase):

    def test_found_on_glibc(self) -> None:
        """On glibc, malloc_trim is found; called, it answers 0 or 1 and every buffer keeps its bytes."""
        if platform.libc_ver()[0] != "glibc":
            raise SkipTest("not a glibc system")
        trim = memory.malloc_trim()
        self.assertIsNotNone(trim)
        kept = [os.urandom(1 << (10 + i % 9)) for i in range(2000)]
        digests = [hashlib.sha256(b).digest() for b in kept[::2]]
        del kept[1::2]  # (freed memory in the middle of the heap: what trimming gives back)
        self.assertIn(trim(0), (0, 1))
        self.assertEqual([hashlib.sha256(b).digest() for b in kept], digests)
        self.assertEqual(bytes(1 << 20), b"\0" * (1 << 20))  # (the heap still gives memory)

    def test_missing(self) -> None:
        """Where the C library has no malloc_trim, there is nothing to call."""
        class NoTrim:
            pass
        self.patch(memory.ctypes, "CDLL", lambda name: NoTrim())
        self.assertIsNone(memory.malloc_trim())


class TrimmerTests(SynchronousTestCase):

    def test_trims_in_the_pool(self) -> None:
        """Each call collects the garbage, then runs malloc_trim(0) in the thread pool; fires when it is done."""
        calls: list[tuple[str, int]] = []
        pool = ThreadlessReactor()
        in_pool = []
        self.patch(pool, "callInThreadWithCallback",
                   lambda on_result, f, *a: (in_pool.append(f), ThreadlessReactor.callInThreadWithCallback(
                       pool, on_result, f, *a)))
        trimmer = memory.Trimmer(pool, pool, lambda pad: calls.append(("trim", pad)) or 1,
                                 collect=lambda: calls.append(("collect", 0)) or 0)
        self.assertEqual(self.successResultOf(trimmer()), 1)
        self.assertEqual(calls, [("collect", 0), ("trim", 0)])
        self.assertEqual(len(in_pool), 1)

    def test_failure_logged(self) -> None:
        """A trim that raises is logged, not raised into the timer (which would stop it)."""
        def broken(pad: int) -> int:
            raise OSError("no")
        pool = ThreadlessReactor()
        self.assertIsNone(self.successResultOf(memory.Trimmer(pool, pool, broken)()))
        self.assertEqual(len(self.flushLoggedErrors(OSError)), 1)

    def test_without_malloc_trim(self) -> None:
        """Without malloc_trim, a call does nothing (not even collect: Python's own collections suffice there)."""
        collected = []
        self.assertIsNone(memory.Trimmer(MemoryReactorClock(), None, None, collect=lambda: collected.append(1))())
        self.assertEqual(collected, [])
