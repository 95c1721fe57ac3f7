"""
The PyPI simple repository API (PEP 503, 691, 658/714, 592, 700, 708, 740,
792) and PyPI's legacy JSON API, requirement by requirement, through the real
daemon: for each request the vault's answer next to the upstream's. The
upstreams are the test kit's pypiserver (PEP 503 HTML, plus the kit's
PyPI-style JSON API) and a scripted index (L{tests.fakeupstream}) that sends
every field the PEPs define, in JSON from one project and HTML from another,
as PyPI does; where the upstream cannot say (what a client with no
acceptable type gets), the PEP's words are the reference.

Classes walk the PEPs in the order above (their names start with S1…S9 so
that trial runs them so), a test per requirement, so a gap shows up as a
failing line named after it; docs/conformance-pypi.md is the table of what
each one shows. One daemon serves the whole module.
"""

from __future__ import annotations

import hashlib
import html.parser
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from typing import Any
from urllib.parse import urljoin, urlsplit

from twisted.trial.unittest import TestCase

from tests import support
from tests.fakeupstream import FakeUpstream, Script
from tests.support import Daemon, request

JSON = "application/vnd.pypi.simple.v1+json"
HTML_V1 = "application/vnd.pypi.simple.v1+html"
HTML = "text/html; charset=utf-8"
PIP_ACCEPT = f"{JSON}, {HTML_V1}; q=0.1, text/html; q=0.01"
TTL = 1.0

Answer = tuple[int, dict[str, str], bytes]


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# -- the scripted index: every field, JSON (demo) and HTML (htmldemo) -------------

SDIST = b"demo 1.0 sdist " * 40
WHEEL = b"demo 1.0 wheel " * 40
OLD = b"demo 0.9 sdist " * 40
OLD8 = b"demo 0.8 sdist " * 40
META = b"Metadata-Version: 2.1\nName: demo\nVersion: 1.0\n"
SIG = b"-----BEGIN PGP SIGNATURE-----\nnot really\n-----END PGP SIGNATURE-----\n"
PROVENANCE = json.dumps({"version": 1, "attestation_bundles": [
    {"publisher": {"kind": "GitHub", "repository": "demo/demo"}, "attestations": []}]}).encode()
TAMPERED = OLD8[:-1] + b"!"  # what the upstream serves as 0.8: not what its index says


def json_page(base: str) -> dict[str, Any]:
    """
    A PEP 691 project page as PyPI sends it (api-version 1.4), with every
    PEP's fields and some of no PEP; file URLs relative and absolute (C{base}).
    """
    return {
        "meta": {"api-version": "1.4", "_last-serial": 31337, "tracks": ["https://pypi.example/simple/demo/"]},
        "name": "demo",
        "versions": ["0.9", "1.0"],
        "project-status": {"status": "archived", "reason": "finished"},
        "alternate-locations": ["https://mirror.example/simple/demo/"],
        "_vendor-extension": {"kept": True},
        "files": [
            {"filename": "demo-1.0.tar.gz", "url": "/files/demo-1.0.tar.gz",
             "hashes": {"sha256": sha256(SDIST), "md5": hashlib.md5(SDIST).hexdigest()},
             "requires-python": ">=3.8", "size": len(SDIST), "upload-time": "2025-01-02T03:04:05.678901Z",
             "yanked": False, "core-metadata": False, "data-dist-info-metadata": False, "gpg-sig": False,
             "provenance": None},
            {"filename": "demo-1.0-py3-none-any.whl", "url": f"{base}/files/demo-1.0-py3-none-any.whl",
             "hashes": {"sha256": sha256(WHEEL)}, "requires-python": ">=3.8", "size": len(WHEEL),
             "upload-time": "2025-01-02T03:04:06Z", "yanked": False,
             "core-metadata": {"sha256": sha256(META)}, "data-dist-info-metadata": {"sha256": sha256(META)},
             "gpg-sig": True, "provenance": "/integrity/demo/1.0/demo-1.0-py3-none-any.whl/provenance",
             "_vendor-file": 1},
            {"filename": "demo-0.9.tar.gz", "url": "/files/demo-0.9.tar.gz", "hashes": {"sha256": sha256(OLD)},
             "size": len(OLD), "yanked": "broken build", "gpg-sig": False, "provenance": None},
            {"filename": "demo-0.8.tar.gz", "url": "/files/demo-0.8.tar.gz", "hashes": {"sha256": sha256(OLD8)},
             "size": len(OLD8), "yanked": False},
        ],
    }


HTML_PAGE = f"""<!DOCTYPE html>
<html>
  <head>
    <meta name="pypi:repository-version" content="1.4">
    <meta name="pypi:project-status" content="deprecated">
    <meta name="pypi:project-status-reason" content="use &quot;demo&quot; &amp; be happy">
    <meta name="pypi:tracks" content="https://pypi.example/simple/htmldemo/">
    <meta name="pypi:alternate-locations" content="https://mirror.example/simple/htmldemo/">
    <title>Links for htmldemo</title>
  </head>
  <body>
    <h1>Links for htmldemo</h1>
    <a href="/files/htmldemo-1.0-py3-none-any.whl#sha256={sha256(WHEEL)}" data-requires-python="&gt;=3.8"
       data-dist-info-metadata="sha256={sha256(META)}" data-core-metadata="sha256={sha256(META)}"
       data-gpg-sig="true" data-provenance="/integrity/htmldemo/1.0/htmldemo-1.0-py3-none-any.whl/provenance"
       >htmldemo-1.0-py3-none-any.whl</a><br />
    <a href="/files/htmldemo-0.9.tar.gz#sha256={sha256(OLD)}" data-yanked="" data-gpg-sig="false"
       >htmldemo-0.9.tar.gz</a><br />
    <a href="/files/htmldemo-0.8.tar.gz#sha256={sha256(OLD8)}" data-yanked="broken &amp; bad"
       data-requires-python="&lt;3">htmldemo-0.8.tar.gz</a><br />
  </body>
</html>
<!--SERIAL 4711-->
""".encode()


def legacy_entry(filename: str, url: str, data: bytes, packagetype: str) -> dict[str, Any]:
    return {"comment_text": "", "digests": {"md5": hashlib.md5(data).hexdigest(), "sha256": sha256(data)},
            "downloads": -1, "filename": filename, "has_sig": True, "md5_digest": hashlib.md5(data).hexdigest(),
            "packagetype": packagetype, "python_version": "source", "requires_python": ">=3.8",
            "size": len(data), "upload_time": "2025-01-02T03:04:05",
            "upload_time_iso_8601": "2025-01-02T03:04:05.678901Z", "url": url, "yanked": False,
            "yanked_reason": None}


def legacy_project(base: str) -> dict[str, Any]:
    """/pypi/demo/json as PyPI's legacy JSON API gives it (absolute file URLs)."""
    sdist = legacy_entry("demo-1.0.tar.gz", f"{base}/files/demo-1.0.tar.gz", SDIST, "sdist")
    wheel = legacy_entry("demo-1.0-py3-none-any.whl", f"{base}/files/demo-1.0-py3-none-any.whl", WHEEL, "bdist_wheel")
    tampered = legacy_entry("demo-0.8.tar.gz", f"{base}/files/demo-0.8.tar.gz", OLD8, "sdist")
    return {"info": {"name": "demo", "version": "1.0", "package_url": "https://pypi.example/project/demo/",
                     "project_urls": {"Source": "https://src.example/demo"}, "requires_dist": None},
            "last_serial": 31337, "releases": {"0.8": [tampered], "1.0": [sdist, wheel]},
            "urls": [sdist, wheel], "vulnerabilities": [{"id": "PYSEC-0000-0", "fixed_in": ["1.1"]}]}


class _Module:
    """
    The module's one daemon: /pypi/ → the kit's pypiserver (and the kit's
    JSON API, found by default), /raw/ → pypiserver with json_api_url at
    its own URL-only JSON API, /fake/ → the scripted index.
    """

    def __init__(self) -> None:
        self.pypi = support.upstream_url("pypi")
        self.fake = FakeUpstream()
        self.tmp = tempfile.mkdtemp(prefix="av-pypi-conf-")
        f = self.fake
        serial = {"X-PyPI-Last-Serial": "31337"}
        f.scripts["/simple/"] = Script(body=json.dumps({
            "meta": {"api-version": "1.4", "_last-serial": 31337},
            "projects": [{"name": "demo"}, {"name": "HtmlDemo"}]}).encode(), headers={"Content-Type": JSON, **serial})
        f.scripts["/simple/demo/"] = Script(body=json.dumps(json_page(f.base)).encode(),
                                            headers={"Content-Type": JSON, **serial})
        f.scripts["/simple/htmldemo/"] = Script(body=HTML_PAGE, headers={"Content-Type": "text/html", **serial})
        files = {"/files/demo-1.0.tar.gz": SDIST, "/files/demo-1.0-py3-none-any.whl": WHEEL,
                 "/files/demo-1.0-py3-none-any.whl.metadata": META, "/files/demo-1.0-py3-none-any.whl.asc": SIG,
                 "/files/demo-0.9.tar.gz": OLD, "/files/demo-0.8.tar.gz": TAMPERED,
                 "/integrity/demo/1.0/demo-1.0-py3-none-any.whl/provenance": PROVENANCE,
                 "/files/htmldemo-1.0-py3-none-any.whl": WHEEL, "/files/htmldemo-1.0-py3-none-any.whl.metadata": META,
                 "/files/htmldemo-1.0-py3-none-any.whl.asc": SIG, "/files/htmldemo-0.9.tar.gz": OLD,
                 "/integrity/htmldemo/1.0/htmldemo-1.0-py3-none-any.whl/provenance": PROVENANCE}
        for path, data in files.items():
            f.scripts[path] = Script(body=data, headers={"Content-Type": "application/octet-stream"})
        f.scripts["/pypi/demo/json"] = Script(body=json.dumps(legacy_project(f.base)).encode(),
                                              headers={"Content-Type": "application/json", **serial})
        self.daemon = Daemon([
            {"type": "pypi", "config": {"prefix": "/pypi/", "index_url": self.pypi + "/simple/"}},
            {"type": "pypi", "config": {"prefix": "/raw/", "index_url": self.pypi + "/simple/",
                                        "json_api_url": self.pypi + "/"}},
            {"type": "pypi", "config": {"prefix": "/fake/", "index_url": f.base + "/simple/", "index_ttl": TTL,
                                        "timeout": 5}},
        ]).start()

    def close(self) -> None:
        self.daemon.cleanup()
        self.fake.close()
        shutil.rmtree(self.tmp, ignore_errors=True)


class Page(html.parser.HTMLParser):
    """An independent reader of a simple-API HTML page: its pypi: <meta> tags, anchors and comments."""

    def __init__(self, body: bytes) -> None:
        super().__init__(convert_charrefs=True)
        self.metas: list[tuple[str, str]] = []
        self.anchors: list[tuple[dict[str, str | None], str]] = []
        self.comments: list[str] = []
        self._open: dict[str, str | None] | None = None
        self._text = ""
        self.feed(body.decode("utf-8"))
        self.close()

    def handle_starttag(self, tag: str, attrs: list) -> None:
        if tag == "meta" and (dict(attrs).get("name") or "").startswith("pypi:"):
            self.metas.append((dict(attrs)["name"], dict(attrs)["content"]))
        elif tag == "a":
            self._open, self._text = dict(attrs), ""

    def handle_data(self, data: str) -> None:
        if self._open is not None:
            self._text += data

    def handle_endtag(self, tag: str) -> None:
        if tag == "a" and self._open is not None:
            self.anchors.append((self._open, self._text.strip()))
            self._open = None

    def handle_comment(self, data: str) -> None:
        self.comments.append(data.strip())

    def by_name(self) -> dict[str, dict[str, str | None]]:
        return {text: attrs for attrs, text in self.anchors}


class ConformanceCase(TestCase):
    timeout = 300

    def setUp(self) -> None:
        module = support.shared_fixture(_Module)
        self.daemon, self.pypi, self.fake, self.tmp = module.daemon, module.pypi, module.fake, module.tmp

    def vault(self, path: str, headers: dict[str, str] | None = None, method: str = "GET") -> Answer:
        return request(method, self.daemon.url(path), headers)

    def page_url(self, path: str) -> str:
        return self.daemon.url(path)

    def assertSameHtml(self, vault: bytes, upstream: bytes, page_url: str) -> None:
        """
        Same pypi: <meta> tags, same anchors with the same attributes and
        text, same comments; but each href is the vault's (below +f/, same
        fragment) and each data-provenance the vault's (beside the file).
        """
        mine, theirs = Page(vault), Page(upstream)
        self.assertEqual(sorted(mine.metas), sorted(theirs.metas))
        self.assertEqual(mine.comments, theirs.comments)
        self.assertEqual(sorted(mine.by_name()), sorted(theirs.by_name()))
        for name, attrs in theirs.by_name().items():
            got = dict(mine.by_name()[name])
            href = urljoin(page_url, got.pop("href"))
            self.assertTrue(urlsplit(href).path.startswith(urlsplit(page_url).path.rsplit("/", 2)[0] + "/+f/"), href)
            self.assertEqual(href.partition("#")[2], attrs["href"].partition("#")[2], name)
            if "data-provenance" in attrs:
                self.assertEqual(urljoin(page_url, got.pop("data-provenance")), href.partition("#")[0] + ".provenance")
            expected = {k: v for k, v in attrs.items() if k not in ("href", "data-provenance")}
            self.assertEqual(got, expected, name)

    def assertSameJson(self, vault: dict[str, Any], upstream: dict[str, Any], page_url: str) -> None:
        """
        The upstream's project page, every key as it came, but each file's
        url and provenance the vault's (below +f/, beside the file), and the
        PEP 658 name offered beside PEP 714's.
        """
        self.assertEqual([f["filename"] for f in vault["files"]], [f["filename"] for f in upstream["files"]])
        vault, upstream = json.loads(json.dumps(vault)), json.loads(json.dumps(upstream))
        for mine, theirs in zip(vault["files"], upstream["files"]):
            url = urljoin(page_url, mine.pop("url"))
            self.assertIn("/+f/", url)
            del theirs["url"]
            if isinstance(theirs.get("provenance"), str):
                self.assertEqual(urljoin(page_url, mine.pop("provenance")), url + ".provenance")
                del theirs["provenance"]
            if "core-metadata" in theirs and theirs["core-metadata"]:
                self.assertEqual(mine.pop("dist-info-metadata"), theirs["core-metadata"])
        self.assertEqual(vault, upstream)


# -- PEP 503: the simple repository API ---------------------------------------------

class S1Pep503Tests(ConformanceCase):
    """PEP 503 (the simple repository API, HTML), against pypiserver and the scripted index."""

    def test_a1_root(self) -> None:
        """The root is an HTML5 page with one anchor per project, its text the name and its href the project's page: the upstream's projects."""
        status, headers, body = self.vault("/pypi/")
        self.assertEqual((status, headers["content-type"]), (200, HTML))
        self.assertTrue(body.startswith(b"<!DOCTYPE html>"))
        page = Page(body)
        upstream = {text for _, text in Page(request("GET", self.pypi + "/simple/")[2]).anchors}
        self.assertEqual({text for _, text in page.anchors}, upstream)
        for attrs, text in page.anchors:
            self.assertEqual(attrs["href"], re.sub(r"[-_.]+", "-", text).lower() + "/")

    def test_a2_project_page(self) -> None:
        """A project page has one anchor per file: the text its filename, the href's last part the filename, with the upstream's #sha256= fragment."""
        status, _, body = self.vault("/pypi/requests/")
        self.assertEqual(status, 200)
        upstream = Page(request("GET", self.pypi + "/simple/requests/")[2])
        mine = Page(body)
        self.assertEqual({(text, attrs["href"].partition("#")[2]) for attrs, text in mine.anchors},
                         {(text, attrs["href"].partition("#")[2]) for attrs, text in upstream.anchors})
        for attrs, text in mine.anchors:
            self.assertEqual(urlsplit(attrs["href"]).path.rpartition("/")[2], text)

    def test_a3_files_are_the_upstreams(self) -> None:
        """Each link serves the upstream's bytes, which match the page's hash."""
        page_url = self.page_url("/pypi/six/")
        for attrs, text in Page(self.vault("/pypi/six/")[2]).anchors:
            url, _, fragment = urljoin(page_url, attrs["href"]).partition("#")
            status, _, data = request("GET", url)
            self.assertEqual((status, "sha256=" + sha256(data)), (200, fragment), text)
            self.assertEqual(data, request("GET", f"{self.pypi}/packages/{text}")[2])

    def test_a4_trailing_slash(self) -> None:
        """A page URL without its / is redirected to it (SHOULD)."""
        status, headers, _ = self.vault("/pypi/six")
        self.assertEqual((status, headers["location"]), (301, "/pypi/six/"))

    def test_a5_normalized_names(self) -> None:
        """A name that is not normalised is redirected to the normalised page (MAY), as the upstream does."""
        vault = self.vault("/pypi/Charset_Normalizer/")
        upstream = request("GET", self.pypi + "/simple/Charset_Normalizer/")
        self.assertEqual((vault[0], vault[1]["location"]), (301, "/pypi/charset-normalizer/"))
        self.assertEqual(upstream[0], 301)

    def test_a6_unknown_project(self) -> None:
        """A project the upstream does not have: 404, as the upstream's."""
        upstream = request("GET", self.pypi + "/simple/no-such-project/")
        self.assertEqual((self.vault("/pypi/no-such-project/")[0], upstream[0]), (404, 404))

    def test_a7_requires_python(self) -> None:
        """data-requires-python is the upstream's, escaped (&lt; &gt;) in the markup."""
        status, _, body = self.vault("/fake/htmldemo/")
        self.assertIn(b'data-requires-python="&gt;=3.8"', body)
        self.assertEqual(Page(body).by_name()["htmldemo-0.8.tar.gz"]["data-requires-python"], "<3")

    def test_a8_gpg_signatures(self) -> None:
        """data-gpg-sig is the upstream's (true and false), and a file with a signature has it beside it (+ .asc), with the upstream's bytes; one without has none."""
        page_url = self.page_url("/fake/htmldemo/")
        anchors = Page(self.vault("/fake/htmldemo/")[2]).by_name()
        self.assertEqual((anchors["htmldemo-1.0-py3-none-any.whl"]["data-gpg-sig"],
                          anchors["htmldemo-0.9.tar.gz"]["data-gpg-sig"]), ("true", "false"))
        signed = urljoin(page_url, anchors["htmldemo-1.0-py3-none-any.whl"]["href"]).partition("#")[0]
        unsigned = urljoin(page_url, anchors["htmldemo-0.9.tar.gz"]["href"]).partition("#")[0]
        self.assertEqual(request("GET", signed + ".asc")[::2], (200, SIG))
        self.assertEqual(request("GET", unsigned + ".asc")[0], 404)

    def test_a9_whole_page(self) -> None:
        """The HTML page as a whole: the upstream's meta tags, anchors, attributes and serial, but URLs."""
        self.assertSameHtml(self.vault("/fake/htmldemo/")[2], HTML_PAGE, self.page_url("/fake/htmldemo/"))


# -- PEP 691: JSON and content negotiation --------------------------------------------

class S2Pep691Tests(ConformanceCase):
    """PEP 691 (the JSON form, content negotiation)."""

    def test_b1_json_project_list(self) -> None:
        """The root in JSON: meta.api-version and projects[].name, the upstream's (its version and serial too)."""
        status, headers, body = self.vault("/fake/", {"Accept": JSON})
        self.assertEqual((status, headers["content-type"]), (200, JSON))
        self.assertEqual(json.loads(body), json.loads(self.fake.scripts["/simple/"].body))

    def test_b2_json_project_page(self) -> None:
        """A project in JSON: name, files (filename, url, hashes, ...), meta; the upstream's, URLs aside."""
        status, headers, body = self.vault("/fake/demo/", {"Accept": PIP_ACCEPT})
        self.assertEqual((status, headers["content-type"]), (200, JSON))
        upstream = json.loads(request("GET", self.fake.base + "/simple/demo/")[2])
        self.assertSameJson(json.loads(body), upstream, self.page_url("/fake/demo/"))

    def test_b3_negotiation(self) -> None:
        """Accept chooses the form (q values, specificity); no Accept is text/html; latest gets the v1 type (MUST); Vary: Accept."""
        for accept, expected in ((None, HTML), (PIP_ACCEPT, JSON), (HTML_V1, HTML_V1), ("text/html", HTML),
                                 (f"{JSON};q=0.5, {HTML_V1}", HTML_V1), ("*/*", HTML),
                                 ("application/vnd.pypi.simple.latest+json", JSON),
                                 ("application/vnd.pypi.simple.latest+html", HTML_V1)):
            status, headers, _ = self.vault("/pypi/six/", {"Accept": accept} if accept else None)
            self.assertEqual((status, headers["content-type"], headers["vary"]), (200, expected, "Accept"), accept)

    def test_b4_nothing_acceptable(self) -> None:
        """
        An Accept with no type of ours: PEP 691 lets the server pick a default,
        answer 406 or 300; the vault answers text/html, as PyPI does (never 300).
        """
        for accept in ("application/json", "application/vnd.pypi.simple.v2+json", "image/png"):
            status, headers, body = self.vault("/pypi/six/", {"Accept": accept})
            self.assertEqual((status, headers["content-type"]), (200, HTML), accept)
            self.assertIn(b"six-1.16.0.tar.gz", body)

    def test_b5_forms_agree(self) -> None:
        """JSON and HTML list the same files with the same hashes, at URLs that serve them."""
        page_url = self.page_url("/pypi/requests/")
        from_json = {(f["filename"], urljoin(page_url, f["url"]), f["hashes"]["sha256"])
                     for f in json.loads(self.vault("/pypi/requests/", {"Accept": JSON})[2])["files"]}
        from_html = set()
        for attrs, text in Page(self.vault("/pypi/requests/", {"Accept": HTML_V1})[2]).anchors:
            url, _, fragment = urljoin(page_url, attrs["href"]).partition("#")
            from_html.add((text, url, fragment.removeprefix("sha256=")))
        self.assertEqual(from_json, from_html)

    def test_b6_content_type_always(self) -> None:
        """Every answer says its Content-Type (pip checks it)."""
        for path, accept in (("/pypi/", JSON), ("/pypi/", "text/html"), ("/fake/htmldemo/", PIP_ACCEPT)):
            self.assertIn("content-type", self.vault(path, {"Accept": accept})[1])


# -- PEP 658 / 714: metadata beside a file ------------------------------------------

class S3Pep658Tests(ConformanceCase):
    """PEP 658 (metadata files) and PEP 714 (their new name)."""

    def test_c1_attributes(self) -> None:
        """HTML: data-core-metadata (MUST) and data-dist-info-metadata (MAY, then equal); JSON: core-metadata (MUST), with the upstream's hash."""
        anchors = Page(self.vault("/fake/htmldemo/")[2]).by_name()
        wheel = anchors["htmldemo-1.0-py3-none-any.whl"]
        self.assertEqual((wheel["data-core-metadata"], wheel["data-dist-info-metadata"]),
                         (f"sha256={sha256(META)}",) * 2)
        files = {f["filename"]: f for f in json.loads(self.vault("/fake/demo/", {"Accept": JSON})[2])["files"]}
        self.assertEqual(files["demo-1.0-py3-none-any.whl"]["core-metadata"], {"sha256": sha256(META)})
        self.assertEqual(files["demo-1.0.tar.gz"]["core-metadata"], False)

    def test_c2_metadata_file(self) -> None:
        """The metadata is served beside the file (+ .metadata), the upstream's bytes, matching the hash; none beside a file without."""
        page_url = self.page_url("/fake/demo/")
        files = {f["filename"]: urljoin(page_url, f["url"])
                 for f in json.loads(self.vault("/fake/demo/", {"Accept": JSON})[2])["files"]}
        status, _, body = request("GET", files["demo-1.0-py3-none-any.whl"] + ".metadata")
        self.assertEqual((status, body), (200, META))
        self.assertEqual(request("GET", files["demo-1.0.tar.gz"] + ".metadata")[0], 404)

    def test_c3_from_html(self) -> None:
        """The same from an HTML upstream."""
        page_url = self.page_url("/fake/htmldemo/")
        href = Page(self.vault("/fake/htmldemo/")[2]).by_name()["htmldemo-1.0-py3-none-any.whl"]["href"]
        self.assertEqual(request("GET", urljoin(page_url, href).partition("#")[0] + ".metadata")[::2], (200, META))


# -- PEP 592: yanked files ----------------------------------------------------------------

class S4Pep592Tests(ConformanceCase):
    """PEP 592 (yank): a mirror MUST NOT mirror a yanked file without its data-yanked."""

    def test_d1_html(self) -> None:
        """data-yanked with no value and with a reason, as the upstream's; files not yanked have none."""
        anchors = Page(self.vault("/fake/htmldemo/")[2]).by_name()
        self.assertEqual((anchors["htmldemo-0.9.tar.gz"]["data-yanked"], anchors["htmldemo-0.8.tar.gz"]["data-yanked"]),
                         ("", "broken & bad"))
        self.assertNotIn("data-yanked", anchors["htmldemo-1.0-py3-none-any.whl"])

    def test_d2_json(self) -> None:
        """JSON yanked: a reason, true (from HTML), false, as the upstream said."""
        files = {f["filename"]: f for f in json.loads(self.vault("/fake/demo/", {"Accept": JSON})[2])["files"]}
        self.assertEqual((files["demo-0.9.tar.gz"]["yanked"], files["demo-1.0.tar.gz"]["yanked"]),
                         ("broken build", False))
        files = {f["filename"]: f for f in json.loads(self.vault("/fake/htmldemo/", {"Accept": JSON})[2])["files"]}
        self.assertEqual((files["htmldemo-0.9.tar.gz"]["yanked"], files["htmldemo-0.8.tar.gz"]["yanked"]),
                         (True, "broken & bad"))

    def test_d3_yanked_in_html_from_json(self) -> None:
        """A JSON upstream's yanked reason reaches HTML clients as data-yanked."""
        anchors = Page(self.vault("/fake/demo/")[2]).by_name()
        self.assertEqual(anchors["demo-0.9.tar.gz"]["data-yanked"], "broken build")
        self.assertNotIn("data-yanked", anchors["demo-1.0.tar.gz"])


# -- PEP 700 (and PEP 629 versions) ---------------------------------------------------------

class S5Pep700Tests(ConformanceCase):
    """PEP 700 (versions, size, upload-time; api-version 1.1) and PEP 629 (the version, never lowered)."""

    def test_e1_fields(self) -> None:
        """versions, each file's size and upload-time, private _ keys: the upstream's."""
        vault = json.loads(self.vault("/fake/demo/", {"Accept": JSON})[2])
        upstream = json_page(self.fake.base)
        self.assertEqual((vault["versions"], vault["_vendor-extension"]),
                         (upstream["versions"], upstream["_vendor-extension"]))
        self.assertEqual([(f.get("size"), f.get("upload-time")) for f in vault["files"]],
                         [(f.get("size"), f.get("upload-time")) for f in upstream["files"]])

    def test_e2_api_version(self) -> None:
        """
        api-version is the upstream's (1.4) in JSON and in HTML's
        pypi:repository-version; from an HTML page the HTML form says the
        upstream's and the JSON form 1.0 (it cannot have PEP 700's versions
        and sizes); the project list keeps the upstream's too.
        """
        self.assertEqual(json.loads(self.vault("/fake/demo/", {"Accept": JSON})[2])["meta"]["api-version"], "1.4")
        self.assertIn(("pypi:repository-version", "1.4"), Page(self.vault("/fake/demo/")[2]).metas)
        self.assertIn(("pypi:repository-version", "1.4"), Page(self.vault("/fake/htmldemo/")[2]).metas)
        self.assertEqual(json.loads(self.vault("/fake/htmldemo/", {"Accept": JSON})[2])["meta"]["api-version"], "1.0")
        self.assertEqual(json.loads(self.vault("/fake/", {"Accept": JSON})[2])["meta"]["api-version"], "1.4")

    def test_e3_serial(self) -> None:
        """meta._last-serial (JSON), <!--SERIAL n--> (HTML) and the X-PyPI-Last-Serial header are the upstream's, on a hit too."""
        for _ in range(2):
            status, headers, body = self.vault("/fake/demo/", {"Accept": JSON})
            self.assertEqual((json.loads(body)["meta"]["_last-serial"], headers["x-pypi-last-serial"]),
                             (31337, "31337"))
        self.assertEqual(Page(self.vault("/fake/demo/")[2]).comments, ["SERIAL 31337"])
        self.assertEqual(Page(self.vault("/fake/htmldemo/")[2]).comments, ["SERIAL 4711"])


# -- PEP 708: tracks, alternate locations -----------------------------------------------------

class S6Pep708Tests(ConformanceCase):
    """PEP 708 (tracks, alternate-locations), passed on as the upstream's (they name other indexes' pages)."""

    def test_f1_json(self) -> None:
        """meta.tracks and alternate-locations: the upstream's, in JSON from JSON and from HTML."""
        vault = json.loads(self.vault("/fake/demo/", {"Accept": JSON})[2])
        upstream = json_page(self.fake.base)
        self.assertEqual((vault["meta"]["tracks"], vault["alternate-locations"]),
                         (upstream["meta"]["tracks"], upstream["alternate-locations"]))
        vault = json.loads(self.vault("/fake/htmldemo/", {"Accept": JSON})[2])
        self.assertEqual((vault["meta"]["tracks"], vault["alternate-locations"]),
                         (["https://pypi.example/simple/htmldemo/"], ["https://mirror.example/simple/htmldemo/"]))

    def test_f2_html(self) -> None:
        """pypi:tracks and pypi:alternate-locations <meta> tags, from JSON and from HTML."""
        metas = Page(self.vault("/fake/demo/")[2]).metas
        self.assertIn(("pypi:tracks", "https://pypi.example/simple/demo/"), metas)
        self.assertIn(("pypi:alternate-locations", "https://mirror.example/simple/demo/"), metas)
        def pep708(body: bytes) -> list[tuple[str, str]]:
            return sorted(m for m in Page(body).metas if m[0] in ("pypi:tracks", "pypi:alternate-locations"))
        self.assertEqual(pep708(self.vault("/fake/htmldemo/")[2]), pep708(HTML_PAGE))


# -- PEP 740: provenance -----------------------------------------------------------------------

class S7Pep740Tests(ConformanceCase):
    """PEP 740 (provenance): the field is kept, its URL the vault's, the provenance the upstream's."""

    def test_g1_json(self) -> None:
        """provenance: a URL (the vault's, beside the file) serving the upstream's provenance object; null where the upstream said null."""
        page_url = self.page_url("/fake/demo/")
        files = {f["filename"]: f for f in json.loads(self.vault("/fake/demo/", {"Accept": JSON})[2])["files"]}
        wheel = files["demo-1.0-py3-none-any.whl"]
        self.assertEqual(urljoin(page_url, wheel["provenance"]), urljoin(page_url, wheel["url"]) + ".provenance")
        status, headers, body = request("GET", urljoin(page_url, wheel["provenance"]))
        self.assertEqual((status, headers["content-type"], body), (200, "application/json", PROVENANCE))
        self.assertIsNone(files["demo-1.0.tar.gz"]["provenance"])

    def test_g2_html(self) -> None:
        """data-provenance: the vault's URL, serving the upstream's provenance; absent where the upstream has none."""
        page_url = self.page_url("/fake/htmldemo/")
        anchors = Page(self.vault("/fake/htmldemo/")[2]).by_name()
        url = urljoin(page_url, anchors["htmldemo-1.0-py3-none-any.whl"]["data-provenance"])
        self.assertEqual(request("GET", url)[::2], (200, PROVENANCE))
        self.assertNotIn("data-provenance", anchors["htmldemo-0.9.tar.gz"])


# -- PEP 792: project status ----------------------------------------------------------------------

class S8Pep792Tests(ConformanceCase):
    """PEP 792 (project status markers; api-version 1.4)."""

    def test_h1_json(self) -> None:
        """project-status (status, reason): the upstream's, in JSON from JSON and from HTML."""
        self.assertEqual(json.loads(self.vault("/fake/demo/", {"Accept": JSON})[2])["project-status"],
                         {"status": "archived", "reason": "finished"})
        self.assertEqual(json.loads(self.vault("/fake/htmldemo/", {"Accept": JSON})[2])["project-status"],
                         {"status": "deprecated", "reason": 'use "demo" & be happy'})

    def test_h2_html(self) -> None:
        """pypi:project-status and pypi:project-status-reason <meta> tags, from JSON and from HTML."""
        self.assertEqual(sorted(m for m in Page(self.vault("/fake/demo/")[2]).metas if "status" in m[0]),
                         [("pypi:project-status", "archived"), ("pypi:project-status-reason", "finished")])
        self.assertEqual(sorted(m for m in Page(self.vault("/fake/htmldemo/")[2]).metas if "status" in m[0]),
                         sorted(m for m in Page(HTML_PAGE).metas if "status" in m[0]))


# -- PyPI's legacy JSON API ---------------------------------------------------------------------------

class S9LegacyJsonApiTests(ConformanceCase):
    """PyPI's legacy JSON API (/pypi/<project>/json, /pypi/<project>/<version>/json), not a PEP."""

    def both(self, project: str, version: str | None = None) -> tuple[Answer, Answer]:
        path = f"{project}/{version}/json" if version else f"{project}/json"
        return self.vault(f"/pypi/{path}"), request("GET", f"{self.pypi}/pypi/{path}")

    def assertRewritten(self, vault: dict[str, Any], upstream: dict[str, Any], base: str) -> None:
        """The upstream's document, every field as it came but each file's url: the vault's, serving that file."""
        def files(doc: dict[str, Any]) -> list[dict[str, Any]]:
            return list(doc.get("urls", [])) + [f for fs in doc.get("releases", {}).values() for f in fs]
        for mine, theirs in zip(files(vault), files(upstream)):
            self.assertEqual(mine["url"], f"{base}%2Bf/{vault['info']['name']}/{theirs['digests']['sha256']}/"
                                          f"{theirs['filename']}")
        strip = json.loads(json.dumps(vault)), json.loads(json.dumps(upstream))
        for doc in strip:
            for f in files(doc):
                del f["url"]
        self.assertEqual(strip[0], strip[1])

    def test_j1_project(self) -> None:
        """<prefix><project>/json: the upstream's /pypi/<project>/json, its file URLs the vault's (absolute); the upstream's X-PyPI-Last-Serial."""
        vault, upstream = self.both("requests")
        self.assertEqual((vault[0], vault[1]["content-type"]), (200, "application/json"))
        self.assertEqual(vault[1]["x-pypi-last-serial"], upstream[1]["x-pypi-last-serial"])
        self.assertRewritten(json.loads(vault[2]), json.loads(upstream[2]), self.daemon.url("/pypi/"))

    def test_j2_version(self) -> None:
        """<prefix><project>/<version>/json: the upstream's version document, rewritten alike."""
        vault, upstream = self.both("six", "1.16.0")
        self.assertEqual(vault[0], 200)
        self.assertNotIn("releases", json.loads(vault[2]))
        self.assertRewritten(json.loads(vault[2]), json.loads(upstream[2]), self.daemon.url("/pypi/"))

    def test_j3_not_found_and_names(self) -> None:
        """An unknown project or version: 404 as the upstream's; a name not normalised: 301 to the normalised one."""
        for project, version in (("no-such-project", None), ("six", "9.9"), ("-x-", None)):
            self.assertEqual(self.both(project, version)[0][0], 404, (project, version))
        status, headers, _ = self.vault("/pypi/Six/json")
        self.assertEqual((status, headers["location"]), (301, "/pypi/six/json"))

    def test_j4_downloads_verified(self) -> None:
        """
        curl fetches the document and a file by a URL from it: the file is
        served through the vault (a miss stored under its sha256, then a hit)
        and is the upstream's; a file whose bytes are not what the index says
        is never served whole.
        """
        name = "certifi"
        doc = subprocess.run(["curl", "-sf", "--noproxy", "*", self.daemon.url(f"/pypi/{name}/json")],
                             capture_output=True, check=True).stdout
        entry = json.loads(doc)["urls"][0]
        out = os.path.join(self.tmp, entry["filename"])
        got = subprocess.run(["curl", "-sf", "--noproxy", "*", "-o", out, "-w", "%{http_code}", entry["url"]],
                             capture_output=True, text=True, check=True).stdout
        with open(out, "rb") as f:
            self.assertEqual((got, sha256(f.read())), ("200", entry["digests"]["sha256"]))
        self.daemon.wait_stored(f"pypi-file:{entry['digests']['sha256']}")
        self.assertIn(request("GET", entry["url"])[1]["x-cache"], ("HIT",))
        tampered = json.loads(self.vault("/fake/demo/json")[2])["releases"]["0.8"][0]["url"]
        p = subprocess.run(["curl", "-s", "--noproxy", "*", "-o", os.devnull, "-w", "%{http_code}", tampered],
                           capture_output=True, text=True)
        self.assertFalse(p.returncode == 0 and p.stdout == "200", p)  # a 502, or cut before its last byte

    def test_j5_pip_tools_form(self) -> None:
        """pip-tools' <prefix>pypi/<project>/json (an index URL ending in /) is the same document."""
        for alias, path in (("/pypi/pypi/requests/json", "/pypi/requests/json"),
                            ("/pypi/pypi/six/1.16.0/json", "/pypi/six/1.16.0/json")):
            status, _, body = self.vault(alias)
            self.assertEqual((status, body), (200, self.vault(path)[2]), alias)

    def test_j6_json_api_url(self) -> None:
        """json_api_url: pypiserver's own JSON API (file URLs alone) behind /raw/; each URL is the vault's for the file the simple page lists there."""
        vault = json.loads(self.vault("/raw/six/json")[2])
        upstream = json.loads(request("GET", self.pypi + "/six/json")[2])
        self.assertEqual(sorted(vault["releases"]), sorted(upstream["releases"]))
        for f in vault["releases"]["1.16.0"]:
            status, _, data = request("GET", f["url"])
            self.assertEqual((status, f["url"].rpartition("/")[0].rpartition("/")[2]), (200, sha256(data)))

    def test_j7_stale(self) -> None:
        """Fresh for index_ttl, then asked again; when the upstream fails the last copy, marked stale (Warning 299)."""
        path = "/pypi/stale/json"
        self.fake.scripts[path] = Script(body=json.dumps({"info": {"name": "stale"}, "urls": []}).encode(),
                                         headers={"Content-Type": "application/json"})
        first = self.vault("/fake/stale/json")
        warmed = time.monotonic()
        self.fake.scripts[path] = Script(status=503)
        time.sleep(max(warmed + TTL + 0.1 - time.monotonic(), 0))  # (a TTL running out: no event to wait for)
        status, headers, body = self.vault("/fake/stale/json")
        self.assertEqual((status, headers["x-cache"], headers["warning"], body),
                         (200, "STALE", '299 - "Response is Stale"', first[2]))

    def test_j8_pip_compile_generate_hashes(self) -> None:
        """
        pip-compile --generate-hashes through the vault takes every hash from
        the JSON API (it hashes no file itself), and they are the upstream's.
        """
        pip_compile = os.path.join(os.path.dirname(sys.executable), "pip-compile")
        if not os.path.exists(pip_compile):
            self.skipTest("pip-tools is not installed (./dev.sh test installs it)")
        src, out = os.path.join(self.tmp, "req.in"), os.path.join(self.tmp, "req.txt")
        with open(src, "w") as f:
            f.write("requests\n")
        p = subprocess.run([pip_compile, "-v", "--generate-hashes", "--no-strip-extras", "--index-url",
                            self.daemon.url("/pypi/"), "--cache-dir", os.path.join(self.tmp, "pt-cache"),
                            "-o", out, src], env=support.pip_env(), capture_output=True, text=True, timeout=240)
        self.assertEqual(p.returncode, 0, p.stdout[-3000:] + p.stderr[-3000:])
        self.assertNotIn("Hashing ", p.stdout + p.stderr)
        with open(out) as f:
            pinned = dict(re.findall(r"^([a-z0-9-]+)==\S+ \\\n\s+--hash=sha256:([0-9a-f]{64})", f.read(), re.M))
        wheels = {}
        for path in os.listdir(os.path.join(support.upstream_dir("pypi"), "packages")):
            if path.endswith(".whl"):
                wheels[re.sub(r"[-_.]+", "-", path.split("-")[0]).lower()] = support.sha256_file(
                    os.path.join(support.upstream_dir("pypi"), "packages", path))
        self.assertEqual(pinned, {name: wheels[name] for name in pinned})
        self.assertEqual(set(pinned), {"requests", "urllib3", "idna", "certifi", "charset-normalizer"})
        asked = set(re.findall(r"GET /pypi/pypi/([a-z0-9-]+)/json 200", self.daemon.log()))
        self.assertTrue(set(pinned) <= asked, asked)  # (pip-tools' form: the index URL ends in /)
