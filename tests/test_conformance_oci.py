"""
The OCI Distribution Spec v1.1, pull side, section by section, through the
real daemon: for each request the vault's answer next to the upstream's
(the real distribution registry 2.8 of the test kit), or next to the spec's
words where distribution is wrong or lacks the feature (the referrers API,
``n=0``), with a scripted registry for what distribution cannot do.

Tests are named after the spec's sections in the spec's order (trial runs
them by name), so a gap shows up as a failing line named after its section;
docs/conformance-oci.md is the table of what each one shows. One daemon
serves the whole module.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import tempfile
import time
import uuid
from typing import Any

from twisted.trial.unittest import TestCase

from tests import support
from tests.fakeupstream import FakeUpstream, Script
from tests.support import Daemon, request

HELLO_INDEX = "sha256:55d09eecaad7772fd626815e8b6b874c7efef159d7ba5e7236eda8308d12ec30"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
SCHEMA1 = "application/vnd.docker.distribution.manifest.v1+prettyjws"
ALL_TYPES = ", ".join([OCI_MANIFEST, OCI_INDEX, DOCKER_MANIFEST, DOCKER_LIST])
#: §Error Codes: the only codes a 4xx JSON error may carry.
SPEC_CODES = {"BLOB_UNKNOWN", "BLOB_UPLOAD_INVALID", "BLOB_UPLOAD_UNKNOWN", "DIGEST_INVALID",
              "MANIFEST_BLOB_UNKNOWN", "MANIFEST_INVALID", "MANIFEST_UNKNOWN", "NAME_INVALID",
              "NAME_UNKNOWN", "SIZE_INVALID", "UNAUTHORIZED", "DENIED", "UNSUPPORTED", "TOOMANYREQUESTS"}
#: §Error Codes: "only uppercase alphabetic characters and underscores".
CODE_FORM = re.compile(r"[A-Z_]+")
#: §Warnings: warn-code 299, warn-agent "-", no warn-date.
WARNING_FORM = re.compile(r'299 - "[^"]*"')
ZERO = "sha256:" + "0" * 64
TTL = 1.0

Answer = tuple[int, dict[str, str], bytes]


def digest_of(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


class _Module:
    """The module's one daemon: /hub/ → the real registry, /fake/ → the scripted one."""

    def __init__(self) -> None:
        self.reg = support.upstream_url("reg")
        self.fake = FakeUpstream()
        self.tmp = tempfile.mkdtemp(prefix="av-oci-conf-")
        self.daemon = Daemon([
            {"type": "registry", "config": {"prefix": "/hub/", "registry_url": self.reg, "tag_ttl": "1h"}},
            {"type": "registry", "config": {"prefix": "/fake/", "registry_url": self.fake.base,
                                            "tag_ttl": TTL, "timeout": 5}},
        ]).start()

    def close(self) -> None:
        self.daemon.cleanup()
        self.fake.close()
        shutil.rmtree(self.tmp, ignore_errors=True)


class PullSideTests(TestCase):
    """OCI Distribution Spec v1.1 (spec.md), the pull side in the spec's order."""

    def setUp(self) -> None:
        module = support.shared_fixture(_Module)
        self.daemon, self.reg, self.fake = module.daemon, module.reg, module.fake

    def vault(self, path: str, headers: dict[str, str] | None = None, method: str = "GET") -> Answer:
        """C{path} below /v2/ asked of the vault, through the /hub/ backend."""
        return request(method, self.daemon.url(f"/v2/hub/{path}"), headers)

    def upstream(self, path: str, headers: dict[str, str] | None = None, method: str = "GET") -> Answer:
        return request(method, f"{self.reg}/v2/{path}", headers)

    def both(self, path: str, headers: dict[str, str] | None = None, method: str = "GET") -> tuple[Answer, Answer]:
        return self.vault(path, headers, method), self.upstream(path, headers, method)

    def assertError(self, answer: Answer, status: int, code: str | None = None) -> dict[str, Any]:
        """§Error Codes: the status, and a JSON body of the spec's shape with a code from its list."""
        got, headers, body = answer
        self.assertEqual(got, status, body[:300])
        self.assertTrue(headers["content-type"].startswith("application/json"))
        errors = json.loads(body)["errors"]
        self.assertTrue(errors)
        for error in errors:
            self.assertTrue(CODE_FORM.fullmatch(error["code"]), error)
            if 400 <= status < 500:
                self.assertIn(error["code"], SPEC_CODES)
            self.assertTrue(error.get("message") is None or isinstance(error["message"], str))
        if code is not None:
            self.assertEqual(errors[0]["code"], code)
        return errors[0]

    def assertSameManifest(self, vault: Answer, upstream: Answer, what: str) -> None:
        """Status, bytes, Content-Type and Docker-Content-Digest as the upstream's; the digest the bytes'."""
        self.assertEqual((vault[0], vault[2], vault[1].get("content-type"), vault[1].get("docker-content-digest")),
                         (upstream[0], upstream[2], upstream[1].get("content-type"),
                          upstream[1].get("docker-content-digest")), what)
        if vault[0] == 200 and vault[2]:
            self.assertEqual(vault[1]["docker-content-digest"], digest_of(vault[2]), what)

    def layer(self) -> tuple[str, bytes]:
        """A layer of library/hello: (digest, bytes), from the upstream."""
        _, _, index = self.upstream("library/hello/manifests/latest", {"Accept": OCI_INDEX})
        child = json.loads(index)["manifests"][0]
        _, _, manifest = self.upstream(f"library/hello/manifests/{child['digest']}", {"Accept": child["mediaType"]})
        digest = json.loads(manifest)["layers"][0]["digest"]
        return digest, self.upstream(f"library/hello/blobs/{digest}")[2]

    # -- §Determining Support (end-1) ------------------------------------------------

    def test_a1_determining_support(self) -> None:
        """GET /v2/ is 200 (the registry implements the spec), as the upstream's; the legacy API version header is sent."""
        vault = request("GET", self.daemon.url("/v2/"))
        upstream = request("GET", f"{self.reg}/v2/")
        self.assertEqual((vault[0], upstream[0]), (200, 200))
        self.assertEqual(vault[1]["docker-distribution-api-version"], "registry/2.0")
        self.assertEqual(json.loads(vault[2]), json.loads(upstream[2]))

    # -- §Pulling manifests (end-3) ---------------------------------------------------------

    def test_b1_manifest_by_tag(self) -> None:
        """GET by tag: 200 with the upstream's bytes, Content-Type (no parameters) and Docker-Content-Digest; the manifest's mediaType matches its Content-Type."""
        for tag, accept in (("latest", OCI_INDEX), ("v2", DOCKER_MANIFEST)):
            vault, upstream = self.both(f"library/hello/manifests/{tag}", {"Accept": accept})
            self.assertSameManifest(vault, upstream, tag)
            self.assertNotIn(";", vault[1]["content-type"])
            self.assertEqual(json.loads(vault[2])["mediaType"], vault[1]["content-type"])

    def test_b2_manifest_by_digest(self) -> None:
        """GET by digest: the upstream's bytes, which have that digest."""
        vault, upstream = self.both(f"library/hello/manifests/{HELLO_INDEX}", {"Accept": OCI_INDEX})
        self.assertSameManifest(vault, upstream, "by digest")
        self.assertEqual(vault[1]["docker-content-digest"], HELLO_INDEX)
        child = json.loads(vault[2])["manifests"][1]
        vault, upstream = self.both(f"library/hello/manifests/{child['digest']}", {"Accept": child["mediaType"]})
        self.assertSameManifest(vault, upstream, "child")

    def test_b3_manifest_not_found(self) -> None:
        """A manifest not in the repository: 404 (spec: MUST), with the upstream's code, message and detail; by tag, by digest, in an unknown repository; HEAD too."""
        for path in ("library/hello/manifests/nope", f"library/hello/manifests/{ZERO}",
                     "library/nope/manifests/latest"):
            vault, upstream = self.both(path, {"Accept": ALL_TYPES})
            self.assertError(vault, 404)
            self.assertEqual(json.loads(vault[2]), json.loads(upstream[2]), path)
            vault, upstream = self.both(path, {"Accept": ALL_TYPES}, "HEAD")
            self.assertEqual((vault[0], vault[2]), (404, b""), path)
            self.assertEqual(upstream[0], 404)

    def test_b4_reference_and_name_forms(self) -> None:
        """A reference MUST be a digest or a tag of the tag form, a name MUST match the name form: anything else is a 400 with a spec code (distribution: a text 404, or a 500 for a bad digest)."""
        self.assertError(self.vault("library/hello/manifests/-x"), 400, "MANIFEST_INVALID")
        self.assertError(self.vault("library/hello/manifests/" + "t" * 129), 400, "MANIFEST_INVALID")
        self.assertError(self.vault("library/hello/manifests/sha256:zz"), 400, "DIGEST_INVALID")
        self.assertError(self.vault("Library/hello/manifests/latest"), 400, "NAME_INVALID")
        self.assertEqual(self.upstream("library/hello/manifests/sha256:zz")[0], 500)

    # -- Content negotiation (Accept) ----------------------------------------------------------------

    def test_c1_accept(self) -> None:
        """The form of a manifest is chosen by Accept as the upstream chooses it (including its 404 for an index to a client that cannot take one, and schema 1 relayed); a client that sends no Accept gets what one accepting the current Docker and OCI types gets."""
        cases = [("latest", OCI_MANIFEST), ("latest", DOCKER_MANIFEST), ("latest", OCI_INDEX),
                 ("v2", DOCKER_MANIFEST), ("v2", OCI_MANIFEST), ("latest", ALL_TYPES), ("v2", ALL_TYPES)]
        for tag, accept in cases:
            vault, upstream = self.both(f"library/hello/manifests/{tag}", {"Accept": accept})
            what = f"{tag} for {accept}"
            if upstream[1].get("content-type") == SCHEMA1:
                # (signed anew on every request, so relayed: its digest is of the
                # payload without the signatures, the same on every request)
                self.assertEqual((vault[0], vault[1]["content-type"], vault[1]["x-cache"]), (200, SCHEMA1, "PASS"))
                self.assertEqual(vault[1]["docker-content-digest"], upstream[1]["docker-content-digest"], what)
            elif upstream[0] == 200:
                self.assertSameManifest(vault, upstream, what)
            else:
                self.assertEqual((vault[0], json.loads(vault[2])), (upstream[0], json.loads(upstream[2])), what)
        vault = self.vault("library/hello/manifests/latest")
        self.assertSameManifest(vault, self.upstream("library/hello/manifests/latest", {"Accept": ALL_TYPES}),
                                "no Accept")
        # (distribution makes schema 1 up for a tag only: by its digest, a 404)
        schema1 = self.upstream("library/hello/manifests/v2", {"Accept": SCHEMA1}, "HEAD")[1]["docker-content-digest"]
        vault, upstream = self.both(f"library/hello/manifests/{schema1}", {"Accept": SCHEMA1})
        self.assertEqual((vault[0], json.loads(vault[2])), (upstream[0], json.loads(upstream[2])), "schema 1 by digest")

    # -- §Pulling blobs (end-2) -------------------------------------------------------------------------

    def test_d1_blob(self) -> None:
        """GET of a blob: 200, the upstream's bytes, Docker-Content-Digest matching the body."""
        digest, data = self.layer()
        vault, upstream = self.both(f"library/hello/blobs/{digest}")
        self.assertEqual((vault[0], vault[2]), (200, upstream[2]))
        self.assertEqual((vault[1]["docker-content-digest"], digest_of(vault[2])), (digest, digest))

    def test_d2_blob_range(self) -> None:
        """Range (RFC 9110, spec: SHOULD): 206 with the upstream's bytes and Content-Range; a suffix range; beyond the end 416 with the size."""
        digest, data = self.layer()
        for spec in ("bytes=10-99", "bytes=-16", f"bytes={len(data) - 5}-"):
            vault, upstream = self.both(f"library/hello/blobs/{digest}", {"Range": spec})
            self.assertEqual((vault[0], vault[1]["content-range"], vault[2]),
                             (upstream[0], upstream[1]["content-range"], upstream[2]), spec)
        # (distribution's own 416 announces the whole blob's length and sends 33 bytes: RFC 9110's words instead)
        status, headers, _ = self.vault(f"library/hello/blobs/{digest}", {"Range": f"bytes={len(data) + 10}-"})
        self.assertEqual((status, headers["content-range"]), (416, f"bytes */{len(data)}"))

    def test_d3_blob_not_found(self) -> None:
        """A blob not in the repository: 404 BLOB_UNKNOWN as the upstream's, also for a blob the vault holds for another repository."""
        digest, _ = self.layer()
        self.vault(f"library/hello/blobs/{digest}")
        for path in (f"library/hello/blobs/{ZERO}", f"team/tools/blobs/{digest}", f"nosuch/repo/blobs/{digest}"):
            for method in ("GET", "HEAD"):
                vault, upstream = self.both(path, method=method)
                self.assertEqual((vault[0], upstream[0]), (404, 404), f"{method} {path}")
                if method == "GET":
                    self.assertEqual(self.assertError(vault, 404)["code"], json.loads(upstream[2])["errors"][0]["code"])

    # -- §Checking if content exists (HEAD end-2, end-3) ---------------------------------------------------

    def test_e1_head(self) -> None:
        """HEAD of a manifest (tag, digest) and of a blob: 200, no body, the upstream's Docker-Content-Digest and Content-Length."""
        digest, _ = self.layer()
        for path, accept in (("library/hello/manifests/latest", OCI_INDEX),
                             (f"library/hello/manifests/{HELLO_INDEX}", OCI_INDEX),
                             ("team/tools/manifests/1.0", OCI_MANIFEST), (f"library/hello/blobs/{digest}", None)):
            headers = {"Accept": accept} if accept else None
            vault, upstream = self.both(path, headers, "HEAD")
            self.assertEqual((vault[0], vault[2], vault[1]["docker-content-digest"], vault[1]["content-length"]),
                             (200, b"", upstream[1]["docker-content-digest"], upstream[1]["content-length"]), path)

    # -- §Listing Tags (end-8a, end-8b) ----------------------------------------------------------------------

    def test_f1_tags(self) -> None:
        """GET tags/list: 200, {"name": <name>, "tags": [...]} with the upstream's tags; name is the name the client asked for (its prefix below /v2/); unknown repository: the upstream's 404."""
        vault, upstream = self.both("library/hello/tags/list")
        self.assertEqual(json.loads(vault[2]), {"name": "hub/library/hello", "tags": json.loads(upstream[2])["tags"]})
        self.assertEqual(json.loads(request("GET", self.daemon.url("/hub/library/hello/tags/list"))[2])["name"],
                         "library/hello")
        vault, upstream = self.both("library/nope/tags/list")
        self.assertError(vault, 404, "NAME_UNKNOWN")
        self.assertEqual(json.loads(vault[2]), json.loads(upstream[2]))

    def test_f2_tags_pagination(self) -> None:
        """n and last as the spec says (distribution 2.8 ignores both): n results and a Link rel="next" while more remain; last excludes itself; n=0 an empty list and no Link."""
        self.assertEqual(json.loads(self.upstream("library/hello/tags/list?n=1")[2])["tags"], ["latest", "v2"])
        status, headers, body = self.vault("library/hello/tags/list?n=1")
        self.assertEqual((status, json.loads(body)["tags"]), (200, ["latest"]))
        link = re.fullmatch(r'<(/v2/hub/library/hello/tags/list\?[^>]+)>; rel="next"', headers["link"])
        self.assertIsNotNone(link, headers["link"])
        status, headers, body = request("GET", self.daemon.url(link.group(1)))
        self.assertEqual((json.loads(body)["tags"], headers.get("link")), (["v2"], None))
        self.assertEqual(json.loads(self.vault("library/hello/tags/list?n=5&last=latest")[2])["tags"], ["v2"])
        status, headers, body = self.vault("library/hello/tags/list?n=0")
        self.assertEqual((status, json.loads(body), headers.get("link")),
                         (200, {"name": "hub/library/hello", "tags": []}, None))
        self.assertError(self.vault("library/hello/tags/list?n=x"), 400, "UNSUPPORTED")

    # -- §Listing Referrers (end-12a, end-12b) ----------------------------------------------------------------

    def test_g1_referrers(self) -> None:
        """GET referrers/<digest> is the upstream's image index (Content-Type, body), with ?artifactType= its filtered one and OCI-Filters-Applied; a bad digest is a 400."""
        repo, subject = f"t{uuid.uuid4().hex[:8]}/app", digest_of(uuid.uuid4().bytes)
        sbom = {"mediaType": OCI_MANIFEST, "size": 10, "digest": digest_of(b"s" + uuid.uuid4().bytes),
                "artifactType": "application/vnd.example.sbom.v1"}
        sig = {"mediaType": OCI_MANIFEST, "size": 10, "digest": digest_of(b"g" + uuid.uuid4().bytes),
               "artifactType": "application/vnd.example.sig.v1"}
        path = f"/v2/{repo}/referrers/{subject}"
        query = "?artifactType=application%2Fvnd.example.sbom.v1"
        for q, manifests, extra in (("", [sbom, sig], {}), (query, [sbom], {"OCI-Filters-Applied": "artifactType"})):
            body = json.dumps({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": manifests}).encode()
            self.fake.scripts[path + q] = Script(body=body, headers={"Content-Type": OCI_INDEX, **extra})
            vault = request("GET", self.daemon.url(f"/v2/fake/{repo}/referrers/{subject}{q}"))
            upstream = request("GET", self.fake.base + path + q)
            self.assertEqual((vault[0], vault[1]["content-type"], vault[2], vault[1].get("oci-filters-applied")),
                             (200, OCI_INDEX, upstream[2], upstream[1].get("oci-filters-applied")), q)
        self.assertError(request("GET", self.daemon.url(f"/v2/fake/{repo}/referrers/latest")), 400, "DIGEST_INVALID")

    # -- §Unavailable Referrers API --------------------------------------------------------------------------------

    def test_g2_referrers_unavailable(self) -> None:
        """An upstream without the referrers API (distribution 2.8) answers 404, and so does the vault: the client's cue to read the referrers tag schema (<alg>-<ref>), an ordinary tag here."""
        vault, upstream = self.both(f"library/hello/referrers/{HELLO_INDEX}")
        self.assertEqual((vault[0], upstream[0]), (404, 404))
        self.assertError(vault, 404, "UNSUPPORTED")
        vault, upstream = self.both(f"library/hello/manifests/{HELLO_INDEX.replace(':', '-')}", {"Accept": OCI_INDEX})
        self.assertEqual((vault[0], json.loads(vault[2])), (upstream[0], json.loads(upstream[2])))

    # -- §Error Codes, §Warnings ----------------------------------------------------------------------------------

    def test_h1_error_codes(self) -> None:
        """Every 4xx JSON error has the spec's shape and a code from its list, with the legacy API version header; none carries a Docker-Content-Digest."""
        answers = [self.vault("library/hello/manifests/nope"), self.vault(f"library/hello/blobs/{ZERO}"),
                   self.vault("library/nope/tags/list"), self.vault("library/hello/manifests/-x"),
                   self.vault("library/hello/blobs/md5:00"), self.vault("library/hello/tags/list?n=-1"),
                   self.vault("library/hello/blobs/uploads/x"), self.vault("library/hello"),
                   request("GET", self.daemon.url("/v2/nowhere/x/manifests/latest"))]
        for answer in answers:
            self.assertError(answer, answer[0])
            self.assertEqual(answer[1]["docker-distribution-api-version"], "registry/2.0")
            self.assertNotIn("docker-content-digest", answer[1])

    def test_h2_warnings(self) -> None:
        """A stale answer's Warning is 299 - "…", no warn-date, under 4096 bytes (§Warnings)."""
        repo = f"t{uuid.uuid4().hex[:8]}/stale"
        body = json.dumps({"name": repo, "tags": ["a"]}).encode()
        self.fake.scripts[f"/v2/{repo}/tags/list"] = Script(body=body, headers={"Content-Type": "application/json"})
        self.assertEqual(request("GET", self.daemon.url(f"/v2/fake/{repo}/tags/list"))[0], 200)
        warmed = time.monotonic()
        self.fake.scripts[f"/v2/{repo}/tags/list"] = Script(status=503)
        time.sleep(max(warmed + TTL + 0.1 - time.monotonic(), 0))  # (a TTL running out: no event to wait for)
        status, headers, _ = request("GET", self.daemon.url(f"/v2/fake/{repo}/tags/list"))
        self.assertEqual((status, headers["x-cache"]), (200, "STALE"))
        self.assertTrue(WARNING_FORM.fullmatch(headers["warning"]), headers["warning"])
        self.assertLess(len(headers["warning"]), 4096)

    # -- §Push, §Content Management: not supported, by design ------------------------------------------------------

    def test_z1_push_and_delete_refused(self) -> None:
        """The vault is read-only: every push and delete endpoint (end-4a..end-7, end-9..end-11) is 405 UNSUPPORTED with Allow: GET, HEAD; an upload's status (end-13) is 404 BLOB_UPLOAD_UNKNOWN."""
        for method, path in (("POST", "x/blobs/uploads/"), ("POST", f"x/blobs/uploads/?digest={ZERO}"),
                             ("PATCH", "x/blobs/uploads/abc"), ("PUT", f"x/blobs/uploads/abc?digest={ZERO}"),
                             ("PUT", "x/manifests/latest"), ("DELETE", "x/manifests/latest"),
                             ("DELETE", f"x/blobs/{ZERO}"), ("POST", f"x/blobs/uploads/?mount={ZERO}&from=y")):
            answer = self.vault(path, method=method)
            self.assertError(answer, 405, "UNSUPPORTED")
            self.assertEqual(answer[1]["allow"], "GET, HEAD")
        self.assertError(self.vault("x/blobs/uploads/abc"), 404, "BLOB_UPLOAD_UNKNOWN")
