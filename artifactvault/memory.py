# -*- test-case-name: tests.test_memory -*-
"""
Giving the heap freed after a burst back to the system.

After a burst of clients (256 connections at once, each with its buffers),
the memory they used is freed but glibc's malloc keeps it in its heap for
reuse: C{bench/soak.py --memory} measured RSS 66 → 128 MiB after a soak,
with 62 MiB of it free in glibc's heap, while the live Python objects and
what glibc counts in use were back near their baseline (docs/benchmarks.md,
soak). glibc gives back on its own only the free memory at the top of its
heap; C{malloc_trim(0)} also gives back the free pages inside it, and the
RSS returns to its baseline. Some of what a burst leaves is not free yet:
requests, their responders and producers, flights and upstream responses
end in reference cycles, which only a full collection of the garbage
collector frees, and an idle daemon allocates nothing that would start one:
after a soak, 7,750 such objects held 19 MiB. So a full collection
(C{gc.collect()}, on the reactor, since it holds the GIL wherever it runs;
it walks only what was made since the start, the rest being frozen out of
its sight) comes first.

So every L{TRIM_INTERVAL} seconds the daemon collects, then calls
C{malloc_trim(0)} in a thread of the store's pool (ctypes lets go of the
GIL for the call), not on the reactor: it took 0.2 to 1 ms when there was
little to give back, about 10 ms for 60 MiB. Where the C library has no C{malloc_trim} (not glibc), nothing is
done; musl's does nothing.
"""

from __future__ import annotations

import ctypes
import gc
from typing import Any, Callable

from twisted.internet.defer import Deferred
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger

from artifactvault import logs

_log = Logger(observer=logs.observer)

#: Seconds between two trims of the heap (a trim costs ~1 ms of a pool thread).
TRIM_INTERVAL = 60.0


def malloc_trim() -> Callable[[int], int] | None:
    """The C library's C{malloc_trim} (glibc), or None where it has none."""
    try:
        function = getattr(ctypes.CDLL(None), "malloc_trim", None)
    except OSError:
        return None
    if function is None:
        return None
    function.argtypes = [ctypes.c_size_t]
    function.restype = ctypes.c_int
    return function


class Trimmer:
    """
    The timer's call: a full collection (C{collect}), then C{trim(0)} in
    C{threadpool}. A failure is logged, not raised, so that the timer goes on.
    """

    def __init__(self, reactor: Any, threadpool: Any, trim: Callable[[int], int] | None,
                 collect: Callable[[], int] = gc.collect):
        self.reactor = reactor
        self.threadpool = threadpool
        self.trim = trim
        self.collect = collect

    def __call__(self) -> Deferred | None:
        if self.trim is None:
            return None
        self.collect()
        d = deferToThreadPool(self.reactor, self.threadpool, self.trim, 0)
        d.addErrback(lambda f: _log.failure("malloc_trim failed", f))
        return d
