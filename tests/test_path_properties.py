"""
Property tests (hypothesis) of what a client or an operator can put in:
request targets for every backend, the PyPI project and file parsers, the
registry name, tag and digest parsers, and the config loader. Whatever the
input, no 500, no traceback in the log, no upstream request outside the
backend's upstream (no dot segment smuggled there, encoded or not), no
file outside the cache directory, and no exception other than the one a
parser documents.

The request targets go through a real site and the real backends in
memory (L{tests.fakes}); each upstream request is checked, then answered
with what hypothesis draws (404, 500, or a small 200), until the client has
its answer. The HTTP header properties are L{tests.test_http_properties}.
"""

from __future__ import annotations

import os
import string
from typing import Any
from urllib.parse import quote, unquote, urlsplit

import yaml
from hypothesis import given, note
from hypothesis import strategies as st
from twisted.internet.task import Clock
from twisted.logger import formatEvent, globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase

from artifactvault import config as configmod
from artifactvault.backends import backend_type, parse_backend
from artifactvault.backends import pypi_index, pypi_json, registry_media
from artifactvault.backends.base import BuildContext, BadPath, safe_segments
from artifactvault.cache.store import FileStore
from artifactvault.config import ConfigError, Section
from artifactvault.root import Root
from artifactvault.site import VaultSite
from artifactvault.vault import Vault
from tests.fakes import EPOCH, Client, FakeClient
from tests.headers import bounded

#: The backends under test: (type, its config); their upstreams are these roots only.
BACKENDS = [
    ("http", {"prefix": "/files/", "base_url": "https://files.test/base/"}),
    ("pypi", {"prefix": "/pypi/", "index_url": "https://pypi.test/simple/"}),
    ("registry", {"prefix": "/reg/", "registry_url": "https://reg.test"}),
    ("apt", {"prefix": "/debian/", "mirror_url": "https://deb.test/debian"}),
    ("npm", {"prefix": "/npm/", "registry_url": "https://npm.test/"}),
]
UPSTREAM_ROOTS = ("https://files.test/base/", "https://pypi.test/simple/", "https://pypi.test/pypi/",
                  "https://reg.test/v2/", "https://deb.test/debian/", "https://npm.test/")

_TRICKY = [".", "..", "", "%2e%2e", "%2E", "%2e", ".%2e", "%2f", "%2F", "..%2f", "%5c", "%5C", "%00", "%ff",
           "%252e%252e", "%20", "+f", "simple", "json", "pypi", "manifests", "blobs", "tags", "list",
           "referrers", "uploads", "latest", "sha256:" + "a" * 64, "sha512:" + "b" * 128, "sha256:AA",
           "library", "hello", "dists", "pool", "main", "InRelease", "Release", "by-hash", "SHA256",
           "Packages.xz", "x-1.0-py3-none-any.whl", "x-1.0.tar.gz", "x.whl.metadata", "1.0", "-",
           "v2", "~", "@", ":", "a;b", "a=b", "_catalog", "%E2%80%AE", "\u00e9".encode().decode("latin-1")]
_PLAIN = string.ascii_letters + string.digits + "-._~%:@!$&'()*+,;="
segments = st.one_of(
    st.sampled_from(_TRICKY),
    st.text(alphabet=_PLAIN, max_size=10),
    st.text(max_size=4).map(lambda t: quote(t, safe="")),
)
prefixes = st.sampled_from(["/files/", "/pypi/", "/pypi/+f/", "/reg/", "/v2/", "/v2/reg/", "/v2/reg/library/",
                            "/debian/", "/debian/dists/", "/-/", "/", "//", "/files", "/x/",
                            "http://deb.test/debian/", "http://evil.test/", "*"])
queries = st.sampled_from(["", "", "", "?", "?a=b", "?%00", "?n=1&last=x", "?n=-1", "?n=99999999999999999999", "?#"])


def word(*usual: str) -> st.SearchStrategy:
    """One path segment: mostly one of C{usual}, sometimes anything."""
    return st.one_of(st.sampled_from(usual), st.sampled_from(usual), st.sampled_from(usual), segments)


HEX64, HEX128 = "c" * 64, "d" * 128
names = word("hello", "library/hello", "team/tools", "a", "a.b-c_d", "A", "x" * 300)
refs = word("latest", "v2", "1.0", "sha256:" + HEX64, "sha512:" + HEX128, "sha256:" + "C" * 64, "-x")
digests = word("sha256:" + HEX64, "sha512:" + HEX128, "sha256:xyz", "md5:" + "e" * 32)
projects = word("requests", "Six", "zope.interface", "a_b", "x-", "-x", "simple")
filenames = word("requests-2.32.3-py3-none-any.whl", "six-1.16.0.tar.gz", "x.whl.metadata", "x.tar.gz.asc")
shaped = st.one_of(
    st.builds(lambda segs: "/files/" + "/".join(segs), st.lists(word("a", "dir", "small.bin", "x.tar.gz"), max_size=5)),
    st.builds(lambda p, slash: f"/pypi/{p}{slash}", projects, st.sampled_from(["/", "", "//"])),
    st.builds(lambda h, f: f"/pypi/+f/{h}/{f}", word(HEX64, "url-" + "e" * 32, "z" * 64), filenames),
    st.builds(lambda p, v: f"/pypi/{p}/{v}json", projects, st.sampled_from(["", "1.0/", "pypi/", "../", "%2e%2e/"])),
    st.builds(lambda f, n, r: f"{f}{n}/manifests/{r}", st.sampled_from(["/v2/reg/", "/reg/"]), names, refs),
    st.builds(lambda f, n, d: f"{f}{n}/blobs/{d}", st.sampled_from(["/v2/reg/", "/reg/"]), names, digests),
    st.builds(lambda f, n: f"{f}{n}/tags/list", st.sampled_from(["/v2/reg/", "/reg/"]), names),
    st.builds(lambda n, d: f"/v2/reg/{n}/referrers/{d}", names, digests),
    st.builds(lambda s_, rest: f"/debian/dists/{s_}/{rest}", word("stable", "bookworm", ".."),
              word("InRelease", "Release", "Release.gpg", "main/binary-amd64/Packages.xz",
                   "main/binary-amd64/by-hash/SHA256/" + HEX64, "main/source/Sources.xz")),
    st.builds(lambda n, rest: f"/npm/{n}{rest}", word("left-pad", "@types/node", "@types%2fnode", "@x", "_x", "A"),
              st.sampled_from(["", "/", "/-/left-pad-1.3.0.tgz", "/-/x.tgz", "/-/../x.tgz", "/1.0.0", "/-/"])),
    st.builds(lambda rest: f"/npm/-/{rest}", word("ping", "v1/search", "whoami", "package/x/dist-tags")),
    st.builds(lambda segs: "/debian/pool/" + "/".join(segs), st.lists(word("main", "a", "av-pkg", "x_1.0_all.deb"),
                                                                      max_size=5)),
)
targets = st.builds(lambda path, q: (path + q).encode("latin-1", "replace"),
                    st.one_of(shaped, shaped, shaped,
                              st.builds(lambda p, segs: p + "/".join(segs), prefixes, st.lists(segments, max_size=7))),
                    queries)
methods = st.sampled_from([b"GET"] * 6 + [b"HEAD"] * 2 + [b"POST", b"DELETE"])
answers = st.sampled_from(["404", "500", "200"])


def within_upstream(url: str) -> str | None:
    """Why C{url} is not a request a backend here may send, or None if it may."""
    root = next((r for r in UPSTREAM_ROOTS if url.startswith(r)), None)
    if root is None:
        return "outside every backend's upstream"
    path = urlsplit(url).path
    rest = path[len(urlsplit(root).path):]
    parts = unquote(rest).split("/")
    if any(p in (".", "..") for p in parts):
        return "a dot segment (decoded) below the upstream root"
    if any(p == "" for p in parts[:-1]):
        return "an empty segment below the upstream root"
    if "\\" in unquote(rest) or "\x00" in unquote(rest):
        return "a backslash or NUL below the upstream root"
    return None


class Failures:
    """The log events that carry a traceback, while it watches."""

    def __init__(self, testcase: SynchronousTestCase):
        self.events: list[dict] = []
        globalLogPublisher.addObserver(self._observe)
        testcase.addCleanup(globalLogPublisher.removeObserver, self._observe)

    def _observe(self, event: dict) -> None:
        if "log_failure" in event:
            self.events.append(event)

    def check(self) -> None:
        if self.events:
            text = "\n".join(formatEvent(e) + "\n" + e["log_failure"].getTraceback() for e in self.events)
            del self.events[:]
            raise AssertionError(f"logged with a traceback:\n{text}")


class RequestTargetProperties(SynchronousTestCase):
    """Any request target, at every backend: a clean answer, and upstream requests inside its upstream."""

    def setUp(self) -> None:
        self.failures = Failures(self)
        self.fresh()

    def fresh(self) -> None:
        """A new daemon in memory: each example starts from an empty cache (hypothesis replays examples)."""
        self.clock = Clock()
        self.clock.advance(EPOCH)
        self.root = os.path.realpath(self.mktemp())
        self.store = FileStore(self.root, clock=self.clock.seconds)
        self.store.open()
        self.addCleanup(self.store.close)
        self.client = FakeClient()
        context = BuildContext(vault=Vault(self.store, self.clock), reactor=self.clock, client=self.client)
        backends = []
        for kind, config in BACKENDS:
            section = Section("test.yml", "backends[0].config", dict(config))
            kind_type = backend_type(kind)
            backends.append(kind_type.build(kind_type.parse(section), context))
        self.site = VaultSite(Root(backends), reactor=self.clock)
        self.answered = 0

    @bounded(400)
    @given(target=targets, method=methods, data=st.data())
    def test_any_target(self, target: bytes, method: bytes, data: Any) -> None:
        note(f"{method.decode()} {target!r}")
        self.fresh()
        client = Client(self.site, self.clock, target, method)
        upstream_said_500 = False
        for _ in range(20):  # (a page may lead to a file, a tag to a manifest)
            pending = self.client.requests[self.answered:]
            if not pending:
                break
            for request in pending:
                self.answered += 1
                why = within_upstream(request.url)
                self.assertIsNone(why, f"{request.method} {request.url}: {why}")
                kind = data.draw(answers, label=f"answer to {request.url}")
                upstream_said_500 |= kind == "500"
                if kind == "200":
                    request.respond(200, b"" if request.method == "HEAD" else b"x",
                                    {"content-type": "application/octet-stream"})
                else:
                    request.respond(int(kind), b"no")
            self.clock.advance(0)
        self.assertTrue(client.has_answer(), f"no answer to {method!r} {target!r} (a hang)")
        answer = client.answer()
        note(f"answer: {answer.status} {answer.body[:200]!r}")
        self.failures.check()  # (the vault's own 500 comes with a logged traceback)
        if answer.status == 500:  # (an upstream's 500 may be passed on, with its words)
            self.assertTrue(upstream_said_500 and answer.body == (b"" if method == b"HEAD" else b"no"),
                            answer.body[:300])
        for entry in self.store.entries():
            path = os.path.realpath(self.store.data_path(entry))
            self.assertTrue(path.startswith(self.root + os.sep), path)

    @bounded(300)
    @given(key=st.text(max_size=300))
    def test_any_key_stays_in_the_cache(self, key: str) -> None:
        """Whatever a cache key holds (a path, .., NUL, any text), its files are inside cache_dir."""
        path = self.store._meta_path(FileStore.key_hash(key))  # (the entry's data file sits beside it)
        self.assertTrue(os.path.realpath(path).startswith(self.root + os.sep), path)


class PathParserProperties(SynchronousTestCase):
    """The parsers of path segments and names: only their documented refusals, and safe results."""

    @bounded(500)
    @given(raw=st.lists(st.binary(max_size=12), max_size=8))
    def test_safe_segments(self, raw: list[bytes]) -> None:
        """safe_segments refuses with BadPath, or returns text segments that cannot climb or smuggle a separator."""
        try:
            out = safe_segments(raw)
        except BadPath:
            return
        for i, seg in enumerate(out):
            self.assertNotIn(seg, (".", ".."))
            self.assertNotIn("/", seg)
            self.assertNotIn("\\", seg)
            self.assertNotIn("\x00", seg)
            self.assertTrue(seg or i == len(out) - 1)

    @bounded(500)
    @given(text=st.one_of(st.text(max_size=80), st.sampled_from(
        ["library/hello", "a/../b", "a//b", "./a", "a/.", "A/b", "a__b", "a--b", "a.b/c_d", "-a", "a-"])))
    def test_registry_names(self, text: str) -> None:
        """A valid repository name has no empty, dot or dot-dot component and nothing but [a-z0-9._/-]."""
        if registry_media.valid_name(text):
            self.assertTrue(set(text) <= set(string.ascii_lowercase + string.digits + "._-/"), text)
            for part in text.split("/"):
                self.assertNotIn(part, ("", ".", ".."))

    @bounded(500)
    @given(text=st.one_of(st.text(max_size=140), st.text(alphabet="0123456789abcdefABCDEF:sha5", max_size=140)))
    def test_registry_tags_and_digests(self, text: str) -> None:
        """A valid tag is a path-safe token; a parsed digest is a known algorithm and hex of its length."""
        if registry_media.valid_tag(text):
            self.assertNotIn("/", text)
            self.assertNotIn(text, (".", ".."))
            self.assertLessEqual(len(text), 128)
        parsed = registry_media.parse_digest(text)
        if parsed is not None:
            algorithm, hexdigest = parsed
            self.assertEqual(len(hexdigest), {"sha256": 64, "sha512": 128}[algorithm])
            self.assertTrue(set(hexdigest) <= set("0123456789abcdef"))

    @bounded(500)
    @given(name=st.one_of(st.text(max_size=40), st.text(alphabet="aB1-_.", max_size=20)))
    def test_pypi_project_names(self, name: str) -> None:
        """normalize is idempotent; a valid normalized name is path-safe."""
        normalized = pypi_index.normalize(name)
        self.assertEqual(pypi_index.normalize(normalized), normalized)
        if pypi_index.valid_name(normalized):
            self.assertNotIn("/", normalized)
            self.assertNotIn(normalized, (".", ".."))
            self.assertTrue(set(normalized) <= set(string.ascii_lowercase + string.digits + "._-"))

    @bounded(300)
    @given(segs=st.lists(st.sampled_from(["pypi", "json", "x", "1.0", "", "..", "1.0.post1", "v1!2"]) |
                         st.text(max_size=6), max_size=5))
    def test_pypi_json_paths(self, segs: list[str]) -> None:
        """A JSON API path is (project, version or None), both non-empty when given, or not one at all."""
        parsed = pypi_json.parse_path(segs)
        if parsed is not None:
            project, version = parsed
            self.assertTrue(project)
            self.assertTrue(version is None or version)

    @bounded(300)
    @given(body=st.one_of(
        st.binary(max_size=300),
        st.builds(lambda hrefs: ("<html><body>" + "".join(f'<a href="{h}">{h}</a>' for h in hrefs)
                                 + "</body></html>").encode(),
                  st.lists(st.one_of(st.sampled_from(
                      ["../../x-1.0.tar.gz#sha256=" + "a" * 64, "file:///etc/passwd", "javascript:x",
                       "//evil.test/x.whl", "x.whl#md5=zz", "/packages/x-1.0-py3-none-any.whl#sha256=" + "b" * 64,
                       "https://files.test/x.whl#sha256=", "x y.whl", "%2e%2e/x.whl"]),
                      st.text(max_size=20)), max_size=4)),
        st.builds(lambda files: yaml.safe_dump({"meta": {"api-version": "1.0"}, "name": "x", "files": files}).encode(),
                  st.lists(st.dictionaries(st.sampled_from(["filename", "url", "hashes", "requires-python", "yanked",
                                                            "core-metadata"]),
                                           st.one_of(st.text(max_size=20), st.none(), st.booleans(),
                                                     st.dictionaries(st.text(max_size=6), st.text(max_size=8),
                                                                     max_size=2)), max_size=6), max_size=3))),
        ctype=st.sampled_from(["text/html", "application/vnd.pypi.simple.v1+json", None]))
    def test_pypi_project_pages(self, body: bytes, ctype: str | None) -> None:
        """
        Any upstream project page is parsed or refused as an upstream error
        (a 502), and every file it yields is an http(s) URL with a filename
        that is one path segment.
        """
        from artifactvault.upstream import UpstreamError
        if ctype and "json" in ctype:  # (the YAML dump above is JSON-compatible only sometimes)
            try:
                body = __import__("json").dumps(yaml.safe_load(body)).encode()
            except Exception:
                pass
        try:
            doc = pypi_index.parse_project(body, ctype, "https://pypi.test/simple/x/", "x")
        except UpstreamError:
            return
        for f in doc["files"]:
            self.assertIn(urlsplit(f["url"]).scheme, ("http", "https"), f)
            self.assertTrue(f["filename"], f)
            self.assertNotIn("/", f["filename"])
            self.assertNotIn(f["filename"], (".", ".."))


# -- the config loader ------------------------------------------------------------------

TOP_KEYS = ["http_host", "http_port", "cache_dir", "max_size", "max_object_size", "log_level", "offline",
            "admin_token", "admin_token_env", "shutdown_timeout", "metrics", "store", "tls_cert", "tls_key",
            "max_request_line", "max_path_length", "max_headers", "max_header_size", "max_request_body",
            "client_header_timeout", "max_connections_per_client", "bogus"]
BACKEND_KEYS = ["prefix", "base_url", "index_url", "registry_url", "mirror_url", "json_api_url", "username",
                "password", "password_env", "token", "token_env", "headers", "timeout", "idle_timeout", "backoff",
                "negative_ttl", "max_stale", "offline", "verify_before_send", "ttl", "ttl_rules", "index_ttl",
                "tag_ttl", "mirror", "hosts", "signed_by", "ca_file", "max_downloads", "trusted_proxies",
                "metadata_ttl", "bogus"]
STORE_KEYS = ["type", "endpoint_url", "bucket", "region", "prefix", "access_key_id_env", "part_size",
              "lease_ttl", "redirect", "local_cache"]
scalars = st.one_of(st.none(), st.booleans(), st.integers(-5, 1 << 40), st.floats(allow_nan=True),
                    st.text(max_size=12),
                    st.sampled_from(["/x/", "/a/b", "http://up.test/", "https://up.test/x", "5m", "1.5h", "10K",
                                     "-1", "0", "s3", "disk", "debug", "::1", "/dev/null", "/etc/hostname",
                                     "/nonexistent", "1e999", "PATH", "HOME", "ftp://x", "http://u:p@h/"]))
values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=3) |
                      st.dictionaries(st.text(max_size=8), inner, max_size=3), max_leaves=8)


def mapping_of(keys: list[str]) -> st.SearchStrategy:
    return st.dictionaries(st.sampled_from(keys), values, max_size=6)


backends_list = st.lists(st.fixed_dictionaries(
    {"type": st.sampled_from(["http", "pypi", "registry", "dockerhub", "apt", "npm", "ftp", ""]) | st.text(max_size=5)},
    optional={"config": mapping_of(BACKEND_KEYS) | values}), max_size=3)
documents = st.one_of(
    values,
    st.builds(lambda top, backends, store: {**top, "backends": backends, **({"store": store} if store else {})},
              mapping_of(TOP_KEYS), backends_list | values, st.none() | mapping_of(STORE_KEYS)),
)


class ConfigProperties(SynchronousTestCase):
    """Any YAML document, any text: a Config or one ConfigError line naming the file, nothing else."""

    def assertOneLine(self, error: ConfigError, source: str) -> None:
        message = str(error)
        self.assertNotIn("\n", message)
        self.assertTrue(message.startswith(source + ":"), message)

    @bounded(600)
    @given(document=documents)
    def test_any_document(self, document: Any) -> None:
        note(repr(document))
        try:
            config = configmod.parse(document, "p.yml", parse_backend)
        except ConfigError as e:
            self.assertOneLine(e, "p.yml")
            return
        self.assertTrue(os.path.isabs(config.cache_dir))
        for settings in config.settings:
            prefix = settings.prefix
            self.assertTrue(prefix.startswith("/") and prefix.endswith("/"), prefix)
            self.assertNotIn("/../", prefix)

    @bounded(300)
    @given(text=st.one_of(st.text(max_size=200), st.binary(max_size=200).map(lambda b: b.decode("latin-1")),
                          st.sampled_from(["backends: [", "a: b: c", "- 1", "!!python/object:os.system x",
                                           "&a [*a]", "x: *y", "\t", "backends: {}", "http_port: 1e3"])))
    def test_any_text(self, text: str) -> None:
        path = self.mktemp()
        with open(path, "w", encoding="utf-8", errors="surrogateescape") as f:
            f.write(text)
        try:
            configmod.load(path, parse_backend)
        except ConfigError as e:
            self.assertOneLine(e, path)

    def test_backend_entry_without_mapping(self) -> None:
        """(what the strategies aim at) a backend item that is not a mapping is a ConfigError."""
        self.assertRaises(ConfigError, configmod.parse, {"backends": [3]}, "p.yml", parse_backend)
