"""
The core's rules through the real daemon and real sockets, each next to
what the upstream itself answers: the headers of content-addressed files,
ranged pass-through of uncached files, a client that asks for a refresh, an
upstream that hangs or fails, and a small file that fails its digest.

Upstreams: the test kit's real ones (pypiserver, nginx, distribution) and
scripted ones (L{tests.fakeupstream}) for what real servers never do (stall,
lie about a file's bytes).
"""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import re
import subprocess
import sys
import threading
import time
import uuid

from twisted.trial.unittest import TestCase

from tests import support
from tests.fakeupstream import FakeUpstream, Script
from tests.support import Daemon, request

OCI_ACCEPT = ", ".join(["application/vnd.oci.image.index.v1+json", "application/vnd.oci.image.manifest.v1+json",
                        "application/vnd.docker.distribution.manifest.v2+json",
                        "application/vnd.docker.distribution.manifest.list.v2+json"])
#: What content-addressed files carry (registries send max-age=31536000 for blobs).
IMMUTABLE = "max-age=31536000, immutable"


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def pypi_file(project: str) -> tuple[str, str]:
    """(upstream path, sha256) of a file pypiserver lists for C{project}."""
    page = request("GET", support.upstream_url("pypi") + f"/simple/{project}/")[2]
    m = re.search(rb'href="([^"#]+)#sha256=([0-9a-f]{64})"', page)
    assert m, page[:300]
    return m.group(1).decode(), m.group(2).decode()


class _KitDaemon:
    """One daemon in front of the kit's pypiserver, nginx and registry, shared by the tests that only read."""

    def __init__(self) -> None:
        self.pypi = support.upstream_url("pypi")
        self.files = support.upstream_url("files")
        self.reg = support.upstream_url("reg")
        self.daemon = Daemon([
            {"type": "pypi", "config": {"index_url": self.pypi + "/simple/"}},
            {"type": "http", "config": {"prefix": "/files/", "base_url": self.files}},
            {"type": "registry", "config": {"prefix": "/hub/", "registry_url": self.reg}},
        ]).start()

    def close(self) -> None:
        self.daemon.cleanup()


class FileHeaderTests(TestCase):
    """Issue 8, item 16: what a file's answer says about it, on a miss, a hit and a HEAD."""

    def setUp(self) -> None:
        kit = support.shared_fixture(_KitDaemon)
        self.kit, self.daemon = kit, kit.daemon

    def answers(self, vault_path: str, upstream_url: str, headers: dict[str, str] | None = None,
                key: str | None = None) -> tuple[dict[str, str], list[dict[str, str]]]:
        """The upstream's headers, and the vault's for a GET miss, a GET hit (once stored) and a HEAD hit."""
        up = request("GET", upstream_url, headers)
        self.assertEqual(up[0], 200)
        miss = request("GET", self.daemon.url(vault_path), headers)
        self.assertEqual((miss[0], miss[2], miss[1]["x-cache"]), (200, up[2], "MISS"))
        if key is not None:
            self.daemon.wait_stored(key)
        hit = request("GET", self.daemon.url(vault_path), headers)
        head = request("HEAD", self.daemon.url(vault_path), headers)
        self.assertEqual((hit[0], hit[1]["x-cache"], head[0], head[1]["x-cache"]), (200, "HIT", 200, "HIT"))
        return up[1], [miss[1], hit[1], head[1]]

    def test_pypi_file_last_modified_and_immutable(self) -> None:
        """
        A PyPI file (by sha256): the upstream's Last-Modified on a miss, a hit
        and a HEAD, and If-Modified-Since against it is a 304; every answer
        says it never changes (Cache-Control: immutable, as files.pythonhosted.org does).
        """
        path, digest = pypi_file("attrs")
        name = path.rpartition("/")[2]
        up, vault = self.answers(f"/pypi/+f/attrs/{digest}/{name}", self.kit.pypi + path, key=f"pypi-file:{digest}")
        self.assertIn("last-modified", up)
        for answer in vault:
            self.assertEqual((answer.get("last-modified"), answer.get("cache-control")),
                             (up["last-modified"], IMMUTABLE), answer)
        status, _, _ = request("GET", self.daemon.url(f"/pypi/+f/attrs/{digest}/{name}"),
                               {"If-Modified-Since": up["last-modified"]})
        self.assertEqual(status, 304)

    def test_registry_blob_and_manifest(self) -> None:
        """
        A registry blob and a manifest by digest: the upstream sends no
        Last-Modified, and neither does the vault (never its own store time);
        both are immutable (distribution sends max-age=31536000 for blobs).
        """
        index = json.loads(request("GET", self.kit.reg + "/v2/library/hello/manifests/latest",
                                   {"Accept": OCI_ACCEPT})[2])
        manifest = index["manifests"][0]["digest"]
        layers = json.loads(request("GET", self.kit.reg + f"/v2/library/hello/manifests/{manifest}",
                                    {"Accept": OCI_ACCEPT})[2])["layers"]
        blob = layers[-1]["digest"]
        keys = {f"library/hello/blobs/{blob}": f"registry {self.kit.reg} blob {blob}",
                f"library/hello/manifests/{manifest}": f"registry {self.kit.reg} library/hello manifest {manifest}"}
        for path, key in keys.items():
            with self.subTest(path=path):
                up, vault = self.answers(f"/v2/hub/{path}", f"{self.kit.reg}/v2/{path}", {"Accept": OCI_ACCEPT}, key)
                self.assertNotIn("last-modified", up)
                for answer in vault:
                    self.assertEqual((answer.get("last-modified"), answer.get("cache-control")),
                                     (None, IMMUTABLE), answer)
        for _ in range(2):  # (a miss, then from the stored manifest): a tag may move
            status, headers, _ = request("GET", self.daemon.url("/v2/hub/library/hello/manifests/latest"),
                                         {"Accept": OCI_ACCEPT})
            self.assertEqual((status, headers.get("cache-control")), (200, None))

    def test_http_file_is_not_immutable(self) -> None:
        """A file of the http backend is not content-addressed: its upstream's Last-Modified, no immutable."""
        name, _ = support.new_upstream_file("small.bin")
        self.addCleanup(support.drop_upstream_file, name)
        up, vault = self.answers(f"/files/{name}", f"{self.kit.files}/{name}", key=f"{self.kit.files}/{name}")
        for answer in vault:
            self.assertEqual((answer.get("last-modified"), answer.get("cache-control")),
                             (up["last-modified"], None), answer)


def curl(url: str, *args: str) -> tuple[int, str, bytes]:
    """curl's exit status, the status it saw (``000``: none) and the body."""
    p = subprocess.run(["curl", "-s", "--noproxy", "*", "-o", "-", "-w", "\n%{http_code}", *args, url],
                       capture_output=True, timeout=60)
    body, _, status = p.stdout.rpartition(b"\n")
    return p.returncode, status.decode(), body


class VerifyBeforeSendTests(TestCase):
    """
    Issue 8, item 15: a digest-checked file no larger than
    C{verify_before_send} is held until verified, so bytes that fail their
    digest are a clean 502 with the reason; a larger one streams, and is cut.
    """

    def setUp(self) -> None:
        self.fake = FakeUpstream()
        self.addCleanup(self.fake.close)
        self.daemon = Daemon([
            {"type": "pypi", "config": {"index_url": self.fake.base + "/simple/"}},
            {"type": "pypi", "config": {"prefix": "/streamed/", "index_url": self.fake.base + "/simple/",
                                        "verify_before_send": 0}},
            {"type": "registry", "config": {"prefix": "/reg/", "registry_url": self.fake.base}},
        ])
        self.addCleanup(self.daemon.cleanup)
        self.daemon.start()

    def liar(self, size: int) -> str:
        """A file of C{size} bytes whose index gives the sha256 of other bytes: its path below the prefix."""
        good = os.urandom(size)
        bad = good[:-1] + bytes([good[-1] ^ 1])
        name = f"liar-{uuid.uuid4().hex[:8]}-py3-none-any.whl"
        self.fake.scripts[f"/files/{name}"] = Script(body=bad, chunk=65536)
        self._links = {**getattr(self, "_links", {}), f"/files/{name}": sha256(good)}
        links = "".join(f'<a href="../../files/{p.rpartition("/")[2]}#sha256={h}">{p.rpartition("/")[2]}</a>\n'
                        for p, h in self._links.items())
        self.fake.scripts["/simple/liar/"] = Script(body=links.encode(), headers={"Content-Type": "text/html"})
        return f"+f/liar/{sha256(good)}/{name}"

    def test_small_file_failing_its_digest_is_a_502(self) -> None:
        """curl sees a 502 saying why (not a reset connection); nothing is stored: the next request asks again."""
        path = self.liar(200_000)
        for attempt in (1, 2):
            code, status, body = curl(self.daemon.url(f"/pypi/{path}"))
            self.assertEqual((code, status), (0, "502"), body[:300])
            self.assertIn(b"expected", body)
            self.assertEqual(self.fake.count("GET", "/files/" + path.rpartition("/")[2]), attempt)

    def test_registry_blob_failing_its_digest_is_a_json_502(self) -> None:
        """A registry blob: the registry's JSON error, with the reason."""
        good = os.urandom(50_000)
        digest = "sha256:" + sha256(good)
        self.fake.scripts[f"/v2/liar/blobs/{digest}"] = Script(body=good[::-1])
        status, headers, body = request("GET", self.daemon.url(f"/v2/reg/liar/blobs/{digest}"))
        self.assertEqual((status, headers["content-type"].split(";")[0]), (502, "application/json"))
        self.assertIn("expected", json.loads(body)["errors"][0]["message"])

    def test_larger_file_streams_and_is_cut(self) -> None:
        """
        Beyond verify_before_send (0 here; 8 MiB by default), the file streams
        as it arrives: a mismatch can only cut the connection (curl: status
        200, a partial transfer).
        """
        path = self.liar(1_000_000)
        code, status, body = curl(self.daemon.url(f"/streamed/{path}"))
        # (18: a partial transfer; 56: the reset came before curl read all that was sent)
        self.assertEqual((code in (18, 56), status), (True, "200"), code)
        self.assertLess(len(body), 1_000_000)


class RangePassThroughTests(TestCase):
    """
    Issue 8, item 10: a Range on an uncached file is passed to the upstream
    as a ranged request and relayed (X-Cache: PASS, not stored), unless the
    rule says a full download serves it better.
    """

    def setUp(self) -> None:
        self.pypi = support.upstream_url("pypi")
        self.files = support.upstream_url("files")
        self.daemon = Daemon([
            {"type": "pypi", "config": {"index_url": self.pypi + "/simple/"}},
            {"type": "http", "config": {"prefix": "/files/", "base_url": self.files}},
        ])
        self.addCleanup(self.daemon.cleanup)
        self.daemon.start()

    def test_cold_range_of_a_pypi_file_is_a_ranged_upstream_request(self) -> None:
        """
        A cold ``Range: bytes=1000-1999`` (and a suffix) of the largest wheel:
        the upstream's bytes with its 206 and Content-Range, the upstream asked
        for those bytes only (its log: 206 of 1000 bytes, no 200), nothing
        stored (asked again: passed through again).
        """
        path, digest = pypi_file("setuptools")
        name = path.rpartition("/")[2]
        vault_path = f"/pypi/+f/setuptools/{digest}/{name}"
        log = support.AccessLog("pypi")
        for spec in ("bytes=1000-1999", "bytes=-16384", "bytes=1000-1999"):
            with self.subTest(spec=spec):
                up = request("GET", self.pypi + path, {"Range": spec})
                got = request("GET", self.daemon.url(vault_path), {"Range": spec})
                self.assertEqual((got[0], got[2], got[1]["content-range"], got[1]["x-cache"]),
                                 (206, up[2], up[1]["content-range"], "PASS"))
                self.assertEqual(got[1]["content-length"], str(len(up[2])))
        # (three ranges asked by the test, three by the vault: each a 206 of the range's length)
        self.assertEqual(sorted(r[2:] for r in log.wait(re.escape(path), 6)),
                         [(206, "1000")] * 4 + [(206, "16384")] * 2)
        self.assertIsNone(self.stored(f"pypi-file:{digest}"))

    def test_whole_file_ranges_start_a_download(self) -> None:
        """``bytes=0-`` asks for the whole file: it is downloaded, served (206) and stored, then a hit."""
        name, _ = support.new_upstream_file("medium.bin")
        self.addCleanup(support.drop_upstream_file, name)
        with open(os.path.join(support.upstream_dir("files"), "www", name), "rb") as f:
            content = f.read()
        status, headers, body = request("GET", self.daemon.url(f"/files/{name}"), {"Range": "bytes=0-"})
        self.assertEqual((status, headers["x-cache"], headers["content-range"], body),
                         (206, "MISS", f"bytes 0-{len(content) - 1}/{len(content)}", content))
        self.daemon.wait_stored(f"{self.files}/{name}")
        self.daemon.wait_log(f"stored /files/{name}")
        status, headers, body = request("GET", self.daemon.url(f"/files/{name}"), {"Range": "bytes=10-19"})
        self.assertEqual((status, headers["x-cache"], body), (206, "HIT", content[10:20]))

    def test_range_joins_a_download_in_flight(self) -> None:
        """A Range while the file downloads is answered from that download: no second upstream request."""
        name, _ = support.new_upstream_file("medium.bin")
        self.addCleanup(support.drop_upstream_file, name)
        log = support.AccessLog("files")
        stream = http.client.HTTPConnection("127.0.0.1", self.daemon.port, timeout=30)
        stream.request("GET", f"/files/{name}")
        response = stream.getresponse()
        response.read(1000)
        status, headers, body = request("GET", self.daemon.url(f"/files/{name}"), {"Range": "bytes=100-199"})
        response.read()
        stream.close()
        self.assertEqual((status, len(body)), (206, 100))
        self.assertIn(headers["x-cache"], ("MISS", "HIT"))
        self.assertEqual([r[2] for r in log.wait(re.escape(name), 1)], [200])

    def test_uv_compile_reads_ranges(self) -> None:
        """
        A cold ``uv pip compile`` (no PEP 658 metadata upstream: uv reads
        each wheel's metadata with HEAD and a ranged GET) through the vault:
        the upstream sends the ranges, never a whole wheel.
        """
        requirements = os.path.abspath(self.mktemp())
        with open(requirements, "w") as f:
            f.write("requests\n")
        log = support.AccessLog("pypi")
        uv = os.path.join(os.path.dirname(sys.executable), "uv")
        p = subprocess.run([uv, "pip", "compile", "--no-cache", "-q", "--index-url", self.daemon.url("/pypi/"),
                            requirements], env=support.pip_env(), capture_output=True, text=True, timeout=120)
        self.assertEqual(p.returncode, 0, p.stderr[-2000:])
        for pin in ("requests==2.32.3", "urllib3==2.2.3", "idna==3.8", "certifi==2024.8.30"):
            self.assertIn(pin, p.stdout)
        wheels = log.requests(r"^/packages/.*\.whl$")
        gets = [(status, length) for method, _, status, length in wheels if method == "GET"]
        self.assertTrue(gets)
        self.assertEqual({status for status, _ in gets}, {206}, wheels)

    def stored(self, key: str) -> bool | None:
        kh = hashlib.sha256(key.encode()).hexdigest()
        return True if os.path.exists(os.path.join(self.daemon.cache_dir, "data", kh[:2], kh + ".json")) else None


class ClientRefreshTests(TestCase):
    """
    Issue 8, item 13: a client's ``Cache-Control: no-cache`` or ``max-age=0``
    (``Pragma: no-cache`` from an HTTP/1.0 client) makes the vault revalidate
    a mutable document with the upstream before answering; immutable files
    stay answered from the cache.
    """

    def setUp(self) -> None:
        self.pypi = support.upstream_url("pypi")
        self.packages = os.path.join(support.upstream_dir("pypi"), "packages")
        self.project = f"refresh{uuid.uuid4().hex[:8]}"
        self.daemon = Daemon([{"type": "pypi", "config": {"index_url": self.pypi + "/simple/", "index_ttl": "1h"}}])
        self.addCleanup(self.daemon.cleanup)
        self.daemon.start()

    def publish(self, version: str) -> str:
        """A new release of the test's project in pypiserver's directory (served at once): its file name."""
        from tests.test_pypi_clients import make_wheel
        name, wheel, _ = make_wheel(self.project, version)
        path = os.path.join(self.packages, name)
        with open(path, "wb") as f:
            f.write(wheel)
        self.addCleanup(os.unlink, path)
        return name

    def page(self, headers: dict[str, str] | None = None) -> tuple[str, bytes]:
        status, got, body = request("GET", self.daemon.url(f"/pypi/{self.project}/"),
                                    {"Accept": "text/html", **(headers or {})})
        self.assertEqual(status, 200, body[:200])
        return got["x-cache"], body

    def test_refresh_sees_a_new_release(self) -> None:
        """
        A page cached (index_ttl 1h), then a release published upstream: a
        plain request still gets the cached page; each way of asking for a
        refresh gets the new one.
        """
        first = self.publish("1.0")
        self.assertEqual(self.page()[0], "MISS")
        for n, headers in enumerate(({"Cache-Control": "no-cache"}, {"Cache-Control": "max-age=0"},
                                     {"Pragma": "no-cache"}, {"Cache-Control": "max-stale=10, No-Cache"}), 2):
            with self.subTest(headers=headers):
                release = self.publish(f"{n}.0")
                status, body = self.page()
                self.assertEqual(status, "HIT")
                self.assertNotIn(release.encode(), body)
                status, body = self.page(headers)
                self.assertIn(release.encode(), body)
                self.assertIn(first.encode(), body)
                self.assertIn(release.encode(), self.page()[1])  # (and kept for the next client)
        self.assertNotIn(b"9.0", self.page({"Cache-Control": "max-age=60"})[1])

    def test_pip_refresh_package(self) -> None:
        """pip ``--refresh-package`` (it sends max-age=0) finds a release the cached page does not list; without it pip does not."""
        self.publish("1.0")
        self.page()
        self.publish("2.0")
        dest = os.path.abspath(self.mktemp())
        base = [sys.executable, "-m", "pip", "--isolated", "download", "--no-cache-dir", "--no-deps", "-d", dest,
                "--retries", "0", "--index-url", self.daemon.url("/pypi/"), f"{self.project}==2.0"]
        p = subprocess.run(base, env=support.pip_env(), capture_output=True, text=True, timeout=120)
        self.assertNotEqual(p.returncode, 0, p.stdout)
        p = subprocess.run(base + ["--refresh-package", self.project], env=support.pip_env(),
                           capture_output=True, text=True, timeout=120)
        self.assertEqual(p.returncode, 0, p.stdout + p.stderr)
        self.assertEqual(os.listdir(dest), [f"{self.project}-2.0-py3-none-any.whl"])

    def test_files_stay_cached(self) -> None:
        """A file (immutable, by its sha256) asked with no-cache is a hit: the upstream is not asked."""
        name = self.publish("1.0")
        with open(os.path.join(self.packages, name), "rb") as f:
            digest = sha256(f.read())
        path = f"/pypi/+f/{self.project}/{digest}/{name}"
        self.assertEqual(request("GET", self.daemon.url(path))[0], 200)
        self.daemon.wait_stored(f"pypi-file:{digest}")
        self.daemon.wait_log(f"stored /pypi/+f/{name}")
        before = support.hits("pypi", re.escape(name))
        status, headers, _ = request("GET", self.daemon.url(path), {"Cache-Control": "no-cache"})
        self.assertEqual((status, headers["x-cache"]), (200, "HIT"))
        self.assertEqual(support.hits("pypi", re.escape(name)), before)


class ScriptedRefreshTests(TestCase):
    """Item 13 for the registry (a tag, a tag list) and the http backend (a file with a ttl), against a scripted upstream."""

    def setUp(self) -> None:
        self.fake = FakeUpstream()
        self.addCleanup(self.fake.close)
        self.daemon = Daemon([
            {"type": "registry", "config": {"prefix": "/reg/", "registry_url": self.fake.base, "tag_ttl": "1h"}},
            {"type": "http", "config": {"prefix": "/files/", "base_url": self.fake.base, "ttl": "1h"}},
        ])
        self.addCleanup(self.daemon.cleanup)
        self.daemon.start()

    def tag(self, n: int) -> bytes:
        """Point the tag ``latest`` of repository ``r`` at a new manifest: its bytes."""
        body = json.dumps({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json",
                           "manifests": [], "annotations": {"n": str(n)}}).encode()
        digest = "sha256:" + sha256(body)
        headers = {"Content-Type": "application/vnd.oci.image.index.v1+json", "Docker-Content-Digest": digest}
        self.fake.scripts["/v2/r/manifests/latest"] = Script(body=body, headers=headers)
        self.fake.scripts[f"/v2/r/manifests/{digest}"] = Script(body=body, headers=headers)
        self.fake.scripts["/v2/r/tags/list"] = Script(body=json.dumps({"name": "r", "tags": [f"v{n}"]}).encode(),
                                                      headers={"Content-Type": "application/json"})
        self.fake.scripts["/doc.txt"] = Script(body=b"version %d" % n)
        return body

    def test_refresh(self) -> None:
        """A tag, a tag list and a file with a ttl: the cached answer, until the client asks for a refresh."""
        first = self.tag(1)
        paths = {"/v2/reg/r/manifests/latest": first, "/v2/reg/r/tags/list": b'"v1"', "/files/doc.txt": b"version 1"}
        for path, body in paths.items():
            self.assertIn(body, request("GET", self.daemon.url(path), {"Accept": OCI_ACCEPT})[2])
        second = self.tag(2)
        updated = {"/v2/reg/r/manifests/latest": second, "/v2/reg/r/tags/list": b'"v2"', "/files/doc.txt": b"version 2"}
        for path, body in updated.items():
            with self.subTest(path=path):
                status, headers, got = request("GET", self.daemon.url(path), {"Accept": OCI_ACCEPT})
                self.assertIn(paths[path], got)
                status, headers, got = request("GET", self.daemon.url(path),
                                               {"Accept": OCI_ACCEPT, "Cache-Control": "no-cache"})
                self.assertEqual(status, 200)
                self.assertIn(body, got)
                label = path.replace("/v2/reg/", "/reg/")
                if not path.endswith("/latest"):  # (a document: its new copy is committed after it was sent)
                    deadline = time.monotonic() + 10
                    while self.daemon.log().count(f"stored {label}:") < 2 and time.monotonic() < deadline:
                        time.sleep(0.02)
                self.assertIn(body, request("GET", self.daemon.url(path), {"Accept": OCI_ACCEPT})[2])


class HangingUpstreamTests(TestCase):
    """
    Issue 8, item 14: after an upstream failed (here: it stopped answering),
    a stale copy is answered at once and the upstream is left alone for a
    while; a file the stale page lists is fetched without waiting for the page.
    """

    def setUp(self) -> None:
        self.index = FakeUpstream()
        self.files = FakeUpstream()  # (the files' own host, as files.pythonhosted.org is pypi.org's)
        self.hang = threading.Event()
        self.addCleanup(self.files.close)
        self.addCleanup(self.index.close)
        self.addCleanup(self.hang.set)
        # index_ttl 0: the page is stale as soon as it is stored, so every request revalidates it.
        self.daemon = Daemon([{"type": "pypi", "config": {"index_url": self.index.base + "/simple/",
                                                          "index_ttl": 0, "timeout": 2}}])
        self.addCleanup(self.daemon.cleanup)
        self.daemon.start()

    def test_stale_at_once_after_a_timeout(self) -> None:
        """
        The index page, cached, then the index hangs: the first request waits
        for the timeout and gets the stale page; the next ones get it at once,
        the index seeing no new request (one stalled connection, five
        answers); a file and its metadata the stale page lists are fetched
        from their host meanwhile, no page revalidation waited for.
        """
        from tests.test_pypi_clients import make_wheel
        name, wheel, metadata = make_wheel("hangdemo", "1.0")
        self.files.scripts[f"/f/{name}"] = Script(body=wheel)
        self.files.scripts[f"/f/{name}.metadata"] = Script(body=metadata)
        page = (f'<a href="{self.files.base}/f/{name}#sha256={sha256(wheel)}" '
                f'data-dist-info-metadata="sha256={sha256(metadata)}">{name}</a>').encode()
        self.index.scripts["/simple/hangdemo/"] = Script(body=page, headers={"Content-Type": "text/html"})
        url = self.daemon.url("/pypi/hangdemo/")
        self.assertEqual(request("GET", url)[1]["x-cache"], "MISS")
        self.index.scripts["/simple/hangdemo/"] = Script(body=page, headers={"Content-Type": "text/html"},
                                                         hold_headers=self.hang)
        status, headers, body = request("GET", url)
        self.assertEqual((status, headers["x-cache"]), (200, "STALE"))
        self.assertEqual(self.index.count("GET", "/simple/hangdemo/"), 2)
        for _ in range(5):
            status, headers, body = request("GET", url)
            self.assertEqual((status, headers["x-cache"]), (200, "STALE"))
            self.assertIn(name.encode(), body)
        for suffix, content in (("", wheel), (".metadata", metadata)):
            status, _, got = request("GET", self.daemon.url(f"/pypi/+f/hangdemo/{sha256(wheel)}/{name}{suffix}"))
            self.assertEqual((status, got), (200, content))
        self.assertEqual(self.index.count("GET", "/simple/hangdemo/"), 2)
        self.assertIn("did not answer within 2 s", self.daemon.log())
