"""One call per key at a time."""

from __future__ import annotations

from twisted.internet.defer import Deferred, succeed
from twisted.trial.unittest import SynchronousTestCase

from artifactvault.singleflight import SingleFlight


class SingleFlightTests(SynchronousTestCase):
    def test_shared_result(self) -> None:
        """Callers of one key while it runs share one call and its result; another key has its own."""
        flights, calls = SingleFlight(), []

        def call(key: str) -> Deferred:
            d: Deferred = Deferred()
            calls.append((key, d))
            return d

        a1 = flights.run("a", lambda: call("a"))
        a2 = flights.run("a", lambda: call("a"))
        b = flights.run("b", lambda: call("b"))
        self.assertEqual([k for k, _ in calls], ["a", "b"])
        self.assertIn("a", flights)
        calls[0][1].callback(1)
        self.assertEqual((self.successResultOf(a1), self.successResultOf(a2)), (1, 1))
        self.assertNoResult(b)
        self.assertNotIn("a", flights)

    def test_failure_shared_then_forgotten(self) -> None:
        """A failure reaches every waiter; the next call of that key runs afresh."""
        flights, pending = SingleFlight(), Deferred()
        d1, d2 = flights.run("k", lambda: pending), flights.run("k", lambda: pending)
        pending.errback(ValueError("no"))
        self.failureResultOf(d1, ValueError)
        self.failureResultOf(d2, ValueError)
        self.assertEqual(self.successResultOf(flights.run("k", lambda: succeed(2))), 2)
