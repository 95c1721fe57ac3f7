"""
The PyPI backend in memory: configuration, paths and redirects, Accept,
pages (cached, memoised, revalidated, stale), files and their metadata
(verified, cached forever, found again after a restart). The same through
the real daemon with real clients is in L{tests.test_pypi_clients}.
"""

from __future__ import annotations

import hashlib
import json
import os
from urllib.parse import urljoin, urlsplit

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from artifactvault.backends import parse_backend
from artifactvault.backends import pypi_index as index
from artifactvault.backends.base import BuildContext, IBackend, IBackendType
from artifactvault.backends.pypi import Page, PageMemo, PypiBackendType
from artifactvault.cache import store as storemod
from artifactvault.cache.store import Entry, FileStore
from artifactvault.config import EMBEDDED_DEFAULT, BackendEntry, ConfigError, Section
from artifactvault.root import Root
from artifactvault.site import VaultSite
from artifactvault.vault import Vault
from tests.fakes import EPOCH, Answer, Client, FakeClient, ManualPool

INDEX = "http://up.example/simple/"
JSON_ACCEPT = "application/vnd.pypi.simple.v1+json, text/html;q=0.01"
SDIST = b"sdist bytes " * 100
WHEEL = b"wheel bytes " * 100
METADATA = b"Metadata-Version: 2.1\nName: demo\nVersion: 1.0\n"
EVIL_LISTED = b"good bytes"


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def demo_page(extra: str = "") -> bytes:
    return f"""<html><body>
<a href="/packages/demo-1.0.tar.gz#sha256={sha(SDIST)}">demo-1.0.tar.gz</a>
<a href="http://files.example/w/demo-1.0-py3-none-any.whl#sha256={sha(WHEEL)}"
   data-core-metadata="sha256={sha(METADATA)}" data-requires-python="&gt;=3.8">w</a>
<a href="/packages/evil-1.0.tar.gz#sha256={sha(EVIL_LISTED)}">evil-1.0.tar.gz</a>
{extra}</body></html>""".encode()


def routes() -> dict[str, tuple[int, str, bytes]]:
    """Upstream path -> (status, content type, body)."""
    return {
        "/simple/": (200, "text/html", b'<a href="demo/">Demo</a>'),
        "/simple/demo/": (200, "text/html", demo_page()),
        "/packages/demo-1.0.tar.gz": (200, "application/x-tar", SDIST),
        "/w/demo-1.0-py3-none-any.whl": (200, "application/zip", WHEEL),
        "/w/demo-1.0-py3-none-any.whl.metadata": (200, "text/plain", METADATA),
        "/packages/evil-1.0.tar.gz": (200, "application/x-tar", b"evil bytes"),
    }


class Harness:
    """
    The pypi backend behind a real site, in memory, its upstream answering
    from L{routes} (path → status, content type, body, and optionally more
    headers; anything else: 404). Another harness on the same store and
    clock is the daemon after a restart.
    """

    def __init__(self, testcase: SynchronousTestCase, after: "Harness | None" = None,
                 routes: dict[str, tuple] | None = None,
                 pool: ManualPool | None = None, **config):
        if after is None:
            self.clock = Clock()
            self.clock.advance(EPOCH)
            self.store = FileStore(testcase.mktemp(), clock=self.clock.seconds,
                                   **({"run_blocking": pool.run} if pool else {}))
            self.store.open()
            testcase.addCleanup(self.store.close)
        else:
            self.clock, self.store = after.clock, after.store
        self.routes = globals()["routes"]() if routes is None else routes
        self.client = FakeClient()
        self._answered = 0
        context = BuildContext(vault=Vault(self.store, self.clock), reactor=self.clock, client=self.client)
        section = Section("test.yml", "backends[0].config", {"index_url": INDEX, **config})
        self.backend = PypiBackendType.build(PypiBackendType.parse(section), context)
        self.site = VaultSite(Root([self.backend]), reactor=self.clock)

    def get(self, path: str, headers: dict[str, str] | None = None, method: bytes = b"GET") -> Answer:
        client = Client(self.site, self.clock, path.encode(), method, headers)
        while self._answered < len(self.client.requests):  # a page fetch may lead to a file fetch
            request = self.client.requests[self._answered]
            self._answered += 1
            status, ctype, body, *more = self.routes.get(urlsplit(request.url).path, (404, "text/plain", b"no"))
            request.respond(status, b"" if request.method == "HEAD" else body,
                            {"content-type": ctype, **(more[0] if more else {})})
        return client.answer()

    def paths(self) -> list[str]:
        """The upstream paths asked for, in order."""
        return [urlsplit(r.url).path for r in self.client.requests]

    def file_url(self, project: str, filename: str) -> str:
        """Where the project page (as JSON) says the vault serves C{filename}."""
        page_url = f"{self.backend.prefix}{project}/"
        page = json.loads(self.get(page_url, {"accept": JSON_ACCEPT}).body)
        for f in page["files"]:
            if f["filename"] == filename:
                return urljoin(page_url, f["url"])
        raise AssertionError(f"{filename} not listed")


class ConfigTests(SynchronousTestCase):
    def parse(self, config: dict) -> object:
        return PypiBackendType.parse(Section("c.yml", "backends[0].config", config))

    def test_defaults(self) -> None:
        """Prefix /pypi/, pypi.org and its JSON API, a few minutes of index freshness."""
        s = self.parse({})
        self.assertEqual((s.prefix, s.index_url, s.index_ttl, s.json_api_url),
                         ("/pypi/", "https://pypi.org/simple/", 300.0, "https://pypi.org/pypi/"))

    def test_json_api_url(self) -> None:
        """
        The JSON API is beside an index URL ending in simple/ (pypi/), else
        below it (another vault); json_api_url says otherwise, with its slash.
        """
        for config, expected in [({"index_url": "http://h/simple"}, "http://h/pypi/"),
                                 ({"index_url": "http://h/a/simple/"}, "http://h/a/pypi/"),
                                 ({"index_url": "http://vault/pypi/"}, "http://vault/pypi/"),
                                 ({"json_api_url": "http://j:8/api"}, "http://j:8/api/")]:
            self.assertEqual(self.parse(config).json_api_url, expected, config)

    def test_values(self) -> None:
        """index_url gains its trailing slash; index_ttl takes durations; credentials never in repr."""
        s = self.parse({"prefix": "/py", "index_url": "http://h:1/simple", "index_ttl": "2m",
                        "username": "u", "password": "sekrit"})
        self.assertEqual((s.prefix, s.index_url, s.index_ttl), ("/py/", "http://h:1/simple/", 120.0))
        self.assertNotIn("sekrit", repr(s))

    def test_errors_name_the_key(self) -> None:
        """Bad values stop the start with the file and key in the message."""
        for config, where in [({"index_url": "ftp://x/"}, "backends[0].config.index_url"),
                              ({"index_url": "http://x/s/?a=1"}, "backends[0].config.index_url"),
                              ({"index_ttl": "soon"}, "backends[0].config.index_ttl"),
                              ({"json_api_url": "file:///x/"}, "backends[0].config.json_api_url"),
                              ({"json_api_url": "http://x/p/#f"}, "backends[0].config.json_api_url"),
                              ({"json_api_url": 5}, "backends[0].config.json_api_url")]:
            e = self.assertRaises(ConfigError, self.parse, config)
            self.assertTrue(str(e).startswith(f"c.yml: {where}: "), str(e))

    def test_unknown_key(self) -> None:
        """A misspelt key is refused by the config loader, not ignored."""
        entry = BackendEntry("pypi", Section("c.yml", "backends[0].config", {"index_tll": 5}))
        parse_backend(entry)
        self.assertRaises(ConfigError, entry.section.check_unknown)

    def test_embedded_default(self) -> None:
        """The embedded default config's pypi backend loads."""
        item = next(b for b in EMBEDDED_DEFAULT["backends"] if b["type"] == "pypi")
        s = parse_backend(BackendEntry("pypi", Section("<embedded>", "backends[0].config", item["config"])))
        self.assertEqual((s.prefix, s.index_url), ("/pypi/", "https://pypi.org/simple/"))

    def test_interfaces(self) -> None:
        """The type and the backend provide the core's interfaces."""
        self.assertTrue(IBackendType.providedBy(PypiBackendType))
        verifyObject(IBackend, Harness(self).backend)


class PathTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.h = Harness(self)

    def test_redirects(self) -> None:
        """Non-normalised names and missing slashes get a 301 to the canonical page, with no upstream."""
        for path, location in [("/pypi/Demo/", "/pypi/demo/"), ("/pypi/demo", "/pypi/demo/"),
                               ("/pypi/Foo.Bar_baz", "/pypi/foo-bar-baz/"), ("/pypi", "/pypi/")]:
            r = self.h.get(path)
            self.assertEqual((r.status, r.header("location")), (301, location), path)
        self.assertEqual(self.h.client.requests, [])

    def test_not_found(self) -> None:
        """Invalid names and unknown shapes are 404 without asking the upstream."""
        for path in ("/pypi/-x-/", "/pypi/+f/", "/pypi/demo/extra", "/pypi/+f/demo/xyz/demo-1.0.tar.gz",
                     f"/pypi/+f/Demo/{sha(SDIST)}/demo-1.0.tar.gz", f"/pypi/+f/+f/{sha(SDIST)}/demo-1.0.tar.gz"):
            self.assertEqual(self.h.get(path).status, 404, path)
        self.assertEqual(self.h.client.requests, [])

    def test_not_acceptable(self) -> None:
        """An Accept we cannot meet gets HTML, as from PyPI (PEP 691 allows it), not a 406; it varies on Accept."""
        r = self.h.get("/pypi/demo/", {"accept": "application/json"})
        self.assertEqual((r.status, r.header("content-type"), r.header("vary")),
                         (200, "text/html; charset=utf-8", "Accept"))
        self.assertIn(b"demo-1.0.tar.gz", r.body)


class PageTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.h = Harness(self, index_ttl=60)

    def test_forms(self) -> None:
        """HTML by default and JSON for pip's Accept, each with its type, Vary and our file URLs."""
        html = self.h.get("/pypi/demo/")
        self.assertEqual((html.status, html.header("content-type"), html.header("vary"),
                          html.header("x-cache")), (200, "text/html; charset=utf-8", "Accept", "MISS"))
        self.assertIn(f'href="../+f/demo/{sha(SDIST)}/demo-1.0.tar.gz#sha256={sha(SDIST)}"'.encode(), html.body)
        self.assertIn(b'data-requires-python="&gt;=3.8"', html.body)
        js = self.h.get("/pypi/demo/", {"accept": JSON_ACCEPT})
        self.assertEqual((js.header("content-type"), js.header("x-cache")),
                         ("application/vnd.pypi.simple.v1+json", "HIT"))
        files = json.loads(js.body)["files"]
        self.assertEqual(files[1], {
            "filename": "demo-1.0-py3-none-any.whl", "url": f"../+f/demo/{sha(WHEEL)}/demo-1.0-py3-none-any.whl",
            "hashes": {"sha256": sha(WHEEL)}, "requires-python": ">=3.8",
            "core-metadata": {"sha256": sha(METADATA)}, "dist-info-metadata": {"sha256": sha(METADATA)}})

    def test_upstream_asked_once_and_rendering_memoised(self) -> None:
        """Within index_ttl, pages come from the cache, and the same rendering is reused."""
        renders = []
        render = index.render_project
        self.patch(index, "render_project", lambda doc, fmt, url: renders.append(fmt) or render(doc, fmt, url))
        first = self.h.get("/pypi/demo/", {"accept": JSON_ACCEPT})
        second = self.h.get("/pypi/demo/", {"accept": JSON_ACCEPT})
        self.assertEqual(self.h.paths(), ["/simple/demo/"])
        self.assertEqual(self.h.client.requests[0].header("accept"),
                         "application/vnd.pypi.simple.v1+json, application/vnd.pypi.simple.v1+html;q=0.2, "
                         "text/html;q=0.1")
        self.assertEqual((first.body, renders), (second.body, [index.JSON]))

    def test_project_list(self) -> None:
        """The prefix itself is the project list."""
        r = self.h.get("/pypi/", {"accept": JSON_ACCEPT})
        self.assertEqual(json.loads(r.body)["projects"], [{"name": "Demo"}])
        self.assertIn(b'<a href="demo/">Demo</a>', self.h.get("/pypi/").body)

    def test_revalidated_after_ttl(self) -> None:
        """After index_ttl the upstream is asked again, and a changed page is seen at once."""
        self.h.get("/pypi/demo/")
        self.h.clock.advance(61)
        self.h.routes["/simple/demo/"] = (200, "text/html", demo_page('<a href="n-2.tar.gz">n</a>'))
        r = self.h.get("/pypi/demo/")
        self.assertEqual((r.header("x-cache"), self.h.paths()), ("MISS", ["/simple/demo/"] * 2))
        self.assertIn(b"n-2.tar.gz", r.body)

    def test_stale_when_upstream_fails(self) -> None:
        """A failing upstream after index_ttl: the last copy, marked stale."""
        first = self.h.get("/pypi/demo/").body
        self.h.clock.advance(61)
        self.h.routes["/simple/demo/"] = (503, "text/plain", b"down")
        r = self.h.get("/pypi/demo/")
        self.assertEqual((r.status, r.header("x-cache"), r.body), (200, "STALE", first))
        self.assertEqual(r.header("warning"), '299 - "Response is Stale"')

    def test_bug_is_a_500(self) -> None:
        """A bug while loading a page (here a KeyError) is logged with its traceback and answered 500, not a 502."""
        def broken(entry: object) -> None:
            raise KeyError("page")
        self.h.backend.pages.get = broken  # type: ignore[method-assign]
        r = self.h.get("/pypi/demo/")
        self.assertEqual((r.status, r.body), (500, b"internal error\n"))
        self.assertEqual(len(self.flushLoggedErrors(KeyError)), 1)

    def test_upstream_404(self) -> None:
        """A project the upstream does not know is a 404."""
        self.assertEqual(self.h.get("/pypi/nothing/").status, 404)

    def test_conditional(self) -> None:
        """A matching If-None-Match gets a 304; each form has its own ETag."""
        js = self.h.get("/pypi/demo/", {"accept": JSON_ACCEPT})
        html = self.h.get("/pypi/demo/")
        self.assertNotEqual(js.header("etag"), html.header("etag"))
        r = self.h.get("/pypi/demo/", {"accept": JSON_ACCEPT, "if-none-match": js.header("etag")})
        self.assertEqual((r.status, r.body), (304, b""))

    def test_vanished_page_fetched_again(self) -> None:
        """If the stored page's bytes are gone, it is fetched anew rather than failing forever."""
        self.h.get("/pypi/demo/")
        restarted = Harness(self, after=self.h)
        entry = self.h.store.lookup(f"pypi-index:{INDEX}demo/ for /pypi/")
        os.unlink(self.h.store.data_path(entry))
        r = restarted.get("/pypi/demo/")
        self.assertEqual((r.status, r.header("x-cache")), (200, "MISS"))
        self.assertEqual(restarted.paths(), ["/simple/demo/"])

    def test_pages_fresh_per_backend(self) -> None:
        """
        Two backends of one index keep its pages apart: one whose index_ttl is
        0 asks the upstream every time, even while the other's copy is fresh.
        """
        self.h.get("/pypi/demo/")
        eager = Harness(self, after=self.h, index_ttl=0, prefix="/eager/")
        eager.routes["/simple/demo/"] = (200, "text/html", demo_page('<a href="n-2.tar.gz">n</a>'))
        self.h.clock.advance(1)
        r = eager.get("/eager/demo/")
        self.assertEqual((r.header("x-cache"), eager.paths()), ("MISS", ["/simple/demo/"]))
        self.assertIn(b"n-2.tar.gz", r.body)
        self.assertNotIn(b"n-2.tar.gz", self.h.get("/pypi/demo/").body)  # the other's copy, still fresh

    def test_json_upstream(self) -> None:
        """A PEP 691 JSON upstream is read as such, sizes and all."""
        page = {"meta": {"api-version": "1.1"}, "name": "demo", "versions": ["1.0"],
                "files": [{"filename": "demo-1.0.tar.gz", "url": "../../packages/demo-1.0.tar.gz",
                           "hashes": {"sha256": sha(SDIST)}, "size": len(SDIST)}]}
        self.h.routes["/simple/demo/"] = (200, "application/vnd.pypi.simple.v1+json",
                                                   json.dumps(page).encode())
        data = json.loads(self.h.get("/pypi/demo/", {"accept": JSON_ACCEPT}).body)
        self.assertEqual((data["meta"]["api-version"], data["files"][0]["size"], data["versions"]),
                         ("1.1", len(SDIST), ["1.0"]))
        r = self.h.get(self.h.file_url("demo", "demo-1.0.tar.gz"))
        self.assertEqual((r.status, r.body), (200, SDIST))


class LargePageTests(SynchronousTestCase):
    """A large page is parsed, stored, read back and rendered in the store's thread pool, never here."""

    def test_all_in_the_pool(self) -> None:
        """Each step of a large project list waits for the pool; the client is answered once all are done."""
        self.patch(storemod, "INLINE_WORK", 64)
        pool = ManualPool()
        h = Harness(self, pool=pool)
        names = [f"p{i}" for i in range(200)]
        page = "".join(f'<a href="{n}/">{n}</a>\n' for n in names).encode()
        client = Client(h.site, h.clock, b"/pypi/", b"GET", {"accept": JSON_ACCEPT})
        h.client.requests[0].respond(200, page, {"content-type": "text/html"})
        self.assertFalse(client.has_answer())
        self.assertEqual(pool.run_all(), ["_rewrite", "_commit", "_read_whole", "_parse", "_render_one"])
        self.assertEqual(json.loads(client.answer().body)["projects"], [{"name": n} for n in names])
        html = Client(h.site, h.clock, b"/pypi/", b"GET")
        self.assertEqual(pool.run_all(), ["_render_one"])  # another form: rendered, once
        self.assertIn(b'<a href="p199/">p199</a>', html.answer().body)
        again = Client(h.site, h.clock, b"/pypi/", b"GET")
        self.assertEqual((pool.pending, again.answer().body), ([], html.answer().body))

    def test_replaced_page_emptied_in_the_pool(self) -> None:
        """
        A page the memo replaces has its document emptied in the pool (freed
        at once, the project list would hold every thread for tens of ms),
        but only once the rendering under way is done with it.
        """
        pool = ManualPool()
        work = lambda size, f, *args: pool.run(f, *args)  # noqa: E731
        memo = PageMemo(work)
        page = Page({"projects": ["a"] * 5}, index.render_root, 10)
        memo.put(Entry(key="k", data="1", size=10, stored_at=0), page)
        rendering = page.rendered(index.JSON, work)
        memo.put(Entry(key="k", data="2", size=1, stored_at=0), Page({"projects": []}, index.render_root, 1))
        self.assertEqual(pool.names(), ["_render_one"])
        pool.run_next()
        self.assertEqual(json.loads(b"".join(self.successResultOf(rendering)[0]))["projects"], [{"name": "a"}] * 5)
        self.assertEqual(pool.names(), ["discard"])
        pool.run_next()
        self.assertEqual(page.doc, {})

    def test_small_page_at_once(self) -> None:
        """A small page is not worth a trip to a thread: only its commit goes there."""
        pool = ManualPool()
        h = Harness(self, pool=pool)
        client = Client(h.site, h.clock, b"/pypi/demo/", b"GET")
        h.client.requests[0].respond(200, demo_page(), {"content-type": "text/html"})
        self.assertEqual(pool.run_all(), ["_commit"])
        self.assertEqual(client.answer().status, 200)


class FileTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.h = Harness(self)

    def test_file_fetched_verified_and_kept(self) -> None:
        """A file miss fetches the upstream URL the page gave; afterwards it is a hit with no upstream."""
        url = self.h.file_url("demo", "demo-1.0.tar.gz")
        r = self.h.get(url)
        self.assertEqual((r.status, r.body, r.header("x-cache")), (200, SDIST, "MISS"))
        again = self.h.get(url)
        self.assertEqual((again.body, again.header("x-cache")), (SDIST, "HIT"))
        self.assertEqual(self.h.paths(), ["/simple/demo/", "/packages/demo-1.0.tar.gz"])
        self.assertEqual(self.h.store.lookup(f"pypi-file:{sha(SDIST)}").sha256, sha(SDIST))

    def test_file_does_not_wait_for_its_page(self) -> None:
        """
        A file miss whose stored page is past index_ttl but lists it: fetched
        at once, the page not revalidated (a page that hangs upstream must not
        hold files back); a file the stale page does not list: the page is
        revalidated first (the file may be new).
        """
        url = self.h.file_url("demo", "demo-1.0.tar.gz")
        self.h.clock.advance(301)  # (index_ttl: 5 minutes)
        self.assertEqual(self.h.get(url).body, SDIST)
        self.assertEqual(self.h.paths(), ["/simple/demo/", "/packages/demo-1.0.tar.gz"])
        self.h.routes["/simple/demo/"] = (200, "text/html", demo_page(
            f'<a href="/packages/demo-2.0.tar.gz#sha256={sha(b"two")}">demo-2.0.tar.gz</a>'))
        self.h.routes["/packages/demo-2.0.tar.gz"] = (200, "application/x-tar", b"two")
        r = self.h.get(f"/pypi/+f/demo/{sha(b'two')}/demo-2.0.tar.gz")
        self.assertEqual((r.status, r.body), (200, b"two"))
        self.assertEqual(self.h.paths()[2:], ["/simple/demo/", "/packages/demo-2.0.tar.gz"])

    def test_file_on_another_host(self) -> None:
        """An absolute upstream URL on another host is fetched there."""
        r = self.h.get(self.h.file_url("demo", "demo-1.0-py3-none-any.whl"))
        self.assertEqual(r.body, WHEEL)
        self.assertEqual(self.h.client.requests[-1].url, "http://files.example/w/demo-1.0-py3-none-any.whl")

    def test_digest_mismatch_commits_nothing(self) -> None:
        """
        A body that is not what the index's sha256 says: the client gets a
        502 saying so (a small file is verified before it is sent), nothing
        is stored.
        """
        url = self.h.file_url("demo", "evil-1.0.tar.gz")
        r = self.h.get(url)
        self.assertEqual(r.status, 502)
        self.assertIn("expected", r.body.decode())
        self.assertIsNone(self.h.store.lookup(f"pypi-file:{sha(EVIL_LISTED)}"))
        self.h.get(url)
        self.assertEqual(self.h.paths().count("/packages/evil-1.0.tar.gz"), 2)

    def test_metadata(self) -> None:
        """The .metadata beside a file is fetched from beside the upstream file, verified and kept."""
        url = self.h.file_url("demo", "demo-1.0-py3-none-any.whl") + ".metadata"
        r = self.h.get(url)
        self.assertEqual((r.status, r.body), (200, METADATA))
        self.assertEqual(self.h.get(url).header("x-cache"), "HIT")
        self.assertEqual(self.h.paths().count("/w/demo-1.0-py3-none-any.whl.metadata"), 1)

    def test_metadata_mismatch(self) -> None:
        """Metadata that does not match its own listed hash is not stored either."""
        self.h.routes["/w/demo-1.0-py3-none-any.whl.metadata"] = (200, "text/plain", b"forged")
        r = self.h.get(self.h.file_url("demo", "demo-1.0-py3-none-any.whl") + ".metadata")
        self.assertEqual(r.status, 502)
        self.assertIsNone(self.h.store.lookup(f"pypi-metadata:{sha(WHEEL)} for /pypi/"))

    def test_unverified_entry_never_served(self) -> None:
        """
        What is stored under a file's sha256 is served only if it was verified
        as that sha256: other bytes under the key are neither a hit nor served
        on the miss path that follows; the file is fetched, verified and replaces them.
        """
        key = f"pypi-file:{sha(SDIST)}"
        self.successResultOf(self.h.store.put(Entry(key=key, data="", size=0, stored_at=self.h.store.now(),
                                                    url="http://elsewhere/demo-1.0.tar.gz"), b"planted"))
        r = self.h.get(self.h.file_url("demo", "demo-1.0.tar.gz"))
        self.assertEqual((r.status, r.body, r.header("x-cache")), (200, SDIST, "MISS"))
        self.assertEqual(self.h.store.lookup(key).sha256, sha(SDIST))

    def test_second_index_cannot_place_what_the_first_serves(self) -> None:
        """
        Two PyPI backends on one cache: metadata and files not named by their
        sha256 are kept per index, so a second index listing the same file
        (same sha256) with forged metadata, or a file under a url- id, never
        has them served by the first; the shared, verified file is still shared.
        """
        other = "http://other.example/simple/"
        forged = b"Metadata-Version: 2.1\nName: demo\nVersion: 1.0\nRequires-Dist: evil\n"
        evil = Harness(self, after=self.h, index_url=other, prefix="/other/", routes={
            "/simple/demo/": (200, "text/html", (
                f'<a href="/w/demo-1.0-py3-none-any.whl#sha256={sha(WHEEL)}" data-core-metadata="true">w</a>'
                '<a href="/p/demo-1.0.tar.gz">s</a>').encode()),
            "/w/demo-1.0-py3-none-any.whl": (200, "application/zip", WHEEL),
            "/w/demo-1.0-py3-none-any.whl.metadata": (200, "text/plain", forged),
            "/p/demo-1.0.tar.gz": (200, "application/x-tar", b"not the sdist"),
        })
        wheel = evil.file_url("demo", "demo-1.0-py3-none-any.whl")
        sdist = evil.file_url("demo", "demo-1.0.tar.gz")
        self.assertEqual([evil.get(u).body for u in (wheel, wheel + ".metadata", sdist)],
                         [WHEEL, forged, b"not the sdist"])
        wheel, sdist = (u.replace("/other/", "/pypi/") for u in (wheel, sdist))  # the first backend
        r = self.h.get(wheel + ".metadata")
        self.assertEqual((r.status, r.body), (200, METADATA))
        self.assertEqual(self.h.get(sdist).status, 404)  # no such url- id on the first index
        r = self.h.get(wheel)
        self.assertEqual((r.body, r.header("x-cache")), (WHEEL, "HIT"))  # verified: shared
        self.assertEqual(self.h.paths(), ["/simple/demo/", "/w/demo-1.0-py3-none-any.whl.metadata"])

    def test_unlisted(self) -> None:
        """Only what the page lists: unknown ids, other filenames and absent metadata are 404."""
        sdist = self.h.file_url("demo", "demo-1.0.tar.gz")
        for path in (sdist + ".metadata", sdist.replace("demo-1.0.tar.gz", "other.tar.gz"),
                     f"/pypi/+f/demo/{'0' * 64}/demo-1.0.tar.gz"):
            self.assertEqual(self.h.get(path).status, 404, path)
        self.assertEqual(self.h.paths(), ["/simple/demo/"])

    def test_file_without_sha256(self) -> None:
        """A file listed with only an md5 lives under url-<hash of its URL> and is checked against the md5."""
        body = b"old style"
        self.h.routes["/simple/old/"] = (200, "text/html", (
            f'<a href="/p/old-1.0.tar.gz#md5={hashlib.md5(body).hexdigest()}">old-1.0.tar.gz</a>').encode())
        self.h.routes["/p/old-1.0.tar.gz"] = (200, "application/x-tar", body)
        url = self.h.file_url("old", "old-1.0.tar.gz")
        self.assertRegex(url, r"^/pypi/\+f/old/url-[0-9a-f]{32}/old-1\.0\.tar\.gz$")
        self.assertEqual((self.h.get(url).body, self.h.get(url).header("x-cache")), (body, "HIT"))
        self.h.routes["/simple/bad/"] = (200, "text/html", b'<a href="/p/bad-1.0.tar.gz#md5=00">b</a>')
        self.h.routes["/p/bad-1.0.tar.gz"] = (200, "application/x-tar", body)
        self.assertEqual(self.h.get(self.h.file_url("bad", "bad-1.0.tar.gz")).status, 502)

    def test_after_restart(self) -> None:
        """
        After a restart the stored page still says where a file lives (no page
        fetch); once cached, a file needs neither page nor upstream.
        """
        url = self.h.file_url("demo", "demo-1.0.tar.gz")
        restarted = Harness(self, after=self.h)
        r = restarted.get(url)
        self.assertEqual((r.status, r.body), (200, SDIST))
        self.assertEqual(restarted.paths(), ["/packages/demo-1.0.tar.gz"])
        self.h.clock.advance(3600)  # the page is stale now: files do not care
        offline = Harness(self, after=self.h, routes={})
        r = offline.get(url)
        self.assertEqual((r.body, r.header("x-cache"), offline.client.requests), (SDIST, "HIT", []))


class PepFieldTests(SynchronousTestCase):
    """What PEPs 503, 708, 740 and 792 add reaches the client through the backend (issue 8, item 12)."""

    maxDiff = None

    def setUp(self) -> None:
        from tests.test_pypi_index import FULL_JSON
        self.upstream = FULL_JSON
        self.h = Harness(self, index_ttl=60)
        self.h.routes["/simple/demo/"] = (200, index.JSON, json.dumps(FULL_JSON).encode(),
                                          {"X-PyPI-Last-Serial": "4242"})
        self.h.routes["/demo-1.0-py3-none-any.whl.asc"] = (200, "text/plain", b"-----BEGIN PGP SIGNATURE-----")
        self.h.routes["/integrity/demo/1.0/demo-1.0-py3-none-any.whl/provenance"] = (
            200, "application/json", b'{"version": 1, "attestation_bundles": []}')

    def test_json_answer(self) -> None:
        """The JSON answer is the upstream's page but for URLs (the vault's), and X-PyPI-Last-Serial is passed on, on a hit too."""
        r = self.h.get("/pypi/demo/", {"accept": JSON_ACCEPT})
        body = json.loads(r.body)
        for vault, upstream in zip(body["files"], self.upstream["files"]):
            vault.pop("dist-info-metadata", None)
            self.assertTrue(vault.pop("url").startswith("../+f/demo/"))
            if isinstance(upstream.get("provenance"), str):
                self.assertTrue(vault.pop("provenance").startswith("../+f/demo/"))
        expected = json.loads(json.dumps(self.upstream))
        for f in expected["files"]:
            del f["url"]
            if isinstance(f.get("provenance"), str):
                del f["provenance"]
        self.assertEqual(body, expected)
        self.assertEqual(r.header("x-pypi-last-serial"), "4242")
        hit = self.h.get("/pypi/demo/")
        self.assertEqual((hit.header("x-cache"), hit.header("x-pypi-last-serial")), ("HIT", "4242"))

    def test_signature_and_provenance(self) -> None:
        """
        A file with gpg-sig true has its .asc beside it, one with a provenance
        its .provenance (from the provenance's upstream URL); a file without
        either has none (404, unasked).
        """
        wheel = self.h.file_url("demo", "demo-1.0-py3-none-any.whl")
        sdist = self.h.file_url("demo", "demo-1.0.tar.gz")
        page = json.loads(self.h.get("/pypi/demo/", {"accept": JSON_ACCEPT}).body)
        self.assertEqual(urljoin("/pypi/demo/", page["files"][1]["provenance"]), wheel + ".provenance")
        r = self.h.get(wheel + ".asc")
        self.assertEqual((r.status, r.body, r.header("content-type")),
                         (200, b"-----BEGIN PGP SIGNATURE-----", "application/pgp-signature"))
        r = self.h.get(wheel + ".provenance")
        self.assertEqual((r.status, r.header("content-type")), (200, "application/json"))
        self.assertEqual(json.loads(r.body), {"version": 1, "attestation_bundles": []})
        self.assertEqual([self.h.get(sdist + suffix).status for suffix in (".asc", ".provenance", ".metadata")],
                         [404, 404, 404])
        self.assertEqual([self.h.get(u).header("x-cache") for u in (wheel + ".asc", wheel + ".provenance")],
                         ["HIT", "HIT"])
        self.assertEqual(self.h.paths(), ["/simple/demo/", "/demo-1.0-py3-none-any.whl.asc",
                                          "/integrity/demo/1.0/demo-1.0-py3-none-any.whl/provenance"])

    def test_provenance_may_change(self) -> None:
        """A provenance is fresh for index_ttl (the index may add attestations), then asked again."""
        url = self.h.file_url("demo", "demo-1.0-py3-none-any.whl") + ".provenance"
        self.h.get(url)
        self.h.clock.advance(61)
        self.h.routes["/integrity/demo/1.0/demo-1.0-py3-none-any.whl/provenance"] = (
            200, "application/json", b'{"version": 1, "attestation_bundles": [{}]}')
        r = self.h.get(url)
        self.assertEqual(json.loads(r.body)["attestation_bundles"], [{}])
