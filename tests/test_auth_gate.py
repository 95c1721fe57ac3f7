"""
Tests for L{artifactvault.auth.gate}: Authorization parsing (hypothesis
over any bytes), the failure limiter, and the gate in front of a backend
and the pages, in memory (L{Harness}: a real site, a fake upstream, bcrypt
in a L{ManualPool}).
"""

from __future__ import annotations

import base64

import bcrypt
from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.cred.credentials import Anonymous, UsernamePassword
from twisted.internet.task import Clock
from twisted.logger import formatEvent
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.resource import Resource

from artifactvault.auth.access import AUTHENTICATED, OPEN, Access, AuthSettings, Kind
from artifactvault.auth.checkers import BearerToken, make_portal
from artifactvault.auth.gate import FailureLimiter, Gate, Guarded, Malformed, parse_authorization
from artifactvault.backends.registry_api import RegistryApi
from tests.fakes import Client, Harness, ManualPool, log_events

HASH = bcrypt.hashpw(b"secret", bcrypt.gensalt(4))
TOKEN = "0123456789abcdef0123"


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


class ParseTests(SynchronousTestCase):

    def test_forms(self) -> None:
        """Basic and Bearer, any case of the scheme; other schemes and none are anonymous."""
        creds = parse_authorization(b"basic " + base64.b64encode(b"al:ice:pw"))
        self.assertEqual((creds.username, creds.password), (b"al", b"ice:pw"))
        self.assertEqual(parse_authorization(b"BEARER abc.def").token, b"abc.def")
        for value in (None, b"Digest x=1", b"Negotiate abc", b""):
            self.assertIsInstance(parse_authorization(value), Anonymous)

    def test_malformed(self) -> None:
        """Basic that is not base64 or has no user; a Bearer with spaces or nothing; too long."""
        for value in (b"Basic !!!", b"Basic " + base64.b64encode(b"nocolon"),
                      b"Basic " + base64.b64encode(b":pw"), b"Bearer", b"Bearer a b",
                      b"Bearer " + b"a" * 5000):
            self.assertRaises(Malformed, parse_authorization, value)

    @settings(max_examples=500)
    @given(st.one_of(st.binary(max_size=100),
                     st.tuples(st.sampled_from([b"Basic ", b"bearer ", b"BASIC  "]), st.binary(max_size=60))
                     .map(lambda t: t[0] + t[1]),
                     st.binary(max_size=40).map(lambda b: b"Basic " + base64.b64encode(b)),))
    def test_any_bytes(self, value: bytes) -> None:
        """Any header value is credentials of one of three kinds, or Malformed: never another error."""
        try:
            creds = parse_authorization(value)
        except Malformed:
            return
        self.assertIsInstance(creds, (Anonymous, UsernamePassword, BearerToken))
        if isinstance(creds, UsernamePassword):
            self.assertTrue(creds.username)


class LimiterTests(SynchronousTestCase):

    def test_window(self) -> None:
        """max_failures within the window block the address until the oldest of them leaves it."""
        clock = Clock()
        limiter = FailureLimiter(clock, max_failures=3, window=60)
        for _ in range(2):
            limiter.failed("10.0.0.1")
            clock.advance(10)
        self.assertIsNone(limiter.blocked("10.0.0.1"))
        limiter.failed("10.0.0.1")
        self.assertEqual(limiter.blocked("10.0.0.1"), 40)
        self.assertIsNone(limiter.blocked("10.0.0.2"))
        clock.advance(40)
        self.assertIsNone(limiter.blocked("10.0.0.1"))


class GateTests(SynchronousTestCase):
    """The gate in front of a backend (the Harness's /files/) and a page."""

    def setUp(self) -> None:
        self.h = h = Harness(self, ttl=3600)
        self.pool = ManualPool()
        self.settings = AuthSettings(htpasswd={"alice": HASH, "bob": HASH}, tokens=[("ci", TOKEN.encode())],
                                     groups={"builders": frozenset({"ci"})}, max_failures=3,
                                     failure_window=60, configured=True)
        self.gate = Gate(self.settings, make_portal(self.settings, self.pool.run), h.clock)
        h.site.gate = self.gate
        self.events = log_events(self)

    def get(self, authorization: str | None = None, path: str = "/files/a.tar.gz") -> Client:
        client = self.h.get(path, headers={"Authorization": authorization} if authorization else None)
        self.pool.run_all()
        return client

    def test_no_credentials(self) -> None:
        """An authenticated backend answers 401 with a Basic challenge; nothing goes upstream."""
        self.gate.set_access(self.h.backend, AUTHENTICATED)
        answer = self.get().answer()
        self.assertEqual(answer.status, 401)
        self.assertEqual(answer.header("WWW-Authenticate"), 'Basic realm="artifactvault", charset="UTF-8"')
        self.assertEqual(self.h.requests, [])

    def test_password_then_cached(self) -> None:
        """The right password is let in after a bcrypt check in the pool; the next request needs none."""
        self.gate.set_access(self.h.backend, AUTHENTICATED)
        client = self.h.get("/files/a.tar.gz", headers={"Authorization": basic("alice", "secret")})
        self.assertFalse(client.has_answer())
        self.assertEqual(self.h.requests, [])
        self.assertEqual(self.pool.names(), ["check"])
        self.pool.run_all()
        self.h.requests[-1].respond(200, b"body")
        self.assertEqual(client.answer().body, b"body")
        again = self.h.get("/files/a.tar.gz", headers={"Authorization": basic("alice", "secret")})
        self.assertEqual(self.pool.names(), [])
        self.assertEqual(again.answer().body, b"body")
        lines = [e for e in self.events if "request_line" in e]
        self.assertEqual([e["user"] for e in lines], ["alice", "alice"])
        self.assertIn(" user=alice", lines[-1]["request_line"])

    def test_authorization_not_passed_on(self) -> None:
        """The client's Authorization is the vault's: taken off the request before the backend sees it."""
        self.gate.set_access(self.h.backend, OPEN)
        seen = []
        handle = self.h.backend.handle
        self.h.backend.handle = lambda responder, segments: (  # type: ignore[method-assign]
            seen.append(responder.request.getHeader(b"authorization")), handle(responder, segments))
        self.get(basic("alice", "secret"))
        self.assertEqual(seen, [None])
        self.assertIsNone(self.h.requests[-1].header("authorization"))

    def test_wrong_password(self) -> None:
        """A wrong password is 401, logged with the user and address, never the password."""
        self.gate.set_access(self.h.backend, AUTHENTICATED)
        answer = self.get(basic("alice", "hunter2")).answer()
        self.assertEqual(answer.status, 401)
        self.assertIn("WWW-Authenticate", answer.headers)
        text = "\n".join(formatEvent(e) for e in self.events)
        self.assertIn("authentication failed for user alice from", text)
        self.assertNotIn("hunter2", text)
        self.assertNotIn(base64.b64encode(b"alice:hunter2").decode(), text)

    def test_bearer_token(self) -> None:
        """A bearer token is let in; a wrong one is 401 and the token is not logged."""
        self.gate.set_access(self.h.backend, AUTHENTICATED)
        self.get(f"Bearer {TOKEN}")
        self.h.requests[-1].respond(200, b"body")
        self.assertEqual(self.get(f"Bearer {TOKEN}x").answer().status, 401)
        self.assertNotIn(TOKEN, "\n".join(formatEvent(e) for e in self.events))

    def test_list(self) -> None:
        """A list admits its users and its groups' users; another user gets 403, anonymous 401."""
        self.gate.set_access(self.h.backend, Access(Kind.LISTED, frozenset({"bob", "builders"})))
        self.assertEqual(self.get(basic("alice", "secret")).answer().status, 403)
        self.assertEqual(self.get().answer().status, 401)
        self.get(f"Bearer {TOKEN}")  # ci, a builder
        self.get(basic("bob", "secret"), "/files/b")
        self.assertEqual(len(self.h.requests), 2)
        self.assertEqual(self.gate.denied, 1)

    def test_anonymous_ignores_credentials(self) -> None:
        """An anonymous backend does not check credentials: wrong ones are no failure."""
        self.gate.set_access(self.h.backend, OPEN)
        self.get(basic("alice", "wrong"))
        self.assertEqual(self.pool.names(), [])
        self.assertEqual(len(self.h.requests), 1)

    def test_rate_limited(self) -> None:
        """After max_failures from one address: 429 with Retry-After, without a bcrypt check;
        credentials verified before still pass; after the window, checks again."""
        self.gate.set_access(self.h.backend, AUTHENTICATED)
        self.get(basic("alice", "secret"))
        self.h.requests[-1].respond(200, b"body")
        for _ in range(3):
            self.assertEqual(self.get(basic("alice", "guess")).answer().status, 401)
        client = self.h.get("/files/a.tar.gz", headers={"Authorization": basic("bob", "secret")})
        self.assertEqual(self.pool.names(), [])
        answer = client.answer()
        self.assertEqual((answer.status, answer.header("Retry-After")), (429, "60"))
        self.assertEqual(self.get(basic("alice", "secret")).answer().body, b"body")
        self.assertEqual(self.get().answer().status, 401, "no credentials: asked for them, not limited")
        self.h.clock.advance(60)
        self.assertEqual(self.get(basic("bob", "secret")).answer().body, b"body")
        self.assertEqual((self.gate.failures, self.gate.limited), (3, 1))

    def test_client_leaves_during_check(self) -> None:
        """A client that leaves while its password is checked gets nothing, and nothing goes upstream."""
        self.gate.set_access(self.h.backend, AUTHENTICATED)
        client = self.h.get("/files/a.tar.gz", headers={"Authorization": basic("alice", "secret")})
        client.leave()
        self.pool.run_all()
        self.assertEqual(self.h.requests, [])
        self.assertEqual(client.received, b"")

    def test_proxy_request(self) -> None:
        """A request to the vault as a proxy (apt's Acquire::http::Proxy) is asked with a 407 and
        Proxy-Authenticate, and logs in with Proxy-Authorization (taken off the request too)."""
        self.gate.set_access(self.h.backend, AUTHENTICATED)
        self.h.site.resource.route_absolute = lambda uri: b"/files/a.deb"  # type: ignore[attr-defined]
        answer = self.get(path="http://deb.example/debian/a.deb").answer()
        self.assertEqual(answer.status, 407)
        self.assertTrue(answer.header("Proxy-Authenticate").startswith("Basic realm="))
        self.assertIsNone(answer.header("WWW-Authenticate"))
        self.h.get("http://deb.example/debian/a.deb", headers={"Proxy-Authorization": basic("alice", "secret")})
        self.pool.run_all()
        self.assertEqual(self.h.requests[-1].url, self.h.url("a.deb"))
        self.assertIsNone(self.h.requests[-1].header("proxy-authorization"))

    def test_page_client_leaves_during_check(self) -> None:
        """A page's client that leaves while its password is checked: the page is not rendered."""
        rendered = []
        page = Resource()
        page.render_GET = lambda request: rendered.append(request) or b"x"  # type: ignore[method-assign]
        self.h.site.resource.children[b"-"].putChild(b"status", Guarded(page, AUTHENTICATED))
        client = self.h.get("/-/status", headers={"Authorization": basic("alice", "secret")})
        client.leave()
        self.pool.run_all()
        self.assertEqual(rendered, [])
        self.assertEqual(self.flushLoggedErrors(), [])

    def test_pages(self) -> None:
        """A guarded page follows its access (401 then 200, also after a bcrypt check); health stays open."""
        page = Resource()
        page.render_GET = lambda request: b"metrics\n"  # type: ignore[method-assign]
        self.h.site.resource.children[b"-"].putChild(b"metrics", Guarded(page, AUTHENTICATED))
        self.assertEqual(self.get(path="/-/metrics").answer().status, 401)
        self.assertEqual(self.get(basic("alice", "secret"), "/-/metrics").answer().body, b"metrics\n")
        self.assertEqual(self.get(path="/-/health").answer().status, 200)
        self.assertEqual(self.get(path="/").answer().status, 401, "the list of backends follows auth.pages too")
        self.assertIn(b"/files/", self.get(basic("alice", "secret"), "/").answer().body)

    def test_registry_version_check(self) -> None:
        """/v2/ asks for Basic credentials when a registry backend needs them, and is 200 with them."""
        api = RegistryApi()
        registry = type("R", (), {"mirror": False, "prefix": "/hub/"})()
        api.add(registry)
        self.h.site.resource.putChild(b"v2", api)
        self.gate.set_access(registry, OPEN)
        self.assertEqual(self.get(path="/v2/").answer().status, 200)
        self.gate.set_access(registry, AUTHENTICATED)
        answer = self.get(path="/v2/").answer()
        self.assertEqual(answer.status, 401)
        self.assertIn(b'"UNAUTHORIZED"', answer.body)
        self.assertTrue(answer.header("WWW-Authenticate").startswith("Basic realm="))
        self.assertEqual(self.get(basic("alice", "secret"), "/v2/").answer().status, 200)
