"""
Tests for L{artifactvault.backends.http}: C{<prefix><path>} is
C{<base_url>/<path>}, cached forever unless a ttl says otherwise.
"""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from artifactvault.backends import backend_type
from artifactvault.backends.base import BuildContext, IBackend, IBackendType
from artifactvault.backends.http import HttpBackend, HttpBackendType, upstream_path
from artifactvault.config import Section
from artifactvault.root import Root
from artifactvault.site import VaultSite
from tests.fakes import Client, Harness


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
