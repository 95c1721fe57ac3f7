"""
PyPI's legacy JSON API through the PyPI backend, in memory (issue 8, item
11): where it is, the upstream's document with file URLs rewritten to the
vault's, freshness, errors, and files found through it. The same through
the real daemon is in L{tests.test_conformance_pypi}.
"""

from __future__ import annotations

import hashlib
import json
from urllib.parse import urlsplit

from twisted.trial.unittest import SynchronousTestCase

from artifactvault.backends import pypi_json
from artifactvault.cache import store as storemod
from tests.fakes import Client, ManualPool
from tests.test_pypi import INDEX, SDIST, WHEEL, Harness, sha

JSON_TYPE = "application/json"
SERIAL = {"X-PyPI-Last-Serial": "4242"}


def legacy_file(filename: str, url: str, data: bytes, packagetype: str) -> dict:
    """A file entry as PyPI's JSON API gives it."""
    return {"comment_text": "", "digests": {"md5": hashlib.md5(data).hexdigest(), "sha256": sha(data),
                                            "blake2b_256": hashlib.blake2b(data, digest_size=32).hexdigest()},
            "downloads": -1, "filename": filename, "has_sig": False, "md5_digest": hashlib.md5(data).hexdigest(),
            "packagetype": packagetype, "python_version": "source", "requires_python": ">=3.8",
            "size": len(data), "upload_time": "2024-01-01T00:00:00",
            "upload_time_iso_8601": "2024-01-01T00:00:00.000000Z", "url": url, "yanked": False,
            "yanked_reason": None}


SDIST_ENTRY = legacy_file("demo-1.0.tar.gz", "http://up.example/packages/demo-1.0.tar.gz", SDIST, "sdist")
WHEEL_ENTRY = legacy_file("demo-1.0-py3-none-any.whl", "http://files.example/w/demo-1.0-py3-none-any.whl",
                          WHEEL, "bdist_wheel")
INFO = {"name": "demo", "version": "1.0", "summary": "A demo", "package_url": "https://up.example/project/demo/",
        "project_urls": {"Homepage": "https://demo.example/"}, "requires_dist": None, "yanked": False}
PROJECT = {"info": INFO, "last_serial": 4242, "releases": {"0.9": [], "1.0": [SDIST_ENTRY, WHEEL_ENTRY]},
           "urls": [SDIST_ENTRY, WHEEL_ENTRY], "vulnerabilities": [], "_private": 1}
VERSION = {"info": INFO, "last_serial": 4242, "urls": [SDIST_ENTRY, WHEEL_ENTRY], "vulnerabilities": []}


def in_vault(entry: dict, base: str = "http://vault.test/pypi/") -> dict:
    """A file entry as the vault should give it: the upstream's, its url the vault's."""
    return dict(entry, url=f"{base}%2Bf/demo/{entry['digests']['sha256']}/{entry['filename']}")


def json_routes(harness: Harness) -> Harness:
    harness.routes["/pypi/demo/json"] = (200, JSON_TYPE, json.dumps(PROJECT).encode(), SERIAL)
    harness.routes["/pypi/demo/1.0/json"] = (200, JSON_TYPE, json.dumps(VERSION).encode(), SERIAL)
    return harness


class PathTests(SynchronousTestCase):
    def test_parse_path(self) -> None:
        """The four forms (renovate's, pip-tools'), and what is not one."""
        self.assertEqual([pypi_json.parse_path(p.split("/")) for p in (
            "demo/json", "demo/1.0/json", "pypi/demo/json", "pypi/demo/1.0/json", "demo/1!2.0+local.3/json",
            "demo/", "demo/json/", "demo/1.0/json/x", "demo/ 1/json", "+f/demo/json", "json")],
            [("demo", None), ("demo", "1.0"), ("demo", None), ("demo", "1.0"), ("demo", "1!2.0+local.3"),
             None, None, None, None, ("+f", "demo"), None])

    def test_default_url(self) -> None:
        """Beside an index ending in simple/, below any other."""
        self.assertEqual(pypi_json.default_url("https://pypi.org/simple/"), "https://pypi.org/pypi/")
        self.assertEqual(pypi_json.default_url("http://vault/pypi/"), "http://vault/pypi/")


class DocumentTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.h = json_routes(Harness(self, index_ttl=60))

    def get(self, path: str, headers: dict[str, str] | None = None) -> tuple[int, dict, object]:
        r = self.h.get(path, headers)
        return r.status, r, json.loads(r.body) if r.status == 200 else r.body

    def test_project(self) -> None:
        """
        <prefix><project>/json is the upstream's /pypi/<project>/json, every
        field as it came but each file's url: the vault's, absolute, at the
        address the client used. The upstream is asked for JSON.
        """
        status, r, body = self.get("/pypi/demo/json")
        self.assertEqual((status, r.header("content-type"), r.header("x-cache")), (200, JSON_TYPE, "MISS"))
        expected = dict(PROJECT, urls=[in_vault(SDIST_ENTRY), in_vault(WHEEL_ENTRY)],
                        releases={"0.9": [], "1.0": [in_vault(SDIST_ENTRY), in_vault(WHEEL_ENTRY)]})
        self.assertEqual(body, expected)
        self.assertEqual([(q.url, q.header("accept")) for q in self.h.client.requests],
                         [("http://up.example/pypi/demo/json", JSON_TYPE)])

    def test_version(self) -> None:
        """<prefix><project>/<version>/json is the upstream's version document, rewritten alike."""
        status, _, body = self.get("/pypi/demo/1.0/json")
        self.assertEqual((status, body), (200, dict(VERSION, urls=[in_vault(SDIST_ENTRY), in_vault(WHEEL_ENTRY)])))
        self.assertEqual(self.h.paths(), ["/pypi/demo/1.0/json"])

    def test_pip_tools_form(self) -> None:
        """pip-tools' <prefix>pypi/<project>/json (index URL with a slash) is the same document."""
        self.assertEqual(self.get("/pypi/pypi/demo/json")[2], self.get("/pypi/demo/json")[2])
        self.assertEqual(self.get("/pypi/pypi/demo/1.0/json")[2], self.get("/pypi/demo/1.0/json")[2])
        self.assertEqual(self.h.paths(), ["/pypi/demo/json", "/pypi/demo/1.0/json"])

    def test_download_through_the_vault(self) -> None:
        """A URL from the document serves the upstream's bytes, checked against the index's sha256."""
        for entry, data in ((SDIST_ENTRY, SDIST), (WHEEL_ENTRY, WHEEL)):
            url = next(f["url"] for f in self.get("/pypi/demo/json")[2]["urls"] if f["filename"] == entry["filename"])
            r = self.h.get(urlsplit(url).path)
            self.assertEqual((r.status, r.body), (200, data))
            self.assertEqual(self.h.store.lookup(f"pypi-file:{sha(data)}").sha256, sha(data))

    def test_names(self) -> None:
        """A name not normalised is a 301 to the normalised one (either form); an invalid one a 404, unasked."""
        for path, location in (("/pypi/Demo/json", "/pypi/demo/json"), ("/pypi/De_mo/1.0/json", "/pypi/de-mo/1.0/json"),
                               ("/pypi/pypi/DEMO/json", "/pypi/pypi/demo/json")):
            r = self.h.get(path)
            self.assertEqual((r.status, r.header("location")), (301, location), path)
        self.assertEqual(self.h.get("/pypi/-x-/json").status, 404)
        self.assertEqual(self.h.client.requests, [])

    def test_upstream_404(self) -> None:
        """A project or version the upstream does not know is a 404."""
        self.assertEqual(self.h.get("/pypi/nothing/json").status, 404)
        self.assertEqual(self.h.get("/pypi/demo/2.0/json").status, 404)

    def test_not_json(self) -> None:
        """An upstream answer that is not a JSON object is a 502 saying so, and nothing is stored."""
        self.h.routes["/pypi/bad/json"] = (200, JSON_TYPE, b"[1, 2]")
        self.h.routes["/pypi/worse/json"] = (200, "text/html", b"<html>")
        for name in ("bad", "worse"):
            r = self.h.get(f"/pypi/{name}/json")
            self.assertEqual(r.status, 502, r.body)
            self.assertIn(b"JSON", r.body)
            self.assertIsNone(self.h.store.lookup(f"pypi-json:http://up.example/pypi/{name}/json for /pypi/"))

    def test_fresh_revalidated_stale(self) -> None:
        """Like an index page: fresh for index_ttl, then asked again, then the stale copy when the upstream fails."""
        first = self.get("/pypi/demo/json")[2]
        status, r, again = self.get("/pypi/demo/json")
        self.assertEqual((r.header("x-cache"), again, self.h.paths()), ("HIT", first, ["/pypi/demo/json"]))
        self.h.clock.advance(61)
        self.h.routes["/pypi/demo/json"] = (503, "text/plain", b"down")
        status, r, stale = self.get("/pypi/demo/json")
        self.assertEqual((status, r.header("x-cache"), r.header("warning"), stale),
                         (200, "STALE", '299 - "Response is Stale"', first))
        self.assertEqual(self.h.paths(), ["/pypi/demo/json"] * 2)

    def test_serial_and_etag(self) -> None:
        """X-PyPI-Last-Serial is passed on, on a miss and on a hit; an ETag, and a 304 for it."""
        _, miss, _ = self.get("/pypi/demo/json")
        _, hit, _ = self.get("/pypi/demo/json")
        self.assertEqual((miss.header("x-pypi-last-serial"), hit.header("x-pypi-last-serial")), ("4242", "4242"))
        r = self.h.get("/pypi/demo/json", {"if-none-match": hit.header("etag")})
        self.assertEqual((r.status, r.body), (304, b""))

    def test_host(self) -> None:
        """
        URLs are at the address the client used (its Host; https behind a
        proxy that says so); a Host that is no host name gives the address
        the connection came in on. Each client gets its own.
        """
        for headers, base in (({"host": "10.0.0.1:8080"}, "http://10.0.0.1:8080/pypi/"),
                              ({"host": "vault.example", "x-forwarded-proto": "https"}, "https://vault.example/pypi/"),
                              ({"host": "[::1]:80"}, "http://[::1]:80/pypi/"),
                              ({"host": "evil/path?"}, "http://10.0.0.1:12345/pypi/"),
                              ({"host": None}, "http://10.0.0.1:12345/pypi/")):
            body = json.loads(self.h.get("/pypi/demo/json", headers).body)
            self.assertEqual(body["urls"][0]["url"], in_vault(SDIST_ENTRY, base)["url"], headers)
        self.assertEqual(self.h.paths(), ["/pypi/demo/json"])

    def test_json_api_url(self) -> None:
        """json_api_url puts the upstream's JSON API elsewhere."""
        h = Harness(self, json_api_url="http://api.example/v/")
        h.routes["/v/demo/json"] = (200, JSON_TYPE, json.dumps(PROJECT).encode())
        self.assertEqual(h.get("/pypi/demo/json").status, 200)
        self.assertEqual([q.url for q in h.client.requests], ["http://api.example/v/demo/json"])

    def test_files_without_digests(self) -> None:
        """
        A JSON API that gives URLs alone (pypiserver's): each file's id is
        the one the project's simple page gives that URL, so the URL serves it.
        """
        bare = {"info": {"version": "1.0"}, "releases": {"1.0": [
            {"url": "http://up.example/packages/demo-1.0.tar.gz"}, {"url": "http://up.example/packages/gone.tar.gz"}]}}
        self.h.routes["/pypi/demo/json"] = (200, JSON_TYPE, json.dumps(bare).encode())
        body = self.get("/pypi/demo/json")[2]
        sdist, gone = body["releases"]["1.0"]
        self.assertEqual(sdist, {"url": f"http://vault.test/pypi/%2Bf/demo/{sha(SDIST)}/demo-1.0.tar.gz"})
        self.assertRegex(gone["url"], r"^http://vault\.test/pypi/%2Bf/demo/url-[0-9a-f]{32}/gone\.tar\.gz$")
        self.assertEqual(self.h.paths(), ["/pypi/demo/json", "/simple/demo/"])
        r = self.h.get(urlsplit(sdist["url"]).path)
        self.assertEqual((r.status, r.body), (200, SDIST))
        self.assertEqual(self.h.get(urlsplit(gone["url"]).path).status, 404)  # not on the page: not served

    def test_no_simple_page(self) -> None:
        """Files without digests of a project whose simple page fails: the ids of their URLs, still an answer."""
        bare = {"info": {}, "urls": [{"url": "http://up.example/x/other-1.0.tar.gz", "filename": "other-1.0.tar.gz"}]}
        self.h.routes["/pypi/other/json"] = (200, JSON_TYPE, json.dumps(bare).encode())
        status, _, body = self.get("/pypi/other/json")
        self.assertEqual(status, 200)
        self.assertRegex(body["urls"][0]["url"], r"/%2Bf/other/url-[0-9a-f]{32}/other-1\.0\.tar\.gz$")

    def test_head(self) -> None:
        """HEAD: the GET's headers, no body."""
        get = self.h.get("/pypi/demo/json")
        head = self.h.get("/pypi/demo/json", method=b"HEAD")
        self.assertEqual((head.status, head.body, head.header("content-length"), head.header("etag")),
                         (200, b"", get.header("content-length"), get.header("etag")))


class LargeDocumentTests(SynchronousTestCase):
    def test_all_in_the_pool(self) -> None:
        """A large document is checked, stored, read back and rewritten in the store's thread pool, never here."""
        self.patch(storemod, "INLINE_WORK", 64)
        pool = ManualPool()
        h = json_routes(Harness(self, pool=pool))
        client = Client(h.site, h.clock, b"/pypi/demo/json")
        h.client.requests[0].respond(200, json.dumps(PROJECT).encode(), {"content-type": JSON_TYPE})
        self.assertFalse(client.has_answer())
        self.assertEqual(pool.run_all(), ["_rewrite", "_commit", "_read_whole", "_parse", "_render_one"])
        self.assertEqual(json.loads(client.answer().body)["urls"], [in_vault(SDIST_ENTRY), in_vault(WHEEL_ENTRY)])
        self.assertEqual(INDEX, "http://up.example/simple/")
