"""
Tests for L{artifactvault.upstream}: the real treq client stack over an
in-memory HTTP connection (L{RequestTraversalAgent}) to a fake origin.
"""

from __future__ import annotations

import gzip

import treq
from treq.testing import RequestTraversalAgent
from twisted.internet import error as neterror
from twisted.internet.defer import CancelledError, Deferred, fail, succeed
from twisted.internet.task import Clock
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from twisted.web import client as webclient
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET

from artifactvault.upstream import (MAX_REDIRECTS, StaticAuth, Upstream, UpstreamError, UpstreamStatus,
                                    UpstreamTimeout, describe_failure, make_client)
from tests.fakes import FakeClient, Harness


class Origin(Resource):
    """A fake upstream: answers by path, remembers what each request carried."""

    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[tuple[str, str, dict[str, str]]] = []

    def render(self, request):  # type: ignore[no-untyped-def]
        host = request.getHeader(b"host").decode()
        path = request.path.decode()
        headers = {k.decode().lower(): v[0].decode() for k, v in request.requestHeaders.getAllRawHeaders()}
        self.seen.append((host, path, headers))
        if path == "/gz":
            request.setHeader(b"content-encoding", b"gzip")
            return gzip.compress(b"compressed anyway")
        if path == "/cookie":
            request.setHeader(b"set-cookie", b"session=abc; Path=/")
            return b"with cookie"
        if path == "/stall":
            return NOT_DONE_YET
        if path == "/loop":
            request.setResponseCode(302)
            request.setHeader(b"location", b"/loop")
            return b""
        if path.startswith("/to/"):  # /to/<code>/<location, with ~ for :>
            _, _, code, location = path.split("/", 3)
            request.setResponseCode(int(code))
            request.setHeader(b"location", location.replace("~", ":").encode())
            return b""
        return f"body of {path}".encode()

    def auth_seen(self) -> list[tuple[str, str | None]]:
        """(host, Authorization) of each request."""
        return [(host, headers.get("authorization")) for host, _, headers in self.seen]


class UpstreamTests(SynchronousTestCase):

    def setUp(self) -> None:
        self.clock = Clock()
        self.origin = Origin()
        self.agent = RequestTraversalAgent(self.origin)
        self.client = make_client(self.clock, agent=self.agent)

    def upstream(self, **kwargs: object) -> Upstream:
        return Upstream(self.client, self.clock, **kwargs)  # type: ignore[arg-type]

    def fetch(self, url: str, upstream: Upstream | None = None, method: str = "GET",
              headers: dict[str, str] | None = None) -> Deferred:
        d = Deferred.fromCoroutine((upstream or self.upstream()).request(method, url, headers))
        self.agent.flush()
        return d

    def body(self, response: object) -> bytes:
        d = treq.content(response)
        self.agent.flush()
        return self.successResultOf(d)

    def test_identity_encoding(self) -> None:
        """Artifacts are asked for with Accept-Encoding: identity, and our User-Agent."""
        response = self.successResultOf(self.fetch("http://up.test/a"))
        self.assertEqual(self.body(response), b"body of /a")
        [(_, _, headers)] = self.origin.seen
        self.assertEqual(headers["accept-encoding"], "identity")
        self.assertTrue(headers["user-agent"].startswith("artifactvault/"))

    def test_compressed_body_kept_as_sent(self) -> None:
        """A body compressed anyway is not decoded; its encoding is kept aside for replay."""
        response = self.successResultOf(self.fetch("http://up.test/gz"))
        self.assertEqual(gzip.decompress(self.body(response)), b"compressed anyway")
        self.assertFalse(any(response.headers.getRawHeaders(b"content-encoding", [])))
        self.assertEqual(response.headers.getRawHeaders(b"x-upstream-content-encoding"), [b"gzip"])

    def test_extra_headers(self) -> None:
        """The backend's headers and the request's own headers are sent."""
        upstream = self.upstream(headers={"X-Api-Key": "k"})
        self.successResultOf(self.fetch("http://up.test/a", upstream, headers={"If-None-Match": '"e"'}))
        [(_, _, headers)] = self.origin.seen
        self.assertEqual((headers["x-api-key"], headers["if-none-match"]), ("k", '"e"'))

    def test_no_cookies_kept(self) -> None:
        """A cookie set by an upstream is not sent back on later requests."""
        self.body(self.successResultOf(self.fetch("http://up.test/cookie")))
        self.successResultOf(self.fetch("http://up.test/a"))
        self.assertNotIn("cookie", self.origin.seen[1][2])

    def test_redirect_followed(self) -> None:
        """Redirects, relative ones too, are followed by the core itself."""
        response = self.successResultOf(self.fetch("http://up.test/to/301/../../b"))
        self.assertEqual(response.code, 200)
        self.assertEqual(self.body(response), b"body of /b")
        self.assertEqual([path for _, path, _ in self.origin.seen], ["/to/301/../../b", "/b"])

    def test_credentials_stay_with_origin(self) -> None:
        """Authorization goes to the configured origin only, not to a redirect target elsewhere."""
        upstream = self.upstream(auth=StaticAuth("http://up.test/repo", token="t0ken"))
        for target in ("http~//cdn.test/blob", "http~//up.test~8080/blob", "https~//up.test/blob"):
            with self.subTest(target=target):
                del self.origin.seen[:]
                self.fetch(f"http://up.test/to/307/{target}", upstream)
                self.assertEqual(self.origin.auth_seen()[0], ("up.test", "Bearer t0ken"))
                self.assertIsNone(self.origin.auth_seen()[1][1])

    def test_credentials_follow_same_origin_redirect(self) -> None:
        """A redirect within the origin keeps the credentials."""
        upstream = self.upstream(auth=StaticAuth("http://up.test/", username="u", password="p"))
        self.successResultOf(self.fetch("http://up.test/to/302/http~//up.test/b", upstream))
        self.assertEqual(self.origin.auth_seen(), [("up.test", "Basic dTpw")] * 2)

    def test_redirect_loop(self) -> None:
        """Too many redirects is an upstream error (502)."""
        failure = self.failureResultOf(self.fetch("http://up.test/loop"), UpstreamError)
        self.assertEqual(failure.value.status, 502)
        self.assertEqual(failure.value.reason, f"upstream up.test redirected more than {MAX_REDIRECTS} times")
        self.assertEqual(len(self.origin.seen), MAX_REDIRECTS + 1)

    def test_header_timeout(self) -> None:
        """An upstream that sends no answer within the timeout is a 504."""
        d = self.fetch("http://up.test/stall", self.upstream(timeout=5))
        self.assertNoResult(d)
        self.clock.advance(5)
        failure = self.failureResultOf(d, UpstreamTimeout)
        self.assertEqual(failure.value.status, 504)
        self.assertIn("did not answer within 5 s", failure.value.reason)

    def test_options_passed_to_treq(self) -> None:
        """Bodies unbuffered, redirects ours, the given reactor and timeout."""
        client = FakeClient()
        Deferred.fromCoroutine(Upstream(client, self.clock, timeout=7).request("GET", "http://x/"))
        self.assertEqual(client.last.kwargs, {"allow_redirects": False, "unbuffered": True,
                                              "reactor": self.clock, "timeout": 7})


class ChallengeAuth:
    """An auth that wants a retry after the first 401."""

    def __init__(self) -> None:
        self.challenges = 0

    def headers_for(self, url: str) -> Deferred:
        return succeed({"Authorization": f"Bearer {self.challenges}"})

    def challenged(self, url: str, response: object) -> Deferred:
        self.challenges += 1
        return succeed(True)


class ChallengeTests(SynchronousTestCase):

    def test_one_retry_after_401(self) -> None:
        """A 401 the auth can answer is retried once with new credentials; a second 401 stands."""
        client, auth = FakeClient(), ChallengeAuth()
        d = Deferred.fromCoroutine(Upstream(client, Clock(), auth=auth).request("GET", "http://x/"))
        client.last.respond(401, b"")
        self.assertEqual(client.last.header("authorization"), "Bearer 1")
        client.last.respond(401, b"")
        self.assertEqual(self.successResultOf(d).code, 401)
        self.assertEqual(len(client.requests), 2)


class BrokenAuth:
    """An auth whose token service is down (or that has a bug)."""

    def headers_for(self, url: str) -> Deferred:
        return fail(RuntimeError("token service unreachable"))

    def challenged(self, url: str, response: object) -> Deferred:
        return fail(RuntimeError("token service unreachable"))


class AuthFailureTests(SynchronousTestCase):

    def test_headers_fail(self) -> None:
        """An auth that cannot give headers fails the request with an UpstreamError (502)."""
        client = FakeClient()
        d = Deferred.fromCoroutine(Upstream(client, Clock(), auth=BrokenAuth()).request("GET", "http://x.test/"))
        failure = self.failureResultOf(d, UpstreamError)
        self.assertEqual((failure.value.status, failure.value.reason),
                         (502, "request to upstream x.test failed: RuntimeError"))
        self.assertEqual(client.requests, [])
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)

    def test_challenge_fails(self) -> None:
        """An auth that fails to answer a 401 challenge is an UpstreamError too."""
        client, auth = FakeClient(), BrokenAuth()
        auth.headers_for = lambda url: {}  # type: ignore[method-assign]
        d = Deferred.fromCoroutine(Upstream(client, Clock(), auth=auth).request("GET", "http://x.test/"))
        client.last.respond(401, b"")
        self.failureResultOf(d, UpstreamError)
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)

    def test_head_with_broken_auth(self) -> None:
        """A HEAD miss whose auth fails is answered (502), never left hanging."""
        harness = Harness(self)
        harness.upstream.auth = BrokenAuth()
        answer = harness.get("/files/a", method=b"HEAD").answer()
        self.assertEqual(answer.status, 502)
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)


class DescribeFailureTests(SynchronousTestCase):
    """Network failures become statuses and one-line reasons without secrets."""

    url = "https://user:secret@up.test:8443/a"

    def describe(self, exc: BaseException) -> UpstreamError:
        error = describe_failure(exc, self.url, 30)
        self.assertNotIn("secret", error.reason)
        return error

    def test_timeouts(self) -> None:
        """Cancelled (treq's timeout) and timed-out connections are 504."""
        for exc in (CancelledError(), neterror.TimeoutError(),
                    webclient.ResponseNeverReceived([Failure(CancelledError())])):
            with self.subTest(exc=exc):
                error = self.describe(exc)
                self.assertEqual((type(error), error.status), (UpstreamTimeout, 504))
                self.assertEqual(error.reason, "upstream up.test:8443 did not answer within 30 s")

    def test_connection_failures(self) -> None:
        """Refused, unresolvable, reset: 502 with what happened."""
        for exc, reason in [
            (neterror.ConnectionRefusedError(), "cannot connect to upstream up.test:8443: connection refused"),
            (neterror.DNSLookupError(), "cannot resolve upstream host up.test:8443"),
            (neterror.NoRouteError(), "cannot connect to upstream up.test:8443: NoRouteError"),
            (webclient.ResponseNeverReceived([Failure(neterror.ConnectionLost())]),
             "upstream up.test:8443 closed the connection before answering"),
            (ValueError(), "request to upstream up.test:8443 failed: ValueError"),
        ]:
            with self.subTest(exc=exc):
                error = self.describe(exc)
                self.assertEqual((error.status, error.reason), (502, reason))

    def test_upstream_error_kept(self) -> None:
        """An UpstreamError is passed through as it is."""
        error = UpstreamTimeout("x")
        self.assertIs(describe_failure(error, self.url, 1), error)

    def test_status_mapping(self) -> None:
        """404 and 410 are 404; other 4xx are passed on; anything else is 502."""
        for code, status in [(404, 404), (410, 404), (403, 403), (429, 429), (500, 502), (304, 502)]:
            with self.subTest(code=code):
                self.assertEqual(UpstreamStatus(code).status, status)
        self.assertEqual(UpstreamStatus(503, "Service Unavailable").reason,
                         "upstream answered 503 Service Unavailable")


class StaticAuthTests(SynchronousTestCase):

    def test_basic_and_bearer(self) -> None:
        """Basic credentials or a bearer token for the origin; nothing for others."""
        basic = StaticAuth("https://up.test/r", username="u", password="p")
        self.assertEqual(basic.headers_for("https://UP.test:443/x"), {"Authorization": "Basic dTpw"})
        self.assertEqual(basic.headers_for("http://up.test/x"), {})
        bearer = StaticAuth("https://up.test/r", token="t")
        self.assertEqual(bearer.headers_for("https://up.test/y"), {"Authorization": "Bearer t"})
        self.assertEqual(bearer.headers_for("https://evil.test/y"), {})

    def test_repr_hides_secret(self) -> None:
        """The repr (logs, tracebacks) does not show credentials."""
        self.assertNotIn("hunter2", repr(StaticAuth("https://up.test/", username="u", password="hunter2")))
