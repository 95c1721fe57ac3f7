"""
The simple API in and out (L{artifactvault.backends.pypi_index}): names,
Accept negotiation, parsing upstream HTML and JSON, rendering both forms.
"""

from __future__ import annotations

import json

from twisted.trial.unittest import SynchronousTestCase

from artifactvault.backends import pypi_index as index
from artifactvault.upstream import UpstreamError

PIP_ACCEPT = ("application/vnd.pypi.simple.v1+json, application/vnd.pypi.simple.v1+html; q=0.1, "
              "text/html; q=0.01")
SHA = "a" * 64
META_SHA = "b" * 64

UPSTREAM_HTML = f"""<!DOCTYPE html><html><head>
<meta name="pypi:repository-version" content="1.0"><title>Links for demo</title></head><body>
<a href="/packages/demo-1.0.tar.gz#sha256={SHA.upper()}">demo-1.0.tar.gz</a><br>
<a href="https://files.example/x/demo-1.0-py3-none-any.whl#sha256={SHA}"
   data-requires-python="&gt;=3.8" data-dist-info-metadata="sha256={META_SHA}">demo-1.0-py3-none-any.whl</a>
<a href="../../packages/demo-0.9.zip#md5=0123abcd" data-yanked="">demo-0.9.zip</a>
<a href="demo-0.8.tar.gz" data-yanked="broken &amp; bad" data-core-metadata="true">demo-0.8.tar.gz</a>
<a href="file:///etc/passwd">passwd</a>
<a href="demo-0.7.tar.gz#egg=demo" data-core-metadata="false">demo-0.7.tar.gz</a>
</body></html>""".encode()


class NameTests(SynchronousTestCase):
    def test_normalize(self) -> None:
        """PEP 503: runs of -, _ and . become one -, all lower case."""
        for name in ("friendly-bard", "Friendly-Bard", "FRIENDLY-BARD", "friendly.bard",
                     "friendly_bard", "friendly--bard", "FrIeNdLy-._.-bArD"):
            self.assertEqual(index.normalize(name), "friendly-bard")

    def test_valid_name(self) -> None:
        """Only names PEP 508 allows are worth asking the upstream about."""
        self.assertTrue(index.valid_name("zope-interface"))
        self.assertTrue(index.valid_name("a"))
        for bad in ("+f", "-a", "a-", "a b", "", "é", "x" * 201):
            self.assertFalse(index.valid_name(bad), bad)


class NegotiateTests(SynchronousTestCase):
    def check(self, accept: str | None, expected: str | None) -> None:
        self.assertEqual(index.negotiate(accept.encode() if accept is not None else None), expected, accept)

    def test_no_header_is_html(self) -> None:
        """PEP 691: without Accept, text/html."""
        self.check(None, index.HTML)
        self.check("", index.HTML)

    def test_clients(self) -> None:
        """pip and uv get JSON; a browser and curl get HTML."""
        self.check(PIP_ACCEPT, index.JSON)
        self.check("application/vnd.pypi.simple.v1+json, application/vnd.pypi.simple.v1+html;q=0.2, "
                   "text/html;q=0.01", index.JSON)
        self.check("text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8", index.HTML)
        self.check("*/*", index.HTML)

    def test_q_values(self) -> None:
        """The highest q wins, whatever the order; q=0 means never."""
        self.check("text/html;q=0.5, application/vnd.pypi.simple.v1+json", index.JSON)
        self.check("application/vnd.pypi.simple.v1+json;q=0.2, application/vnd.pypi.simple.v1+html",
                   index.HTML_V1)
        self.check("application/vnd.pypi.simple.v1+json;q=0, */*", index.HTML)
        self.check("*/*, text/html;q=0", index.HTML_V1)

    def test_latest_aliases(self) -> None:
        """The ``latest`` names mean version 1 here."""
        self.check("application/vnd.pypi.simple.latest+json", index.JSON)
        self.check("application/vnd.pypi.simple.latest+html", index.HTML_V1)

    def test_nothing_acceptable(self) -> None:
        """Only types we cannot produce: None, which the backend answers with 406."""
        self.check("application/json", None)
        self.check("application/vnd.pypi.simple.v2+json", None)
        self.check("text/html;q=0", None)


class ParseHtmlTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.doc = index.parse_project(UPSTREAM_HTML, "text/html; charset=utf-8",
                                       "http://up.example/simple/demo/", "demo")
        self.files = {f["filename"]: f for f in self.doc["files"]}

    def test_urls_resolved(self) -> None:
        """Relative and absolute links become absolute URLs, whichever host; file:// is dropped."""
        self.assertEqual({n: f["url"] for n, f in self.files.items()}, {
            "demo-1.0.tar.gz": "http://up.example/packages/demo-1.0.tar.gz",
            "demo-1.0-py3-none-any.whl": "https://files.example/x/demo-1.0-py3-none-any.whl",
            "demo-0.9.zip": "http://up.example/packages/demo-0.9.zip",
            "demo-0.8.tar.gz": "http://up.example/simple/demo/demo-0.8.tar.gz",
            "demo-0.7.tar.gz": "http://up.example/simple/demo/demo-0.7.tar.gz",
        })

    def test_hashes(self) -> None:
        """The URL fragment gives the hash (lower-cased); a fragment that is no hash gives none."""
        self.assertEqual(self.files["demo-1.0.tar.gz"]["hashes"], {"sha256": SHA})
        self.assertEqual(self.files["demo-0.9.zip"]["hashes"], {"md5": "0123abcd"})
        self.assertEqual(self.files["demo-0.7.tar.gz"]["hashes"], {})

    def test_attributes(self) -> None:
        """requires-python unescaped, yanked with and without a reason, both metadata names."""
        wheel = self.files["demo-1.0-py3-none-any.whl"]
        self.assertEqual(wheel["requires-python"], ">=3.8")
        self.assertEqual(wheel["core-metadata"], {"sha256": META_SHA})
        self.assertNotIn("yanked", wheel)
        self.assertIs(self.files["demo-0.9.zip"]["yanked"], True)
        self.assertEqual(self.files["demo-0.8.tar.gz"]["yanked"], "broken & bad")
        self.assertIs(self.files["demo-0.8.tar.gz"]["core-metadata"], True)
        self.assertNotIn("core-metadata", self.files["demo-0.7.tar.gz"])

    def test_base_href(self) -> None:
        """A <base href> moves where relative links point."""
        doc = index.parse_project(b'<base href="/other/"><a href="d-1.tar.gz">d-1.tar.gz</a>', None,
                                  "http://up.example/simple/d/", "d")
        self.assertEqual(doc["files"][0]["url"], "http://up.example/other/d-1.tar.gz")

    def test_api_version(self) -> None:
        """HTML lacks sizes and versions, so the document is API 1.0; a major version 2 is refused."""
        self.assertEqual(self.doc["api"], "1.0")
        self.assertRaises(UpstreamError, index.parse_project,
                          b'<meta name="pypi:repository-version" content="2.0">', None, "http://u/", "x")


class ParseJsonTests(SynchronousTestCase):
    def parse(self, data: dict) -> dict:
        return index.parse_project(json.dumps(data).encode(), index.JSON, "http://up.example/simple/demo/",
                                   "demo")

    def test_fields(self) -> None:
        """Every PEP 691/700/714 field we serve is kept; a relative URL is resolved."""
        doc = self.parse({
            "meta": {"api-version": "1.1"}, "name": "Demo", "versions": ["1.0"],
            "files": [{"filename": "demo-1.0.tar.gz", "url": "../../packages/demo-1.0.tar.gz",
                       "hashes": {"sha256": SHA}, "requires-python": ">=3.9", "yanked": "oops",
                       "core-metadata": {"sha256": META_SHA}, "size": 12, "upload-time": "2024-01-01T00:00:00Z",
                       "provenance": "https://elsewhere/"}]})
        self.assertEqual(doc, {
            "name": "Demo", "api": "1.1", "versions": ["1.0"],
            "files": [{"filename": "demo-1.0.tar.gz", "url": "http://up.example/packages/demo-1.0.tar.gz",
                       "hashes": {"sha256": SHA}, "requires-python": ">=3.9", "yanked": "oops",
                       "core-metadata": {"sha256": META_SHA}, "size": 12,
                       "upload-time": "2024-01-01T00:00:00Z"}]})

    def test_old_metadata_name_and_bad_entries(self) -> None:
        """dist-info-metadata counts as core-metadata; entries without a filename or URL are skipped."""
        doc = self.parse({"meta": {"api-version": "1.0"}, "files": [
            {"filename": "a-1.tar.gz", "url": "https://f/a-1.tar.gz", "hashes": {}, "dist-info-metadata": True},
            {"filename": "b-1.tar.gz", "hashes": {}}, {"url": "https://f/c"}, "junk"]})
        self.assertEqual([f["filename"] for f in doc["files"]], ["a-1.tar.gz"])
        self.assertIs(doc["files"][0]["core-metadata"], True)
        self.assertEqual(doc["api"], "1.0")

    def test_bad_json(self) -> None:
        """Not JSON, not an object, or API version 2: an upstream error, not a crash."""
        for body in (b"{", b"[]", b'{"meta": {"api-version": "2.0"}, "files": []}'):
            self.assertRaises(UpstreamError, index.parse_project, body, index.JSON, "http://u/", "x")


class RenderTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.doc = index.parse_project(UPSTREAM_HTML, "text/html", "http://up.example/simple/demo/", "demo")
        self.url = lambda f: "../+f/" + f["filename"]

    def test_html_round_trip(self) -> None:
        """Rendered HTML, read back as an upstream page, gives the same files at our URLs."""
        html = b"".join(index.render_project(self.doc, index.HTML, self.url))
        back = index.parse_project(html, "text/html", "http://vault/pypi/demo/", "demo")
        expected = [dict(f, url="http://vault/pypi/+f/" + f["filename"]) for f in self.doc["files"]]
        self.assertEqual(back, dict(self.doc, files=expected))
        self.assertIn(b'data-requires-python="&gt;=3.8"', html)
        self.assertIn(f'data-core-metadata="sha256={META_SHA}"'.encode(), html)

    def test_json_round_trip(self) -> None:
        """Rendered JSON lists the same files, with both metadata keys for old and new clients."""
        body = b"".join(index.render_project(self.doc, index.JSON, self.url))
        data = json.loads(body)
        self.assertEqual(data["meta"], {"api-version": "1.0"})
        wheel = data["files"][1]
        self.assertEqual((wheel["url"], wheel["core-metadata"], wheel["dist-info-metadata"]),
                         ("../+f/demo-1.0-py3-none-any.whl", {"sha256": META_SHA}, {"sha256": META_SHA}))
        back = index.parse_project(body, index.JSON, "http://vault/pypi/demo/", "demo")
        self.assertEqual([f["filename"] for f in back["files"]], [f["filename"] for f in self.doc["files"]])
        self.assertEqual([f["hashes"] for f in back["files"]], [f["hashes"] for f in self.doc["files"]])

    def test_escaping(self) -> None:
        """Names and attribute values cannot break out of the markup."""
        doc = {"name": "<x>", "api": "1.0", "files": [
            {"filename": 'a"<b>.tar.gz', "url": "u", "hashes": {}, "yanked": '"><script>'}]}
        html = b"".join(index.render_project(doc, index.HTML, lambda f: 'q"r'))
        self.assertNotIn(b"<script>", html)
        self.assertNotIn(b"<x>", html)
        self.assertIn(b'href="q&quot;r"', html)

    def test_root(self) -> None:
        """The project list in both forms, linked by normalised name."""
        doc = index.parse_root(b'<a href="/simple/foo-bar/">Foo_Bar</a><a href="baz/">baz</a>', "text/html")
        self.assertEqual(doc, {"projects": ["Foo_Bar", "baz"]})
        self.assertIn(b'<a href="foo-bar/">Foo_Bar</a>', b"".join(index.render_root(doc, index.HTML)))
        self.assertEqual(json.loads(b"".join(index.render_root(doc, index.JSON))),
                         {"meta": {"api-version": "1.0"}, "projects": [{"name": "Foo_Bar"}, {"name": "baz"}]})
        self.assertEqual(index.parse_root(b"".join(index.render_root(doc, index.JSON)), index.JSON), doc)
