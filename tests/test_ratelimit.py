"""
Tests for L{artifactvault.ratelimit} and its use by L{Upstream}: after an
upstream 429 nothing is sent to it until its Retry-After has passed; and
for L{Upstream.error_for}, which keeps an upstream's small error answer.
"""

from __future__ import annotations

from email.utils import formatdate

from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from artifactvault.ratelimit import DEFAULT_BACKOFF, FAILURE_BACKOFF, MAX_BACKOFF, Backoff, retry_after
from artifactvault.upstream import (MAX_ERROR_BODY, Upstream, UpstreamBackedOff, UpstreamStatus, UpstreamThrottled,
                                    UpstreamTimeout)
from tests.fakes import EPOCH, FakeClient


class RetryAfterTests(SynchronousTestCase):
    def test_forms(self) -> None:
        """Retry-After is seconds or an HTTP date (RFC 9110 10.2.3); a past date is 0; anything else is unreadable."""
        now = EPOCH
        self.assertEqual(retry_after("120", now), 120.0)
        self.assertEqual(retry_after(" 7 ", now), 7.0)
        self.assertEqual(retry_after(formatdate(now + 90, usegmt=True), now), 90.0)
        self.assertEqual(retry_after(formatdate(now - 90, usegmt=True), now), 0.0)
        for value in (None, "", "-1", "1.5", "\u00b2", "soon"):
            self.assertIsNone(retry_after(value, now), value)


class ThrottleTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(EPOCH)
        self.limit = Backoff(self.clock.seconds)

    def test_backoff(self) -> None:
        """After a 429, requests are held back (and counted) for its Retry-After; then they go."""
        self.assertIsNone(self.limit.hold())
        self.assertEqual(self.limit.throttle("10"), 10.0)
        self.assertEqual(self.limit.hold(), 10)
        self.clock.advance(9.5)
        self.assertEqual(self.limit.hold(), 1)
        self.clock.advance(0.5)
        self.assertIsNone(self.limit.hold())
        self.assertEqual((self.limit.throttled, self.limit.held), (1, 2))

    def test_default_and_cap(self) -> None:
        """A 429 without a readable Retry-After backs off DEFAULT_BACKOFF; none longer than MAX_BACKOFF; a shorter one never shortens a running back-off."""
        self.assertEqual(self.limit.throttle(None), DEFAULT_BACKOFF)
        self.assertEqual(self.limit.throttle("99999999999999999999"), MAX_BACKOFF)
        self.limit.throttle("1")
        self.assertEqual(self.limit.remaining(), MAX_BACKOFF)
        self.assertEqual(self.limit.throttled, 3)


class FailureBackoffTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(EPOCH)
        self.backoff = Backoff(self.clock.seconds)

    def test_failure(self) -> None:
        """After a failure, requests are held for after_failure; it is troubled until the upstream answers again."""
        self.assertFalse(self.backoff.troubled)
        self.assertEqual(self.backoff.failed("timeout", 504), FAILURE_BACKOFF)
        self.assertTrue(self.backoff.troubled)
        self.assertEqual((self.backoff.hold(), self.backoff.throttling), (FAILURE_BACKOFF, False))
        self.clock.advance(FAILURE_BACKOFF)
        self.assertIsNone(self.backoff.hold())
        self.assertTrue(self.backoff.troubled)  # (not answered yet)
        self.backoff.answered()
        self.assertFalse(self.backoff.troubled)
        self.assertEqual((self.backoff.failures, self.backoff.held), (1, 1))

    def test_retry_after_of_a_503(self) -> None:
        """A 503's Retry-After longer than the back-off is kept (at most MAX_BACKOFF); a shorter one is not."""
        self.assertEqual(self.backoff.failed("503", retry="120"), 120.0)
        self.assertEqual(Backoff(self.clock.seconds).failed("503", retry="1"), FAILURE_BACKOFF)
        self.assertEqual(Backoff(self.clock.seconds).failed("503", retry="99999999"), MAX_BACKOFF)

    def test_one_probe_at_a_time(self) -> None:
        """A background revalidation may start once the hold is over, and only one at a time."""
        self.backoff.failed("refused")
        self.assertFalse(self.backoff.probe())
        self.clock.advance(FAILURE_BACKOFF)
        self.assertTrue(self.backoff.probe())
        self.assertFalse(self.backoff.probe())
        self.backoff.probe_ended()
        self.assertTrue(self.backoff.probe())

    def test_disabled(self) -> None:
        """after_failure 0: no hold, never troubled (every request waits for the upstream, as before)."""
        backoff = Backoff(self.clock.seconds, after_failure=0)
        self.assertEqual(backoff.failed("timeout"), 0.0)
        self.assertEqual((backoff.hold(), backoff.troubled, backoff.failures), (None, False, 1))


class UpstreamBackoffTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(EPOCH)
        self.client = FakeClient()
        self.upstream = Upstream(self.client, self.clock, origin_url="https://reg.test")

    def ask(self) -> Deferred:
        return Deferred.fromCoroutine(self.upstream.request("GET", "https://reg.test/v2/x/blobs/y"))

    def test_nothing_sent_during_backoff(self) -> None:
        """The upstream's 429 is returned as it came; for its Retry-After nothing is sent: the request fails at once with a 429 of ours saying how long is left; then requests go again."""
        d = self.ask()
        self.client.last.respond(429, b"", headers={"Retry-After": "30"}, phrase=b"Too Many Requests")
        self.assertEqual(self.successResultOf(d).code, 429)
        self.clock.advance(10)
        error = self.failureResultOf(self.ask(), UpstreamThrottled).value
        self.assertEqual((error.status, error.code, error.headers, error.host),
                         (429, 429, {"Retry-After": "20"}, "reg.test"))
        self.assertIn("reg.test", error.reason)
        self.assertEqual(len(self.client.requests), 1)
        backoff = self.upstream.backoff_for("https://reg.test/v2/")
        self.assertEqual((backoff.throttled, backoff.held), (1, 1))
        self.clock.advance(20)
        d = self.ask()
        self.assertEqual(len(self.client.requests), 2)
        self.client.last.respond(200, b"ok")
        self.assertEqual(self.successResultOf(d).code, 200)

    def test_failure_backs_off_that_origin(self) -> None:
        """
        A request that times out: the next one to that origin fails at once,
        as a 504 saying why, nothing sent; another origin (a file host) is
        asked as usual; a 502/503/504 answer counts as a failure, any other
        answer (a 500, a 404) says the upstream is there (and clears it).
        """
        d = self.ask()
        self.clock.advance(30)
        self.failureResultOf(d, UpstreamTimeout)
        error = self.failureResultOf(self.ask(), UpstreamBackedOff).value
        self.assertEqual((error.status, len(self.client.requests)), (504, 1))
        self.assertIn("not asking upstream reg.test for 10 s after it failed: upstream reg.test did not answer",
                      error.reason)
        other = Deferred.fromCoroutine(self.upstream.request("GET", "https://cdn.test/blob"))
        self.client.last.respond(200, b"ok")
        self.assertEqual(self.successResultOf(other).code, 200)
        self.clock.advance(FAILURE_BACKOFF)
        backoff = self.upstream.backoff_for("https://reg.test/")
        for code, troubled in ((500, False), (503, True), (404, False), (504, True), (200, False), (502, True)):
            self.clock.advance(MAX_BACKOFF)
            d = self.ask()
            self.client.last.respond(code, b"")
            self.assertEqual((self.successResultOf(d).code, backoff.troubled), (code, troubled), code)

    def test_status_keeps_retry_after(self) -> None:
        """The error for an upstream 429 carries its Retry-After on to our client."""
        d = self.ask()
        self.client.last.respond(429, b"", headers={"Retry-After": "5"}, phrase=b"Too Many Requests")
        error = UpstreamStatus.of(self.successResultOf(d))
        self.assertEqual((error.status, error.headers), (429, {"Retry-After": "5"}))


class ErrorForTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.client = FakeClient()
        self.upstream = Upstream(self.client, self.clock, origin_url="https://reg.test/", timeout=10)

    def error_for(self, **answer: object) -> tuple[UpstreamStatus | None, Deferred]:
        d = Deferred.fromCoroutine(self.upstream.request("GET", "https://reg.test/v2/x/manifests/y"))
        self.client.last.respond(**answer)  # type: ignore[arg-type]
        e = Deferred.fromCoroutine(self.upstream.error_for(self.successResultOf(d)))
        return (self.successResultOf(e) if e.called else None), e

    def test_small_body_kept(self) -> None:
        """An error answer of a known small length is kept with its type; the host is the upstream's."""
        body = b'{"errors":[{"code":"NAME_UNKNOWN","message":"repository name not known to registry"}]}'
        error, _ = self.error_for(code=404, body=body, headers={"Content-Type": "application/json"},
                                  phrase=b"Not Found")
        self.assertEqual((error.status, error.body, error.content_type, error.host),
                         (404, body, "application/json", "reg.test"))

    def test_large_or_unknown_length_dropped(self) -> None:
        """An error answer too large, or of unknown length, is not read (its words are lost, never waited for)."""
        error, _ = self.error_for(code=404, body=b"x" * (MAX_ERROR_BODY + 1))
        self.assertIsNone(error.body)
        error, _ = self.error_for(code=404)  # (a length never announced: nothing waited for)
        self.assertEqual((error.status, error.body), (404, None))

    def test_stalled_body_bounded(self) -> None:
        """An error answer that stalls is given up after the timeout: the status stands, without words."""
        d = Deferred.fromCoroutine(self.upstream.request("GET", "https://reg.test/v2/x/manifests/y"))
        response = self.client.last.respond(403, length=100)
        response.send(b'{"errors":')
        e = Deferred.fromCoroutine(self.upstream.error_for(self.successResultOf(d)))
        self.assertNoResult(e)
        self.clock.advance(10)
        error = self.successResultOf(e)
        self.assertEqual((error.code, error.body), (403, None))
        self.assertTrue(response.transport.stopped)
