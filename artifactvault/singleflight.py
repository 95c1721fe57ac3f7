# -*- test-case-name: tests.test_singleflight -*-
"""
One call per key at a time: whoever asks while it runs gets its result too.

Backends use it for small upstream questions that many requests ask at once
(a tag's digest, a token for a scope); downloads have their own L{Flight}.
"""

from __future__ import annotations

from typing import Any, Callable

from twisted.internet.defer import Deferred
from twisted.python.failure import Failure


class SingleFlight:
    def __init__(self) -> None:
        self._waiting: dict[Any, list[Deferred]] = {}

    def __contains__(self, key: Any) -> bool:
        return key in self._waiting

    def run(self, key: Any, call: Callable[[], Deferred]) -> Deferred:
        """C{call()}'s result (or failure), shared with every caller of C{key} until it fires."""
        d: Deferred = Deferred()
        waiters = self._waiting.get(key)
        if waiters is not None:
            waiters.append(d)
            return d
        self._waiting[key] = waiters = [d]

        def done(result: Any) -> None:
            del self._waiting[key]
            for w in waiters:
                if isinstance(result, Failure):
                    w.errback(result)
                else:
                    w.callback(result)

        call().addBoth(done)
        return d
