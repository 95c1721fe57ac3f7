"""Docker token auth with an upstream registry: challenges, tokens, where credentials go."""

from __future__ import annotations

import base64
import json

from treq.testing import StubTreq
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.resource import Resource

from zope.interface.verify import verifyObject

from artifactvault.backends.registry_auth import (MAX_TOKEN_ANSWER, MAX_TOKENS, TokenAuth, _Token,
                                                  parse_challenge, scope_for)
from artifactvault.ratelimit import FAILURE_BACKOFF
from artifactvault.upstream import IUpstreamAuth, Upstream, UpstreamError, UpstreamTimeout
from tests.fakes import FakeClient

REGISTRY = "https://registry.test"
MANIFEST = REGISTRY + "/v2/library/alpine/manifests/latest"


class ChallengeTests(SynchronousTestCase):
    def test_docker_hub(self) -> None:
        """Docker Hub's challenge: quoted params, the scope's colons and slash kept."""
        self.assertEqual(
            parse_challenge('Bearer realm="https://auth.docker.io/token",service="registry.docker.io",'
                            'scope="repository:library/alpine:pull"'),
            ("bearer", {"realm": "https://auth.docker.io/token", "service": "registry.docker.io",
                        "scope": "repository:library/alpine:pull"}))

    def test_commas_spaces_escapes(self) -> None:
        """Commas inside quotes, spaces around '=' and ',', escaped quotes, unquoted tokens, any case."""
        self.assertEqual(
            parse_challenge('bearer  realm = "https://a/t" , scope="repository:x/y:pull,push", '
                            'error=insufficient_scope, note="say \\"hi\\""'),
            ("bearer", {"realm": "https://a/t", "scope": "repository:x/y:pull,push",
                        "error": "insufficient_scope", "note": 'say "hi"'}))

    def test_unreadable(self) -> None:
        """Garbage is None, not an exception."""
        for value in ("", "Bearer realm=\"unterminated", "Bearer ,,,", "=x"):
            self.assertIsNone(parse_challenge(value), value)

    def test_scope_for(self) -> None:
        """The pull scope of a registry API URL (the referrers API's too, so its token is fetched ahead like the others'); none for other URLs."""
        self.assertEqual(scope_for(MANIFEST), "repository:library/alpine:pull")
        self.assertEqual(scope_for(REGISTRY + "/v2/a/b/c/blobs/sha256:00"), "repository:a/b/c:pull")
        self.assertEqual(scope_for(REGISTRY + "/v2/x/tags/list"), "repository:x:pull")
        self.assertEqual(scope_for(REGISTRY + "/v2/x/y/referrers/sha256:00?artifactType=a%2Fb"),
                         "repository:x/y:pull")
        self.assertIsNone(scope_for(REGISTRY + "/v2/"))


class FakeHosts(Resource):
    """A registry that wants a token, its token realm, and a CDN, told apart by Host."""

    isLeaf = True

    def __init__(self, realm: str = "https://auth.test/token") -> None:
        super().__init__()
        self.realm = realm
        self.seen: list[tuple[str, str, str | None]] = []  # (host, path?query, authorization)
        self.token_status = 200
        self.answer: dict = {"expires_in": 300}
        self.send_token = True
        self.issued = 0

    def render_GET(self, request):
        host = request.getHeader(b"host").decode()
        auth = request.getHeader(b"authorization")
        self.seen.append((host, request.uri.decode(), auth.decode() if auth else None))
        if host == "auth.test" or host == "registry.test" and request.path == b"/token":
            if self.token_status != 200:
                request.setResponseCode(self.token_status)
                return b"{}"
            if not self.send_token:
                return b'{"expires_in": 10}'
            self.issued += 1
            return json.dumps({**self.answer, "token": f"tok-{self.issued}"}).encode()
        if host == "cdn.test":
            return b"blob bytes"
        if not (auth or b"").startswith(b"Bearer tok-"):
            request.setResponseCode(401)
            request.setHeader(b"www-authenticate",
                              f'Bearer realm="{self.realm}",service="reg",'
                              f'scope="repository:library/alpine:pull"'.encode())
            return b""
        if b"/blobs/" in request.path:
            request.setResponseCode(307)
            request.setHeader(b"location", b"https://cdn.test/blob?sig=1")
            return b""
        return b"{}"

    def to(self, host: str) -> list[tuple[str, str, str | None]]:
        return [s for s in self.seen if s[0] == host]


class TokenAuthTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.hosts = FakeHosts()
        self.stub = StubTreq(self.hosts)

    def upstream(self, **creds) -> tuple[Upstream, TokenAuth]:
        auth = TokenAuth(REGISTRY, self.stub, self.clock, **creds)
        return Upstream(self.stub, self.clock, auth=auth), auth

    def get(self, upstream: Upstream, url: str = MANIFEST):
        d = Deferred.fromCoroutine(upstream.request("GET", url))
        self.stub.flush()
        return self.successResultOf(d)

    def test_challenge_token_retry(self) -> None:
        """A 401 with a Bearer challenge: an anonymous token for the challenged scope and service, then the retry succeeds."""
        upstream, _ = self.upstream()
        self.assertEqual(self.get(upstream).code, 200)
        realm = self.hosts.to("auth.test")
        self.assertEqual(len(realm), 1)
        self.assertIn("service=reg", realm[0][1])
        self.assertIn("scope=repository%3Alibrary%2Falpine%3Apull", realm[0][1])
        self.assertIsNone(realm[0][2])
        self.assertEqual(self.hosts.to("registry.test")[-1][2], "Bearer tok-1")

    def test_token_cached_until_expiry(self) -> None:
        """A token is reused for its scope until shortly before expires_in runs out; then, the realm being known, a new one is fetched before the request (no 401)."""
        upstream, _ = self.upstream()
        self.get(upstream)
        self.clock.advance(260)
        self.get(upstream)
        self.assertEqual(self.hosts.issued, 1)
        registry_requests = len(self.hosts.to("registry.test"))
        self.clock.advance(20)  # 280 s: inside the margin before 300
        self.assertEqual(self.get(upstream).code, 200)
        self.assertEqual(self.hosts.issued, 2)
        self.assertEqual(len(self.hosts.to("registry.test")), registry_requests + 1)
        self.assertEqual(self.hosts.to("registry.test")[-1][2], "Bearer tok-2")

    def test_default_lifetime(self) -> None:
        """A token answer without expires_in lives 60 s (the spec's default)."""
        self.hosts.answer = {"access_token": "x"}
        upstream, _ = self.upstream()
        self.get(upstream)
        self.clock.advance(50)
        self.get(upstream)
        self.assertEqual(self.hosts.issued, 1)
        self.clock.advance(10)
        self.get(upstream)
        self.assertEqual(self.hosts.issued, 2)

    def test_one_request_per_scope(self) -> None:
        """Concurrent requests that need the same scope's token share one token request."""
        upstream, _ = self.upstream()
        self.get(upstream)
        self.clock.advance(400)
        ds = [Deferred.fromCoroutine(upstream.request("GET", MANIFEST)) for _ in range(5)]
        self.stub.flush()
        self.assertEqual([self.successResultOf(d).code for d in ds], [200] * 5)
        self.assertEqual(self.hosts.issued, 2)

    def test_credentials_only_to_the_realm(self) -> None:
        """Basic credentials go to an https realm, never to the registry; the token never goes to the CDN a blob redirects to."""
        upstream, auth = self.upstream(username="u", password="p")
        response = self.get(upstream, REGISTRY + "/v2/library/alpine/blobs/sha256:00")
        self.assertEqual(response.code, 200)
        basic = "Basic " + base64.b64encode(b"u:p").decode()
        self.assertEqual({s[2] for s in self.hosts.to("auth.test")}, {basic})
        self.assertNotIn(basic, {s[2] for s in self.hosts.to("registry.test")})
        self.assertEqual([s[2] for s in self.hosts.to("cdn.test")], [None])
        self.assertNotIn("p", repr(auth))

    def test_no_credentials_to_plain_http_elsewhere(self) -> None:
        """A realm on another host over plain http gets no credentials: the token is asked anonymously."""
        self.hosts.realm = "http://auth.test/token"
        upstream, _ = self.upstream(username="u", password="p")
        self.get(upstream)
        self.assertEqual([s[2] for s in self.hosts.to("auth.test")], [None])

    def test_same_host_realm_gets_credentials(self) -> None:
        """A plain-http realm on the registry's own host (a local registry) does get them."""
        self.hosts.realm = "http://registry.test/token"
        upstream, _ = self.upstream(username="u", password="p")
        self.get(upstream)
        token_requests = [s for s in self.hosts.to("registry.test") if s[1].startswith("/token")]
        self.assertEqual([s[2] for s in token_requests], ["Basic " + base64.b64encode(b"u:p").decode()])

    def test_refused_token(self) -> None:
        """A realm that refuses (wrong password): the upstream's 401 is the answer, no loop."""
        self.hosts.token_status = 401
        upstream, _ = self.upstream(username="u", password="wrong")
        self.assertEqual(self.get(upstream).code, 401)
        self.assertEqual(len(self.hosts.to("auth.test")), 1)

    def test_broken_token_answer(self) -> None:
        """A 200 without a token is an UpstreamError naming the realm's host."""
        self.hosts.send_token = False
        upstream, _ = self.upstream()
        d = Deferred.fromCoroutine(upstream.request("GET", MANIFEST))
        self.stub.flush()
        failure = self.failureResultOf(d, UpstreamError)
        self.assertIn("auth.test", failure.value.reason)

    def test_other_origin_gets_nothing(self) -> None:
        """headers_for never gives a token for another origin."""
        _, auth = self.upstream()
        self.assertEqual(auth.headers_for("https://cdn.test/v2/library/alpine/blobs/sha256:00"), {})

    def test_unfetchable_realm(self) -> None:
        """A challenge whose realm is no http(s) URL is not answered: the 401 stands, nothing else is asked."""
        for realm in ("ftp://auth.test/token", "/token", "https://[::1/token"):
            with self.subTest(realm=realm):
                self.hosts.realm = realm
                upstream, _ = self.upstream()
                self.assertEqual(self.get(upstream).code, 401)
                self.assertEqual(self.hosts.to("auth.test"), [])

    def test_provides_interface(self) -> None:
        """TokenAuth is an IUpstreamAuth."""
        _, auth = self.upstream()
        self.assertTrue(verifyObject(IUpstreamAuth, auth))


CHALLENGE = 'Bearer realm="https://auth.test/token",service="reg",scope="repository:library/alpine:pull"'


class TokenDeadlineTests(SynchronousTestCase):
    """A token realm that stalls or sends too much: every wait ends, no scope stays wedged."""

    def setUp(self) -> None:
        self.clock, self.client = Clock(), FakeClient()
        self.auth = TokenAuth(REGISTRY, self.client, self.clock, timeout=10)
        self.upstream = Upstream(self.client, self.clock, auth=self.auth, timeout=10)

    def challenged(self) -> Deferred:
        """A manifest request, answered 401: the token request is now the last one."""
        d = Deferred.fromCoroutine(self.upstream.request("GET", MANIFEST))
        self.client.last.respond(401, b"", headers={"WWW-Authenticate": CHALLENGE})
        self.assertTrue(self.client.last.url.startswith("https://auth.test/token?"))
        return d

    def test_token_body_stalls(self) -> None:
        """A token answer that stops mid-body: 504 within the timeout, its connection cut; the next request gets a token."""
        d = self.challenged()
        token = self.client.last.respond(200, headers={"Content-Type": "application/json"}, length=40)
        token.send(b'{"token": "tok-')
        self.clock.advance(10)
        self.failureResultOf(d, UpstreamTimeout)
        self.assertTrue(token.transport.stopped)
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.clock.advance(FAILURE_BACKOFF)  # (the upstream's back-off after the timeout)
        d = Deferred.fromCoroutine(self.upstream.request("GET", MANIFEST))  # (the realm known: token first)
        self.assertTrue(self.client.last.url.startswith("https://auth.test/token?"))
        self.client.last.respond(200, b'{"token": "tok-2", "expires_in": 300}')
        self.client.last.respond(200, b"{}")
        self.assertEqual(self.client.last.header("authorization"), "Bearer tok-2")
        self.assertEqual(self.successResultOf(d).code, 200)

    def test_token_body_too_big(self) -> None:
        """A token answer of unknown length is refused as soon as it passes the limit, its connection cut."""
        d = self.challenged()
        token = self.client.last.respond(200)
        token.send(b'{"token": "' + b"x" * MAX_TOKEN_ANSWER)
        failure = self.failureResultOf(d, UpstreamError)
        self.assertIn("larger than", failure.value.reason)
        self.assertTrue(token.transport.stopped)

    def test_auth_bug_propagates(self) -> None:
        """A bug in the token flow (here: a KeyError) is not turned into an upstream error."""
        def broken(key: str, scope: str) -> None:
            raise KeyError(scope)
        self.auth._fetch = broken  # type: ignore[method-assign]
        d = Deferred.fromCoroutine(self.upstream.request("GET", MANIFEST))
        self.client.last.respond(401, b"", headers={"WWW-Authenticate": CHALLENGE})
        self.failureResultOf(d, KeyError)


class TokenCacheTests(SynchronousTestCase):
    """The token cache does not grow without end."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.auth = TokenAuth(REGISTRY, None, self.clock)

    def test_expired_dropped(self) -> None:
        """Tokens past their time are dropped when a new one is kept."""
        self.auth._keep("a", _Token("ta", 100))
        self.auth._keep("b", _Token("tb", 300))
        self.clock.advance(200)
        self.auth._keep("c", _Token("tc", 500))
        self.assertEqual(sorted(self.auth._tokens), ["b", "c"])

    def test_bounded(self) -> None:
        """At most MAX_TOKENS are kept; the oldest go first."""
        for i in range(MAX_TOKENS + 5):
            self.auth._keep(f"s{i}", _Token("t", 1000))
        self.assertEqual(len(self.auth._tokens), MAX_TOKENS)
        self.assertNotIn("s4", self.auth._tokens)
        self.assertIn("s5", self.auth._tokens)
