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


class _Call:
    """One running call and who waits for it."""

    def __init__(self) -> None:
        self.waiters: list[Deferred] = []
        self.running: Deferred | None = None
        self.timer: Any = None


class SingleFlight:
    """
    @ivar timeout: Seconds after which a call still running is given up (None: never).
    """

    def __init__(self, reactor: Any = None, timeout: float | None = None) -> None:
        if timeout is not None and reactor is None:
            raise ValueError("a timeout needs a reactor")
        self.reactor = reactor
        self.timeout = timeout
        self._calls: dict[Any, _Call] = {}

    def __contains__(self, key: Any) -> bool:
        return key in self._calls

    def run(self, key: Any, call: Callable[[], Deferred]) -> Deferred:
        """
        C{call()}'s result (or failure), shared with every caller of C{key}
        until it fires. A caller may cancel its own Deferred (its own
        deadline ran out) without disturbing the others; when the last one
        does, the call is cancelled and the key is free.
        """
        current = self._calls.get(key)
        if current is not None:
            return self._wait(key, current)
        self._calls[key] = current = _Call()
        d = self._wait(key, current)
        current.running = maybeDeferred(call)
        if self.timeout is not None and not current.running.called:
            current.timer = self.reactor.callLater(
                self.timeout, self._give_up, key, current,
                Failure(UpstreamTimeout(f"no answer within {self.timeout:g} s")))
        current.running.addBoth(self._done, key, current)
        return d

    def _wait(self, key: Any, current: _Call) -> Deferred:
        def cancelled(d: Deferred) -> None:
            current.waiters.remove(d)
            if not current.waiters:
                self._give_up(key, current, None)

        d: Deferred = Deferred(cancelled)
        current.waiters.append(d)
        return d

    def _give_up(self, key: Any, current: _Call, failure: Failure | None) -> None:
        """Release the key, fail whoever still waits with C{failure}, cancel the call."""
        self._done(failure, key, current)
        if current.running is not None:
            current.running.cancel()  # (its end goes to nobody: see _done)

    def _done(self, result: Any, key: Any, current: _Call) -> None:
        if self._calls.get(key) is not current:
            return  # given up already: this late result goes to nobody
        del self._calls[key]
        if current.timer is not None and current.timer.active():
            current.timer.cancel()
        waiters, current.waiters = current.waiters, []
        for w in waiters:
            if isinstance(result, Failure):
                w.errback(result)
            else:
                w.callback(result)
