"""
Several real daemons (``twistd -n artifactvault``) sharing one bucket of a
real S3 server: the kit's Ceph RADOS Gateway (``tests/upstreams/s3-up``),
started once per run. Each test keeps its entries under a prefix of its own.

Skipped, with the reason, only when this machine cannot run Ceph.
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import http.client
import json
import os
import shutil
import subprocess
import sys
import threading
import time
import uuid

from twisted.trial.unittest import SkipTest, TestCase

from tests import support
from tests.fakeupstream import FakeUpstream, Script
from tests.support import AccessLog, Daemon, request
from tests.test_npm_clients import NPM, NpmClient, installed, to_public

#: What a client sees when the vault cuts its connection mid-body.
CUT = (http.client.IncompleteRead, ConnectionResetError)


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def kit() -> support.S3Kit:
    try:
        return support.s3_kit()
    except support.UpstreamUnavailable as e:
        raise SkipTest(str(e)) from None


class _Nodes:
    """Daemons on one bucket prefix; stopped (and their directories removed) at cleanup."""

    def __init__(self, testcase: TestCase, backends: list[dict], **store: object):
        self.s3 = kit()
        self.prefix = f"t-{uuid.uuid4().hex[:10]}"
        self.backends = backends
        self.store = store
        self.daemons: list[Daemon] = []
        testcase.addCleanup(self.cleanup)

    def start(self, count: int = 1, local: bool = False) -> list[Daemon]:
        new = []
        for _ in range(count):
            daemon = Daemon(self.backends, store=self.s3.store(self.prefix, **self.store))
            if local:
                daemon.config["store"]["local_cache"] = {"dir": os.path.join(daemon.dir, "local"),
                                                         "max_size": "1G"}
            self.daemons.append(daemon)
            daemon.start(env=self.s3.daemon_env())
            new.append(daemon)
        return new

    def cleanup(self) -> None:
        for daemon in self.daemons:
            daemon.cleanup()


def get(daemon: Daemon, path: str, headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    return request("GET", daemon.url(path), headers)


class SharedBucketTests(TestCase):
    """Two or three nodes, one bucket, the kit's files upstream (nginx)."""

    def setUp(self) -> None:
        self.files = support.upstream_url("files")
        self.nodes = _Nodes(self, [{"type": "http", "config": {"prefix": "/files/", "base_url": self.files}}],
                            part_size="5MiB", lease_ttl="3s")

    def test_miss_on_one_node_is_a_hit_on_another(self) -> None:
        """A file fetched through node A is answered by node B from the bucket: one upstream request."""
        a, b = self.nodes.start(2)
        name, digest = support.new_upstream_file("medium.bin")
        self.addCleanup(support.drop_upstream_file, name)
        log = AccessLog("files")
        status, headers, body = get(a, f"/files/{name}")
        self.assertEqual((status, headers["x-cache"], sha(body)), (200, "MISS", digest))
        status, headers, body = get(b, f"/files/{name}")
        self.assertEqual((status, headers["x-cache"], sha(body)), (200, "HIT", digest))
        status, headers, body = get(b, f"/files/{name}", {"Range": "bytes=100-199"})
        self.assertEqual((status, headers["content-range"], len(body)), (206, "bytes 100-199/10485760", 100))
        self.assertEqual(len(log.requests(name)), 1)

    def test_missing_bucket_stops_the_start(self) -> None:
        """A bucket that does not exist: the daemon stops at once with one line saying so, exit status 1."""
        s3 = kit()
        daemon = Daemon(self.nodes.backends, store=s3.store("x", bucket="no-such-bucket-here"))
        self.addCleanup(daemon.cleanup)
        daemon.write_config()
        p = subprocess.run([support.twistd(), "-n", "--pidfile=", "artifactvault", "--config", daemon.config_path],
                           env={**os.environ, **s3.daemon_env()}, capture_output=True, text=True, timeout=60,
                           cwd=daemon.dir)
        self.assertEqual(p.returncode, 1)
        self.assertIn(f"artifactvault: cannot use the S3 store: bucket no-such-bucket-here at {s3.endpoint}: 404",
                      p.stderr.strip().splitlines()[-1])

    def test_local_tier(self) -> None:
        """A node with local_cache: a hit from the bucket is copied to its disk; later hits never ask the bucket."""
        (a,) = self.nodes.start(1)
        (b,) = self.nodes.start(1, local=True)
        name, digest = support.new_upstream_file("medium.bin")
        self.addCleanup(support.drop_upstream_file, name)
        self.assertEqual(sha(get(a, f"/files/{name}")[2]), digest)
        self.assertEqual(sha(get(b, f"/files/{name}")[2]), digest)  # (from the bucket; copied meanwhile)
        self.assert_served_locally(b, name, digest)

    def test_own_download_in_local_tier(self) -> None:
        """
        A node with local_cache downloads a file itself: its copy is kept on
        its disk too (the download's temp file was removed before the local
        commit could rename it), and later hits never ask the bucket.
        """
        (b,) = self.nodes.start(1, local=True)
        name, digest = support.new_upstream_file("medium.bin")
        self.addCleanup(support.drop_upstream_file, name)
        status, headers, body = get(b, f"/files/{name}")
        self.assertEqual((status, headers["x-cache"], sha(body)), (200, "MISS", digest))
        self.assert_served_locally(b, name, digest)

    def assert_served_locally(self, b: Daemon, name: str, digest: str) -> None:
        """C{b}'s local tier gets a copy of the file; then three hits on C{b} read nothing from the bucket."""
        pattern = f"^GET /{self.nodes.s3.bucket}/{self.nodes.prefix}/data/"
        def copied() -> bool:  # (the copy's metadata: written last, after its data)
            return any(n.endswith(".json") for _, _, names in os.walk(os.path.join(b.dir, "local", "data"))
                       for n in names)
        deadline = time.monotonic() + 20
        while not copied():
            self.assertLess(time.monotonic(), deadline, "not copied to the local tier")
            time.sleep(0.05)
        before = self.nodes.s3.hits(pattern)
        for _ in range(3):
            status, headers, body = get(b, f"/files/{name}")
            self.assertEqual((status, headers["x-cache"], sha(body)), (200, "HIT", digest))
        time.sleep(0.2)  # (radosgw logs from a thread, within ~2 ms: an absence is checked after a while)
        self.assertEqual(self.nodes.s3.hits(pattern), before)

    def test_concurrent_cold_requests_over_three_nodes_are_one_download(self) -> None:
        """20 clients spread over three nodes ask for one cold large file: one upstream download, every body exact."""
        nodes = self.nodes.start(3)
        name, digest = support.new_upstream_file("large.bin")
        self.addCleanup(support.drop_upstream_file, name)
        log = AccessLog("files")

        def fetch(i: int) -> tuple[int, str]:
            status, _, body = get(nodes[i % 3], f"/files/{name}")
            return status, sha(body)

        with concurrent.futures.ThreadPoolExecutor(20) as pool:
            results = list(pool.map(fetch, range(20)))
        self.assertEqual(results, [(200, digest)] * 20)
        self.assertEqual([(m, s) for m, _, s, _ in log.requests(name)], [("GET", 200)])


class FaultTests(TestCase):
    """A node killed mid-download, the store stopped mid-download: scripted upstream, short lease."""

    SIZE = 12 * 1024 * 1024

    def setUp(self) -> None:
        self.fake = FakeUpstream()
        self.addCleanup(self.fake.close)
        self.body = os.urandom(self.SIZE)
        self.resume = threading.Event()
        self.addCleanup(self.resume.set)
        self.fake.scripts["/big.bin"] = Script(body=self.body, cut_at=6 * 1024 * 1024, resume=self.resume)
        self.nodes = _Nodes(self, [{"type": "http", "config": {"prefix": "/f/", "base_url": self.fake.base,
                                                                "idle_timeout": 60, "backoff": 0}}],
                            part_size="5MiB", lease_ttl="2s", lease_wait="60s")

    def wait_requests(self, count: int, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while self.fake.count("GET", "/big.bin") < count:
            self.assertLess(time.monotonic(), deadline, f"{count} upstream requests not made")
            time.sleep(0.02)

    def test_killed_holder_is_taken_over(self) -> None:
        """Node A dies (kill -9) mid-download holding the lease; node B serves the whole right file once it is stale."""
        a, b = self.nodes.start(2)
        first = http.client.HTTPConnection("127.0.0.1", a.port, timeout=60)
        first.request("GET", "/f/big.bin")
        self.wait_requests(1)
        a.kill9()
        first.close()
        started = time.monotonic()
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            answer = pool.submit(get, b, "/f/big.bin")
            self.wait_requests(2, timeout=30)  # (B fetches only once A's lease went stale)
            self.resume.set()
            status, headers, body = answer.result(60)
        self.assertEqual((status, sha(body)), (200, sha(self.body)))
        self.assertGreaterEqual(time.monotonic() - started, 1.0)  # (not at once: the lease was A's)
        self.assertEqual(self.fake.count("GET", "/big.bin"), 2)
        self.assertIn("took over the stale lease", b.log())

    def test_store_stopped_mid_download(self) -> None:
        """
        The store goes away mid-download: the client gets the right bytes
        or a cut connection (never a wrong byte), nothing is stored; the next
        request is a clean 503; once the store is back, the file is fetched
        and stored again.
        """
        s3 = kit()
        (a,) = self.nodes.start(1)
        self.addCleanup(s3.start)  # (back for the other tests, whatever happens here)
        conn = http.client.HTTPConnection("127.0.0.1", a.port, timeout=60)
        conn.request("GET", "/f/big.bin")
        response = conn.getresponse()
        head = response.read(1024 * 1024)
        s3.stop_gateway()
        self.resume.set()
        try:
            rest = response.read()
            got = head + rest
            self.assertEqual(sha(got), sha(self.body))  # (from the spool file: whole and right)
        except CUT:
            pass  # (a cut connection is allowed; a short or wrong body is not)
        finally:
            conn.close()
        status, _, body = get(a, "/f/big.bin")
        self.assertEqual(status, 503, body)
        self.assertIn(b"store", body)
        s3.start()
        status, headers, body = get(a, "/f/big.bin")
        self.assertEqual((status, sha(body)), (200, sha(self.body)))
        deadline = time.monotonic() + 20
        while (status := get(a, "/f/big.bin")[1].get("x-cache")) != "HIT" and time.monotonic() < deadline:
            time.sleep(0.1)
        self.assertEqual(status, "HIT")


class ClientsTests(TestCase):
    """Real clients through node A, then through node B with every upstream stopped."""

    def test_pip_skopeo_curl_through_a_then_b_without_upstreams(self) -> None:
        """
        pip install, skopeo copy and curl through node A fill the bucket;
        with the upstreams stopped (instances of their own), node B answers
        the same clients from it alone.
        """
        files = support.own_upstream("files-own")
        pypi = support.own_upstream("pypi-own")
        reg = support.own_upstream("reg-own")
        nodes = _Nodes(self, [
            {"type": "http", "config": {"prefix": "/files/", "base_url": files}},
            {"type": "pypi", "config": {"prefix": "/pypi/", "index_url": pypi + "/simple/"}},
            {"type": "registry", "config": {"prefix": "/reg/", "registry_url": reg}},
        ], lease_ttl="3s")
        a, b = nodes.start(2)
        work = os.path.abspath(self.mktemp())
        with open(os.path.join(support.upstream_dir("files-own"), "www", "SHA256SUMS")) as f:
            medium = next(line.split()[0] for line in f if line.split()[1].endswith("medium.bin"))

        def clients(daemon: Daemon, tag: str) -> None:
            host = f"127.0.0.1:{daemon.port}"
            p = subprocess.run([sys.executable, "-m", "pip", "--isolated", "install", "--no-cache-dir",
                                "--retries", "0", "--no-deps", "--target", os.path.join(work, "pip-" + tag),
                                "--index-url", f"http://{host}/pypi/", "six==1.16.0", "idna==3.8"],
                               env=support.pip_env(), capture_output=True, text=True, timeout=240)
            self.assertEqual(p.returncode, 0, p.stdout[-2000:] + p.stderr[-2000:])
            self.assertTrue(os.path.exists(os.path.join(work, "pip-" + tag, "six.py")))
            dest = os.path.join(work, "oci-" + tag)
            shutil.rmtree(dest, ignore_errors=True)
            p = subprocess.run(["skopeo", "copy", "-q", "--all", "--src-tls-verify=false",
                                f"docker://{host}/reg/library/hello:latest", f"oci:{dest}:latest"],
                               capture_output=True, text=True, timeout=120)
            self.assertEqual(p.returncode, 0, p.stderr[-2000:])
            out = os.path.join(work, "medium-" + tag)
            p = subprocess.run(["curl", "-sf", "--noproxy", "*", "-o", out, f"http://{host}/files/medium.bin"],
                               capture_output=True, text=True, timeout=120)
            self.assertEqual(p.returncode, 0, p.stderr)
            with open(out, "rb") as f:
                self.assertEqual(sha(f.read()), medium)

        clients(a, "a")
        for name in ("files-own", "pypi-own", "reg-own"):
            support.stop_upstream(name)
        clients(b, "b")
        with open(os.path.join(work, "oci-a", "index.json")) as f1, \
                open(os.path.join(work, "oci-b", "index.json")) as f2:
            self.assertEqual(f1.read(), f2.read())

    def test_npm_through_a_then_b(self) -> None:
        """
        npm install through node A stores package documents (as templates)
        and tarballs in the bucket; through node B, npm ci (a public
        lockfile) and npm install then get every tarball, and every
        document filled in with B's own address, from the bucket: nothing
        more is asked of the registry.
        """
        if NPM is None:
            raise SkipTest("npm is not installed")
        registry = support.upstream_url("npm")
        nodes = _Nodes(self, [{"type": "npm", "config": {"prefix": "/npm/", "registry_url": registry + "/"}}])
        a, b = nodes.start(2)
        log = AccessLog("npm")
        first = NpmClient(self, a.url("/npm/"))
        proj = first.project()
        first.run(proj, "install", "av-app@1.1.0")
        with open(os.path.join(proj, "package-lock.json")) as f:
            lock = json.load(f)
        log.wait(r"\.tgz$", 2)  # (verdaccio logs as it answers)
        asked = len(log.requests())
        self.assertGreaterEqual(asked, 4)  # (two documents, two tarballs)
        ci = NpmClient(self, b.url("/npm/"))
        ci_proj = ci.project(dependencies={"av-app": "1.1.0"}, lock=to_public(lock, a.url("/npm/")))
        ci.run(ci_proj, "ci")
        self.assertEqual((installed(ci_proj, "av-app"), installed(ci_proj, "@av/base")), ("1.1.0", "1.1.0"))
        again = NpmClient(self, b.url("/npm/"))
        again_proj = again.project()
        again.run(again_proj, "install", "av-app@1.1.0")
        with open(os.path.join(again_proj, "package-lock.json")) as f:
            resolved = json.load(f)["packages"]["node_modules/@av/base"]["resolved"]
        self.assertEqual(resolved, b.url("/npm/") + "@av/base/-/base-1.1.0.tgz")
        self.assertEqual(len(log.requests()), asked)
        self.assertRegex(b.log(), r"GET /npm/@av/base/-/base-1\.1\.0\.tgz 200 HIT")
