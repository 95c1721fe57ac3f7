# -*- test-case-name: tests.test_singleflight -*-
"""
One call per key at a time: whoever asks while it runs gets its result too.

Backends use it for small upstream questions that many requests ask at once
(a tag's digest, a token for a scope); downloads have their own L{Flight}.

A call that never fires would hold its key, and everyone coalesced on it,
until the daemon restarts. The upstream waits inside a call have deadlines of
their own; the C{timeout} here is the guard behind them: when it runs out the
call is cancelled, its waiters get L{UpstreamTimeout} and the key is free for
the next caller.
"""

from __future__ import annotations

from typing import Any, Callable

from twisted.internet.defer import Deferred, maybeDeferred
from twisted.python.failure import Failure

from artifactvault.upstream import UpstreamTimeout


class SingleFlight:
    """
    @ivar timeout: Seconds after which a call still running is given up (None: never).
    """

    def __init__(self, reactor: Any = None, timeout: float | None = None) -> None:
        if timeout is not None and reactor is None:
            raise ValueError("a timeout needs a reactor")
        self.reactor = reactor
        self.timeout = timeout
        self._waiting: dict[Any, list[Deferred]] = {}

    def __contains__(self, key: Any) -> bool:
        return key in self._waiting

    def run(self, key: Any, call: Callable[[], Deferred]) -> Deferred:
        """
        C{call()}'s result (or failure), shared with every caller of C{key}
        until it fires. A caller may cancel its own Deferred without
        disturbing the others.
        """
        d: Deferred = Deferred()
        waiters = self._waiting.get(key)
        if waiters is not None:
            waiters.append(d)
            return d
        self._waiting[key] = waiters = [d]
        timer: Any = None

        def done(result: Any) -> None:
            if self._waiting.get(key) is not waiters:
                return  # given up already: this late result goes to nobody
            del self._waiting[key]
            if timer is not None and timer.active():
                timer.cancel()
            for w in waiters:
                if w.called:  # cancelled by its caller
                    continue
                if isinstance(result, Failure):
                    w.errback(result)
                else:
                    w.callback(result)

        running = maybeDeferred(call)
        if self.timeout is not None and not running.called:
            def give_up() -> None:
                done(Failure(UpstreamTimeout(f"no answer within {self.timeout:g} s")))
                running.cancel()

            timer = self.reactor.callLater(self.timeout, give_up)
        running.addBoth(done)
        return d
