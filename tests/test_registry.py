"""
The registry backend in memory: its config, its paths, and the tag logic
(freshness, HEAD revalidation, stale answers) against a scripted registry.
"""

from __future__ import annotations

import hashlib
import json
import os

from treq.testing import StubTreq
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.resource import Resource

from artifactvault import config as configmod
from artifactvault.backends import parse_backend
from zope.interface.verify import verifyObject

from artifactvault.backends.base import BuildContext, IBackend, dispatch
from artifactvault.backends.registry import RegistryBackendType, _Bad, _contradicts, _tag_page, parse_path
from artifactvault.backends.registry_api import SPEC_CODES
from artifactvault.backends.registry_media import DOCKER_MANIFEST, OCI_INDEX
from artifactvault.cache.store import Entry, FileStore
from artifactvault.config import ConfigError, Section
from artifactvault.ratelimit import FAILURE_BACKOFF
from artifactvault.service import build
from artifactvault.tap import Options, makeService
from artifactvault.vault import Vault
from tests.fakes import FakeClient
from tests.test_registry_media import signed_schema1
from tests.webhelpers import FakeRequest

ZERO = "sha256:" + "0" * 64
SCHEMA1 = "application/vnd.docker.distribution.manifest.v1+prettyjws"


def section(data: dict) -> Section:
    return Section("test.yml", "backends[0].config", data)


class ConfigTests(SynchronousTestCase):
    def test_defaults(self) -> None:
        """An empty config is Docker Hub at /dockerhub/, tags fresh for 5 minutes, no mirror."""
        s = RegistryBackendType.parse(section({}))
        self.assertEqual((s.prefix, s.registry_url, s.tag_ttl, s.mirror, s.username),
                         ("/dockerhub/", "https://registry-1.docker.io", 300.0, False, None))

    def test_both_type_names(self) -> None:
        """type: dockerhub (the seed's) and type: registry are this backend; the embedded default config loads with it."""
        for name in ("dockerhub", "registry"):
            entry = configmod.BackendEntry(type=name, section=section({"tag_ttl": "2m"}))
            self.assertEqual(parse_backend(entry).tag_ttl, 120.0)
        default = [b for b in configmod.EMBEDDED_DEFAULT["backends"] if b["type"] == "dockerhub"][0]
        entry = configmod.BackendEntry(type="dockerhub", section=section(default["config"]))
        self.assertEqual(parse_backend(entry).registry_url, "https://registry-1.docker.io")
        from artifactvault.tap import load_config
        self.assertIn("/dockerhub/", [s.prefix for s in load_config(None).settings])

    def test_bad_values(self) -> None:
        """Bad values are errors naming the file and key; a static token and the vault's own prefixes are refused."""
        cases = [({"token": "x"}, "test.yml: backends[0].config.token: "),
                 ({"prefix": "/v2/"}, "test.yml: backends[0].config.prefix: "),
                 ({"registry_url": "ftp://x"}, "test.yml: backends[0].config.registry_url: "),
                 ({"tag_ttl": "soon"}, "test.yml: backends[0].config.tag_ttl: "),
                 ({"mirror": "yes"}, "test.yml: backends[0].config.mirror: "),
                 ({"password": "p"}, "test.yml: backends[0].config.password: ")]
        for data, start in cases:
            e = self.assertRaises(ConfigError, RegistryBackendType.parse, section(data))
            self.assertTrue(str(e).startswith(start), str(e))
        s = section({"tagttl": 1})
        RegistryBackendType.parse(s)
        self.assertRaises(ConfigError, s.check_unknown)

    def test_two_mirrors(self) -> None:
        """Two backends with mirror: true stop the start with one line naming the second's key."""
        path = self.mktemp()
        with open(path, "w") as f:
            json.dump({"cache_dir": self.mktemp(), "backends": [
                {"type": "dockerhub", "config": {"mirror": True}},
                {"type": "registry", "config": {"prefix": "/ghcr/", "registry_url": "https://ghcr.io",
                                                "mirror": True}}]}, f)
        options = Options()
        options.parseOptions(["--config", path])
        self.assertRaises(ConfigError, build, options.loaded, Clock())
        e = self.assertRaises(SystemExit, makeService, options)
        self.assertIn(f"{path}: backends[1].config.mirror: only one registry backend can be the mirror",
                      str(e))


class PathTests(SynchronousTestCase):
    def test_paths(self) -> None:
        """The three kinds of path, names with several components."""
        self.assertEqual(parse_path(["library", "alpine", "manifests", "3.20"]),
                         ("library/alpine", "manifest", "3.20"))
        self.assertEqual(parse_path(["a", "b", "c", "blobs", ZERO]), ("a/b/c", "blob", ZERO))
        self.assertEqual(parse_path(["alpine", "tags", "list"]), ("alpine", "tags", ""))

    def test_bad_paths(self) -> None:
        """Each bad path has its registry error code, from the spec's list only (a bad tag is MANIFEST_INVALID, not Docker's TAG_INVALID)."""
        cases = [(["library", "alpine"], "NAME_UNKNOWN"), ([""], "NAME_UNKNOWN"),
                 (["Library", "manifests", "x"], "NAME_INVALID"),
                 (["alpine", "blobs", "latest"], "DIGEST_INVALID"),
                 (["alpine", "manifests", "sha256:zz"], "DIGEST_INVALID"),
                 (["alpine", "manifests", "-x"], "MANIFEST_INVALID"),
                 (["alpine", "referrers", "sha256:zz"], "DIGEST_INVALID"),
                 (["alpine", "referrers", "latest"], "DIGEST_INVALID"),
                 (["alpine", "blobs", "uploads", "1234"], "BLOB_UPLOAD_UNKNOWN"),
                 (["alpine", "blobs", "uploads", ""], "BLOB_UPLOAD_UNKNOWN")]
        for segments, code in cases:
            e = self.assertRaises(_Bad, parse_path, segments)
            self.assertEqual(e.args[1], code, segments)
            self.assertIn(code, SPEC_CODES)

    def test_contradicting_digests(self) -> None:
        """An upstream's digest contradicts the one asked for only if it is another of the same algorithm."""
        sha512 = "sha512:" + "0" * 128
        self.assertTrue(_contradicts("sha256:" + "1" * 64, ZERO))
        for claimed in (ZERO, sha512, None, "md5:00", "garbage"):
            self.assertFalse(_contradicts(claimed, ZERO), claimed)

    def test_referrers_path(self) -> None:
        """<name>/referrers/<digest> is its own kind."""
        self.assertEqual(parse_path(["a", "b", "referrers", ZERO]), ("a/b", "referrer", ZERO))


class ScriptedRegistry(Resource):
    """An upstream registry in memory; records what it is asked."""

    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.manifests: dict[str, tuple[str, bytes]] = {}  # tag or digest -> (type, bytes)
        self.asked: list[tuple[str, str]] = []
        self.fail_with: int | None = None
        self.digest_on_head = True
        self.link: str | None = None
        self.head_length: bytes | None = None  # a Content-Length for HEAD answers, as sent

    def put(self, tag: str, body: bytes, media_type: str = OCI_INDEX) -> str:
        digest = "sha256:" + hashlib.sha256(body).hexdigest()
        self.manifests[tag] = self.manifests[digest] = (media_type, body)
        return digest

    def render(self, request):
        self.asked.append((request.method.decode(), request.uri.decode()))
        if self.fail_with:
            request.setResponseCode(self.fail_with)
            return b""
        parts = request.path.decode().split("/")
        if parts[-2:] == ["tags", "list"]:
            if self.link:
                request.setHeader(b"link", self.link.encode())
            return b'{"name":"x/y","tags":["a"]}'
        found = self.manifests.get(parts[-1])
        if found is None:
            request.setResponseCode(404)
            return b'{"errors":[{"code":"MANIFEST_UNKNOWN"}]}'
        media_type, body = found
        request.setHeader(b"content-type", media_type.encode())
        if request.method == b"GET" or self.digest_on_head:
            request.setHeader(b"docker-content-digest", ("sha256:" + hashlib.sha256(body).hexdigest()).encode())
        if request.method == b"HEAD" and self.head_length is not None:
            request.setHeader(b"content-length", self.head_length)
            return b""
        return body


class BackendTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(1_000_000)
        self.store = FileStore(self.mktemp(), clock=self.clock.seconds)
        self.store.open()
        self.addCleanup(self.store.close)
        self.upstream = ScriptedRegistry()
        self.stub = StubTreq(self.upstream)
        context = BuildContext(vault=Vault(self.store, self.clock), reactor=self.clock, client=self.stub)
        settings = RegistryBackendType.parse(section({"registry_url": "https://reg.test", "tag_ttl": 10}))
        self.backend = RegistryBackendType.build(settings, context)
        self.index = json.dumps({"schemaVersion": 2, "manifests": []}).encode()
        self.digest = self.upstream.put("latest", self.index)

    def get(self, path: str, method: bytes = b"GET", accept: bytes | None = OCI_INDEX.encode()) -> FakeRequest:
        request = FakeRequest(b"/dockerhub/" + path.encode(), method,
                              {b"accept": [accept]} if accept else None)
        request.prepath = [b"dockerhub"]
        dispatch(self.backend, request, path.partition("?")[0].encode().split(b"/"))
        for _ in range(5):
            self.stub.flush()
        self.assertTrue(request.finished, path)
        return request

    def asked(self) -> list[tuple[str, str]]:
        asked, self.upstream.asked[:] = list(self.upstream.asked), []
        return asked

    def test_tag_fresh_then_head(self) -> None:
        """A tag fetched once is answered from the cache inside tag_ttl (nothing upstream), then after one HEAD."""
        first = self.get("x/y/manifests/latest")
        self.assertEqual((first.responseCode or 200, first.body, first.header(b"docker-content-digest")),
                         (200, self.index, self.digest))
        self.assertEqual(self.asked(), [("HEAD", "/v2/x/y/manifests/latest"),
                                        ("GET", f"/v2/x/y/manifests/{self.digest}")])
        self.clock.advance(9)
        self.assertEqual(self.get("x/y/manifests/latest").body, self.index)
        self.assertEqual(self.asked(), [])
        self.clock.advance(2)
        again = self.get("x/y/manifests/latest")
        self.assertEqual((again.body, again.header(b"x-cache")), (self.index, "HIT"))
        self.assertEqual(self.asked(), [("HEAD", "/v2/x/y/manifests/latest")])

    def test_tag_moved(self) -> None:
        """After tag_ttl, a tag that points elsewhere upstream is followed to the new manifest."""
        self.get("x/y/manifests/latest")
        newer = b'{"schemaVersion": 2, "manifests": [], "new": 1}'
        digest = self.upstream.put("latest", newer)
        self.clock.advance(11)
        request = self.get("x/y/manifests/latest")
        self.assertEqual((request.body, request.header(b"docker-content-digest")), (newer, digest))

    def test_stale_when_upstream_fails(self) -> None:
        """
        An upstream that fails (5xx) after tag_ttl: the last known manifest,
        marked STALE, then at once (no HEAD) while the upstream is backed
        off, and after it while one background HEAD asks; that one's 404 is
        believed, by the next request.
        """
        self.get("x/y/manifests/latest")
        self.clock.advance(11)
        self.upstream.fail_with = 503
        request = self.get("x/y/manifests/latest")
        self.assertEqual((request.body, request.header(b"x-cache")), (self.index, "STALE"))
        self.asked()
        request = self.get("x/y/manifests/latest")
        self.assertEqual((request.body, request.header(b"x-cache"), self.asked()), (self.index, "STALE", []))
        self.clock.advance(FAILURE_BACKOFF)
        self.upstream.fail_with = 404
        request = self.get("x/y/manifests/latest")
        self.assertEqual((request.body, request.header(b"x-cache")), (self.index, "STALE"))
        self.assertEqual(self.asked(), [("HEAD", "/v2/x/y/manifests/latest")])
        request = self.get("x/y/manifests/latest")
        self.assertEqual(request.responseCode, 404)
        self.assertEqual(json.loads(request.body)["errors"][0]["code"], "MANIFEST_UNKNOWN")

    def test_concurrent_tag_requests_one_head(self) -> None:
        """Requests for one tag that arrive together share one upstream HEAD."""
        requests = []
        for _ in range(4):
            request = FakeRequest(b"/dockerhub/x/y/manifests/latest", b"GET", {b"accept": [OCI_INDEX.encode()]})
            dispatch(self.backend, request, [b"x", b"y", b"manifests", b"latest"])
            requests.append(request)
        for _ in range(5):
            self.stub.flush()
        self.assertEqual([r.body for r in requests], [self.index] * 4)
        self.assertEqual([a for a in self.asked() if a[0] == "HEAD"], [("HEAD", "/v2/x/y/manifests/latest")])

    def test_head_without_digest(self) -> None:
        """An upstream whose HEAD names no digest: the manifest is fetched by tag, hashed, and kept by digest."""
        self.upstream.digest_on_head = False
        request = self.get("x/y/manifests/latest")
        self.assertEqual((request.body, request.header(b"docker-content-digest")), (self.index, self.digest))
        self.asked()
        by_digest = self.get(f"x/y/manifests/{self.digest}")
        self.assertEqual((by_digest.body, by_digest.header(b"x-cache")), (self.index, "HIT"))
        self.assertEqual(self.asked(), [])

    def test_accept_classes(self) -> None:
        """A cached manifest is not served to a client that does not admit its type; that client's answer is the upstream's."""
        self.get("x/y/manifests/latest")
        self.asked()
        request = self.get(f"x/y/manifests/{self.digest}", accept=DOCKER_MANIFEST.encode())
        self.assertEqual(request.header(b"x-cache"), "PASS")
        self.assertEqual(self.asked(), [("GET", f"/v2/x/y/manifests/{self.digest}")])

    def test_absent_accept(self) -> None:
        """No Accept: Docker schema 2 and OCI types are asked for and admitted."""
        request = self.get("x/y/manifests/latest", accept=None)
        self.assertEqual(request.body, self.index)

    def test_tags_list_link(self) -> None:
        """tags/list is passed on, its Link to the next page rewritten to our address."""
        self.upstream.link = '</v2/x/y/tags/list?last=a&n=1>; rel="next"'
        request = FakeRequest(b"/dockerhub/x/y/tags/list?n=1")
        request.prepath = [b"dockerhub"]
        request.args = {b"n": [b"1"]}
        dispatch(self.backend, request, [b"x", b"y", b"tags", b"list"])
        self.stub.flush()
        self.assertEqual(request.body, b'{"name":"x/y","tags":["a"]}')
        self.assertEqual(request.header(b"link"), '</dockerhub/x/y/tags/list?last=a&n=1>; rel="next"')
        self.assertEqual(self.asked(), [("GET", "/v2/x/y/tags/list?n=1")])

    def test_unverified_manifest_never_served(self) -> None:
        """What is stored under a manifest's digest is served only if it has that digest; otherwise it is fetched again."""
        key = f"registry https://reg.test x/y manifest {self.digest}"
        self.successResultOf(self.store.put(Entry(key=key, data="", size=0, stored_at=self.store.now(),
                                                  content_type=OCI_INDEX), b'{"planted": 1}'))
        request = self.get(f"x/y/manifests/{self.digest}")
        self.assertEqual((request.body, request.header(b"x-cache")), (self.index, "MISS"))
        self.assertEqual(self.store.lookup(key).sha256, self.digest.removeprefix("sha256:"))

    def test_tags_list_bad_n(self) -> None:
        """tags/list with an n that is not ASCII digits ('\u00b2' passes str.isdigit) is a 400 UNSUPPORTED (PAGINATION_NUMBER_INVALID is not in the spec's list); nothing goes upstream."""
        for raw in (b"x", b"\xb2", b"1\xb2"):
            request = FakeRequest(b"/dockerhub/x/y/tags/list?n=")
            request.prepath = [b"dockerhub"]
            request.args = {b"n": [raw]}
            dispatch(self.backend, request, [b"x", b"y", b"tags", b"list"])
            self.stub.flush()
            self.assertEqual((request.responseCode, json.loads(request.body)["errors"][0]["code"]),
                             (400, "UNSUPPORTED"))
        self.assertEqual(self.asked(), [])

    def test_blob_digest_checked(self) -> None:
        """A blob is asked for by digest with that digest to verify; an invalid one never reaches the upstream."""
        request = self.get("x/y/blobs/sha256:" + "a" * 63)
        self.assertEqual(request.responseCode, 400)
        self.assertEqual(self.asked(), [])
        self.assertEqual(self.store.spool.in_use(), [])


class FaultTests(SynchronousTestCase):
    """The registry backend against an upstream that stalls, sends garbage, or a bug in its auth."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(1_000_000)
        self.store = FileStore(self.mktemp(), clock=self.clock.seconds)
        self.store.open()
        self.client = FakeClient()
        context = BuildContext(vault=Vault(self.store, self.clock), reactor=self.clock, client=self.client)
        settings = RegistryBackendType.parse(section({"registry_url": "https://reg.test", "tag_ttl": 10,
                                                      "timeout": 10}))
        self.backend = RegistryBackendType.build(settings, context)
        self.index = json.dumps({"schemaVersion": 2, "manifests": []}).encode()
        self.digest = "sha256:" + hashlib.sha256(self.index).hexdigest()

    def get(self, path: str, method: bytes = b"GET", accept: str = OCI_INDEX) -> FakeRequest:
        request = FakeRequest(b"/dockerhub/" + path.encode(), method, {b"accept": [accept.encode()]})
        request.prepath = [b"dockerhub"]
        dispatch(self.backend, request, path.encode().split(b"/"))
        return request

    def error(self, request: FakeRequest) -> tuple[int, str]:
        self.assertTrue(request.finished)
        return request.responseCode, json.loads(request.body)["errors"][0]["message"]

    def stored_then_relayed(self, method: bytes = b"GET") -> FakeRequest:
        """The manifest stored (OCI index), then asked for by a client that does not accept its type."""
        stored = self.get(f"x/y/manifests/{self.digest}")
        self.client.last.respond(200, self.index, headers={"Content-Type": OCI_INDEX})
        self.assertEqual(stored.body, self.index)
        return self.get(f"x/y/manifests/{self.digest}", method,
                        accept="application/vnd.docker.distribution.manifest.v1+json")

    def test_provides_interface(self) -> None:
        """The built backend is an IBackend (handle and render_error included)."""
        self.assertTrue(verifyObject(IBackend, self.backend))

    def test_manifest_in_flight_not_served_to_other_accept(self) -> None:
        """A manifest still downloading is not streamed to a client whose Accept does not admit its type: that client waits for the verified copy, then gets the upstream's answer for its Accept."""
        first = self.get(f"x/y/manifests/{self.digest}")
        response = self.client.last.respond(200, headers={"Content-Type": OCI_INDEX},
                                            length=len(self.index))
        response.send(self.index[:10])
        other = self.get(f"x/y/manifests/{self.digest}", accept=DOCKER_MANIFEST)
        self.assertFalse(other.finished)
        self.assertEqual(len(self.client.requests), 1)  # nothing asked for it yet
        response.send(self.index[10:]).finish()
        self.assertEqual(first.body, self.index)
        relayed = self.client.last
        self.assertEqual((relayed.method, relayed.header("accept")), ("GET", DOCKER_MANIFEST))
        relayed.respond(404, b'{"errors":[{"code":"MANIFEST_UNKNOWN","message":"no"}]}')
        self.assertEqual(other.responseCode, 404)
        self.assertNotEqual(other.body, self.index)

    def test_manifest_failing_its_digest_is_a_json_error(self) -> None:
        """A manifest miss whose body does not match its digest: a registry JSON 502 before any byte, not a cut connection."""
        request = self.get(f"x/y/manifests/{self.digest}")
        self.client.last.respond(200, self.index + b" ", headers={"Content-Type": OCI_INDEX})
        self.assertEqual(request.responseCode, 502)
        self.assertIn("sha256", json.loads(request.body)["errors"][0]["message"])

    def test_manifest_by_tag_stalls_mid_body(self) -> None:
        """An upstream whose HEAD names no digest and whose manifest GET stalls mid-body: 504 within the timeout, connection cut; the tag is not wedged."""
        request = self.get("x/y/manifests/latest")
        self.client.last.respond(200, b"", headers={"Content-Type": OCI_INDEX})  # HEAD, no digest
        self.assertEqual((self.client.last.method, self.client.last.url),
                         ("GET", "https://reg.test/v2/x/y/manifests/latest"))
        body = self.client.last.respond(200, headers={"Content-Type": OCI_INDEX}, length=len(self.index))
        body.send(self.index[:5])
        self.clock.advance(10)
        self.assertEqual(self.error(request),
                         (504, "the upstream manifest did not arrive within 10 s"))
        self.assertTrue(body.transport.stopped)
        again = self.get("x/y/manifests/latest")
        self.client.last.respond(200, b"", headers={"Content-Type": OCI_INDEX})
        self.client.last.respond(200, self.index, headers={"Content-Type": OCI_INDEX})
        self.assertEqual((again.body, again.header(b"docker-content-digest")), (self.index, self.digest))

    def test_head_that_never_ends(self) -> None:
        """
        A tag's upstream HEAD that never answers: 504; the next request at
        once 504 too (the upstream is backed off), and after the back-off it
        asks again.
        """
        request = self.get("x/y/manifests/latest")
        self.clock.advance(10)
        self.assertEqual(self.error(request)[0], 504)
        status, error = self.error(self.get("x/y/manifests/latest"))
        self.assertEqual((status, len(self.client.requests)), (504, 1))
        self.assertIn("after it failed", error)
        self.clock.advance(FAILURE_BACKOFF)
        self.get("x/y/manifests/latest")
        self.assertEqual([r.method for r in self.client.requests], ["HEAD", "HEAD"])

    def test_relayed_manifest_stalls(self) -> None:
        """A manifest relayed to a client no cached form suits, stalling mid-body: 504 within the timeout."""
        request = self.stored_then_relayed()
        relay = self.client.last
        self.assertEqual((relay.method, len(self.client.requests)), ("GET", 2))
        stalled = relay.respond(200, headers={"Content-Type": OCI_INDEX})
        stalled.send(b"{")
        self.clock.advance(10)
        self.assertEqual(self.error(request)[0], 504)
        self.assertTrue(stalled.transport.stopped)

    def test_relayed_manifest_checked(self) -> None:
        """A manifest relayed by digest must have that digest: other bytes are a 502, never served."""
        request = self.stored_then_relayed()
        self.client.last.respond(200, b'{"schemaVersion": 1}', headers={"Content-Type": OCI_INDEX})
        status, message = self.error(request)
        self.assertEqual(status, 502)
        self.assertIn("does not match its digest", message)

    def test_relayed_lengths(self) -> None:
        """A relayed GET carries its body's length (the upstream sent none); a relayed HEAD the upstream's, if it is a number."""
        request = self.stored_then_relayed()
        self.client.last.respond(200, headers={"Content-Type": OCI_INDEX}).send(self.index).finish()
        self.assertEqual((request.body, request.header(b"content-length")), (self.index, str(len(self.index))))
        for raw, expected in ((b"12", "12"), (b"\xb2", None)):
            request = self.get(f"x/y/manifests/{self.digest}", b"HEAD",
                               accept="application/vnd.docker.distribution.manifest.v1+json")
            self.client.last.respond(200, b"", headers={"Content-Type": OCI_INDEX, "Content-Length": raw})  # type: ignore[dict-item]
            self.assertEqual((request.finished, request.header(b"content-length")), (True, expected))

    def test_garbage_content_length_on_head(self) -> None:
        """A tag HEAD whose Content-Length is not ASCII digits ('\u00b2' passes str.isdigit) is a record without a size, not a 500."""
        request = self.get("x/y/manifests/latest", method=b"HEAD")
        self.client.last.respond(200, b"", headers={"Content-Type": OCI_INDEX, "Docker-Content-Digest": self.digest,
                                                    "Content-Length": b"\xb2"})  # type: ignore[dict-item]
        self.assertTrue(request.finished)
        self.assertEqual((request.responseCode or 200, request.header(b"etag")), (200, f'"{self.digest}"'))
        self.assertIsNone(request.header(b"content-length"))

    def test_schema1_checked_by_its_payload(self) -> None:
        """A signed schema 1 manifest goes out as its payload's digest (what registries name): by digest, after the stored path refuses it (its bytes do not have it), it is relayed; its bytes with any other digest are a 502."""
        body, payload = signed_schema1()
        digest = "sha256:" + hashlib.sha256(payload).hexdigest()
        request = self.get(f"x/y/manifests/{digest}", accept=SCHEMA1)
        self.client.last.respond(200, body, headers={"Content-Type": SCHEMA1, "Docker-Content-Digest": digest})
        relay = self.client.last
        self.assertEqual((relay.method, relay.url), ("GET", f"https://reg.test/v2/x/y/manifests/{digest}"))
        relay.respond(200, body, headers={"Content-Type": SCHEMA1, "Docker-Content-Digest": digest})
        self.assertEqual((request.body, request.header(b"docker-content-digest"), request.header(b"x-cache")),
                         (body, digest, "PASS"))
        request = self.get("x/y/manifests/v1", accept=SCHEMA1)
        self.client.last.respond(200, b"", headers={"Content-Type": SCHEMA1, "Docker-Content-Digest": digest})
        forged = body.replace(b'"name": "x"', b'"name": "z"')
        self.client.last.respond(200, forged, headers={"Content-Type": SCHEMA1, "Docker-Content-Digest": digest})
        self.assertEqual(request.responseCode, 502)
        self.assertEqual(self.store.lookup(f"registry https://reg.test x/y manifest {digest}"), None)

    def test_auth_bug_is_a_500(self) -> None:
        """A bug in the auth (a KeyError) is logged with its traceback and answered 500, not a 502 in disguise."""
        def broken(url: str) -> dict:
            raise KeyError("scope")
        self.backend.upstream.auth.headers_for = broken
        request = self.get("x/y/manifests/latest")
        self.assertEqual(self.error(request), (500, "internal error"))
        self.assertEqual(len(self.flushLoggedErrors(KeyError)), 1)
        self.assertEqual(self.client.requests, [])


class SampleConfigTests(SynchronousTestCase):
    def test_sample_loads(self) -> None:
        """config-sample.yml, which documents every key, is a valid config with a registry backend."""
        from artifactvault.tap import load_config
        sample = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "config-sample.yml")
        settings = load_config(sample).settings
        self.assertIn(("/dockerhub/", 300.0), [(s.prefix, getattr(s, "tag_ttl", None)) for s in settings])


class TagLengthTests(SynchronousTestCase):
    """The tag lookup's HEAD reads the manifest size strictly: one that is no length is no size."""

    setUp = BackendTests.setUp
    get = BackendTests.get

    def test_garbage_head_length(self) -> None:
        """Lengths that are not numbers, or too long for int(), leave the record without a size, not a 500."""
        for raw in ("\u00b2".encode("latin-1"), b"12abc", b"9" * 5000, b"4, 5"):
            with self.subTest(raw=raw[:10]):
                self.upstream.head_length = raw
                request = self.get("x/y/manifests/latest", method=b"HEAD")
                self.assertEqual((request.responseCode or 200, request.header(b"content-length")), (200, None))
                self.clock.advance(11)


class TagPageTests(SynchronousTestCase):
    """A tag list page as the spec says it, whatever the upstream did with n and last."""

    doc = {"name": "library/x", "tags": ["a", "b", "c"]}

    def page(self, count: int | None, last: str = "", link: str | None = None) -> tuple[dict, str | None]:
        body, next_query = _tag_page(dict(self.doc), "hub/library/x", count, last, link)
        return json.loads(body), next_query

    def test_name_is_the_clients(self) -> None:
        """The name is the one the client asked for; the tags are the upstream's."""
        self.assertEqual(self.page(None), ({"name": "hub/library/x", "tags": ["a", "b", "c"]}, None))

    def test_n_zero(self) -> None:
        """n=0 is an empty list and no next page, even if the upstream said there was one."""
        self.assertEqual(self.page(0, link='</v2/x/tags/list?n=1&last=a>; rel="next"'),
                         ({"name": "hub/library/x", "tags": []}, None))

    def test_n_and_last_kept_for_the_upstream(self) -> None:
        """An upstream that ignored n and last: the tags after last, n of them, and a next page if there are more."""
        self.assertEqual(self.page(1), ({"name": "hub/library/x", "tags": ["a"]}, "n=1&last=a"))
        self.assertEqual(self.page(1, "a"), ({"name": "hub/library/x", "tags": ["b"]}, "n=1&last=b"))
        self.assertEqual(self.page(5, "b"), ({"name": "hub/library/x", "tags": ["c"]}, None))

    def test_upstream_link_kept(self) -> None:
        """An upstream that paginates itself: its next page's query is kept."""
        self.assertEqual(self.page(3, link='</v2/library/x/tags/list?last=c&n=3>; rel="next"')[1], "last=c&n=3")
