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
        """Only types we cannot produce: HTML, as PyPI answers (PEP 691 lets a server pick a default instead of a 406)."""
        self.check("application/json", index.HTML)
        self.check("application/vnd.pypi.simple.v2+json", index.HTML)
        self.check("text/html;q=0", index.HTML)


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
            "name": "Demo", "api": "1.1", "source": "json", "versions": ["1.0"],
            "files": [{"filename": "demo-1.0.tar.gz", "url": "http://up.example/packages/demo-1.0.tar.gz",
                       "hashes": {"sha256": SHA}, "requires-python": ">=3.9", "yanked": "oops",
                       "core-metadata": {"sha256": META_SHA}, "size": 12,
                       "upload-time": "2024-01-01T00:00:00Z", "provenance": "https://elsewhere/"}]})

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
        self.assertEqual(doc, {"projects": ["Foo_Bar", "baz"], "api": "1.0"})
        self.assertIn(b'<a href="foo-bar/">Foo_Bar</a>', b"".join(index.render_root(doc, index.HTML)))
        self.assertEqual(json.loads(b"".join(index.render_root(doc, index.JSON))),
                         {"meta": {"api-version": "1.0"}, "projects": [{"name": "Foo_Bar"}, {"name": "baz"}]})
        self.assertEqual(index.parse_root(b"".join(index.render_root(doc, index.JSON)), index.JSON), doc)


#: A PEP 691 page with every field a PEP defines (and some no PEP does), as PyPI sends them.
FULL_JSON = {
    "meta": {"api-version": "1.4", "_last-serial": 4242, "tracks": ["https://other.example/simple/demo/"]},
    "name": "demo",
    "project-status": {"status": "deprecated", "reason": "use demo2"},
    "alternate-locations": ["https://mirror.example/simple/demo/"],
    "versions": ["0.9", "1.0"],
    "_private": {"index": "only"},
    "files": [
        {"filename": "demo-1.0.tar.gz", "url": "../../packages/demo-1.0.tar.gz", "hashes": {"sha256": SHA},
         "requires-python": ">=3.9", "size": 12, "upload-time": "2024-01-01T00:00:00.000000Z",
         "yanked": False, "core-metadata": False, "provenance": None, "gpg-sig": False, "_vendor": [1, 2]},
        {"filename": "demo-1.0-py3-none-any.whl", "url": "https://files.example/demo-1.0-py3-none-any.whl",
         "hashes": {"sha256": SHA, "blake2b": "c" * 128}, "size": 34, "yanked": "broken",
         "core-metadata": {"sha256": META_SHA}, "data-dist-info-metadata": {"sha256": META_SHA},
         "provenance": "/integrity/demo/1.0/demo-1.0-py3-none-any.whl/provenance", "gpg-sig": True},
    ],
}

#: A PEP 503 page with every field a PEP defines, and PyPI's serial.
FULL_HTML = f"""<!DOCTYPE html><html><head>
<meta name="pypi:repository-version" content="1.4">
<meta name="pypi:project-status" content="quarantined">
<meta name="pypi:project-status-reason" content="the project is &quot;haunted&quot;">
<meta name="pypi:tracks" content="https://a.example/simple/demo/">
<meta name="pypi:tracks" content="https://b.example/simple/demo/">
<meta name="pypi:alternate-locations" content="https://c.example/simple/demo/">
<title>Links for demo</title></head><body>
<a href="/p/demo-1.0.tar.gz#sha256={SHA}" data-gpg-sig="true" data-requires-python="&gt;=3.8"
   data-provenance="/integrity/demo/1.0/demo-1.0.tar.gz/provenance">demo-1.0.tar.gz</a><br>
<a href="/p/demo-0.9.tar.gz#sha256={SHA}" data-gpg-sig="false" data-yanked="">demo-0.9.tar.gz</a><br>
</body></html>
<!--SERIAL 77-->
""".encode()


def vault_url(f: dict) -> str:
    return "../+f/demo/" + f["filename"]


class PepFieldTests(SynchronousTestCase):
    """Every field a PEP defines survives the trip through the vault, in both forms (issue 8, item 12)."""

    def render(self, body: bytes, ctype: str, fmt: str) -> bytes:
        doc = index.parse_project(body, ctype, "http://up.example/simple/demo/", "demo")
        return b"".join(index.render_project(doc, fmt, vault_url))

    def test_json_upstream_json_answer(self) -> None:
        """
        JSON in, JSON out: the upstream's document exactly, api-version 1.4
        and unknown keys included, but for the URLs (file and provenance:
        the vault's) and the PEP 658 name offered beside the PEP 714 one.
        """
        out = json.loads(self.render(json.dumps(FULL_JSON).encode(), index.JSON, index.JSON))
        expected = json.loads(json.dumps(FULL_JSON))
        for f in expected["files"]:
            f["url"] = vault_url(f)
        wheel = expected["files"][1]
        wheel["provenance"] = vault_url(wheel) + ".provenance"
        wheel["dist-info-metadata"] = wheel["core-metadata"]
        self.assertEqual(out, expected)

    def test_json_upstream_html_answer(self) -> None:
        """JSON in, HTML out: version 1.4, PEP 792 and 708 <meta> tags, data-gpg-sig, data-provenance, the serial."""
        html = self.render(json.dumps(FULL_JSON).encode(), index.JSON, index.HTML).decode()
        for tag in ('<meta name="pypi:repository-version" content="1.4">',
                    '<meta name="pypi:project-status" content="deprecated">',
                    '<meta name="pypi:project-status-reason" content="use demo2">',
                    '<meta name="pypi:tracks" content="https://other.example/simple/demo/">',
                    '<meta name="pypi:alternate-locations" content="https://mirror.example/simple/demo/">',
                    'data-gpg-sig="false"', 'data-gpg-sig="true"',
                    'data-provenance="../+f/demo/demo-1.0-py3-none-any.whl.provenance"',
                    'data-yanked="broken"', "<!--SERIAL 4242-->"):
            self.assertIn(tag, html)
        self.assertEqual(html.count("data-provenance"), 1)

    def test_html_upstream_both_answers(self) -> None:
        """
        HTML in: the HTML answer, read back, has what the upstream's has (at
        the vault's URLs); the JSON answer carries the same in its JSON form
        (PEP 792 project-status, PEP 708 meta.tracks and alternate-locations,
        gpg-sig, provenance, meta._last-serial).
        """
        upstream = index.parse_project(FULL_HTML, "text/html", "http://up.example/simple/demo/", "demo")
        html = self.render(FULL_HTML, "text/html", index.HTML)
        back = index.parse_project(html, "text/html", "http://up.example/simple/demo/", "demo")
        for f in upstream["files"]:
            f["url"] = "http://up.example/simple/+f/demo/" + f["filename"]
            if "provenance" in f:
                f["provenance"] = f["url"] + ".provenance"
        self.assertEqual(back, upstream)
        self.assertEqual(upstream["extra"]["project-status"],
                         {"status": "quarantined", "reason": 'the project is "haunted"'})
        out = json.loads(self.render(FULL_HTML, "text/html", index.JSON))
        self.assertEqual(out["meta"], {"api-version": "1.0", "_last-serial": 77,
                                       "tracks": ["https://a.example/simple/demo/", "https://b.example/simple/demo/"]})
        self.assertEqual((out["project-status"], out["alternate-locations"]),
                         ({"status": "quarantined", "reason": 'the project is "haunted"'},
                          ["https://c.example/simple/demo/"]))
        first, second = out["files"]
        self.assertEqual((first["gpg-sig"], first["provenance"], first["requires-python"], second["gpg-sig"],
                          second["yanked"]),
                         (True, "../+f/demo/demo-1.0.tar.gz.provenance", ">=3.8", False, True))
        self.assertNotIn("provenance", second)

    def test_api_version_not_lowered(self) -> None:
        """
        The upstream's version is claimed: by both forms from JSON, by HTML
        from HTML; JSON made from HTML claims 1.0 (it lacks PEP 700's
        mandatory versions and sizes). No version at all means 1.0 (PEP 629).
        """
        def claims(body: bytes, ctype: str) -> tuple[str, str]:
            html = self.render(body, ctype, index.HTML)
            parser = index._read_html(html)
            return parser.version, json.loads(self.render(body, ctype, index.JSON))["meta"]["api-version"]
        self.assertEqual(claims(json.dumps(FULL_JSON).encode(), index.JSON), ("1.4", "1.4"))
        self.assertEqual(claims(FULL_HTML, "text/html"), ("1.4", "1.0"))
        self.assertEqual(claims(b'<a href="d-1.tar.gz">d</a>', "text/html"), ("1.0", "1.0"))
        bare = json.dumps({"meta": {"api-version": "1.1"}, "files": [], "versions": []}).encode()
        self.assertEqual(claims(bare, index.JSON), ("1.1", "1.1"))

    def test_urls_never_passed_on(self) -> None:
        """A file's upstream URLs are never sent: a relative provenance is resolved and rewritten, a bad one dropped."""
        page = {"meta": {"api-version": "1.3"}, "name": "demo", "files": [
            {"filename": "a-1.tar.gz", "url": "https://f.example/a-1.tar.gz", "hashes": {}, "provenance": "ftp://x/"}]}
        out = self.render(json.dumps(page).encode(), index.JSON, index.JSON)
        self.assertNotIn(b"f.example", out)
        self.assertNotIn(b"ftp://", out)
        self.assertNotIn("provenance", json.loads(out)["files"][0])

    def test_root_meta(self) -> None:
        """The project list keeps the upstream's version and serial, in both forms."""
        body = json.dumps({"meta": {"api-version": "1.4", "_last-serial": 9},
                           "projects": [{"name": "a"}]}).encode()
        doc = index.parse_root(body, index.JSON)
        self.assertEqual(json.loads(b"".join(index.render_root(doc, index.JSON)))["meta"],
                         {"api-version": "1.4", "_last-serial": 9})
        html = b"".join(index.render_root(doc, index.HTML))
        self.assertIn(b'content="1.4"', html)
        self.assertIn(b"<!--SERIAL 9-->", html)
        self.assertEqual(index.parse_root(html, "text/html"), {"projects": ["a"], "api": "1.4",
                                                               "meta": {"_last-serial": 9}})
