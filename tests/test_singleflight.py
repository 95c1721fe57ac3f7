"""One call per key at a time."""

from __future__ import annotations

from twisted.internet.defer import CancelledError, Deferred, succeed
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from artifactvault.singleflight import SingleFlight
from artifactvault.upstream import UpstreamTimeout


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

    def test_waiter_cancelled_alone(self) -> None:
        """A caller that cancels its Deferred (its own deadline) leaves the others their result."""
        flights, pending = SingleFlight(), Deferred()
        d1, d2 = flights.run("k", lambda: pending), flights.run("k", lambda: pending)
        d1.cancel()
        self.failureResultOf(d1, CancelledError)
        pending.callback(3)
        self.assertEqual(self.successResultOf(d2), 3)

    def test_last_waiter_cancelled(self) -> None:
        """When every caller has cancelled (their deadlines ran out), the call is cancelled and the key is free."""
        flights, cancelled = SingleFlight(), []
        pending = Deferred(lambda d: cancelled.append(True))
        d1, d2 = flights.run("k", lambda: pending), flights.run("k", lambda: pending)
        d1.cancel()
        self.failureResultOf(d1, CancelledError)
        self.assertEqual((cancelled, "k" in flights), ([], True))
        d2.cancel()
        self.failureResultOf(d2, CancelledError)
        self.assertEqual((cancelled, "k" in flights), ([True], False))
        self.assertEqual(self.successResultOf(flights.run("k", lambda: succeed(4))), 4)

    def test_call_raising_releases_the_key(self) -> None:
        """A call that raises at once fails its caller and does not hold the key."""
        flights = SingleFlight()
        self.failureResultOf(flights.run("k", lambda: 1 / 0), ZeroDivisionError)
        self.assertNotIn("k", flights)
        self.assertEqual(self.successResultOf(flights.run("k", lambda: succeed(2))), 2)


class GuardTests(SynchronousTestCase):
    """A call that never fires does not hold its key forever."""

    def test_never_fires(self) -> None:
        """After the timeout every waiter gets UpstreamTimeout (504), the call is cancelled, the key is free."""
        clock, cancelled = Clock(), []
        flights = SingleFlight(clock, timeout=20)
        stuck = Deferred(lambda d: cancelled.append(True))
        d1, d2 = flights.run("k", lambda: stuck), flights.run("k", lambda: stuck)
        clock.advance(19)
        self.assertNoResult(d1)
        clock.advance(1)
        for d in (d1, d2):
            failure = self.failureResultOf(d, UpstreamTimeout)
            self.assertEqual((failure.value.status, failure.value.reason), (504, "no answer within 20 s"))
        self.assertEqual(cancelled, [True])
        self.assertNotIn("k", flights)
        again = Deferred()
        d3 = flights.run("k", lambda: again)
        again.callback("fresh")
        self.assertEqual(self.successResultOf(d3), "fresh")

    def test_given_up_call_disturbs_nobody(self) -> None:
        """The given-up call's own end (its cancellation) reaches nobody, not the next call of its key."""
        clock = Clock()
        flights = SingleFlight(clock, timeout=5)
        late: Deferred = Deferred()
        d1 = flights.run("k", lambda: late)
        clock.advance(5)
        self.failureResultOf(d1, UpstreamTimeout)
        second = Deferred()
        d2 = flights.run("k", lambda: second)
        self.assertNoResult(d2)
        second.callback("second")
        self.assertEqual(self.successResultOf(d2), "second")

    def test_timer_stopped(self) -> None:
        """A call that fires in time leaves no timer behind."""
        clock = Clock()
        flights, pending = SingleFlight(clock, timeout=5), Deferred()
        d = flights.run("k", lambda: pending)
        pending.callback(1)
        self.assertEqual(self.successResultOf(d), 1)
        self.assertEqual(clock.getDelayedCalls(), [])
