"""
The real daemon (``twistd -n artifactvault``) with registry backends, against
the real CNCF distribution registry of ``registry-up`` (plain) and
``registry-auth-up`` (Docker-Hub-style token auth), driven by skopeo and,
for the seed's paths, by http.client. A scripted upstream serves what a real
registry never would (a blob whose bytes do not match its digest).
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import http.client
import json
import os
import re
import shutil
import subprocess
import tempfile
import threading
import time
import uuid

from twisted.trial.unittest import TestCase

from tests import support
from tests.fakeupstream import FakeUpstream, Script
from tests.support import Daemon, hits, request

UPSTREAMS_DIR = support.UPSTREAMS
HELLO_INDEX = "sha256:55d09eecaad7772fd626815e8b6b874c7efef159d7ba5e7236eda8308d12ec30"
#: skopeo's Accept list (it sends one header per type).
SKOPEO_ACCEPT = ", ".join([
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.v2+json",
    "application/vnd.docker.distribution.manifest.v1+prettyjws",
    "application/vnd.docker.distribution.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
    "application/vnd.oci.image.index.v1+json"])
SHORT_TTL = 1.0
#: The timeout of the /slow/ backend, whose upstream stalls.
SLOW_TIMEOUT = 2.0


def host_of(url: str) -> str:
    return url[len("http://"):]


def skopeo_copy(source: str, dest_dir: str, *extra: str, check: bool = True) -> subprocess.CompletedProcess:
    """``skopeo copy --all docker://SOURCE oci:DEST:latest`` over plain http."""
    shutil.rmtree(dest_dir, ignore_errors=True)
    p = subprocess.run(["skopeo", "copy", "-q", "--all", "--src-tls-verify=false", *extra,
                        f"docker://{source}", f"oci:{dest_dir}:latest"],
                       capture_output=True, text=True, timeout=120)
    if check and p.returncode != 0:
        raise AssertionError(f"skopeo copy {source} failed: {p.stderr[-1500:]}")
    return p


def push(layout: str, tag: str, dest: str) -> None:
    """Push an OCI layout's tag to the plain upstream registry."""
    subprocess.run(["skopeo", "copy", "-q", "--all", "--dest-tls-verify=false",
                    f"oci:{layout}:{tag}", f"docker://{dest}"], check=True, capture_output=True, timeout=120)


def make_image(directory: str, name: str, tag: str = "latest") -> dict:
    """A new small OCI image (an index of two platforms) whose blobs no cache has seen."""
    out = subprocess.run([os.path.join(UPSTREAMS_DIR, "make-oci-image.py"), directory, name, "--tag", tag],
                         check=True, capture_output=True, text=True).stdout
    return json.loads(out)


def layout(directory: str) -> tuple[list[str], list[str]]:
    """What a copy produced, by digest: the manifests index.json names, and every blob."""
    with open(os.path.join(directory, "index.json")) as f:
        index = json.load(f)
    return (sorted(m["digest"] for m in index["manifests"]),
            sorted(os.listdir(os.path.join(directory, "blobs", "sha256"))))


def blob_digests(directory: str) -> list[str]:
    return ["sha256:" + n for n in os.listdir(os.path.join(directory, "blobs", "sha256"))]


def until(deadline: float) -> None:
    """Wait until a known moment (a TTL running out), not for an event."""
    delay = deadline - time.monotonic()
    if delay > 0:
        time.sleep(delay)


class _Shared:
    """One daemon for all tests here (trial has no setUpClass), with its upstreams."""

    def __init__(self) -> None:
        self.reg = support.upstream_url("reg")
        self.regauth = support.upstream_url("regauth")
        self.fake = FakeUpstream()
        self.tmp = tempfile.mkdtemp(prefix="av-reg-test-")
        self.daemon = Daemon([
            {"type": "dockerhub", "config": {"registry_url": self.reg, "tag_ttl": "1h",
                                             "mirror": True}},
            {"type": "registry", "config": {"prefix": "/auth/", "registry_url": self.regauth,
                                            "tag_ttl": "1h"}},
            {"type": "registry", "config": {"prefix": "/creds/", "registry_url": self.regauth,
                                            "username": "testuser", "password_env": "AV_TEST_REG_PW"}},
            {"type": "registry", "config": {"prefix": "/badcreds/", "registry_url": self.regauth,
                                            "username": "testuser", "password": "wr0ng-pw-x"}},
            {"type": "registry", "config": {"prefix": "/short/", "registry_url": self.reg,
                                            "tag_ttl": SHORT_TTL}},
            {"type": "registry", "config": {"prefix": "/authshort/", "registry_url": self.regauth,
                                            "tag_ttl": SHORT_TTL}},
            {"type": "registry", "config": {"prefix": "/fake/", "registry_url": self.fake.base,
                                            "timeout": 5, "idle_timeout": 5}},
            # (its tests make one request each time out: no back-off between them)
            {"type": "registry", "config": {"prefix": "/slow/", "registry_url": self.fake.base,
                                            "timeout": SLOW_TIMEOUT, "idle_timeout": SLOW_TIMEOUT,
                                            "backoff": 0}},
            {"type": "registry", "config": {"prefix": "/fakeshort/", "registry_url": self.fake.base,
                                            "tag_ttl": SHORT_TTL, "timeout": 5}},
            # (its own upstream, so that its back-off after a 429 holds back nobody else)
            {"type": "registry", "config": {"prefix": "/limited/", "registry_url": self.fake.base,
                                            "tag_ttl": SHORT_TTL, "timeout": 5}},
        ]).start(env={"AV_TEST_REG_PW": "testpass"})
        self.host = host_of(self.daemon.base)

    def close(self) -> None:
        self.daemon.cleanup()
        self.fake.close()
        shutil.rmtree(self.tmp, ignore_errors=True)


class RegistryTests(TestCase):
    """Pulls through the vault with skopeo, against the real distribution registry."""

    def setUp(self) -> None:
        shared = support.shared_fixture(_Shared)
        self.daemon, self.host, self.fake = shared.daemon, shared.host, shared.fake
        self.reg, self.regauth = host_of(support.upstream_url("reg")), host_of(support.upstream_url("regauth"))
        self.tmp = tempfile.mkdtemp(dir=shared.tmp)

    def dest(self, name: str) -> str:
        return os.path.join(self.tmp, name)

    def new_image(self, tag: str = "latest") -> tuple[str, dict]:
        """A new repository on the plain upstream holding a new image: (name, summary)."""
        name = f"t{uuid.uuid4().hex[:10]}/img"
        summary = make_image(self.dest("src-" + name.replace("/", "-")), name, tag)
        push(self.dest("src-" + name.replace("/", "-")), tag, f"{self.reg}/{name}:{tag}")
        return name, summary

    def get(self, path: str, headers: dict[str, str] | None = None, method: str = "GET"):
        return request(method, self.daemon.url(path), headers)

    # -- pulls ----------------------------------------------------------------

    def test_copy_all_identical_to_direct(self) -> None:
        """skopeo copy --all of a 2-platform index through the vault gives the same digests as straight from the upstream; a second copy asks the upstream nothing."""
        skopeo_copy(f"{self.reg}/library/hello:latest", self.dest("direct"))
        skopeo_copy(f"{self.host}/dockerhub/library/hello:latest", self.dest("vault"))
        self.assertEqual(layout(self.dest("vault")), layout(self.dest("direct")))
        self.assertEqual(layout(self.dest("vault"))[0], [HELLO_INDEX])
        before = hits("reg", ".")
        skopeo_copy(f"{self.host}/dockerhub/library/hello:latest", self.dest("again"))
        self.assertEqual(layout(self.dest("again")), layout(self.dest("direct")))
        self.assertEqual(hits("reg", "."), before, "a warm pull inside tag_ttl sent requests upstream")

    def test_docker_schema2_image(self) -> None:
        """A Docker schema 2 image (not OCI) copies identically, with its media type kept."""
        skopeo_copy(f"{self.reg}/library/hello:v2", self.dest("direct"))
        skopeo_copy(f"{self.host}/dockerhub/library/hello:v2", self.dest("vault"))
        self.assertEqual(layout(self.dest("vault")), layout(self.dest("direct")))
        status, headers, _ = self.get("/v2/dockerhub/library/hello/manifests/v2", {"Accept": SKOPEO_ACCEPT})
        self.assertEqual((status, headers["content-type"]),
                         (200, "application/vnd.docker.distribution.manifest.v2+json"))

    def test_copy_with_token_auth(self) -> None:
        """Through a registry with Docker-Hub-style token auth: identical copy; tokens come anonymously from the realm, one per scope, reused for the next pull."""
        skopeo_copy(f"{self.regauth}/library/hello:latest", self.dest("direct"))
        scope = r"scope=repository:library/hello:pull"
        tokens0 = hits("regauth", scope, "token.log")
        skopeo_copy(f"{self.host}/auth/library/hello:latest", self.dest("vault"))
        self.assertEqual(layout(self.dest("vault")), layout(self.dest("direct")))
        tokens1 = hits("regauth", scope, "token.log")
        self.assertGreaterEqual(tokens1 - tokens0, 1)
        skopeo_copy(f"{self.host}/auth/library/hello:v2", self.dest("v2"))
        self.assertEqual(hits("regauth", scope, "token.log"), tokens1, "a cached token was not reused")

    def test_credentials_for_tokens(self) -> None:
        """Configured credentials are used for the token (a wrong password is refused by the realm: the upstream's 401 is a 502 UNAUTHORIZED naming it); right ones pull."""
        status, _, body = self.get("/v2/badcreds/library/hello/manifests/latest", {"Accept": SKOPEO_ACCEPT})
        self.assertEqual(status, 502)
        self.assertEqual(json.loads(body)["errors"][0]["code"], "UNAUTHORIZED")
        skopeo_copy(f"{self.host}/creds/library/hello:latest", self.dest("vault"))
        self.assertEqual(layout(self.dest("vault"))[0], [HELLO_INDEX])
        for secret in ("testpass", "wr0ng-pw-x"):
            self.assertNotIn(secret, self.daemon.log())

    def test_mirror_unprefixed(self) -> None:
        """The backend marked mirror: true also answers /v2/<name>/… (the Docker daemon's registry-mirrors form)."""
        skopeo_copy(f"{self.reg}/team/tools:1.0", self.dest("direct"))
        skopeo_copy(f"{self.host}/team/tools:1.0", self.dest("vault"))
        self.assertEqual(layout(self.dest("vault")), layout(self.dest("direct")))

    def check_upstream_stopped(self, upstream: str, prefix: str) -> None:
        """Warm, stop the upstream, wait out tag_ttl, copy again by tag (stale) and by digest."""
        host = host_of(support.upstream_url(upstream))
        skopeo_copy(f"{host}/library/hello:latest", self.dest("direct"))
        skopeo_copy(f"{self.host}{prefix}library/hello:latest", self.dest("warm"))
        warmed = time.monotonic()
        support.stop_upstream(upstream)
        self.addCleanup(support.upstream_url, upstream)
        until(warmed + SHORT_TTL + 0.2)
        status, headers, _ = self.get(f"{prefix}library/hello/manifests/latest", {"Accept": SKOPEO_ACCEPT})
        self.assertEqual((status, headers.get("x-cache")), (200, "STALE"))
        skopeo_copy(f"{self.host}{prefix}library/hello:latest", self.dest("by-tag"))
        skopeo_copy(f"{self.host}{prefix}library/hello@{HELLO_INDEX}", self.dest("by-digest"))
        self.assertEqual(layout(self.dest("by-tag")), layout(self.dest("direct")))
        self.assertEqual(layout(self.dest("by-digest"))[1], layout(self.dest("direct"))[1])
        # A tag never pulled is an error, not a hang.
        p = skopeo_copy(f"{self.host}{prefix}library/never:1", self.dest("never"), check=False)
        self.assertNotEqual(p.returncode, 0)

    def test_upstream_stopped(self) -> None:
        """With the upstream stopped, a pulled image copies again from the vault, by tag (the last known tag, after tag_ttl) and by digest."""
        self.check_upstream_stopped("reg", "/short/")

    def test_auth_upstream_stopped(self) -> None:
        """The same with the token-auth registry and its token server stopped."""
        self.check_upstream_stopped("regauth", "/authshort/")

    def test_concurrent_copies_fetch_each_blob_once(self) -> None:
        """10 concurrent copies of an image nobody pulled yet: each blob and manifest is fetched upstream once, the tag asked once."""
        name, summary = self.new_image()
        digests = blob_digests(self.dest("src-" + name.replace("/", "-")))
        with concurrent.futures.ThreadPoolExecutor(10) as pool:
            results = list(pool.map(lambda i: skopeo_copy(f"{self.host}/dockerhub/{name}:latest",
                                                          self.dest(f"c{i}")), range(10)))
        self.assertEqual(len(results), 10)
        for i in range(10):
            self.assertEqual(layout(self.dest(f"c{i}"))[0], [summary["digest"]])
        manifests = {summary["digest"]} | {m["digest"] for m in summary["manifests"]}
        for digest in digests:
            kind = "manifests" if digest in manifests else "blobs"
            self.assertEqual(hits("reg", f"^GET /v2/{name}/{kind}/{digest}$"), 1, f"{kind}/{digest}")
        self.assertEqual(hits("reg", f"^HEAD /v2/{name}/manifests/latest$"), 1)
        self.assertEqual(hits("reg", f"^GET /v2/{name}/manifests/latest$"), 0)

    def test_tag_pushed_again_seen_after_ttl(self) -> None:
        """A tag pushed again with new content is seen after tag_ttl, found with a HEAD; inside tag_ttl nothing goes upstream."""
        name, first = self.new_image()
        skopeo_copy(f"{self.host}/short/{name}:latest", self.dest("first"))
        pulled = time.monotonic()
        self.assertEqual(layout(self.dest("first"))[0], [first["digest"]])
        second = make_image(self.dest("second-src"), name + "-other")
        push(self.dest("second-src"), "latest", f"{self.reg}/{name}:latest")
        before = hits("reg", ".")
        status, headers, _ = self.get(f"/short/{name}/manifests/latest", {"Accept": SKOPEO_ACCEPT})
        asked = time.monotonic()
        if asked < pulled + SHORT_TTL:  # (a slow push may have used up the TTL)
            self.assertEqual(headers["docker-content-digest"], first["digest"])
            self.assertEqual(hits("reg", "."), before)
        until(asked + SHORT_TTL + 0.1)  # (the GET above may have revalidated the tag)
        heads = hits("reg", f"^HEAD /v2/{name}/manifests/latest$")
        skopeo_copy(f"{self.host}/short/{name}:latest", self.dest("second"))
        self.assertEqual(layout(self.dest("second"))[0], [second["digest"]])
        self.assertEqual(hits("reg", f"^HEAD /v2/{name}/manifests/latest$"), heads + 1)
        self.assertEqual(hits("reg", f"^GET /v2/{name}/manifests/latest$"), 0)

    def test_revalidated_tag_sends_only_head(self) -> None:
        """After tag_ttl, a pull of an unchanged tag sends the upstream exactly one request: a HEAD."""
        skopeo_copy(f"{self.host}/short/team/tools:1.0", self.dest("first"))
        pulled = time.monotonic()
        until(pulled + SHORT_TTL + 0.1)
        before = hits("reg", ".")
        skopeo_copy(f"{self.host}/short/team/tools:1.0", self.dest("second"))
        self.assertEqual(layout(self.dest("second")), layout(self.dest("first")))
        heads = hits("reg", "^HEAD /v2/team/tools/manifests/1.0$")
        # skopeo is done, so every upstream request of this pull has been answered.
        self.assertEqual(support.wait_for_hits("reg", ".", before + 1), before + 1)
        self.assertEqual(hits("reg", "^HEAD /v2/team/tools/manifests/1.0$"), heads)
        self.assertTrue(heads >= 1)

    # -- the seed's paths, errors, pushes ---------------------------------------

    def test_seed_paths(self) -> None:
        """The seed's form: manifests by tag (no Accept: Docker/OCI defaults) and digest, blobs with Range and HEAD, tags/list; bytes as upstream's."""
        up = support.upstream_url("reg")
        curl = subprocess.run(["curl", "-sf", self.daemon.url("/dockerhub/library/hello/manifests/latest")],
                              capture_output=True, check=True, timeout=30)
        self.assertEqual("sha256:" + hashlib.sha256(curl.stdout).hexdigest(), HELLO_INDEX)
        status, headers, index = self.get("/dockerhub/library/hello/manifests/latest")
        self.assertEqual(status, 200)
        self.assertEqual(headers["content-type"], "application/vnd.oci.image.index.v1+json")
        self.assertEqual(headers["docker-content-digest"], HELLO_INDEX)
        self.assertEqual(headers["docker-distribution-api-version"], "registry/2.0")
        self.assertEqual("sha256:" + hashlib.sha256(index).hexdigest(), HELLO_INDEX)
        child = json.loads(index)["manifests"][0]
        status, headers, manifest = self.get(f"/dockerhub/library/hello/manifests/{child['digest']}",
                                             {"Accept": child["mediaType"]})
        self.assertEqual((status, headers["content-type"]), (200, child["mediaType"]))
        layer = json.loads(manifest)["layers"][0]
        path = f"/dockerhub/library/hello/blobs/{layer['digest']}"
        _, _, upstream_bytes = request("GET", f"{up}/v2/library/hello/blobs/{layer['digest']}")
        status, headers, body = self.get(path)
        self.assertEqual((status, body), (200, upstream_bytes))
        self.assertEqual(headers["docker-content-digest"], layer["digest"])
        status, headers, body = self.get(path, {"Range": "bytes=10-19"})
        self.assertEqual((status, body, headers["content-range"]),
                         (206, upstream_bytes[10:20], f"bytes 10-19/{len(upstream_bytes)}"))
        status, headers, body = self.get(path, method="HEAD")
        self.assertEqual((status, body, headers["content-length"]), (200, b"", str(len(upstream_bytes))))
        status, _, body = self.get("/dockerhub/library/hello/tags/list")
        self.assertEqual((status, json.loads(body)), (200, {"name": "library/hello", "tags": ["latest", "v2"]}))

    def test_head_tag_then_digest(self) -> None:
        """A HEAD of a tag (the Docker daemon's first question) is answered from one upstream HEAD; the GET by digest that follows is fetched once."""
        name, summary = self.new_image()
        status, headers, body = self.get(f"/v2/dockerhub/{name}/manifests/latest",
                                         {"Accept": SKOPEO_ACCEPT}, method="HEAD")
        self.assertEqual((status, body, headers["docker-content-digest"]), (200, b"", summary["digest"]))
        self.assertEqual(headers["content-length"], str(summary["size"]))
        self.assertEqual(hits("reg", f"^GET /v2/{name}/manifests/"), 0)
        for _ in range(2):
            status, headers, body = self.get(f"/v2/dockerhub/{name}/manifests/{summary['digest']}",
                                             {"Accept": SKOPEO_ACCEPT})
            self.assertEqual("sha256:" + hashlib.sha256(body).hexdigest(), summary["digest"])
        self.assertEqual(hits("reg", f"^GET /v2/{name}/manifests/{summary['digest']}$"), 1)

    def test_accept_respected(self) -> None:
        """A cached OCI index is not served to a client whose Accept does not admit it: the upstream decides (404 MANIFEST_UNKNOWN here)."""
        self.get("/dockerhub/library/hello/manifests/latest", {"Accept": SKOPEO_ACCEPT})
        for ref in ("latest", HELLO_INDEX):
            status, headers, body = self.get(f"/dockerhub/library/hello/manifests/{ref}",
                                             {"Accept": "application/vnd.oci.image.manifest.v1+json"})
            self.assertEqual(status, 404, ref)
            self.assertEqual(json.loads(body)["errors"][0]["code"], "MANIFEST_UNKNOWN")

    def test_errors_in_registry_form(self) -> None:
        """Unknown manifests, blobs and names, and bad names, are the registry's JSON errors."""
        zero = "sha256:" + "0" * 64
        cases = [("/dockerhub/library/nope/manifests/latest", 404, "MANIFEST_UNKNOWN"),
                 (f"/v2/dockerhub/library/hello/blobs/{zero}", 404, "BLOB_UNKNOWN"),
                 ("/v2/dockerhub/library/nope/tags/list", 404, "NAME_UNKNOWN"),
                 ("/v2/nowhere/", 404, "NAME_UNKNOWN"),
                 ("/dockerhub/Library/hello/manifests/latest", 400, "NAME_INVALID"),
                 ("/dockerhub/library/hello/blobs/md5:00", 400, "DIGEST_INVALID")]
        for path, status, code in cases:
            got, headers, body = self.get(path)
            self.assertEqual((got, json.loads(body)["errors"][0]["code"]), (status, code), path)
            self.assertEqual(headers["docker-distribution-api-version"], "registry/2.0")
            self.assertNotIn("docker-content-digest", headers)
        status, headers, body = self.get("/v2/")
        self.assertEqual((status, body, headers["docker-distribution-api-version"]), (200, b"{}", "registry/2.0"))

    def test_push_refused(self) -> None:
        """Push methods get 405 UNSUPPORTED; a skopeo push through the vault fails and no write reaches the upstream (its checks whether blobs exist in the new repository are reads, answered by the upstream: 404)."""
        for method in ("PUT", "POST", "PATCH", "DELETE"):
            for path in ("/v2/dockerhub/library/x/blobs/uploads/", "/dockerhub/library/hello/manifests/latest"):
                status, headers, body = self.get(path, method=method)
                self.assertEqual((status, json.loads(body)["errors"][0]["code"]), (405, "UNSUPPORTED"))
        skopeo_copy(f"{self.reg}/library/hello:latest", self.dest("direct"))
        writes = "^(PUT|POST|PATCH|DELETE) "
        before = hits("reg", writes)
        p = subprocess.run(["skopeo", "copy", "-q", "--dest-tls-verify=false", f"oci:{self.dest('direct')}:latest",
                            f"docker://{self.host}/dockerhub/library/pushed:1"], capture_output=True, text=True)
        self.assertNotEqual(p.returncode, 0)
        self.assertEqual(hits("reg", writes), before)
        self.assertEqual(hits("reg", "^GET /v2/library/pushed/"), 0)

    # -- stalls: every wait has a deadline, no key stays wedged ------------------------

    def manifest(self, repository: str, headers: dict[str, str] | None = None,
                 **script: object) -> tuple[bytes, str]:
        """A new manifest on the scripted upstream, by tag (with C{script}'s faults) and by digest."""
        body = json.dumps({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json",
                           "manifests": [], "n": uuid.uuid4().hex}).encode()
        digest = "sha256:" + hashlib.sha256(body).hexdigest()
        base = {"Content-Type": "application/vnd.oci.image.index.v1+json", **(headers or {})}
        self.fake.scripts[f"/v2/{repository}/manifests/latest"] = Script(body=body, headers=base, **script)
        self.fake.scripts[f"/v2/{repository}/manifests/{digest}"] = Script(
            body=body, headers={**base, "Docker-Content-Digest": digest},
            **{k: v for k, v in script.items() if k in ("authorization", "challenge")})
        return body, digest

    def timed_get(self, path: str) -> tuple[int, bytes, float]:
        """(status, body, seconds): a client that would wait far longer than any deadline."""
        started = time.monotonic()
        status, _, body = request("GET", self.daemon.url(path), {"Accept": SKOPEO_ACCEPT}, timeout=30)
        return status, body, time.monotonic() - started

    def assertGatewayTimeout(self, path: str) -> None:
        status, body, seconds = self.timed_get(path)
        self.assertEqual(status, 504, body)
        self.assertEqual(json.loads(body)["errors"][0]["code"], "UNAVAILABLE")
        self.assertLess(seconds, 2 * SLOW_TIMEOUT + 1.5)

    def release(self, event: threading.Event) -> None:
        self.addCleanup(event.set)

    def test_token_body_stalls(self) -> None:
        """A token realm that stalls mid-body: the pull gets 504 within the timeout; once the realm is fixed the next pull works (the scope is not wedged)."""
        stall = threading.Event()
        self.release(stall)
        realm = f"{self.fake.base}/token-stall"
        body, digest = self.manifest("tok/img", authorization="Bearer good-token",
                                     challenge=f'Bearer realm="{realm}",service="fake"')
        answer = json.dumps({"token": "good-token", "expires_in": 300}).encode()
        self.fake.scripts["/token-stall"] = Script(body=answer, cut_at=5, resume=stall)
        self.assertGatewayTimeout("/slow/tok/img/manifests/latest")
        self.fake.scripts["/token-stall"] = Script(body=answer)
        status, got, _ = self.timed_get("/slow/tok/img/manifests/latest")
        self.assertEqual((status, got), (200, body))

    def test_manifest_body_stalls(self) -> None:
        """An upstream whose tag HEAD names no digest and whose manifest GET stalls mid-body: 504 within the timeout; then the tag works (not wedged)."""
        stall = threading.Event()
        self.release(stall)
        body, digest = self.manifest("stall/img", cut_at=10, resume=stall)
        self.assertGatewayTimeout("/slow/stall/img/manifests/latest")
        self.manifest("stall/img")  # fixed (a new manifest, which the next pull must show)
        fixed = self.fake.scripts["/v2/stall/img/manifests/latest"].body
        status, got, _ = self.timed_get("/slow/stall/img/manifests/latest")
        self.assertEqual((status, got), (200, fixed))

    def test_head_stalls_in_headers(self) -> None:
        """A tag HEAD answered with a status line and one header, then nothing: 504 within the timeout; then the tag works."""
        stall = threading.Event()
        self.release(stall)
        self.manifest("hdr/img", headers={"Docker-Content-Digest": "sha256:" + "0" * 64}, stall_in_headers=stall)
        self.assertGatewayTimeout("/slow/hdr/img/manifests/latest")
        body, digest = self.manifest("hdr/img", headers={})
        self.fake.scripts["/v2/hdr/img/manifests/latest"].headers["Docker-Content-Digest"] = digest
        status, got, _ = self.timed_get("/slow/hdr/img/manifests/latest")
        self.assertEqual((status, got), (200, body))

    def test_corrupted_blob_never_committed(self) -> None:
        """An upstream blob whose bytes do not match its digest: the client gets a JSON 502 (a small blob is verified before it is sent), nothing is stored, the next request asks again; skopeo fails."""
        good = os.urandom(300_000)
        digest = "sha256:" + hashlib.sha256(good).hexdigest()
        bad = bytearray(good)
        bad[-1] ^= 1
        self.fake.scripts[f"/v2/bad/img/blobs/{digest}"] = Script(body=bytes(bad))
        for attempt in (1, 2):  # nothing was stored: the second request is a miss again
            status, _, body = self.get(f"/v2/fake/bad/img/blobs/{digest}")
            self.assertEqual((status, json.loads(body)["errors"][0]["code"]), (502, "UNAVAILABLE"))
            self.assertIn("expected", json.loads(body)["errors"][0]["message"])
            self.assertEqual(self.fake.count("GET", f"/v2/bad/img/blobs/{digest}"), attempt)
        key = f"registry {self.fake.base} blob {digest}"
        kh = hashlib.sha256(key.encode()).hexdigest()
        self.assertFalse(os.path.exists(os.path.join(self.daemon.cache_dir, "data", kh[:2], kh + ".json")))
        # The same through skopeo: an image whose layer is corrupt upstream.
        config = json.dumps({"architecture": "amd64", "os": "linux",
                             "rootfs": {"type": "layers", "diff_ids": [digest]}}).encode()
        config_digest = "sha256:" + hashlib.sha256(config).hexdigest()
        manifest = json.dumps({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
                               "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                                          "digest": config_digest, "size": len(config)},
                               "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                                           "digest": digest, "size": len(good)}]}).encode()
        manifest_digest = "sha256:" + hashlib.sha256(manifest).hexdigest()
        mheaders = {"Content-Type": "application/vnd.oci.image.manifest.v1+json",
                    "Docker-Content-Digest": manifest_digest}
        self.fake.scripts["/v2/bad/img/manifests/latest"] = Script(body=manifest, headers=mheaders)
        self.fake.scripts[f"/v2/bad/img/manifests/{manifest_digest}"] = Script(body=manifest, headers=mheaders)
        self.fake.scripts[f"/v2/bad/img/blobs/{config_digest}"] = Script(body=config)
        p = subprocess.run(["skopeo", "copy", "-q", "--src-tls-verify=false", f"docker://{self.host}/fake/bad/img:latest",
                            f"oci:{self.dest('bad')}:latest"], capture_output=True, text=True, timeout=120)
        self.assertNotEqual(p.returncode, 0)
        self.assertFalse(os.path.exists(os.path.join(self.daemon.cache_dir, "data", kh[:2], kh + ".json")))
        self.assertTrue(re.search(r"upstream body has sha256 \w+, expected", self.daemon.log()))

    def test_blob_unknown_in_one_repository_not_handed_to_another(self) -> None:
        """
        Concurrent pulls of one digest from two repositories share a download,
        but repository A's 404 (the blob is unknown there) is A's answer: a
        request for B that came while A's was still waiting for its upstream
        asks for B itself and gets the blob. When A has it, B shares A's download.
        """
        for a_has_it in (False, True):
            blob = os.urandom(200_000)
            digest = "sha256:" + hashlib.sha256(blob).hexdigest()
            repo_a, repo_b = (f"t{uuid.uuid4().hex[:10]}/{r}" for r in ("a", "b"))
            held = threading.Event()
            self.fake.scripts[f"/v2/{repo_a}/blobs/{digest}"] = Script(body=blob, hold_headers=held) if a_has_it \
                else Script(status=404, hold_headers=held, headers={"Content-Type": "application/json"},
                            body=json.dumps({"errors": [{"code": "BLOB_UNKNOWN", "message": "unknown"}]}).encode())
            self.fake.scripts[f"/v2/{repo_b}/blobs/{digest}"] = Script(body=blob)
            with concurrent.futures.ThreadPoolExecutor(1) as pool:
                answer_a = pool.submit(self.get, f"/v2/fake/{repo_a}/blobs/{digest}")
                deadline = time.monotonic() + 10
                while self.fake.count("GET", f"/v2/{repo_a}/blobs/{digest}") < 1:  # A's flight is waiting
                    self.assertLess(time.monotonic(), deadline, "the request for A never reached the upstream")
                    time.sleep(0.01)
                conn = http.client.HTTPConnection("127.0.0.1", self.daemon.port, timeout=30)
                self.addCleanup(conn.close)
                conn.request("GET", f"/v2/fake/{repo_b}/blobs/{digest}")
                # The daemon accepts and reads connections in order: once a later
                # one is answered, B's request has been read (and met A's flight).
                self.assertEqual(self.get("/-/health")[0], 200)
                held.set()
                status, _, body = answer_a.result(30)
            if a_has_it:
                self.assertEqual((status, body), (200, blob))
            else:
                self.assertEqual((status, json.loads(body)["errors"][0]["code"]), (404, "BLOB_UNKNOWN"))
            response = conn.getresponse()
            self.assertEqual((response.status, "sha256:" + hashlib.sha256(response.read()).hexdigest()),
                             (200, digest))
            self.assertEqual(self.fake.count("GET", f"/v2/{repo_b}/blobs/{digest}"), 0 if a_has_it else 1)


OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
SCHEMA1 = "application/vnd.docker.distribution.manifest.v1+prettyjws"
#: The spec's §Warnings: warn-code 299, warn-agent "-", a quoted text, no date.
SPEC_WARNING = re.compile(r'299 - "[^"]*"')


def digest_of(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def errors_of(body: bytes) -> list[dict]:
    return json.loads(body)["errors"]


class SpecTests(TestCase):
    """
    Issue 8's OCI points, each through real sockets: the vault's answer next
    to the upstream's for the same request (the real distribution registry,
    or the scripted one for what distribution 2.8 cannot do), or next to the
    spec's words where the upstream is wrong.
    """

    setUp = RegistryTests.setUp
    get = RegistryTests.get
    dest = RegistryTests.dest

    def new_repo(self, what: str = "img") -> str:
        return f"t{uuid.uuid4().hex[:10]}/{what}"

    def scripted_manifest(self, repo: str, tag: str = "latest") -> tuple[bytes, str]:
        """A new OCI index on the scripted upstream, by tag and by digest."""
        body = json.dumps({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [],
                           "n": uuid.uuid4().hex}).encode()
        digest = digest_of(body)
        headers = {"Content-Type": OCI_INDEX, "Docker-Content-Digest": digest}
        self.fake.scripts[f"/v2/{repo}/manifests/{tag}"] = Script(body=body, headers=headers)
        self.fake.scripts[f"/v2/{repo}/manifests/{digest}"] = Script(body=body, headers=headers)
        return body, digest

    def hello_layer(self) -> str:
        """The digest of a layer of library/hello (the upstream's index, first platform)."""
        up = support.upstream_url("reg")
        _, _, index = request("GET", f"{up}/v2/library/hello/manifests/latest", {"Accept": OCI_INDEX})
        child = json.loads(index)["manifests"][0]
        _, _, manifest = request("GET", f"{up}/v2/library/hello/manifests/{child['digest']}",
                                 {"Accept": child["mediaType"]})
        return json.loads(manifest)["layers"][0]["digest"]

    # -- 1. referrers -------------------------------------------------------------

    def test_referrers_passed_through(self) -> None:
        """
        GET /v2/<name>/referrers/<digest>, with and without ?artifactType=,
        is the upstream's answer (status, type, body, OCI-Filters-Applied),
        kept for tag_ttl (the second asks nothing upstream); a malformed
        digest is a 400 (spec: MUST) that reaches nobody.
        """
        repo, subject = self.new_repo("signed"), digest_of(uuid.uuid4().bytes)
        sbom = {"mediaType": OCI_MANIFEST, "size": 321, "digest": digest_of(b"sbom" + uuid.uuid4().bytes),
                "artifactType": "application/vnd.example.sbom.v1", "annotations": {"org.example": "x"}}
        sig = {"mediaType": OCI_MANIFEST, "size": 123, "digest": digest_of(b"sig" + uuid.uuid4().bytes),
               "artifactType": "application/vnd.example.sig.v1"}

        def index(*descriptors: dict) -> bytes:
            return json.dumps({"schemaVersion": 2, "mediaType": OCI_INDEX,
                               "manifests": list(descriptors)}).encode()

        path = f"/v2/{repo}/referrers/{subject}"
        query = "?artifactType=application%2Fvnd.example.sbom.v1"
        self.fake.scripts[path] = Script(body=index(sbom, sig), headers={"Content-Type": OCI_INDEX})
        self.fake.scripts[path + query] = Script(body=index(sbom), headers={
            "Content-Type": OCI_INDEX, "OCI-Filters-Applied": "artifactType"})
        for q in ("", query):
            up_status, up_headers, up_body = request("GET", self.fake.base + path + q)
            asked = self.fake.count("GET", path + q)
            for cache in ("MISS", "HIT"):
                status, headers, body = self.get(f"/v2/fake/{repo}/referrers/{subject}{q}")
                self.assertEqual((status, headers["content-type"], body, headers.get("oci-filters-applied")),
                                 (up_status, up_headers["content-type"], up_body,
                                  up_headers.get("oci-filters-applied")), q)
                self.assertEqual(headers["x-cache"], cache)
            self.assertEqual(self.fake.count("GET", path + q), asked + 1, q)
        self.assertEqual(json.loads(body)["manifests"], [sbom])
        before = len(self.fake.requests)
        status, _, body = self.get(f"/v2/fake/{repo}/referrers/sha256:zz")
        self.assertEqual((status, errors_of(body)[0]["code"]), (400, "DIGEST_INVALID"))
        self.assertEqual(len(self.fake.requests), before)

    def test_referrers_unsupported_upstream(self) -> None:
        """Distribution 2.8 has no referrers API (404): the 404 is passed on (the spec's signal for clients to read the referrers tag), in the registry's JSON form."""
        up = support.upstream_url("reg")
        up_status, _, _ = request("GET", f"{up}/v2/library/hello/referrers/{HELLO_INDEX}")
        status, headers, body = self.get(f"/v2/dockerhub/library/hello/referrers/{HELLO_INDEX}")
        self.assertEqual((status, up_status), (404, 404))
        self.assertEqual(errors_of(body)[0]["code"], "UNSUPPORTED")
        self.assertIn("sha256-", errors_of(body)[0]["message"])

    # -- 2. a blob belongs to the repositories the upstream has it in ------------------

    def test_blob_only_for_repositories_that_have_it(self) -> None:
        """
        A blob cached through library/hello, asked for under a repository the
        upstream does not have it in: the upstream's answer (404
        BLOB_UNKNOWN, GET and HEAD), never a HIT. Under one that has it: one
        upstream HEAD, then the cached bytes (no GET upstream), and the next
        request asks nothing.
        """
        up = support.upstream_url("reg")
        layer = self.hello_layer()
        status, _, blob = self.get(f"/v2/dockerhub/library/hello/blobs/{layer}")
        self.assertEqual(status, 200)
        for method in ("HEAD", "GET"):
            up_status, _, up_body = request(method, f"{up}/v2/nosuch/repo/blobs/{layer}")
            status, headers, body = self.get(f"/v2/dockerhub/nosuch/repo/blobs/{layer}", method=method)
            # (the GET's own check is the HEAD just answered 404: remembered for negative_ttl, a HIT)
            self.assertEqual((status, headers.get("x-cache")), (up_status, "MISS" if method == "HEAD" else "HIT"),
                             method)
            self.assertNotIn("docker-content-digest", headers)
            if method == "GET":
                self.assertEqual(errors_of(body)[0]["code"], errors_of(up_body)[0]["code"])
        copy = self.new_repo("copy")
        subprocess.run(["skopeo", "copy", "-q", "--all", "--src-tls-verify=false", "--dest-tls-verify=false",
                        f"docker://{self.reg}/library/hello:latest", f"docker://{self.reg}/{copy}:latest"],
                       check=True, capture_output=True, timeout=120)
        heads = hits("reg", f"^HEAD /v2/{copy}/blobs/{layer}$")  # (skopeo's, pushing)
        for attempt in (1, 2):
            status, headers, body = self.get(f"/v2/dockerhub/{copy}/blobs/{layer}")
            self.assertEqual((status, body), (200, blob))
            self.assertEqual(support.wait_for_hits("reg", f"^HEAD /v2/{copy}/blobs/{layer}$", heads + 1),
                             heads + 1, attempt)
            self.assertEqual(hits("reg", f"^GET /v2/{copy}/blobs/{layer}$"), 0)

    # -- 3 and 9. every manifest sent has the digest it is sent as -----------------------

    def test_relayed_manifest_checked(self) -> None:
        """
        A manifest relayed by tag (schema 1: X-Cache PASS, never kept) goes out
        only if its bytes have the Docker-Content-Digest it is sent with (the
        spec: a client that uses the header MUST verify it): the upstream's
        right one is passed on as it sent it, a wrong one is a JSON 502.
        """
        body = json.dumps({"schemaVersion": 1, "name": "x", "n": uuid.uuid4().hex}).encode()
        right, wrong = self.new_repo("right"), self.new_repo("wrong")
        for repo, digest in ((right, digest_of(body)), (wrong, digest_of(body + b" "))):
            self.fake.scripts[f"/v2/{repo}/manifests/latest"] = Script(
                body=body, headers={"Content-Type": SCHEMA1, "Docker-Content-Digest": digest})
        up = request("GET", f"{self.fake.base}/v2/{right}/manifests/latest", {"Accept": SCHEMA1})
        status, headers, got = self.get(f"/v2/fake/{right}/manifests/latest", {"Accept": SCHEMA1})
        self.assertEqual((status, got, headers["docker-content-digest"], headers["content-type"]),
                         (up[0], up[2], up[1]["docker-content-digest"], SCHEMA1))
        self.assertEqual(headers["x-cache"], "PASS")
        up_status, _, up_body = request("GET", f"{self.fake.base}/v2/{wrong}/manifests/latest", {"Accept": SCHEMA1})
        self.assertEqual(up_status, 200)  # the upstream is wrong: its body does not have its digest
        status, headers, got = self.get(f"/v2/fake/{wrong}/manifests/latest", {"Accept": SCHEMA1})
        self.assertEqual(status, 502)
        self.assertIn("does not match its digest", errors_of(got)[0]["message"])
        self.assertNotIn("docker-content-digest", headers)

    def test_manifest_failing_its_digest_is_a_json_502(self) -> None:
        """A manifest whose upstream bytes do not have its digest (by digest, and by a tag whose HEAD names that digest): a registry JSON 502 with the reason before any byte, never a cut connection; nothing is stored."""
        repo = self.new_repo("corrupt")
        body = json.dumps({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [],
                           "n": uuid.uuid4().hex}).encode()
        digest = digest_of(body)
        headers = {"Content-Type": OCI_INDEX, "Docker-Content-Digest": digest}
        self.fake.scripts[f"/v2/{repo}/manifests/{digest}"] = Script(body=body[:-1] + b"]", headers=headers)
        self.fake.scripts[f"/v2/{repo}/manifests/latest"] = Script(body=body, headers=headers)
        for ref in (digest, "latest", digest):
            status, headers_got, got = self.get(f"/v2/fake/{repo}/manifests/{ref}", {"Accept": OCI_INDEX})
            self.assertEqual((status, headers_got["content-type"]), (502, "application/json; charset=utf-8"), ref)
            self.assertIn("sha256", errors_of(got)[0]["message"])
        self.assertEqual(self.fake.count("GET", f"/v2/{repo}/manifests/{digest}"), 3)

    # -- 4. rate limits ---------------------------------------------------------------

    def test_rate_limit_backs_off(self) -> None:
        """
        An upstream 429: the client gets it with its Retry-After and its
        words; for that long nothing goes upstream (a miss is a 429 with the
        time left), cached answers are served and a stale tag too; then the
        upstream is asked again.
        """
        repo = self.new_repo("limited")
        cached = os.urandom(1000)
        self.fake.scripts[f"/v2/{repo}/blobs/{digest_of(cached)}"] = Script(body=cached)
        body, _ = self.scripted_manifest(repo)
        self.assertEqual(self.get(f"/limited/{repo}/blobs/{digest_of(cached)}")[2], cached)
        self.assertEqual(self.get(f"/limited/{repo}/manifests/latest", {"Accept": OCI_INDEX})[2], body)
        warmed = time.monotonic()
        limited = os.urandom(1000)
        limited_path = f"/v2/{repo}/blobs/{digest_of(limited)}"
        refusal = json.dumps({"errors": [{"code": "TOOMANYREQUESTS", "message": "slow down",
                                          "detail": {"limit": 1}}]}).encode()
        self.fake.scripts[limited_path] = Script(status=429, body=refusal, headers={
            "Retry-After": "3", "Content-Type": "application/json"})
        up_status, up_headers, up_body = request("GET", self.fake.base + limited_path)
        status, headers, got = self.get(f"/limited/{repo}/blobs/{digest_of(limited)}")
        limited_at = time.monotonic()
        self.assertEqual((status, headers.get("retry-after"), errors_of(got)),
                         (up_status, up_headers["retry-after"], errors_of(up_body)))
        before = len(self.fake.requests)
        other = digest_of(os.urandom(10))
        status, headers, got = self.get(f"/limited/{repo}/blobs/{other}")
        self.assertEqual((status, errors_of(got)[0]["code"]), (429, "TOOMANYREQUESTS"))
        self.assertIn(headers["retry-after"], ("1", "2", "3"))
        self.assertEqual(self.get(f"/limited/{repo}/blobs/{digest_of(cached)}")[:3:2], (200, cached))
        until(warmed + SHORT_TTL + 0.1)
        self.assertLess(time.monotonic(), limited_at + 3, "the test was too slow to see the back-off")
        status, headers, got = self.get(f"/limited/{repo}/manifests/latest", {"Accept": OCI_INDEX})
        self.assertEqual((status, got, headers["x-cache"]), (200, body, "STALE"))
        self.assertEqual(len(self.fake.requests), before, "a request went upstream during the back-off")
        # (the other backends of the same upstream are not held back)
        self.assertEqual(self.get(f"/fake/{repo}/blobs/{digest_of(cached)}")[0], 200)
        self.fake.scripts[limited_path] = Script(body=limited)
        deadline = limited_at + 3 + 5
        while self.get(f"/limited/{repo}/blobs/{digest_of(limited)}")[0] == 429:
            self.assertLess(time.monotonic(), deadline, "the back-off never ended")
            time.sleep(0.1)
        self.assertGreaterEqual(time.monotonic(), limited_at + 2)

    # -- 5. the upstream refuses the vault ------------------------------------------------

    def test_upstream_refusal_is_a_502_naming_it(self) -> None:
        """
        An upstream 401 (the realm refused the backend's password) or 403 is
        the vault's misconfiguration, which no client credentials can fix:
        502 with UNAUTHORIZED / DENIED, the detail naming the upstream and
        keeping its errors; never a 401 without WWW-Authenticate.
        """
        regauth = support.upstream_url("regauth")
        up_status, up_headers, _ = request("GET", f"{regauth}/v2/library/hello/manifests/latest")
        self.assertEqual((up_status, "www-authenticate" in up_headers), (401, True))
        status, headers, body = self.get("/v2/badcreds/library/hello/manifests/latest", {"Accept": OCI_INDEX})
        error = errors_of(body)[0]
        self.assertEqual((status, error["code"], error["detail"]["upstream"], error["detail"]["status"]),
                         (502, "UNAUTHORIZED", host_of(regauth), 401))
        self.assertNotIn("www-authenticate", headers)
        repo = self.new_repo("denied")
        denied = json.dumps({"errors": [{"code": "DENIED", "message": "requested access to the resource is denied",
                                         "detail": None}]}).encode()
        blob = digest_of(os.urandom(10))
        self.fake.scripts[f"/v2/{repo}/blobs/{blob}"] = Script(status=403, body=denied, headers={
            "Content-Type": "application/json"})
        self.fake.scripts[f"/v2/{repo}/manifests/latest"] = Script(status=403, body=denied, headers={
            "Content-Type": "application/json"})
        up_status, _, up_body = request("GET", f"{self.fake.base}/v2/{repo}/blobs/{blob}")
        self.assertEqual(up_status, 403)
        status, _, body = self.get(f"/v2/fake/{repo}/blobs/{blob}")
        error = errors_of(body)[0]
        self.assertEqual((status, error["code"], error["detail"]["upstream"], error["detail"]["errors"]),
                         (502, "DENIED", host_of(self.fake.base), errors_of(up_body)))
        status, _, body = self.get(f"/v2/fake/{repo}/manifests/latest")
        self.assertEqual((status, errors_of(body)[0]["code"]), (502, "DENIED"))

    # -- 6. stale answers warn in the spec's form --------------------------------------------

    def test_stale_answers_warn_with_299(self) -> None:
        """A stale answer (the upstream fails after tag_ttl) says X-Cache: STALE and Warning: 299 - "…" (the spec's §Warnings: code 299, agent -, no date): a tag's manifest, a tag list, a referrers list."""
        repo = self.new_repo("stale")
        body, digest = self.scripted_manifest(repo)
        tags = json.dumps({"name": repo, "tags": ["latest"]}).encode()
        referrers = json.dumps({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": []}).encode()
        self.fake.scripts[f"/v2/{repo}/tags/list"] = Script(body=tags, headers={"Content-Type": "application/json"})
        self.fake.scripts[f"/v2/{repo}/referrers/{digest}"] = Script(body=referrers, headers={"Content-Type": OCI_INDEX})
        paths = [f"/v2/fakeshort/{repo}/manifests/latest", f"/v2/fakeshort/{repo}/tags/list",
                 f"/v2/fakeshort/{repo}/referrers/{digest}"]
        fresh = [self.get(path, {"Accept": OCI_INDEX}) for path in paths]
        warmed = time.monotonic()
        for path in (f"/v2/{repo}/manifests/latest", f"/v2/{repo}/tags/list", f"/v2/{repo}/referrers/{digest}"):
            self.fake.scripts[path] = Script(status=503)
        until(warmed + SHORT_TTL + 0.1)
        for path, (_, _, was) in zip(paths, fresh):
            status, headers, got = self.get(path, {"Accept": OCI_INDEX})
            self.assertEqual((status, got, headers["x-cache"]), (200, was, "STALE"), path)
            self.assertTrue(SPEC_WARNING.fullmatch(headers["warning"]), headers["warning"])

    # -- 7. tag lists ----------------------------------------------------------------------

    def test_tag_list_name_and_pages(self) -> None:
        """
        A tag list names the repository as the client asked for it (with
        the prefix below /v2/), lists the upstream's tags, and holds to n and
        last as the spec says even though distribution 2.8 ignores both:
        n=0 is an empty list without Link, n=1 one tag and a Link to the
        next page, which ends the list.
        """
        up = support.upstream_url("reg")
        upstream = json.loads(request("GET", f"{up}/v2/library/hello/tags/list")[2])
        self.assertEqual(upstream["tags"], ["latest", "v2"])
        for path, name in (("/v2/dockerhub/library/hello/tags/list", "dockerhub/library/hello"),
                           ("/dockerhub/library/hello/tags/list", "library/hello"),
                           ("/v2/library/hello/tags/list", "library/hello")):
            status, headers, body = self.get(path)
            self.assertEqual((status, json.loads(body)), (200, {"name": name, "tags": upstream["tags"]}), path)
        self.assertEqual(len(json.loads(request("GET", f"{up}/v2/library/hello/tags/list?n=0")[2])["tags"]), 2)
        status, headers, body = self.get("/v2/dockerhub/library/hello/tags/list?n=0")
        self.assertEqual((status, json.loads(body), headers.get("link")),
                         (200, {"name": "dockerhub/library/hello", "tags": []}, None))
        status, headers, body = self.get("/v2/dockerhub/library/hello/tags/list?n=1")
        self.assertEqual((status, json.loads(body)["tags"]), (200, ["latest"]))
        link = re.fullmatch(r'<([^>]+)>; rel="next"', headers["link"])
        self.assertTrue(link and link.group(1).startswith("/v2/dockerhub/library/hello/tags/list?"), headers["link"])
        status, headers, body = self.get(link.group(1))
        self.assertEqual((status, json.loads(body)["tags"], headers.get("link")), (200, ["v2"], None))
        status, _, body = self.get("/dockerhub/library/hello/tags/list?last=latest")
        self.assertEqual(json.loads(body)["tags"], ["v2"])

    # -- 8. error codes: the spec's list, the upstream's words -------------------------------

    def test_upstream_errors_keep_their_words(self) -> None:
        """An upstream 404 reaches the client with its own code, message and detail (not 'upstream answered 404'); HEADs get the same status."""
        up = support.upstream_url("reg")
        zero = "sha256:" + "0" * 64
        for path in ("library/nope/manifests/latest", "library/hello/manifests/nope",
                     f"library/hello/manifests/{zero}", f"library/hello/blobs/{zero}", "library/nope/tags/list"):
            up_status, _, up_body = request("GET", f"{up}/v2/{path}")
            status, headers, body = self.get(f"/v2/dockerhub/{path}", {"Accept": SKOPEO_ACCEPT})
            self.assertEqual((status, errors_of(body)), (up_status, errors_of(up_body)), path)
            if "tags" not in path:
                self.assertEqual(self.get(f"/v2/dockerhub/{path}", {"Accept": SKOPEO_ACCEPT}, "HEAD")[0],
                                 request("HEAD", f"{up}/v2/{path}")[0], path)

    def test_own_errors_use_spec_codes(self) -> None:
        """What the vault refuses itself uses only the spec's codes: a bad tag is 400 MANIFEST_INVALID (distribution: a text 404), a bad n 400 UNSUPPORTED, an upload's status 404 BLOB_UPLOAD_UNKNOWN, a push 405 UNSUPPORTED."""
        cases = [("GET", "/v2/dockerhub/library/hello/manifests/-x", 400, "MANIFEST_INVALID"),
                 ("GET", "/v2/dockerhub/library/hello/tags/list?n=x", 400, "UNSUPPORTED"),
                 ("GET", "/v2/dockerhub/library/hello/blobs/uploads/abc", 404, "BLOB_UPLOAD_UNKNOWN"),
                 ("POST", "/v2/dockerhub/library/hello/blobs/uploads/", 405, "UNSUPPORTED")]
        for method, path, status, code in cases:
            got, _, body = self.get(path, method=method)
            self.assertEqual((got, errors_of(body)[0]["code"]), (status, code), path)
