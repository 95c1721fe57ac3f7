"""
The npm backend in memory: configuration, names and paths, package
documents (variants, tarball URLs per host, freshness, revalidation, stale
copies, no parsing on a hit, large ones off the reactor), tarballs
(verified, shared by concurrent requests, looked up again for a version
published since), the refused and relayed parts of npm's API. The same
through the real daemon with npm itself is in L{tests.test_npm_clients}.
"""

from __future__ import annotations

import gzip
import json
import os
from urllib.parse import urlsplit

from twisted.internet.error import ConnectionRefusedError
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from artifactvault import admin, slicedjson
from artifactvault.backends import npm_document as doc
from artifactvault.backends import parse_backend
from artifactvault.backends.base import BuildContext, IBackend, IBackendType
from artifactvault.backends.npm import NpmBackendType
from artifactvault.cache import store as storemod
from artifactvault.cache.store import FileStore
from artifactvault.config import BackendEntry, ConfigError, Section
from artifactvault.root import Root
from artifactvault.site import VaultSite
from artifactvault.vault import Vault
from tests.fakes import EPOCH, Answer, Client, FakeClient, ManualPool, RemoteBodies
from tests.test_npm_document import packument

REGISTRY = "http://registry.test/"
CORGI = "application/vnd.npm.install-v1+json; q=1.0, application/json; q=0.8, */*"
ONE, TWO, BASE = b"app one " * 50, b"app two " * 50, b"base tarball " * 40


def routes() -> dict[str, tuple[int, dict[str, str], bytes]]:
    """Upstream path -> (status, headers, body); packuments by Accept in L{Harness}."""
    return {
        "/av-app": (200, {"content-type": "application/json", "etag": '"app-1"'},
                    json.dumps(packument("av-app", {"1.0.0": ONE}, REGISTRY)).encode()),
        "/@av%2fbase": (200, {"content-type": "application/json"},
                        json.dumps(packument("@av/base", {"1.0.0": BASE}, REGISTRY)).encode()),
        "/av-app/-/av-app-1.0.0.tgz": (200, {"content-type": "application/octet-stream"}, ONE),
        "/av-app/-/av-app-1.1.0.tgz": (200, {"content-type": "application/octet-stream"}, TWO),
        "/@av/base/-/base-1.0.0.tgz": (200, {"content-type": "application/octet-stream"}, BASE),
    }


class Harness:
    """The npm backend behind a real site, its upstream answering from L{routes} when told to."""

    def __init__(self, testcase: SynchronousTestCase, pool: ManualPool | None = None,
                 after: "Harness | None" = None, remote: bool = False, **config: object):
        if after is None:
            self.clock = Clock()
            self.clock.advance(EPOCH)
            self.store = (RemoteBodies if remote else FileStore)(
                testcase.mktemp(), clock=self.clock.seconds, **({"run_blocking": pool.run} if pool else {}))
            self.store.open()
            testcase.addCleanup(self.store.close)
        else:
            self.clock, self.store = after.clock, after.store
        self.routes = routes()
        self.client = FakeClient()
        self.answered = 0
        context = BuildContext(vault=Vault(self.store, self.clock), reactor=self.clock, client=self.client)
        section = Section("t.yml", "backends[0].config", {"registry_url": REGISTRY, "metadata_ttl": 60, **config})
        self.backend = NpmBackendType.build(NpmBackendType.parse(section), context)
        self.site = VaultSite(Root([self.backend]), reactor=self.clock)

    def send(self, path: str, headers: dict[str, str] | None = None, method: bytes = b"GET",
             body: bytes | None = None) -> Client:
        """A client's request, not yet answered upstream."""
        headers = dict(headers or {})
        if body is not None:
            headers["content-length"] = str(len(body))
        client = Client(self.site, self.clock, path.encode(), method, headers)
        if body is not None:
            client.channel.dataReceived(body)
        return client

    def answer_all(self) -> None:
        """Answer every upstream request not yet answered, from L{routes} (anything else: 404)."""
        while self.answered < len(self.client.requests):
            request = self.client.requests[self.answered]
            self.answered += 1
            status, headers, body = self.routes.get(urlsplit(request.url).path, (404, {}, b'{"error":"nope"}'))
            if status == 200 and headers.get("etag") and request.header("if-none-match") == headers["etag"]:
                request.respond(304, b"", headers)
                continue
            request.respond(status, b"" if request.method == "HEAD" else body, headers)

    def get(self, path: str, headers: dict[str, str] | None = None, method: bytes = b"GET") -> Answer:
        client = self.send(path, headers, method)
        self.answer_all()
        return client.answer()

    def paths(self) -> list[str]:
        return [urlsplit(r.url).path for r in self.client.requests]

    def publish(self, name: str, versions: dict[str, bytes], etag: str) -> None:
        """The registry now has these versions (and their tarballs)."""
        path = "/" + doc.escaped(name)
        self.routes[path] = (200, {"content-type": "application/json", "etag": etag},
                             json.dumps(packument(name, versions, REGISTRY)).encode())
        for v, data in versions.items():
            self.routes[f"/{name}/-/{name.rpartition('/')[2]}-{v}.tgz"] = (200, {}, data)


class ConfigTests(SynchronousTestCase):
    def parse(self, config: dict) -> object:
        return NpmBackendType.parse(Section("c.yml", "backends[0].config", config))

    def test_defaults(self) -> None:
        """Prefix /npm/, the public registry npm uses by default, five minutes of freshness, no proxies."""
        s = self.parse({})
        self.assertEqual((s.prefix, s.registry_url, s.metadata_ttl, s.trusted_proxies),
                         ("/npm/", "https://registry.npmjs.org/", 300.0, []))

    def test_values(self) -> None:
        """registry_url gains its slash, durations and networks are read, credentials stay out of repr."""
        s = self.parse({"prefix": "/js", "registry_url": "http://h:1/npm", "metadata_ttl": "2m",
                        "trusted_proxies": ["10.0.0.0/8", "::1"], "token": "sekrit"})
        self.assertEqual((s.prefix, s.registry_url, s.metadata_ttl), ("/js/", "http://h:1/npm/", 120.0))
        self.assertEqual([str(n) for n in s.trusted_proxies], ["10.0.0.0/8", "::1/128"])
        self.assertNotIn("sekrit", repr(s))
        self.assertEqual(len(self.parse({"trusted_proxies": "127.0.0.1"}).trusted_proxies), 1)

    def test_errors_name_the_key(self) -> None:
        """Bad values stop the start with file and key in the message."""
        for config, key in [({"registry_url": "ftp://x/"}, "registry_url"),
                            ({"registry_url": "http://x/?a=1"}, "registry_url"),
                            ({"metadata_ttl": "soon"}, "metadata_ttl"),
                            ({"trusted_proxies": ["nope"]}, "trusted_proxies"),
                            ({"trusted_proxies": [1]}, "trusted_proxies")]:
            e = self.assertRaises(ConfigError, self.parse, config)
            self.assertTrue(str(e).startswith(f"c.yml: backends[0].config.{key}: "), str(e))

    def test_unknown_key(self) -> None:
        """A misspelt key is refused by the loader."""
        entry = BackendEntry("npm", Section("c.yml", "backends[0].config", {"metadata_tll": 5}))
        parse_backend(entry)
        self.assertRaises(ConfigError, entry.section.check_unknown)

    def test_interfaces(self) -> None:
        """The type and the backend provide the core's interfaces."""
        self.assertTrue(IBackendType.providedBy(NpmBackendType))
        verifyObject(IBackend, Harness(self).backend)


class PathTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.h = Harness(self)

    def test_bad_names_are_400(self) -> None:
        """Malformed names, tarball names and paths: 400 in npm's JSON, no upstream request."""
        for path in ("/npm/.x", "/npm/_x", "/npm/@av", "/npm/Bad%20Name", "/npm/@av%2f", "/npm/a%2fb",
                     "/npm/@av%2fbase%2fx", "/npm/av-app/-/x.tar", "/npm/av-app/-/..%2fx.tgz",
                     "/npm/av-app/-/%00.tgz", "/npm/..", "/npm/@av/..", "/npm/a//b"):
            r = self.h.get(path)
            self.assertEqual(r.status, 400, path)
            self.assertEqual(r.header("content-type"), "application/json", path)
            self.assertIn("error", json.loads(r.body), path)
        self.assertEqual(self.h.client.requests, [])

    def test_other_paths_are_404(self) -> None:
        """Shapes npm does not use here are a 404, without the upstream."""
        for path in ("/npm/", "/npm/av-app/1.0.0", "/npm/av-app/-", "/npm/-/whoami", "/npm/-/"):
            self.assertEqual(self.h.get(path).status, 404, path)
        self.assertEqual(self.h.client.requests, [])

    def test_ping(self) -> None:
        """npm ping is answered here, with JSON, uncached."""
        r = self.h.get("/npm/-/ping")
        self.assertEqual((r.status, json.loads(r.body), r.header("cache-control")), (200, {}, "no-store"))
        self.assertEqual(self.h.client.requests, [])

    def test_writes_refused(self) -> None:
        """Publishing, logging in, dist-tags, unpublishing: 405 with npm's JSON error and Allow."""
        for method, path in ((b"PUT", "/npm/av-app"), (b"PUT", "/npm/-/user/org.couchdb.user:me"),
                             (b"PUT", "/npm/-/package/av-app/dist-tags/latest"),
                             (b"DELETE", "/npm/-/package/av-app/dist-tags/latest"),
                             (b"DELETE", "/npm/av-app/-rev/3"), (b"POST", "/npm/-/v1/login")):
            r = self.h.send(path, method=method, body=b"{}").answer()
            self.assertEqual((r.status, r.header("allow")), (405, "GET, HEAD"), path)
            self.assertIn("read-only", json.loads(r.body)["error"])
        self.assertEqual(self.h.client.requests, [])


class PackumentTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.h = Harness(self)

    def test_tarballs_point_here(self) -> None:
        """
        Every dist.tarball is an absolute URL on the vault, from the request's
        Host; integrity, shasum and signatures are the registry's.
        """
        r = self.h.get("/npm/av-app", {"host": "vault.example:8080"})
        self.assertEqual((r.status, r.header("x-cache"), r.header("vary")), (200, "MISS", "Accept"))
        got = json.loads(r.body)
        upstream = json.loads(self.h.routes["/av-app"][2])
        dist = got["versions"]["1.0.0"]["dist"]
        self.assertEqual(dist["tarball"], "http://vault.example:8080/npm/av-app/-/av-app-1.0.0.tgz")
        for key in ("integrity", "shasum", "signatures"):
            self.assertEqual(dist[key], upstream["versions"]["1.0.0"]["dist"][key])
        self.assertEqual(int(r.header("content-length")), len(r.body))
        other = self.h.get("/npm/av-app", {"host": "10.1.2.3"})
        self.assertEqual(json.loads(other.body)["versions"]["1.0.0"]["dist"]["tarball"],
                         "http://10.1.2.3/npm/av-app/-/av-app-1.0.0.tgz")
        self.assertEqual((other.header("x-cache"), self.h.paths()), ("HIT", ["/av-app"]))
        self.assertNotEqual(other.header("etag"), r.header("etag"))

    def test_scoped_forms(self) -> None:
        """@scope%2fname and @scope/name are one document, fetched as @scope%2fname."""
        a = self.h.get("/npm/@av%2fbase")
        b = self.h.get("/npm/@av/base")
        self.assertEqual((a.status, b.status, a.body), (200, 200, b.body))
        self.assertEqual(self.h.paths(), ["/@av%2fbase"])
        self.assertEqual(json.loads(a.body)["versions"]["1.0.0"]["dist"]["tarball"],
                         "http://vault.test/npm/@av/base/-/base-1.0.0.tgz")

    def test_variants_cached_apart(self) -> None:
        """The abbreviated and full documents are two upstream requests, each with its Accept and type."""
        abbreviated = self.h.get("/npm/av-app", {"accept": CORGI})
        full = self.h.get("/npm/av-app", {"accept": "application/json"})
        self.assertEqual([r.header("accept") for r in self.h.client.requests], [CORGI, "application/json"])
        self.assertEqual((abbreviated.header("x-cache"), full.header("x-cache")), ("MISS", "MISS"))
        self.assertEqual(self.h.get("/npm/av-app", {"accept": CORGI}).header("x-cache"), "HIT")
        self.assertEqual(self.h.get("/npm/av-app").header("x-cache"), "HIT")
        self.assertEqual(len(self.h.client.requests), 2)
        self.assertNotEqual(abbreviated.header("etag"), full.header("etag"))

    def test_hit_parses_nothing(self) -> None:
        """A hit streams the stored template: no JSON is parsed, nothing goes upstream."""
        first = self.h.get("/npm/av-app")

        def no(*args: object, **kwargs: object) -> None:
            raise AssertionError("parsed JSON on a hit")
        self.patch(slicedjson, "loads", no)
        self.patch(json, "loads", no)
        self.patch(json, "load", no)
        again = self.h.get("/npm/av-app")
        self.assertEqual((again.header("x-cache"), again.body), ("HIT", first.body))

    def test_conditional_and_head(self) -> None:
        """If-None-Match with the ETag gets a 304; HEAD gets the GET's headers and no body."""
        r = self.h.get("/npm/av-app")
        again = self.h.get("/npm/av-app", {"if-none-match": r.header("etag")})
        self.assertEqual((again.status, again.body), (304, b""))
        head = self.h.get("/npm/av-app", method=b"HEAD")
        self.assertEqual((head.status, head.header("content-length"), head.body),
                         (200, r.header("content-length"), b""))

    def test_forwarded_only_from_trusted_proxies(self) -> None:
        """
        X-Forwarded-Host/-Proto make the base URL only when the peer is a
        trusted proxy (here 127.0.0.1 is not, then is), and then they vary the answer.
        """
        forwarded = {"x-forwarded-host": "npm.example.com", "x-forwarded-proto": "https"}
        r = self.h.get("/npm/av-app", forwarded)
        self.assertIn("http://vault.test/npm/av-app/-/", json.loads(r.body)["versions"]["1.0.0"]["dist"]["tarball"])
        trusting = Harness(self, trusted_proxies=["192.168.0.0/16"])
        self.patch(trusting.backend, "_trusted", lambda request: True)
        r = trusting.get("/npm/av-app", forwarded)
        self.assertEqual(json.loads(r.body)["versions"]["1.0.0"]["dist"]["tarball"],
                         "https://npm.example.com/npm/av-app/-/av-app-1.0.0.tgz")
        self.assertEqual(r.header("vary"), "Accept, X-Forwarded-Host, X-Forwarded-Proto")

    def test_trusted_peer(self) -> None:
        """Trust is by the peer's address: a listed network yes, anything else or no address no."""
        h = Harness(self, trusted_proxies=["10.0.0.0/8"])

        class Request:
            def __init__(self, host):
                self.host = host

            def getClientAddress(self):
                return self

        self.assertTrue(h.backend._trusted(Request("10.2.3.4")))
        self.assertFalse(h.backend._trusted(Request("11.2.3.4")))
        self.assertFalse(h.backend._trusted(Request(None)))
        self.assertFalse(Harness(self).backend._trusted(Request("10.2.3.4")))

    def test_bad_host_is_400(self) -> None:
        """A Host (or trusted forwarded host/proto) that is not a host name is a 400, not put in JSON."""
        for host in ('a"b', "a b", "a/b", "a\\b", "x" * 300, "a:1:2"):
            r = self.h.get("/npm/av-app", {"host": host})
            self.assertEqual(r.status, 400, host)
        h = Harness(self, trusted_proxies=["0.0.0.0/0"])
        self.patch(h.backend, "_trusted", lambda request: True)
        self.assertEqual(h.get("/npm/av-app", {"x-forwarded-proto": "gopher"}).status, 400)
        self.assertEqual(self.h.client.requests, [])

    def test_upstream_404_in_npm_json(self) -> None:
        """A package the registry does not have is a 404 npm can read."""
        r = self.h.get("/npm/nothing-here")
        self.assertEqual((r.status, r.header("content-type")), (404, "application/json"))
        self.assertIn("404", json.loads(r.body)["error"])

    def test_not_json_is_502(self) -> None:
        """A registry answer that is not a package document is a 502 and is not stored."""
        self.h.routes["/av-app"] = (200, {"content-type": "application/json"}, b"<html>")
        self.assertEqual(self.h.get("/npm/av-app").status, 502)
        self.h.routes["/av-app"] = (200, {"content-type": "text/html"}, b"{}")
        self.assertEqual(self.h.get("/npm/av-app").status, 502)
        self.assertEqual(len(self.h.client.requests), 2)

    def test_vanished_document_fetched_again(self) -> None:
        """If the stored document's bytes are gone, it is fetched anew."""
        self.h.get("/npm/av-app")
        entry = self.h.store.lookup("npm-packument:full:av-app for /npm/")
        os.unlink(self.h.store.data_path(entry))
        restarted = Harness(self, after=self.h)
        r = restarted.get("/npm/av-app")
        self.assertEqual((r.status, r.header("x-cache"), restarted.paths()), (200, "MISS", ["/av-app"]))

    def test_vanished_document_fetched_again_by_the_same_backend(self) -> None:
        """
        The same when the backend remembers the stored copy's layout (it
        reads nothing of it before sending): fetched anew, never a 502 that
        repeats until the copy expires.
        """
        first = self.h.get("/npm/av-app")
        entry = self.h.store.lookup("npm-packument:full:av-app for /npm/")
        os.unlink(self.h.store.data_path(entry))
        r = self.h.get("/npm/av-app")
        self.assertEqual((r.status, r.header("x-cache"), r.body), (200, "MISS", first.body))
        self.assertEqual(self.h.paths(), ["/av-app", "/av-app"])


class FreshnessTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.h = Harness(self)

    def test_new_version_seen_after_metadata_ttl(self) -> None:
        """
        A version published upstream is not seen while the copy is fresh
        (no upstream request), and is seen at the first request after
        metadata_ttl, with the tarball reachable.
        """
        self.h.get("/npm/av-app", {"accept": CORGI})
        self.h.publish("av-app", {"1.0.0": ONE, "1.1.0": TWO}, etag='"app-2"')
        self.h.clock.advance(59)
        r = self.h.get("/npm/av-app", {"accept": CORGI})
        self.assertEqual((r.header("x-cache"), list(json.loads(r.body)["versions"])), ("HIT", ["1.0.0"]))
        self.assertEqual(len(self.h.client.requests), 1)
        self.h.clock.advance(1)
        r = self.h.get("/npm/av-app", {"accept": CORGI})
        self.assertEqual(list(json.loads(r.body)["versions"]), ["1.0.0", "1.1.0"])
        self.assertEqual(self.h.client.requests[1].header("if-none-match"), '"app-1"')
        t = self.h.get("/npm/av-app/-/av-app-1.1.0.tgz")
        self.assertEqual((t.status, t.body), (200, TWO))

    def test_304_refreshes_without_download(self) -> None:
        """After metadata_ttl a 304 makes the copy fresh again; the answer is a hit."""
        first = self.h.get("/npm/av-app")
        self.h.clock.advance(61)
        r = self.h.get("/npm/av-app")
        self.assertEqual(self.h.client.requests[1].header("if-none-match"), '"app-1"')
        self.assertEqual(self.h.client.requests[1].response.code, 304)
        self.assertEqual((r.status, r.header("x-cache"), r.body), (200, "HIT", first.body))
        self.h.clock.advance(59)
        self.assertEqual(self.h.get("/npm/av-app").header("x-cache"), "HIT")
        self.assertEqual(len(self.h.client.requests), 2)

    def test_client_refresh_revalidates(self) -> None:
        """npm --prefer-online (Cache-Control: no-cache) has a fresh copy revalidated first."""
        self.h.get("/npm/av-app")
        self.h.publish("av-app", {"1.0.0": ONE, "1.1.0": TWO}, etag='"app-2"')
        r = self.h.get("/npm/av-app", {"cache-control": "no-cache"})
        self.assertEqual(list(json.loads(r.body)["versions"]), ["1.0.0", "1.1.0"])
        self.assertEqual(len(self.h.client.requests), 2)

    def test_tarball_does_not_wait_for_revalidation(self) -> None:
        """A stale stored document that lists the tarball is enough: no document request before it."""
        self.h.get("/npm/av-app", {"accept": CORGI})
        self.h.clock.advance(3600)
        r = self.h.get("/npm/av-app/-/av-app-1.0.0.tgz")
        self.assertEqual((r.status, r.body), (200, ONE))
        self.assertEqual(self.h.paths(), ["/av-app", "/av-app/-/av-app-1.0.0.tgz"])

    def test_stale_when_registry_fails(self) -> None:
        """The registry down or failing after metadata_ttl: the last copy, marked STALE."""
        first = self.h.get("/npm/av-app")
        self.h.clock.advance(61)
        client = self.h.send("/npm/av-app")
        self.h.client.requests[-1].fail(ConnectionRefusedError())
        self.h.answered += 1
        r = client.answer()
        self.assertEqual((r.status, r.header("x-cache"), r.body), (200, "STALE", first.body))
        self.h.routes["/av-app"] = (503, {}, b"down")
        r = self.h.get("/npm/av-app")
        self.assertEqual((r.status, r.header("x-cache")), (200, "STALE"))

    def test_not_found_is_believed(self) -> None:
        """A 404 after metadata_ttl (unpublished) is passed on, not covered by the stale copy."""
        self.h.get("/npm/av-app")
        self.h.clock.advance(61)
        self.h.routes["/av-app"] = (404, {}, b'{"error":"not found"}')
        self.assertEqual(self.h.get("/npm/av-app").status, 404)


class TarballTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.h = Harness(self)

    def test_miss_then_hit_without_lookup(self) -> None:
        """
        A miss reads the abbreviated packument, then the tarball; a hit
        (even after a restart, with the packument stale) asks nobody.
        """
        r = self.h.get("/npm/av-app/-/av-app-1.0.0.tgz")
        self.assertEqual((r.status, r.body, r.header("x-cache")), (200, ONE, "MISS"))
        self.assertEqual(self.h.paths(), ["/av-app", "/av-app/-/av-app-1.0.0.tgz"])
        self.assertEqual(self.h.client.requests[0].header("accept"), CORGI)
        self.h.clock.advance(86400)
        restarted = Harness(self, after=self.h)
        r = restarted.get("/npm/av-app/-/av-app-1.0.0.tgz")
        self.assertEqual((r.status, r.body, r.header("x-cache"), restarted.paths()), (200, ONE, "HIT", []))

    def test_scoped(self) -> None:
        """A scoped tarball, by either form of the name."""
        for path in ("/npm/@av/base/-/base-1.0.0.tgz", "/npm/@av%2fbase/-/base-1.0.0.tgz"):
            r = self.h.get(path)
            self.assertEqual((r.status, r.body), (200, BASE), path)
        self.assertEqual(self.h.paths(), ["/@av%2fbase", "/@av/base/-/base-1.0.0.tgz"])

    def test_mismatch_never_stored(self) -> None:
        """
        Bytes that do not match dist.integrity: the client that got bytes is
        cut (never a complete-looking body), nothing is stored, and the next
        request fetches again.
        """
        self.h.routes["/av-app/-/av-app-1.0.0.tgz"] = (200, {}, b"X" + ONE[1:])
        r = self.h.get("/npm/av-app/-/av-app-1.0.0.tgz")
        self.assertFalse(r.complete and r.status == 200 and r.body == b"X" + ONE[1:])
        self.assertIsNone(self.h.store.lookup("npm-tarball:av-app/-/av-app-1.0.0.tgz for /npm/"))
        self.assertEqual(len(self.flushLoggedErrors()), 0)
        self.h.routes["/av-app/-/av-app-1.0.0.tgz"] = (200, {}, ONE)
        r = self.h.get("/npm/av-app/-/av-app-1.0.0.tgz")
        self.assertEqual((r.status, r.body, r.header("x-cache")), (200, ONE, "MISS"))

    def test_verified_by_sha512_not_shasum(self) -> None:
        """With an integrity, a wrong shasum does not matter; sha512 decides."""
        upstream = json.loads(self.h.routes["/av-app"][2])
        upstream["versions"]["1.0.0"]["dist"]["shasum"] = "0" * 40
        self.h.routes["/av-app"] = (200, {"content-type": "application/json"}, json.dumps(upstream).encode())
        self.assertEqual(self.h.get("/npm/av-app/-/av-app-1.0.0.tgz").body, ONE)

    def test_shasum_when_no_integrity(self) -> None:
        """An old package with only a shasum is checked against that sha1."""
        upstream = json.loads(self.h.routes["/av-app"][2])
        del upstream["versions"]["1.0.0"]["dist"]["integrity"]
        self.h.routes["/av-app"] = (200, {"content-type": "application/json"}, json.dumps(upstream).encode())
        self.h.routes["/av-app/-/av-app-1.0.0.tgz"] = (200, {}, ONE[:-1] + b"Z")
        r = self.h.get("/npm/av-app/-/av-app-1.0.0.tgz")
        self.assertNotEqual((r.status, r.complete, r.body), (200, True, ONE[:-1] + b"Z"))
        self.assertIsNone(self.h.store.lookup("npm-tarball:av-app/-/av-app-1.0.0.tgz for /npm/"))

    def test_concurrent_cold_requests_one_fetch(self) -> None:
        """Ten clients asking for one cold tarball at once: one packument and one tarball request."""
        clients = [self.h.send("/npm/av-app/-/av-app-1.0.0.tgz") for _ in range(10)]
        self.h.answer_all()
        self.h.answer_all()
        for c in clients:
            r = c.answer()
            self.assertEqual((r.status, r.body), (200, ONE))
        self.assertEqual(self.h.paths(), ["/av-app", "/av-app/-/av-app-1.0.0.tgz"])

    def test_unlisted_version_revalidates_once(self) -> None:
        """
        A tarball the fresh packument does not list (a lockfile made after a
        publish): the packument is revalidated at once, and the new version
        is served; one still unknown after that is a 404.
        """
        self.h.get("/npm/av-app/-/av-app-1.0.0.tgz")
        self.h.publish("av-app", {"1.0.0": ONE, "1.1.0": TWO}, etag='"app-2"')
        r = self.h.get("/npm/av-app/-/av-app-1.1.0.tgz")
        self.assertEqual((r.status, r.body), (200, TWO))
        self.assertEqual(self.h.paths()[2:], ["/av-app", "/av-app/-/av-app-1.1.0.tgz"])
        self.assertEqual(self.h.client.requests[2].header("if-none-match"), '"app-1"')
        r = self.h.get("/npm/av-app/-/av-app-9.9.9.tgz")
        self.assertEqual((r.status, self.h.paths()[4:]), (404, ["/av-app"]))
        self.assertIn("not a tarball", json.loads(r.body)["error"])

    def test_credentials_only_to_the_registry(self) -> None:
        """A token goes to the registry's host, never to a tarball host elsewhere."""
        h = Harness(self, token="sekrit")
        upstream = json.loads(h.routes["/av-app"][2])
        upstream["versions"]["1.0.0"]["dist"]["tarball"] = "http://cdn.test/av-app-1.0.0.tgz"
        h.routes["/av-app"] = (200, {"content-type": "application/json"}, json.dumps(upstream).encode())
        h.routes["/av-app-1.0.0.tgz"] = (200, {}, ONE)
        self.assertEqual(h.get("/npm/av-app/-/av-app-1.0.0.tgz").body, ONE)
        self.assertEqual([r.header("authorization") for r in h.client.requests], ["Bearer sekrit", None])


class LargeDocumentTests(SynchronousTestCase):
    def test_rewritten_and_read_in_the_pool(self) -> None:
        """
        A large packument is rewritten into its template in the store's
        thread pool, and a tarball miss reads its large index there too:
        the client waits, the reactor does not.
        """
        self.patch(storemod, "INLINE_WORK", 64)
        pool = ManualPool()
        h = Harness(self, pool=pool)
        versions = {f"1.0.{i}": b"%d" % i for i in range(50)}
        h.publish("av-app", versions, etag='"big"')
        client = h.send("/npm/av-app")
        h.answer_all()
        self.assertFalse(client.has_answer())
        self.assertEqual(pool.run_all(), ["_rewrite", "_commit", "pread"])  # (pread: the template's header)
        self.assertEqual(len(json.loads(client.answer().body)["versions"]), 50)
        tarball = h.send("/npm/av-app/-/av-app-1.0.7.tgz", {"accept": "*/*"})
        h.answer_all()
        self.assertEqual(pool.run_all(), ["_rewrite", "_commit", "pread", "pread", "load_index"])
        h.answer_all()
        pool.run_all()
        self.assertEqual(tarball.answer().body, b"7")


class RemoteStoreTests(SynchronousTestCase):
    def test_documents_and_tarballs_from_a_remote_store(self) -> None:
        """
        With a store whose bodies are streamed (S3), a package document is
        filled in chunk by chunk as it streams and its tarball index read
        through the stream: the same answers as from the disk.
        """
        local, remote = Harness(self), Harness(self, remote=True)
        for path, headers in (("/npm/@av/base", {}), ("/npm/@av/base", {}),
                              ("/npm/av-app/-/av-app-1.0.0.tgz", {}), ("/npm/av-app", {"accept": CORGI})):
            a, b = local.get(path, headers), remote.get(path, headers)
            self.assertEqual((b.status, b.body), (a.status, a.body), path)
        self.assertIn(b"http://vault.test/npm/@av/base/-/base-1.0.0.tgz",
                      remote.get("/npm/@av/base").body)


class AdminTests(SynchronousTestCase):
    def test_purge_selects_by_the_client_path(self) -> None:
        """
        An admin purge or revalidation of C{<prefix><name>} (scoped too)
        selects both stored forms of the package document, and a prefix
        selects its tarballs as well, nothing of another package.
        """
        h = Harness(self)
        for path, headers in (("/npm/@av/base", {}), ("/npm/@av/base", {"accept": CORGI}),
                              ("/npm/av-app", {}), ("/npm/av-app/-/av-app-1.0.0.tgz", {})):
            self.assertEqual(h.get(path, headers).status, 200)
        h.get("/npm/@av/base/-/base-1.0.0.tgz")

        def selected(body: bytes) -> list[str]:
            selection = admin.select([h.backend], body)
            return sorted(e.key for e in h.store.entries() if selection.matches(e.label, e.url))

        self.assertEqual(selected(b'{"path": "/npm/@av/base"}'),
                         ["npm-packument:abbreviated:@av/base for /npm/", "npm-packument:full:@av/base for /npm/"])
        self.assertEqual(selected(b'{"path": "/npm/av-app/-/av-app-1.0.0.tgz"}'),
                         ["npm-tarball:av-app/-/av-app-1.0.0.tgz for /npm/"])
        self.assertEqual(selected(b'{"prefix": "/npm/@av/"}'),
                         ["npm-packument:abbreviated:@av/base for /npm/", "npm-packument:full:@av/base for /npm/",
                          "npm-tarball:@av/base/-/base-1.0.0.tgz for /npm/"])


class RelayTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.h = Harness(self)

    def test_audit_posted_through(self) -> None:
        """npm audit's POST goes to the registry with its body and encoding; the answer comes back, uncached."""
        report = gzip.compress(b'{"av-app":["1.0.0"]}')
        client = self.h.send("/npm/-/npm/v1/security/advisories/bulk", method=b"POST", body=report,
                             headers={"content-type": "application/json", "content-encoding": "gzip"})
        sent = self.h.client.requests[0]
        self.assertEqual((sent.method, sent.url, sent.kwargs["data"].data),
                         ("POST", REGISTRY + "-/npm/v1/security/advisories/bulk", report))
        self.assertEqual((sent.header("content-encoding"), sent.header("content-type")), ("gzip", "application/json"))
        sent.respond(200, b'{"av-app":[]}', {"content-type": "application/json"})
        r = client.answer()
        self.assertEqual((r.status, r.body, r.header("cache-control"), r.header("x-cache")),
                         (200, b'{"av-app":[]}', "no-store", "PASS"))

    def test_search_passed_through(self) -> None:
        """Search goes to the registry with its query, every time."""
        for _ in range(2):
            client = self.h.send("/npm/-/v1/search?text=av&size=5")
            self.h.client.requests[-1].respond(200, b'{"objects":[]}', {"content-type": "application/json"})
            self.assertEqual(client.answer().body, b'{"objects":[]}')
        self.assertEqual([r.url for r in self.h.client.requests],
                         [REGISTRY + "-/v1/search?text=av&size=5"] * 2)

    def test_unreachable_is_a_clear_502(self) -> None:
        """The registry refusing connections: a 502 at once that says so, in npm's JSON."""
        client = self.h.send("/npm/-/npm/v1/security/advisories/bulk", method=b"POST", body=b"{}")
        self.h.client.requests[0].fail(ConnectionRefusedError())
        r = client.answer()
        self.assertEqual(r.status, 502)
        self.assertIn("registry.test", json.loads(r.body)["error"])

    def test_upstream_error_status_passed_on(self) -> None:
        """The registry's own error answer (a 400 for a bad report) is what the client gets."""
        client = self.h.send("/npm/-/npm/v1/security/advisories/bulk", method=b"POST", body=b"x")
        self.h.client.requests[0].respond(400, b'{"error":"bad"}', {"content-type": "application/json"})
        r = client.answer()
        self.assertEqual((r.status, r.body), (400, b'{"error":"bad"}'))

    def test_audit_404_not_remembered(self) -> None:
        """
        A registry without an audit endpoint answers 404; the next audit (a
        report of other packages: a body of its own) is asked again, not
        answered from the negative cache, which knows only method and URL.
        """
        for report in (b'{"a":["1.0.0"]}', b'{"b":["2.0.0"]}'):
            client = self.h.send("/npm/-/npm/v1/security/advisories/bulk", method=b"POST", body=report)
            self.h.client.requests[-1].respond(404, b'{"error":"not found"}', {"content-type": "application/json"})
            self.assertEqual((client.answer().status, client.answer().header("x-cache")), (404, "PASS"))
        self.assertEqual([r.kwargs["data"].data for r in self.h.client.requests],
                         [b'{"a":["1.0.0"]}', b'{"b":["2.0.0"]}'])

    def test_audit_by_get_is_405(self) -> None:
        """The audit endpoint wants a POST."""
        r = self.h.get("/npm/-/npm/v1/security/advisories/bulk")
        self.assertEqual((r.status, r.header("allow")), (405, "POST"))

