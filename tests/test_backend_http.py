"""
Tests for L{artifactvault.backends.http}: C{<prefix><path>} is
C{<base_url>/<path>}, cached forever unless a ttl says otherwise.
"""

from __future__ import annotations

from email.utils import formatdate
from urllib.parse import quote

from hypothesis import given, strategies as st

from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from artifactvault.backends import backend_type
from artifactvault.backends.base import BuildContext, IBackend, IBackendType
from artifactvault.backends.http import SEGMENT_SAFE, Freshness, HttpBackend, HttpBackendType, upstream_path
from artifactvault.config import ConfigError, Section
from artifactvault.httpcache import Mode
from artifactvault.root import Root
from artifactvault.site import VaultSite
from tests.fakes import Client, Harness
from tests.headers import bounded


def settings(**config: object):  # type: ignore[no-untyped-def]
    data = {"prefix": "/maven/", "base_url": "https://repo.test/maven2/", **config}
    return HttpBackendType.parse(Section("f.yml", "backends[0].config", data))


class HttpBackendTests(SynchronousTestCase):

    def setUp(self) -> None:
        self.harness = Harness(self)

    def backend(self, **config: object) -> HttpBackend:
        context = BuildContext(vault=self.harness.vault, reactor=self.harness.clock,
                               client=self.harness.upstream_client)
        return HttpBackendType.build(settings(**config), context)

    def get(self, backend: HttpBackend, path: bytes, method: bytes = b"GET") -> Client:
        site = VaultSite(Root([backend]), reactor=self.harness.clock)
        return Client(site, self.harness.clock, path, method)

    def test_interfaces(self) -> None:
        """The type provides IBackendType under the name 'http'; its backends provide IBackend."""
        self.assertTrue(verifyObject(IBackendType, HttpBackendType))
        self.assertIs(backend_type("http"), HttpBackendType)
        self.assertTrue(verifyObject(IBackend, self.backend()))

    def test_url(self) -> None:
        """The path below the prefix is appended to base_url, re-quoted."""
        self.get(self.backend(), b"/maven/org/a%20b/x.jar")
        self.assertEqual(self.harness.requests[0].url, "https://repo.test/maven2/org/a%20b/x.jar")

    def test_query_is_part_of_key(self) -> None:
        """The query string is passed on, and differing queries are different artifacts."""
        backend = self.backend()
        self.get(backend, b"/maven/x?v=1")
        self.get(backend, b"/maven/x?v=2")
        self.assertEqual([r.url for r in self.harness.requests],
                         ["https://repo.test/maven2/x?v=1", "https://repo.test/maven2/x?v=2"])

    def test_prefix_root(self) -> None:
        """The prefix itself is a 404 that says what to ask for."""
        answer = self.get(self.backend(), b"/maven/").answer()
        self.assertEqual((answer.status, answer.body), (404, b"nothing here: ask for /maven/<path>\n"))
        self.assertEqual(self.harness.requests, [])

    def test_serves_and_caches(self) -> None:
        """A file fetched once is a hit afterwards (immutable by default)."""
        backend = self.backend()
        client = self.get(backend, b"/maven/a.jar")
        self.harness.requests[0].respond(200, b"jar")
        self.assertEqual(client.answer().body, b"jar")
        self.harness.clock.advance(10 ** 8)
        self.assertEqual(self.get(backend, b"/maven/a.jar").answer().header("X-Cache"), "HIT")

    def test_ttl_rules(self) -> None:
        """The first matching ttl rule wins; otherwise the backend's ttl; otherwise immutable."""
        backend = self.backend(ttl="1h", ttl_rules=[{"match": "*/maven-metadata.xml", "ttl": "10m"},
                                                    {"match": "*.xml", "ttl": 60}])
        self.assertEqual(backend.ttl_for("org/x/maven-metadata.xml"), 600)
        self.assertEqual(backend.ttl_for("org/x/pom.xml"), 60)
        self.assertEqual(backend.ttl_for("org/x/a.jar"), 3600)
        self.assertIsNone(self.backend().ttl_for("a.jar"))

    def test_freshness(self) -> None:
        """freshness per backend and per rule; ttl is a fixed freshness; both at once, or another word, are refused."""
        backend = self.backend(freshness="upstream", ttl_rules=[{"match": "*.jar", "freshness": "immutable"},
                                                                {"match": "*.xml", "ttl": 60}])
        self.assertEqual(backend.freshness_for("a/b.jar"), Freshness(Mode.IMMUTABLE))
        self.assertEqual(backend.freshness_for("a/m.xml"), Freshness(Mode.TTL, 60.0))
        self.assertEqual(backend.freshness_for("a/latest"), Freshness(Mode.UPSTREAM))
        self.assertEqual(self.backend().freshness_for("x"), Freshness(Mode.IMMUTABLE))
        for config, message in [({"ttl": 5, "freshness": "upstream"}, "config.freshness: give ttl or freshness"),
                                ({"freshness": "sometimes"}, "config.freshness: must be one of immutable, upstream"),
                                ({"ttl_rules": [{"match": "*"}]}, "ttl_rules[0].ttl: required (or freshness)")]:
            with self.assertRaises(ConfigError) as caught:
                settings(**config)
            self.assertIn(message, str(caught.exception))

    def test_ttl_applied(self) -> None:
        """A file with a ttl is revalidated once it has passed."""
        backend = self.backend(ttl_rules=[{"match": "*.xml", "ttl": 60}])
        self.get(backend, b"/maven/m.xml")
        self.harness.requests[0].respond(200, b"<m/>", headers={"ETag": '"1"'})
        self.harness.clock.advance(61)
        self.get(backend, b"/maven/m.xml")
        self.assertEqual(self.harness.requests[1].header("If-None-Match"), '"1"')

    def test_credentials(self) -> None:
        """Configured credentials are sent to base_url's origin."""
        self.get(self.backend(token="t0ken"), b"/maven/a.jar")
        self.assertEqual(self.harness.requests[0].header("Authorization"), "Bearer t0ken")

    def test_upstream_path_quoting(self) -> None:
        """Characters that need it are percent-encoded; sub-delimiters are kept."""
        self.assertEqual(upstream_path(["a b", "c+d@e", "f?g#h", "\u00e9"]), "a%20b/c+d@e/f%3Fg%23h/%C3%A9")

    @bounded(500)
    @given(st.lists(st.text(alphabet=st.sampled_from("aZ09/%?#@:+ ~._-!$&'()*,;=\u00e9\x00\t[]"), max_size=12),
                    max_size=5))
    def test_upstream_path_as_quoted(self, segments: list[str]) -> None:
        """The plain-path shortcut gives what quoting each segment gives, whatever the segments."""
        self.assertEqual(upstream_path(segments), "/".join(quote(s, safe=SEGMENT_SAFE) for s in segments))


def http_date(t: float) -> str:
    return formatdate(t, usegmt=True)


class UpstreamFreshnessTests(SynchronousTestCase):
    """freshness: upstream, on a controlled clock: RFC 9111 as a shared cache does it."""

    def setUp(self) -> None:
        self.harness = Harness(self)
        context = BuildContext(vault=self.harness.vault, reactor=self.harness.clock,
                               client=self.harness.upstream_client)
        self.backend = HttpBackendType.build(settings(freshness="upstream", backoff=0), context)
        self.site = VaultSite(Root([self.backend]), reactor=self.harness.clock)

    @property
    def clock(self):  # type: ignore[no-untyped-def]
        return self.harness.clock

    def get(self, path: str = "/maven/a", headers: dict[str, str] | None = None, method: bytes = b"GET") -> Client:
        return Client(self.site, self.clock, path.encode(), method, headers)

    def fetch(self, body: bytes = b"body", headers: dict[str, str] | None = None, path: str = "/maven/a",
              request: dict[str, str] | None = None, status: int = 200):  # type: ignore[no-untyped-def]
        """A request that reaches the upstream, answered at once; the client's answer."""
        asked = len(self.harness.requests)
        client = self.get(path, request)
        self.assertEqual(len(self.harness.requests), asked + 1, "the upstream was not asked")
        self.harness.requests[-1].respond(status, body, {"Date": http_date(self.clock.seconds()), **(headers or {})})
        self.clock.advance(0)
        return client.answer()

    def hit(self, path: str = "/maven/a", request: dict[str, str] | None = None):  # type: ignore[no-untyped-def]
        """A request answered without the upstream; the client's answer."""
        asked = len(self.harness.requests)
        answer = self.get(path, request).answer()
        self.assertEqual(len(self.harness.requests), asked, "the upstream was asked")
        return answer

    def test_max_age_then_revalidation(self) -> None:
        """Fresh for max-age (Age counting up), then revalidated with its ETag; a 304 makes it fresh again."""
        self.fetch(headers={"Cache-Control": "max-age=60", "ETag": '"1"'})
        self.clock.advance(30)
        answer = self.hit()
        self.assertEqual((answer.body, answer.header("X-Cache"), answer.header("Age")), (b"body", "HIT", "30"))
        self.clock.advance(31)
        client = self.get()
        self.assertEqual(self.harness.requests[-1].header("If-None-Match"), '"1"')
        self.harness.requests[-1].respond(304, b"", {"Cache-Control": "max-age=100", "X-New": "yes"})
        answer = client.answer()
        self.assertEqual((answer.status, answer.body, answer.header("X-New")), (200, b"body", "yes"))
        self.clock.advance(99)
        self.assertEqual(self.hit().header("Cache-Control"), "max-age=100")

    def test_upstream_age_and_date_count(self) -> None:
        """The Age it came with counts: max-age=100 with Age: 90 is fresh for 10 s more, and says Age: 95 at 5 s."""
        self.fetch(headers={"Cache-Control": "max-age=100", "Age": "90"})
        self.clock.advance(5)
        self.assertEqual(self.hit().header("Age"), "95")
        self.clock.advance(6)
        self.fetch(headers={"Cache-Control": "max-age=100"})

    def test_nothing_to_go_by_is_not_reused(self) -> None:
        """No freshness, no validator: stored, but every request asks the upstream again."""
        self.fetch()
        self.fetch(body=b"again")

    def test_heuristic_freshness(self) -> None:
        """Last-Modified ten days back and nothing explicit: fresh for a day (10 %, at most a day)."""
        now = self.clock.seconds()
        self.fetch(headers={"Last-Modified": http_date(now - 10 * 86400)})
        self.clock.advance(86399)
        self.hit()
        self.clock.advance(2)
        self.assertEqual(len(self.harness.requests), 1)
        self.get()
        self.assertIn("If-Modified-Since", {k.title() for k in self.harness.requests[-1].headers})

    def test_expires(self) -> None:
        """Expires - Date is the lifetime; an invalid Expires is already past."""
        now = self.clock.seconds()
        self.fetch(headers={"Expires": http_date(now + 50)})
        self.clock.advance(49)
        self.hit()
        self.clock.advance(2)
        self.fetch(headers={"Expires": "0"})
        self.fetch(body=b"again")

    def test_no_store_and_private_are_not_stored(self) -> None:
        """no-store and private answers are relayed and dropped: every request goes upstream."""
        for cc in ("no-store, max-age=60", "private, max-age=60"):
            path = f"/maven/{cc[:2]}"
            self.fetch(headers={"Cache-Control": cc}, path=path)
            self.fetch(headers={"Cache-Control": cc}, path=path)
            self.assertIsNone(self.harness.store.lookup(f"https://repo.test/maven2/{cc[:2]}"))

    def test_no_cache_always_revalidates(self) -> None:
        """no-cache: stored, but never served before the upstream confirmed it."""
        self.fetch(headers={"Cache-Control": "max-age=600, no-cache", "ETag": '"a"'})
        client = self.get()
        self.assertEqual(self.harness.requests[-1].header("If-None-Match"), '"a"')
        self.harness.requests[-1].respond(304, b"")
        self.assertEqual(client.answer().body, b"body")

    def test_client_directives(self) -> None:
        """A client's no-cache and max-age (beyond the age) revalidate; max-stale takes a stale copy."""
        self.fetch(headers={"Cache-Control": "max-age=60", "ETag": '"a"'})
        self.clock.advance(10)
        self.hit(request={"Cache-Control": "max-age=20"})
        self.get(headers={"Cache-Control": "max-age=5"})
        self.harness.requests[-1].respond(304, b"", {"Cache-Control": "max-age=60"})
        self.get(headers={"Cache-Control": "no-cache"})
        self.harness.requests[-1].respond(304, b"", {"Cache-Control": "max-age=60"})
        self.clock.advance(100)
        answer = self.hit(request={"Cache-Control": "max-stale=50"})
        self.assertEqual((answer.body, answer.header("X-Cache")), (b"body", "STALE"))

    def test_only_if_cached(self) -> None:
        """only-if-cached: a stored answer that may be used, else 504 without asking the upstream."""
        answer = self.get(headers={"Cache-Control": "only-if-cached"}).answer()
        self.assertEqual((answer.status, self.harness.requests), (504, []))
        self.fetch(headers={"Cache-Control": "max-age=60"})
        self.assertEqual(self.hit(request={"Cache-Control": "only-if-cached"}).body, b"body")

    def test_stale_while_revalidate(self) -> None:
        """Within stale-while-revalidate the stale copy answers at once and one revalidation runs behind it."""
        self.fetch(headers={"Cache-Control": "max-age=1, stale-while-revalidate=60", "ETag": '"a"'})
        self.clock.advance(10)
        answer = self.get().answer()
        self.assertEqual((answer.body, answer.header("X-Cache")), (b"body", "STALE"))
        self.assertEqual(self.harness.requests[-1].header("If-None-Match"), '"a"')
        self.harness.requests[-1].respond(200, b"new", {"Cache-Control": "max-age=60"})
        self.assertEqual(self.hit().body, b"new")

    def test_must_revalidate_forbids_the_stale_copy(self) -> None:
        """When the upstream fails, a stale copy stands in, unless must-revalidate (or no-cache...) said no."""
        self.fetch(headers={"Cache-Control": "max-age=1"}, path="/maven/ok")
        self.fetch(headers={"Cache-Control": "max-age=1, must-revalidate"}, path="/maven/no")
        self.clock.advance(5)
        client = self.get("/maven/ok")
        self.harness.requests[-1].respond(503, b"down")
        self.assertEqual((client.answer().status, client.answer().body), (200, b"body"))
        client = self.get("/maven/no")
        self.harness.requests[-1].respond(503, b"down")
        self.assertEqual((client.answer().status, client.answer().body), (503, b"down"))

    def test_vary_keeps_variants(self) -> None:
        """An answer that varies on a request field is kept per value of it; the field is sent upstream."""
        vary = {"Cache-Control": "max-age=60", "Vary": "Accept-Language"}
        self.fetch(b"english", vary, request={"Accept-Language": "en"})
        self.assertEqual(self.harness.requests[-1].header("Accept-Language"), "en")
        self.fetch(b"deutsch", vary, request={"Accept-Language": "de"})
        self.assertEqual(self.hit(request={"Accept-Language": "en"}).body, b"english")
        self.assertEqual(self.hit(request={"Accept-Language": "de"}).body, b"deutsch")
        self.fetch(b"none", vary)

    def test_concurrent_variants_one_fetch_each(self) -> None:
        """Concurrent misses: one upstream request per variant; a request of another variant is not given the answer."""
        en1, en2 = self.get(headers={"Accept-Language": "en"}), self.get(headers={"Accept-Language": "en"})
        de = self.get(headers={"Accept-Language": "de"})
        self.assertEqual(len(self.harness.requests), 1)
        self.harness.requests[0].respond(200, b"english", {"Vary": "Accept-Language", "Cache-Control": "max-age=60"})
        self.assertEqual([en1.answer().body, en2.answer().body], [b"english", b"english"])
        self.assertEqual(len(self.harness.requests), 2)
        self.assertEqual(self.harness.requests[1].header("Accept-Language"), "de")
        self.harness.requests[1].respond(200, b"deutsch", {"Vary": "Accept-Language", "Cache-Control": "max-age=60"})
        self.assertEqual(de.answer().body, b"deutsch")

    def test_unshared_answer_is_not_given_to_joiners(self) -> None:
        """Requests that joined a download whose answer is private each get their own."""
        first, second = self.get(), self.get()
        self.harness.requests[0].respond(200, b"mine", {"Cache-Control": "private"})
        self.assertEqual(first.answer().body, b"mine")
        self.assertEqual(len(self.harness.requests), 2)
        self.harness.requests[1].respond(200, b"yours", {"Cache-Control": "private"})
        self.assertEqual(second.answer().body, b"yours")

    def test_authorization(self) -> None:
        """A client's Authorization goes upstream; the answer is stored only if it says public."""
        self.fetch(headers={"Cache-Control": "max-age=60"}, request={"Authorization": "Bearer t"})
        self.assertEqual(self.harness.requests[-1].header("Authorization"), "Bearer t")
        self.fetch(headers={"Cache-Control": "max-age=60, public"}, request={"Authorization": "Bearer t"})
        self.hit()

    def test_status_stored_when_fresh(self) -> None:
        """A 404 with max-age is stored and served as a 404 with its body; a 500 without freshness is not."""
        self.fetch(b"not here", {"Cache-Control": "max-age=60"}, status=404)
        answer = self.hit()
        self.assertEqual((answer.status, answer.body), (404, b"not here"))
        self.fetch(b"oops", path="/maven/b", status=500)
        self.fetch(b"oops", path="/maven/b", status=500)

    def test_if_modified_since_against_the_stored_date(self) -> None:
        """A stored answer with no Last-Modified: If-Modified-Since is held against its Date (RFC 9111 4.3.2)."""
        self.fetch(headers={"Cache-Control": "max-age=600"})
        date = http_date(self.clock.seconds())
        self.clock.advance(10)
        self.assertEqual(self.get(headers={"If-Modified-Since": date}).answer().status, 304)
        self.assertEqual(self.get(headers={"If-Modified-Since": http_date(self.clock.seconds() - 3600)}).answer().status,
                         200)

    def test_download_under_way_is_joined_only_while_fresh(self) -> None:
        """
        A request that comes once a download's answer has begun joins it only
        if that answer may be reused now: a stale-on-arrival one (max-age=0)
        makes it ask the upstream itself; a fresh one is shared.
        """
        first = self.get("/maven/stale")
        response = self.harness.requests[-1].respond(200, None, {"Cache-Control": "max-age=0"}, length=6)
        response.send(b"abc")
        second = self.get("/maven/stale")
        self.assertEqual(len(self.harness.requests), 2)
        self.harness.requests[-1].respond(200, b"second", {"Cache-Control": "max-age=0"})
        response.send(b"def").finish()
        self.assertEqual((first.answer().body, second.answer().body), (b"abcdef", b"second"))
        first = self.get("/maven/fresh")
        response = self.harness.requests[-1].respond(200, None, {"Cache-Control": "max-age=60"}, length=6)
        response.send(b"abc")
        second = self.get("/maven/fresh")
        self.assertEqual(len(self.harness.requests), 3)
        response.send(b"def").finish()
        self.assertEqual((first.answer().body, second.answer().body), (b"abcdef", b"abcdef"))
