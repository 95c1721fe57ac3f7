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

from artifactvault.ratelimit import DEFAULT_BACKOFF, MAX_BACKOFF, RateLimit, retry_after
from artifactvault.upstream import MAX_ERROR_BODY, Upstream, UpstreamStatus, UpstreamThrottled
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


class RateLimitTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(EPOCH)
        self.limit = RateLimit(self.clock.seconds)

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
        self.assertEqual((self.upstream.rate_limit.throttled, self.upstream.rate_limit.held), (1, 1))
        self.clock.advance(20)
        d = self.ask()
        self.assertEqual(len(self.client.requests), 2)
        self.client.last.respond(200, b"ok")
        self.assertEqual(self.successResultOf(d).code, 200)

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
