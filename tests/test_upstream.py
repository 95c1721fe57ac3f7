"""
Tests for L{artifactvault.upstream}: the real treq client stack over an
in-memory HTTP connection (L{RequestTraversalAgent}) to a fake origin, and
over a real socket where the socket is what is tested (L{ReadLargerTests}).
"""

from __future__ import annotations

import gzip

import treq
from hyperlink import EncodedURL
from hypothesis import example, given, settings
from hypothesis import strategies as st
from treq.testing import RequestTraversalAgent
from twisted.internet import error as neterror
from twisted.internet.defer import CancelledError, Deferred, fail, succeed
from twisted.internet.task import Clock
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase, TestCase
from twisted.internet.endpoints import HostnameEndpoint, TCP4ClientEndpoint, TCP6ClientEndpoint
from twisted.web import client as webclient
from twisted.web.client import URI
from twisted.web.error import SchemeNotSupported
from twisted.web.iweb import IAgentEndpointFactory
from twisted.web.resource import Resource
from twisted.internet import reactor
from twisted.internet.protocol import Protocol
from twisted.web.server import NOT_DONE_YET, Site

from zope.interface.verify import verifyObject

from artifactvault.backends.base import BuildContext, CommonSettings
from artifactvault.tls import policy_for
from artifactvault.upstream import (_AS_SENT, MAX_REDIRECTS, IUpstreamAuth, OriginEndpoints, StaticAuth, Upstream, UpstreamError,
                                    UpstreamStatus, UpstreamTimeout, content_length, describe_failure,
                                    LARGE_BODY, RECV_SIZE, as_sent, loggable, make_client, parse_length, read_larger, read_small)
from tests.fakes import FakeClient, FakeResponse, Harness


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
        headers["method"] = request.method.decode()
        self.seen.append((host, path, headers))
        if request.method == b"POST":
            headers["body"] = request.content.read().decode()
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

    def test_body_sent(self) -> None:
        """A POST's body goes with it, again after a 307, never after a 303 (then a GET)."""
        upstream = self.upstream()
        for url, expected in (("http://up.test/a", [("POST", "/a", "report")]),
                              ("http://up.test/to/307/../../b", [("POST", "/to/307/../../b", "report"),
                                                                 ("POST", "/b", "report")]),
                              ("http://up.test/to/303/../../c", [("POST", "/to/303/../../c", "report"),
                                                                 ("GET", "/c", None)])):
            del self.origin.seen[:]
            d = Deferred.fromCoroutine(upstream.request("POST", url, {"Content-Type": "text/plain"},
                                                        body=b"report"))
            self.agent.flush()
            self.assertEqual(self.successResultOf(d).code, 200)
            self.assertEqual([(h.get("method"), p, h.get("body")) for _, p, h in self.origin.seen], expected)

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

    def test_extra_headers_stay_with_origin(self) -> None:
        """Configured headers (API keys) go to the configured origin only: not to a redirect target elsewhere, not to a file host."""
        settings = CommonSettings(prefix="/x/", headers={"X-Api-Key": "k3y"})
        upstream = BuildContext(vault=None, reactor=self.clock, client=self.client).upstream(  # type: ignore[arg-type]
            "http://up.test/repo", settings)
        for target in ("http~//cdn.test/blob", "http~//up.test~8080/blob", "https~//up.test/blob"):
            with self.subTest(target=target):
                del self.origin.seen[:]
                self.fetch(f"http://up.test/to/307/{target}", upstream)
                keys = [headers.get("x-api-key") for _, _, headers in self.origin.seen]
                self.assertEqual(keys, ["k3y", None])
        del self.origin.seen[:]
        self.fetch("http://up.test/to/302/http~//up.test/b", upstream)
        self.assertEqual([h.get("x-api-key") for _, _, h in self.origin.seen], ["k3y", "k3y"])
        del self.origin.seen[:]
        self.fetch("http://files.test/pkg.whl", upstream)  # a file host an index page points to
        self.assertEqual([(host, h.get("x-api-key")) for host, _, h in self.origin.seen], [("files.test", None)])

    def test_request_credentials_stay_with_origin(self) -> None:
        """A request's own Authorization or Cookie (a client's, passed on) goes to the configured origin only."""
        upstream = self.upstream()
        upstream.origin_url = "http://up.test/repo"
        sent = {"Authorization": "Bearer client", "Cookie": "a=b", "Accept-Language": "de"}
        self.fetch("http://up.test/to/307/http~//cdn.test/blob", upstream, headers=sent)
        seen = [(host, h.get("authorization"), h.get("cookie"), h.get("accept-language"))
                for host, _, h in self.origin.seen]
        self.assertEqual(seen, [("up.test", "Bearer client", "a=b", "de"), ("cdn.test", None, None, "de")])

    def test_redirect_to_other_schemes(self) -> None:
        """A Location that is not an http(s) URL with a host, or cannot be read, is a 502 saying so; nothing is fetched."""
        for location, reason in [
                ("ftp~//up.test/a", "upstream up.test redirected to a URL that is not fetched (scheme 'ftp')"),
                ("file~///etc/passwd", "upstream up.test redirected to a URL that is not fetched (scheme 'file', no host)"),
                ("http~//[::1", "upstream up.test redirected to an unreadable Location"),
                ("http~//up.test~99999/", "upstream up.test redirected to an unreadable Location")]:
            with self.subTest(location=location):
                del self.origin.seen[:]
                failure = self.failureResultOf(self.fetch(f"http://up.test/to/302/{location}"), UpstreamError)
                self.assertEqual((failure.value.status, failure.value.reason), (502, reason))
                self.assertEqual(len(self.origin.seen), 1)

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
        """
        Bodies unbuffered, redirects ours, the given reactor; no timeout of
        treq's (the upstream's own timer covers the request: see test_header_timeout).
        """
        client = FakeClient()
        Deferred.fromCoroutine(Upstream(client, self.clock, timeout=7).request("GET", "http://x/"))
        self.assertEqual(client.last.kwargs, {"allow_redirects": False, "unbuffered": True,
                                              "reactor": self.clock})


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
    """An auth with a bug: its methods raise what no network failure is."""

    def headers_for(self, url: str) -> Deferred:
        return fail(KeyError("scope"))

    def challenged(self, url: str, response: object) -> Deferred:
        return fail(KeyError("scope"))


class UnreachableAuth:
    """An auth whose token service cannot be reached."""

    def headers_for(self, url: str) -> Deferred:
        return fail(neterror.ConnectionRefusedError())

    def challenged(self, url: str, response: object) -> Deferred:
        return succeed(False)


class AuthFailureTests(SynchronousTestCase):

    def test_unreachable_token_service(self) -> None:
        """An auth whose token service is unreachable fails the request with an UpstreamError (502)."""
        client = FakeClient()
        d = Deferred.fromCoroutine(Upstream(client, Clock(), auth=UnreachableAuth()).request("GET", "http://x.test/"))
        failure = self.failureResultOf(d, UpstreamError)
        self.assertEqual((failure.value.status, failure.value.reason),
                         (502, "cannot connect to upstream x.test: connection refused"))
        self.assertEqual(client.requests, [])

    def test_auth_bug_is_not_an_upstream_error(self) -> None:
        """An auth that raises KeyError (a bug) fails the request with that KeyError, not a 502 in disguise."""
        client = FakeClient()
        d = Deferred.fromCoroutine(Upstream(client, Clock(), auth=BrokenAuth()).request("GET", "http://x.test/"))
        self.failureResultOf(d, KeyError)
        self.assertEqual(client.requests, [])

    def test_challenge_bug(self) -> None:
        """An auth that breaks answering a 401 challenge: its KeyError propagates, the 401's body is released."""
        client, auth = FakeClient(), BrokenAuth()
        auth.headers_for = lambda url: {}  # type: ignore[method-assign]
        d = Deferred.fromCoroutine(Upstream(client, Clock(), auth=auth).request("GET", "http://x.test/"))
        response = client.last.respond(401, b"")
        self.failureResultOf(d, KeyError)
        self.assertIsNotNone(response.protocol)

    def test_head_with_broken_auth(self) -> None:
        """A HEAD miss whose auth has a bug is answered 500 with its traceback logged, never 502, never left hanging."""
        harness = Harness(self)
        harness.upstream.auth = BrokenAuth()
        answer = harness.get("/files/a", method=b"HEAD").answer()
        self.assertEqual(answer.status, 500)
        self.assertEqual(len(self.flushLoggedErrors(KeyError)), 1)


class StallingAuth:
    """An auth whose token requests never finish (the deadline is the Upstream's)."""

    def __init__(self) -> None:
        self.pending: list[Deferred] = []

    def headers_for(self, url: str) -> Deferred:
        self.pending.append(Deferred())
        return self.pending[-1]

    def challenged(self, url: str, response: object) -> Deferred:
        self.pending.append(Deferred())
        return self.pending[-1]


class DeadlineTests(SynchronousTestCase):
    """The whole connecting phase of a request (hops, auth, retry) has one deadline: the timeout."""

    def setUp(self) -> None:
        self.clock, self.client = Clock(), FakeClient()

    def request(self, auth: object = None) -> Deferred:
        upstream = Upstream(self.client, self.clock, auth=auth, timeout=10)  # type: ignore[arg-type]
        return Deferred.fromCoroutine(upstream.request("GET", "http://up.test/a"))

    def assertTimedOut(self, d: Deferred) -> None:
        failure = self.failureResultOf(d, UpstreamTimeout)
        self.assertEqual((failure.value.status, failure.value.reason),
                         (504, "upstream up.test did not answer within 10 s "
                               "(connecting, authentication and redirects)"))
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_slow_redirects(self) -> None:
        """Hops each quicker than the timeout, together slower: 504 at the deadline, the hop in flight cancelled."""
        d = self.request()
        self.clock.advance(6)
        self.client.last.respond(302, b"", headers={"Location": "/b"})
        self.clock.advance(3.9)
        self.assertNoResult(d)
        self.clock.advance(0.1)
        self.assertTimedOut(d)
        self.assertTrue(self.client.last.deferred.called)  # (cancelled)

    def test_token_never_comes(self) -> None:
        """An auth whose token request hangs: 504 at the deadline, nothing sent upstream."""
        d = self.request(StallingAuth())
        self.clock.advance(10)
        self.assertTimedOut(d)
        self.assertEqual(self.client.requests, [])

    def test_retry_after_401_never_comes(self) -> None:
        """A 401 whose challenge is never answered: 504 at the deadline, the 401's body released."""
        auth = StallingAuth()
        d = self.request(auth)
        auth.pending[0].callback({})
        response = self.client.last.respond(401, b"")
        self.clock.advance(10)
        self.assertTimedOut(d)
        self.assertIsNotNone(response.protocol)

    def test_answered_in_time(self) -> None:
        """An answer within the deadline leaves no timer behind."""
        d = self.request()
        self.clock.advance(9)
        self.client.last.respond(200, b"ok")
        self.assertEqual(self.successResultOf(d).code, 200)
        self.assertEqual(self.clock.getDelayedCalls(), [])


class ReadSmallTests(SynchronousTestCase):
    """read_small: a small body, bounded in size as it arrives and in time."""

    def setUp(self) -> None:
        self.clock = Clock()

    def read(self, response: FakeResponse, limit: int = 10) -> Deferred:
        return read_small(response, limit, 5, self.clock, "the test body")

    def test_whole_body(self) -> None:
        """A body within the limit arrives whole; no timer is left."""
        response = FakeResponse(length=6)
        d = self.read(response)
        response.send(b"abc", b"def").finish()
        self.assertEqual(self.successResultOf(d), b"abcdef")
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_unknown_length_closed(self) -> None:
        """A body without a length, ended by closing the connection, is whole."""
        response = FakeResponse()
        d = self.read(response)
        response.send(b"abc").close()
        self.assertEqual(self.successResultOf(d), b"abc")

    def test_announced_too_big(self) -> None:
        """A body announced larger than the limit is refused before any byte, its connection cut."""
        response = FakeResponse(length=11)
        d = self.read(response)
        failure = self.failureResultOf(d, UpstreamError)
        self.assertEqual(failure.value.reason, "the test body is larger than 10 bytes")
        self.assertTrue(response.transport.stopped)

    def test_too_big_as_it_arrives(self) -> None:
        """A body of unknown length is refused as soon as it passes the limit, not after it is read whole."""
        response = FakeResponse()
        d = self.read(response)
        response.send(b"x" * 8)
        self.assertNoResult(d)
        response.send(b"x" * 8)
        self.failureResultOf(d, UpstreamError)
        self.assertTrue(response.transport.stopped)

    def test_stalls_mid_body(self) -> None:
        """A body that stops coming is an UpstreamTimeout (504) after the timeout, its connection cut."""
        response = FakeResponse(length=8)
        d = self.read(response)
        response.send(b"abc")
        self.clock.advance(4.9)
        self.assertNoResult(d)
        self.clock.advance(0.1)
        failure = self.failureResultOf(d, UpstreamTimeout)
        self.assertEqual((failure.value.status, failure.value.reason),
                         (504, "the test body did not arrive within 5 s"))
        self.assertTrue(response.transport.stopped)

    def test_broken_connection(self) -> None:
        """A connection that breaks mid-body is an UpstreamError (502); no timer is left."""
        response = FakeResponse(length=8)
        d = self.read(response)
        response.send(b"abc").cut()
        failure = self.failureResultOf(d, UpstreamError)
        self.assertEqual((failure.value.status, failure.value.reason),
                         (502, "the connection broke while reading the test body"))
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_cancelled(self) -> None:
        """Cancelling the read cuts the connection."""
        response = FakeResponse(length=8)
        d = self.read(response)
        d.cancel()
        self.failureResultOf(d, CancelledError)
        self.assertTrue(response.transport.stopped)
        self.assertEqual(self.clock.getDelayedCalls(), [])


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
            (webclient.ResponseFailed([Failure(neterror.ConnectionLost())]),
             "upstream up.test:8443 broke the connection (ResponseFailed)"),
        ]:
            with self.subTest(exc=exc):
                error = self.describe(exc)
                self.assertEqual((error.status, error.reason), (502, reason))

    def test_bugs_are_not_described(self) -> None:
        """Anything that is not a network or HTTP failure (a bug) is raised again, not turned into a 502."""
        for exc in (KeyError("k"), ValueError(), AttributeError()):
            with self.subTest(exc=exc):
                self.assertRaises(type(exc), describe_failure, exc, self.url, 30)

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

    def test_status_of_response(self) -> None:
        """UpstreamStatus.of builds the error from a response's code and phrase (any bytes)."""
        error = UpstreamStatus.of(FakeResponse(418, phrase=b"I'm a teapot \xff"))
        self.assertEqual((error.code, error.status, error.reason),
                         (418, 418, "upstream answered 418 I'm a teapot \xff"))

    def test_loggable(self) -> None:
        """A URL for a log line has no user info and no query."""
        self.assertEqual(loggable("https://u:p@cdn.test:8443/blob/x?X-Amz-Signature=s3cret#f"),
                         "https://cdn.test:8443/blob/x")


class StaticAuthTests(SynchronousTestCase):

    def test_basic_and_bearer(self) -> None:
        """Basic credentials or a bearer token for the origin; nothing for others."""
        basic = StaticAuth("https://up.test/r", username="u", password="p")
        self.assertEqual(basic.headers_for("https://UP.test:443/x"), {"Authorization": "Basic dTpw"})
        self.assertEqual(basic.headers_for("http://up.test/x"), {})
        bearer = StaticAuth("https://up.test/r", token="t")
        self.assertEqual(bearer.headers_for("https://up.test/y"), {"Authorization": "Bearer t"})
        self.assertEqual(bearer.headers_for("https://evil.test/y"), {})

    def test_provides_interface(self) -> None:
        """StaticAuth is an IUpstreamAuth."""
        self.assertTrue(verifyObject(IUpstreamAuth, StaticAuth("https://up.test/", token="t")))

    def test_repr_hides_secret(self) -> None:
        """The repr (logs, tracebacks) does not show credentials."""
        self.assertNotIn("hunter2", repr(StaticAuth("https://up.test/", username="u", password="hunter2")))


class LengthTests(SynchronousTestCase):
    """Content-Length read strictly, in one place."""


    def test_parse_length(self) -> None:
        """ASCII digits (repeated equal values allowed) are a length; anything else is not."""
        for value, expected in [("0", 0), ("42", 42), (" 42 ", 42), ("42, 42", 42), ("042,42", 42),
                                (b"7", 7), ("9" * 18, 10 ** 18 - 1), (None, None),
                                ("", None), ("\u00b2", None), ("\u0663", None), ("12abc", None), ("+5", None),
                                ("-1", None), ("1 2", None), ("4, 5", None), ("9" * 19, None), (",", None)]:
            with self.subTest(value=value):
                self.assertEqual(parse_length(value), expected)

    def test_content_length(self) -> None:
        """A response's length: None without one or with one that is not a length."""
        self.assertIsNone(content_length(FakeResponse()))
        self.assertEqual(content_length(FakeResponse(headers={"Content-Length": "10"})), 10)
        for raw in ("\u00b2".encode("latin-1"), b"12abc", b"9" * 5000):
            self.assertIsNone(content_length(FakeResponse(headers={"Content-Length": raw})))


class _Larger(Protocol):
    """Reads a body after asking for reads that fit C{length}; notes the socket's read size before and after."""

    def __init__(self, length: int | None) -> None:
        self.length = length
        self.sizes: list[int] = []
        self.done: Deferred = Deferred()

    def connectionMade(self) -> None:
        socket_transport = self.transport._producer  # type: ignore[attr-defined]
        self.sizes.append(socket_transport.bufferSize)
        read_larger(self, self.length)
        self.sizes.append(socket_transport.bufferSize)

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        self.done.callback(None)


class ReadLargerTests(TestCase):
    """L{read_larger} reaches the TCP socket under a treq response's body (a private attribute of Twisted's)."""

    async def test_socket_reads_larger(self) -> None:
        """
        Over one pooled connection: a large body (or one of no announced
        length) is read RECV_SIZE at a time, a small one 64 KiB at a time,
        whatever the body before it set.
        """
        port = reactor.listenTCP(0, Site(Origin()), interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        pool = webclient.HTTPConnectionPool(reactor, persistent=True)
        self.addCleanup(pool.closeCachedConnections)
        client = make_client(reactor, pool)
        seen = []
        for length in (LARGE_BODY, 10, None, LARGE_BODY - 1):
            response = await client.request("GET", f"http://127.0.0.1:{port.getHost().port}/x", unbuffered=True)
            body = _Larger(length)
            response.deliverBody(body)
            await body.done
            seen.append(body.sizes)
        self.assertEqual(seen, [[64 * 1024, RECV_SIZE], [RECV_SIZE, 64 * 1024], [64 * 1024, RECV_SIZE],
                                [RECV_SIZE, 64 * 1024]])

    def test_elsewhere_nothing(self) -> None:
        """Under a transport with no socket (in memory), nothing happens and nothing fails."""
        body = _Larger.__new__(_Larger)
        body.transport = object()  # type: ignore[assignment]
        read_larger(body, None)


class OriginEndpointsTests(TestCase):
    """The agent's endpoints: one per origin, made once (Twisted's agent makes one per request)."""

    def endpoints(self) -> OriginEndpoints:
        return OriginEndpoints(Clock(), policy_for(None), 10.0)

    def test_interface(self) -> None:
        verifyObject(IAgentEndpointFactory, self.endpoints())

    def test_one_per_origin(self) -> None:
        e = self.endpoints()
        a = e.endpointForURI(URI.fromBytes(b"http://mirror.test/a"))
        self.assertIs(e.endpointForURI(URI.fromBytes(b"http://mirror.test/b?x=1")), a)
        self.assertIsInstance(a, HostnameEndpoint)
        others = {e.endpointForURI(URI.fromBytes(u)) for u in (b"http://mirror.test:8080/a", b"http://other.test/a",
                                                                b"https://mirror.test/a")}
        self.assertEqual(len(others | {a}), 4)

    def test_address_is_a_tcp_endpoint(self) -> None:
        """An origin named by an IP address: a plain TCP endpoint of its family (nothing to resolve or race)."""
        e = self.endpoints()
        four = e.endpointForURI(URI.fromBytes(b"http://127.0.0.1:8080/a"))
        six = e.endpointForURI(URI.fromBytes(b"http://[::1]:8080/a"))
        self.assertEqual((type(four), four._host, four._port), (TCP4ClientEndpoint, "127.0.0.1", 8080))
        self.assertEqual((type(six), six._host, six._port), (TCP6ClientEndpoint, "::1", 8080))
        self.assertEqual((four._timeout, six._timeout), (10.0, 10.0))
        tls = e.endpointForURI(URI.fromBytes(b"https://127.0.0.1/a"))
        self.assertIsInstance(tls._wrappedEndpoint, TCP4ClientEndpoint)
        self.assertIsInstance(e.endpointForURI(URI.fromBytes(b"http://[fe80::1%25eth0]/a")), HostnameEndpoint)

    def test_https_is_tls(self) -> None:
        """An https origin's endpoint speaks TLS over the host's (the policy's check of its name)."""
        endpoint = self.endpoints().endpointForURI(URI.fromBytes(b"https://mirror.test/a"))
        self.assertNotIsInstance(endpoint, HostnameEndpoint)
        self.assertIsInstance(endpoint._wrappedEndpoint, HostnameEndpoint)  # (wrapClientTLS's)

    def test_unsupported_scheme(self) -> None:
        self.assertRaises(SchemeNotSupported, self.endpoints().endpointForURI, URI.fromBytes(b"ftp://mirror.test/a"))

    def test_bounded(self) -> None:
        """The last MAX_ORIGINS used are kept: a redirect to a new bucket each time fills nothing."""
        e = self.endpoints()
        self.patch(OriginEndpoints, "MAX_ORIGINS", 3)
        first = e.endpointForURI(URI.fromBytes(b"http://h0.test/"))
        for i in range(1, 4):
            e.endpointForURI(URI.fromBytes(f"http://h{i}.test/".encode()))
        self.assertEqual(len(e._kept), 3)
        self.assertIsNot(e.endpointForURI(URI.fromBytes(b"http://h0.test/")), first)

    async def test_requests_through_one_endpoint(self) -> None:
        """Over real sockets: requests to one origin, on new connections each, all answered through one endpoint."""
        port = reactor.listenTCP(0, Site(Origin()), interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        made = []
        original = OriginEndpoints.endpointForURI

        def spy(self, uri):  # type: ignore[no-untyped-def]
            endpoint = original(self, uri)
            made.append(endpoint)
            return endpoint
        self.patch(OriginEndpoints, "endpointForURI", spy)
        client = make_client(reactor, webclient.HTTPConnectionPool(reactor, persistent=False))
        for _ in range(3):
            response = await client.request("GET", f"http://127.0.0.1:{port.getHost().port}/x", unbuffered=True)
            self.assertEqual(response.code, 200)
            await treq.content(response)
        self.assertEqual((len(made), len(set(map(id, made)))), (3, 1))


def _request_line(url: str) -> tuple[bytes, bytes, int, bytes] | str:
    """What Twisted's agent sends for C{url}: scheme, host, port, request target (or the error)."""
    try:
        uri = URI.fromBytes(url.encode("ascii"))
    except ValueError as e:
        return f"ValueError: {e}"
    return (uri.scheme, uri.host, uri.port, uri.originForm)


class AsSentTests(TestCase):
    """L{as_sent}: a URL already in URI form goes to treq as it is, anything else as treq would have it."""

    @settings(max_examples=500)
    @given(st.from_regex(_AS_SENT, fullmatch=True))
    @example("http://127.0.0.1:8080/debian/pool/main/h/hello/hello_2.10-3_amd64.deb")
    @example("https://files.example/a%20b/c;d=e?x=1&y=%2F")
    @example("http://" + "a." * 126 + "bc/x")  # (254 characters: IDNA's limit is 253)
    def test_same_request_as_treq(self, url: str) -> None:
        """
        Sent as it is, a URL makes the very request treq's own URI of it
        makes (for a host name IDNA takes; an IPv6 literal, which it refuses,
        reaches the agent as it is written).
        """
        sent = as_sent(url)
        if "[" in url:
            if sent != url:  # (else not an IPv6 address: left to treq, which refuses it)
                self.assertEqual(sent.to_uri().to_text(), url)
                self.assertIsInstance(_request_line(url), tuple)
            return
        if len(_AS_SENT.fullmatch(url)["host"]) > 253:  # (left to treq, whose IDNA refuses so long a name)
            self.assertEqual(sent, url)
            self.assertRaises(ValueError, lambda: EncodedURL.from_text(url).to_uri())
            return
        self.assertIsInstance(sent, EncodedURL)
        self.assertEqual(sent.to_uri().to_text(), url)
        self.assertEqual(_request_line(url), _request_line(EncodedURL.from_text(url).to_uri().to_text()))
        # (not parsed when made: its parts, when asked for, are hyperlink's all the same)
        parsed = EncodedURL.from_text(url)
        self.assertEqual((sent.scheme, sent.host, sent.port, sent.path, sent.query, sent.fragment),
                         (parsed.scheme, parsed.host, parsed.port, parsed.path, parsed.query, parsed.fragment))
        self.assertEqual(sent, parsed)

    def test_others_left_to_treq(self) -> None:
        """Anything not already in URI form is passed as it came, for treq to encode (or refuse)."""
        for url in ("http://mirror.test/a b.deb", "http://mirror.test/caf\u00e9", "http://Mirror.test/a",
                    "http://mirror.test/a#frag", "http://mirror.test/a?", "http://mirror.test?q=1",
                    "http://mirror.test:080/a", "http://xn--caf-dma.test/", "http://-bad.test/",
                    "http://user:pw@mirror.test/a", "ftp://mirror.test/a", "http://a" + ".a" * 127 + "/"):
            self.assertEqual(as_sent(url), url, url)

    async def test_ipv6_literal(self) -> None:
        """
        Over real sockets, an upstream at ``http://[::1]:PORT``: answered
        (hyperlink's IDNA refused ``::1``, so every such request failed).
        """
        origin = Origin()
        port = reactor.listenTCP(0, Site(origin), interface="::1")
        self.addCleanup(port.stopListening)
        pool = webclient.HTTPConnectionPool(reactor, persistent=False)
        upstream = Upstream(make_client(reactor, pool), reactor, timeout=10)
        response = await upstream.request("GET", f"http://[::1]:{port.getHost().port}/pool/a.deb")
        self.assertEqual((response.code, await treq.content(response)), (200, b"body of /pool/a.deb"))
        self.assertEqual(origin.seen[0][:2], (f"[::1]:{port.getHost().port}", "/pool/a.deb"))
