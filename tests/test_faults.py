"""
The fault campaign (issue 10): the real daemon against a scripted upstream
that misbehaves in every way the issue lists, one fault per test, each with
a well-behaved client (L{Bystander}) running through the same daemon all the
while. Every test checks three things: what the client of the fault got (an
error with a reason, or a cut connection: never a short or wrong 200), that
nothing wrong was stored (the next request, the upstream mended, gets the
right bytes; every stored entry's bytes are the upstream's), and that the
bystander was served, correctly, during the fault.

Narrower tests of some of these faults live elsewhere and are not repeated
here: tests.test_http_integration (a truncated body commits nothing, a
stalled body is logged, a leaving client, credentials and headers not
following a redirect elsewhere, kill -9 mid-download and after a commit),
tests.test_serve_wire (garbage Content-Length values, a close-delimited body
relayed and not stored), tests.test_cache_dir (a full disk with a slow
reader, at the commit), tests.test_flight (the same faults in memory).
"""

from __future__ import annotations

import base64
import hashlib
import http.client
import json
import os
import random
import socket
import threading
import time
import uuid

from twisted.trial.unittest import TestCase

from artifactvault.cache import spool as spoolmod
from tests.fakeupstream import FakeUpstream, Script
from tests.support import Daemon, download_temp_files, fake_behind_daemon, request

MIB = 1024 * 1024
#: What a client sees when the vault cuts its connection mid-body.
CUT_ERRORS = (http.client.IncompleteRead, ConnectionResetError, http.client.RemoteDisconnected)


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def outcome(port: int, path: str, timeout: float = 60.0) -> tuple[object, dict[str, str], bytes]:
    """
    A GET: (status, headers, body), or ("cut", headers, the bytes got) when
    the vault cut the connection after its headers.
    """
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("GET", path)
        try:
            response = conn.getresponse()
        except ConnectionResetError:  # (cut: a reset loses what the client had not read yet)
            return "cut", {}, b""
        headers = {k.lower(): v for k, v in response.getheaders()}
        got = b""
        try:
            while chunk := response.read(65536):
                got += chunk
        except CUT_ERRORS:
            return "cut", headers, got
        if response.length:  # (http.client reads a short close-delimited end as the end)
            return "cut", headers, got
        return response.status, headers, got
    finally:
        conn.close()


def stored_entries(cache_dir: str) -> list[tuple[dict, bytes]]:
    """Every committed entry of a disk cache: (its metadata, its data file's bytes)."""
    out = []
    data_dir = os.path.join(cache_dir, "data")
    for root, _dirs, names in os.walk(data_dir):
        for name in names:
            if name.endswith(".json"):
                with open(os.path.join(root, name), "rb") as f:
                    meta = json.loads(f.read())
                with open(os.path.join(data_dir, meta["data"]), "rb") as f:
                    out.append((meta, f.read()))
    return out


class Bystander:
    """
    A well-behaved client of the same daemon, running in a thread while a
    fault happens: over and over, a hit and a fresh miss of a good upstream,
    every body checked. L{stop} says how many requests it completed, and
    how many of them while the fault was under way (L{during}).
    """

    def __init__(self, daemon: Daemon, good: FakeUpstream):
        self.daemon, self.good = daemon, good
        self.hit_body = os.urandom(100_000)
        self.hit = f"/hit-{uuid.uuid4().hex[:8]}.bin"
        good.scripts[self.hit] = Script(body=self.hit_body)
        status, _, body = request("GET", daemon.url("/good" + self.hit))
        assert (status, body) == (200, self.hit_body), status
        daemon.wait_stored(good.base + self.hit)
        self.errors: list[str] = []
        self.done = 0
        self.window: list[int] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        n = 0
        while not self._stop.is_set():
            n += 1
            if n % 2:
                path, body = self.hit, self.hit_body
            else:
                path, body = f"/miss-{uuid.uuid4().hex[:8]}.bin", os.urandom(random.randrange(1, 400_000))
                self.good.scripts[path] = Script(body=body, chunk=16384)
            try:
                status, headers, got = outcome(self.daemon.port, "/good" + path, timeout=20)
            except OSError as e:
                self.errors.append(f"{path}: {e!r}")
                continue
            if status != 200 or sha(got) != sha(body):
                self.errors.append(f"{path}: {status} with {len(got)} bytes")
            self.done += 1

    def mark(self) -> None:
        """A fault starts or ends now."""
        self.window.append(self.done)

    @property
    def during(self) -> int:
        return sum(end - start for start, end in zip(self.window[::2], self.window[1::2]))

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(30)


class _Shared:
    """One daemon in front of a faulty and a good scripted upstream, for the whole module."""

    def __init__(self) -> None:
        self.fake = FakeUpstream()
        self.other = FakeUpstream()  # another host, for redirects
        self.good = FakeUpstream()  # the bystander's
        fast = {"timeout": 2, "idle_timeout": 2, "backoff": 0}
        self.daemon = Daemon([
            {"type": "http", "config": {"prefix": "/fake/", "base_url": self.fake.base, **fast}},
            {"type": "http", "config": {"prefix": "/flap/", "base_url": self.fake.base + "/flap",
                                        "ttl": 0, **fast}},
            {"type": "http", "config": {"prefix": "/auth/", "base_url": self.fake.base + "/auth",
                                        "username": "vaultuser", "password_env": "AV_TEST_PASSWORD", **fast}},
            {"type": "pypi", "config": {"prefix": "/pypi/", "index_url": self.fake.base + "/simple/", **fast}},
            {"type": "http", "config": {"prefix": "/good/", "base_url": self.good.base}},
        ]).start(env={"AV_TEST_PASSWORD": "s3cret-pw"})

    def close(self) -> None:
        self.daemon.cleanup()
        for fake in (self.fake, self.other, self.good):
            fake.close()


_fixture: _Shared | None = None


def _shared() -> _Shared:
    global _fixture
    if _fixture is None:
        _fixture = _Shared()
        import atexit
        atexit.register(_fixture.close)
    return _fixture


class UpstreamFaultTests(TestCase):
    """Each fault of an upstream, with a bystander served throughout."""

    def setUp(self) -> None:
        shared = _shared()
        self.daemon, self.fake, self.other, self.good = shared.daemon, shared.fake, shared.other, shared.good
        self.bystander = Bystander(self.daemon, self.good)
        self.addCleanup(self.bystander.stop)

    def fault(self, path: str, script: Script, timeout: float = 60.0) -> tuple[object, dict[str, str], bytes]:
        """GET C{path} of the daemon while its upstream follows C{script}; the bystander watched meanwhile."""
        self.fake.scripts[self.upstream_path(path)] = script
        self.bystander.mark()
        try:
            return outcome(self.daemon.port, path, timeout)
        finally:
            self.wait_bystander()
            self.bystander.mark()

    def upstream_path(self, path: str) -> str:
        prefix, _, rest = path[1:].partition("/")
        return {"fake": "/", "flap": "/flap/", "auth": "/auth/"}[prefix] + rest

    def wait_bystander(self, at_least: int = 3) -> None:
        """Let the bystander complete a few requests around the fault (a hang: during it)."""
        start = self.bystander.done
        deadline = time.monotonic() + 30
        while self.bystander.done < start + at_least and time.monotonic() < deadline:
            time.sleep(0.02)

    def check_bystander(self) -> None:
        self.bystander.stop()
        self.assertEqual(self.bystander.errors, [])
        self.assertGreaterEqual(self.bystander.during, 3 * len(self.bystander.window) // 2, "the bystander was not served during the fault")

    def check_mended(self, path: str, body: bytes) -> None:
        """With the upstream mended, the next GET gets the right bytes: nothing wrong was stored."""
        self.fake.scripts[self.upstream_path(path)] = Script(body=body)
        status, headers, got = outcome(self.daemon.port, path)
        self.assertEqual((status, sha(got)), (200, sha(body)))
        self.assertEqual(headers["x-cache"], "MISS")
        self.check_store()

    def check_store(self) -> None:
        """Every entry in the cache has the bytes its upstream serves now (scripts left mended)."""
        for meta, data in stored_entries(self.daemon.cache_dir):
            url = meta["url"]
            for fake in (self.fake, self.good, self.other):
                if url.startswith(fake.base):
                    script = fake.scripts.get(url[len(fake.base):])
                    if script is not None and not script.flap and script.status == 200 and not script.raw \
                            and script.cut_at is None and script.content_length is None \
                            and meta["key"].startswith("url:"):
                        self.assertEqual(sha(data), sha(script.body), url)

    def name(self) -> str:
        return f"f-{uuid.uuid4().hex[:10]}.bin"

    # -- the body ends wrong --------------------------------------------------

    def test_truncated_body(self) -> None:
        """Closed (a FIN) after 1 of 3 MiB: the client is cut, nothing stored."""
        data, path = os.urandom(3 * MIB), "/fake/" + self.name()
        status, _, got = self.fault(path, Script(body=data, cut_at=MIB))
        self.assertEqual(status, "cut")
        self.assertEqual(got, data[:len(got)])
        self.check_mended(path, data)
        self.check_bystander()

    def test_reset_mid_stream(self) -> None:
        """Reset (an RST) after 1 of 3 MiB: the client is cut, nothing stored."""
        data, path = os.urandom(3 * MIB), "/fake/" + self.name()
        status, _, got = self.fault(path, Script(body=data, cut_at=MIB, reset=True))
        self.assertEqual(status, "cut")
        self.assertEqual(got, data[:len(got)])
        self.check_mended(path, data)
        self.check_bystander()

    def test_body_longer_than_content_length(self) -> None:
        """
        A body longer than its Content-Length: the answer is the announced
        bytes (what HTTP says the answer is); the excess never becomes the
        answer to the next request on that connection.
        """
        data, path = os.urandom(100_000), "/fake/" + self.name()
        # (the excess is a whole HTTP answer: it must not become the answer to the next request)
        smuggled = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nEVIL!" * 3
        status, _, got = self.fault(path, Script(body=data + smuggled, content_length=b"100000"))
        self.assertEqual((status, sha(got)), (200, sha(data)))
        for _ in range(3):
            after = os.urandom(5000)
            next_path = "/fake/" + self.name()
            self.fake.scripts[self.upstream_path(next_path)] = Script(body=after)
            status, _, got = outcome(self.daemon.port, next_path)
            self.assertEqual((status, sha(got)), (200, sha(after)))
        self.check_bystander()

    def test_wrong_digest(self) -> None:
        """
        A PyPI file whose bytes are not those its index's sha256 names: a 502
        (a small file is verified before a byte is sent), or a cut for a
        large one; never stored.
        """
        for size in (100_000, 9 * MIB):
            data = os.urandom(size)
            digest = sha(data)
            project = f"p{uuid.uuid4().hex[:8]}"
            filename = f"{project}-1.0.tar.gz"
            self.fake.scripts[f"/simple/{project}/"] = Script(
                body=f'<a href="/files/{filename}#sha256={digest}">{filename}</a>'.encode(),
                headers={"Content-Type": "text/html"})
            self.assertEqual(request("GET", self.daemon.url(f"/pypi/{project}/"))[0], 200)
            path = f"/pypi/+f/{project}/{digest}/{filename}"
            self.fake.scripts[f"/files/{filename}"] = Script(body=os.urandom(size))
            self.bystander.mark()
            status, _, got = outcome(self.daemon.port, path)
            self.wait_bystander()
            self.bystander.mark()
            if size < 8 * MIB:
                self.assertEqual(status, 502)
                self.assertIn(b"expected " + digest.encode(), got)
            else:
                self.assertEqual(status, "cut")
                self.assertLess(len(got), size)  # the last byte is held back until checked
            self.fake.scripts[f"/files/{filename}"] = Script(body=data)
            status, _, got = outcome(self.daemon.port, path)
            self.assertEqual((status, sha(got)), (200, digest))
        self.check_bystander()

    def test_wrong_length(self) -> None:
        """
        A PyPI file announced (Content-Length) at another size than its index
        (PEP 700 size) gives: a 502 before any byte; never stored.
        """
        data = os.urandom(300_000)
        digest = sha(data)
        project = f"p{uuid.uuid4().hex[:8]}"
        filename = f"{project}-1.0.tar.gz"
        page = {"meta": {"api-version": "1.1"}, "name": project, "versions": ["1.0"],
                "files": [{"filename": filename, "url": f"/files/{filename}", "hashes": {"sha256": digest},
                           "size": len(data)}]}
        self.fake.scripts[f"/simple/{project}/"] = Script(
            body=json.dumps(page).encode(), headers={"Content-Type": "application/vnd.pypi.simple.v1+json"})
        self.assertEqual(request("GET", self.daemon.url(f"/pypi/{project}/"))[0], 200)
        path = f"/pypi/+f/{project}/{digest}/{filename}"
        self.fake.scripts[f"/files/{filename}"] = Script(body=data + b"more")
        self.bystander.mark()
        status, _, got = outcome(self.daemon.port, path)
        self.wait_bystander()
        self.bystander.mark()
        self.assertEqual(status, 502)
        self.assertIn(b"upstream announced 300004 bytes where 300000 were expected", got)
        self.fake.scripts[f"/files/{filename}"] = Script(body=data)
        status, _, got = outcome(self.daemon.port, path)
        self.assertEqual((status, sha(got)), (200, digest))
        self.check_bystander()

    # -- the upstream hangs --------------------------------------------------

    def test_hangs_before_headers(self) -> None:
        """No answer at all: 504 after the timeout, with a reason."""
        hold = threading.Event()
        self.addCleanup(hold.set)
        path = "/fake/" + self.name()
        status, _, got = self.fault(path, Script(body=b"x", hold_headers=hold))
        self.assertEqual(status, 504)
        self.assertIn(b"did not answer", got)
        hold.set()
        self.check_mended(path, b"mended")
        self.check_bystander()

    def test_hangs_in_headers(self) -> None:
        """The status line and a header, then nothing: 504 after the timeout."""
        hold = threading.Event()
        self.addCleanup(hold.set)
        path = "/fake/" + self.name()
        status, _, got = self.fault(path, Script(body=b"x", stall_in_headers=hold))
        self.assertEqual(status, 504)
        self.assertIn(b"did not answer", got)
        hold.set()
        self.check_mended(path, b"mended")
        self.check_bystander()

    def test_hangs_after_headers(self) -> None:
        """All the headers, then no body: the idle timeout; the client (headers sent) is cut, or told 504."""
        hold = threading.Event()
        self.addCleanup(hold.set)
        data, path = os.urandom(MIB), "/fake/" + self.name()
        status, _, got = self.fault(path, Script(body=data, cut_at=0, resume=hold))
        self.assertIn(status, ("cut", 504))
        self.assertEqual(got[:0], b"")
        hold.set()
        self.check_mended(path, data)
        self.check_bystander()

    def test_hangs_mid_body(self) -> None:
        """Half the body, then nothing: cut after the idle timeout, nothing stored."""
        hold = threading.Event()
        self.addCleanup(hold.set)
        data, path = os.urandom(2 * MIB), "/fake/" + self.name()
        status, _, got = self.fault(path, Script(body=data, cut_at=MIB, resume=hold))
        self.assertEqual(status, "cut")
        self.assertEqual(got, data[:len(got)])
        hold.set()
        self.check_mended(path, data)
        self.check_bystander()

    def test_announces_more_than_it_sends(self) -> None:
        """
        A Content-Length of 1 TiB, 1 MiB sent, then a pause: the download's
        temp file holds at most RESERVE_AHEAD of the disk past what came
        (spool.Reservation), not the length announced; cut, the file and its
        blocks go.
        """
        hold = threading.Event()
        self.addCleanup(hold.set)
        path = "/fake/" + self.name()
        self.fake.scripts[self.upstream_path(path)] = Script(
            body=os.urandom(2 * MIB), content_length=str(1 << 40).encode(), cut_at=MIB, resume=hold,
            close_after_resume=True)
        result: list[object] = []
        client = threading.Thread(target=lambda: result.append(outcome(self.daemon.port, path)), daemon=True)
        client.start()
        tmp = os.path.join(self.daemon.cache_dir, "tmp")
        deadline = time.monotonic() + 30
        held = None
        while held is None and time.monotonic() < deadline:
            for name in download_temp_files(self.daemon.cache_dir):
                try:
                    st = os.stat(os.path.join(tmp, name))
                except FileNotFoundError:
                    continue
                if st.st_size >= MIB:
                    held = (name, st.st_size, st.st_blocks * 512)
            time.sleep(0.01)
        self.assertIsNotNone(held, "the download never wrote its first MiB")
        name, size, blocks = held
        self.assertGreater(blocks, size)  # (reserved ahead of the writes)
        self.assertLessEqual(blocks, size + spoolmod.RESERVE_AHEAD + MIB)
        hold.set()
        client.join(60)
        self.assertEqual(result[0][0], "cut")
        deadline = time.monotonic() + 30  # (the bystander's downloads come and go meanwhile: this one must go)
        while os.path.exists(os.path.join(tmp, name)) and time.monotonic() < deadline:
            time.sleep(0.02)
        self.assertFalse(os.path.exists(os.path.join(tmp, name)), "the cut download's temp file was left")
        self.check_bystander()

    # -- odd answers -----------------------------------------------------------

    def test_flaps_between_200_and_5xx(self) -> None:
        """
        An upstream answering 503, 200, 500, 502, 200, 504, …, each request
        sent as soon as the one before ended: every answer is the right bytes
        (fresh, or the stored copy, stale) or an error, never a 5xx body as a
        200, and once stored, always the right bytes. Each request waits for
        the commit of a 200 before it: one sent while that commit is under
        way may still meet an honest 5xx in a narrow window (its stale copy
        looked up before the commit, its failure after). The case of a copy
        replaced while a request asked the upstream is
        tests.test_vault_extra.StaleReplacedTests.
        """
        data = os.urandom(150_000)
        name = self.name()
        self.fake.scripts["/flap/" + name] = Script(body=data, flap=(503, 200, 500, 502, 200, 504))
        self.bystander.mark()
        seen = []
        for i in range(12):
            status, headers, got = outcome(self.daemon.port, "/flap/" + name)
            seen.append((status, headers.get("x-cache")))
            if status == 200:
                self.assertEqual(sha(got), sha(data))
                if headers.get("x-cache") == "MISS":  # (a download committed: wait for its line)
                    stored = seen.count((200, "MISS"))
                    deadline = time.monotonic() + 10
                    while self.daemon.log().count(f"stored /flap/{name}") < stored and time.monotonic() < deadline:
                        time.sleep(0.01)
            else:  # (the vault's 502, or the upstream's own 5xx relayed as it is: never as a 200)
                self.assertIn(status, (502, 503, 500, 504), got)
            # (the next request as soon as this one is logged: a commit may still be under way)
            deadline = time.monotonic() + 10
            while self.daemon.log().count(f"GET /flap/{name} ") <= i and time.monotonic() < deadline:
                time.sleep(0.01)
        self.wait_bystander()
        self.bystander.mark()
        self.assertNotEqual(seen[0][0], 200)  # (the first answer was a 503: no copy to serve)
        first_ok = next(i for i, (s, _) in enumerate(seen) if s == 200)
        self.assertTrue(all(s == 200 for s, _ in seen[first_ok:]), seen)
        self.assertIn((200, "STALE"), seen)
        self.check_bystander()

    def test_redirect_loop(self) -> None:
        """A redirect to itself: 502 saying so, after a bounded number of hops."""
        name = self.name()
        status, _, got = self.fault("/fake/" + name, Script(status=302, headers={"Location": "/" + name}))
        self.assertEqual(status, 502)
        self.assertIn(b"redirected more than", got)
        self.assertLessEqual(self.fake.count("GET", "/" + name), 21)
        self.check_mended("/fake/" + name, b"mended")
        self.check_bystander()

    def test_redirect_to_another_host(self) -> None:
        """Followed, without the backend's credentials (tests.test_http_integration checks the log too)."""
        name = self.name()
        self.other.scripts["/" + name] = Script(body=b"elsewhere")
        status, _, got = self.fault("/auth/" + name, Script(
            status=302, headers={"Location": f"http://localhost:{self.other.port}/{name}"}))
        self.assertEqual((status, got), (200, b"elsewhere"))
        expected = "Basic " + base64.b64encode(b"vaultuser:s3cret-pw").decode()
        self.assertEqual([h.get("authorization") for m, p, h in self.fake.requests if p == "/auth/" + name],
                         [expected])
        self.assertEqual([h.get("authorization") for m, p, h in self.other.requests if p == "/" + name], [None])
        self.check_bystander()

    def test_garbage_instead_of_http(self) -> None:
        """Bytes that are not HTTP at all (text, binary): 502 with a reason, nothing stored."""
        for garbage in (b"SSH-2.0-OpenSSH_9.6\r\n" * 20, bytes(range(256)) * 40, b"HTTP/1.1 2OO OK\r\n\r\nxx"):
            path = "/fake/" + self.name()
            status, _, got = self.fault(path, Script(raw=garbage))
            self.assertEqual(status, 502, got)
            self.assertTrue(got.strip(), "no reason given")
            self.check_mended(path, b"mended")
        self.check_bystander()


class KillNineTests(TestCase):
    """The daemon killed with kill -9 at random moments of 20 downloads, and restarted, again and again."""

    def setUp(self) -> None:
        self.fake, self.daemon = fake_behind_daemon(self)

    def test_kill9_at_random_points_of_20_downloads(self) -> None:
        """
        Twenty downloads (64 KiB to 4 MiB, paced so that a kill lands in
        them) at once; the daemon is killed at a random moment, restarted,
        and the downloads not yet stored asked again, until all are stored.
        After every restart, and at the end: every entry in the cache has
        exactly the upstream's bytes, no temp file is left, and every answer
        any client got whole was right.
        """
        seed = int(os.environ.get("AV_TEST_SEED", time.time_ns() % 1_000_000))
        rng = random.Random(seed)
        truth: dict[str, bytes] = {}
        for i in range(20):
            body = os.urandom(rng.randrange(64 * 1024, 4 * MIB))
            truth[f"/k{i}.bin"] = body
            self.fake.scripts[f"/k{i}.bin"] = Script(body=body, chunk=64 * 1024, pace=0.03)
        wrong: list[str] = []
        kills = 0

        def get(path: str) -> None:
            try:
                status, _, got = outcome(self.daemon.port, "/fake" + path, timeout=30)
            except OSError:
                return  # (the daemon died under it)
            if status == 200 and got != truth[path]:
                wrong.append(f"{path}: {len(got)} wrong bytes")

        def stored() -> set[str]:
            out = set()
            for meta, data in stored_entries(self.daemon.cache_dir):
                path = meta["url"][len(self.fake.base):]
                if data != truth[path]:
                    wrong.append(f"{path}: stored {len(data)} wrong bytes (seed {seed})")
                out.add(path)
            return out

        while (left := sorted(set(truth) - stored())) and kills < 6:
            threads = [threading.Thread(target=get, args=(p,), daemon=True) for p in left]
            for t in threads:
                t.start()
            time.sleep(rng.uniform(0.05, 1.0))  # (the fault's moment: random by design)
            self.daemon.kill9()
            kills += 1
            for t in threads:
                t.join(30)
            self.daemon.start()
            self.assertEqual(download_temp_files(self.daemon.cache_dir), [])
        for path, body in truth.items():
            status, _, got = outcome(self.daemon.port, "/fake" + path)
            self.assertEqual((status, sha(got)), (200, sha(body)), f"{path} (seed {seed})")
            self.daemon.wait_stored(self.fake.base + path)
        self.assertEqual(stored(), set(truth))
        self.assertEqual(wrong, [], f"seed {seed}")
        self.assertGreater(kills, 0)


class FullDiskTests(TestCase):
    """
    The cache's disk fills up in the middle of downloads (a small tmpfs:
    tests.test_cache_dir.Tmpfs, skipped where none can be mounted): the
    clients still get their bytes, relayed from memory; nothing is stored;
    the error is logged and counted; hits are still served.
    """

    def setUp(self) -> None:
        from tests.test_cache_dir import full_disk_daemon
        self.disk, self.fake, self.daemon = full_disk_daemon(self)
        self.hit = os.urandom(300_000)
        self.fake.scripts["/hit.bin"] = Script(body=self.hit)
        self.assertEqual(request("GET", self.daemon.url("/fake/hit.bin"))[2], self.hit)
        self.daemon.wait_stored(self.fake.base + "/hit.bin")

    def metric(self, name: str) -> float:
        _, _, body = request("GET", self.daemon.url("/-/metrics"))
        for line in body.decode().splitlines():
            if line.startswith(name + " ") or line.startswith(name + "{"):
                return float(line.rsplit(" ", 1)[1])
        raise AssertionError(f"{name} not in /-/metrics")

    def hits_served(self, stop: threading.Event, errors: list[str], count: list[int]) -> None:
        while not stop.is_set():
            status, headers, got = outcome(self.daemon.port, "/fake/hit.bin", timeout=20)
            if (status, headers.get("x-cache"), got) != (200, "HIT", self.hit):
                errors.append(f"{status} {headers.get('x-cache')} {len(got)} bytes")
            count[0] += 1

    def test_clients_get_their_bytes_nothing_stored(self) -> None:
        """
        Three clients of a 24 MiB download (a plain file: it streams), one of
        them reading nothing until the rest is relayed from memory (it then
        reads the start from the file, the rest from memory, and the upstream
        waits for it past 16 MiB), and one of a 3 MiB PyPI file (verified
        before it is sent), while the disk has 1 MiB left: each gets every
        byte, right; the cache keeps only what it had; the error is logged
        and counted; a client of a hit is served all along.
        """
        from tests.test_cache_dir import slow_client
        big = os.urandom(24 * MIB)
        self.fake.scripts["/big.bin"] = Script(body=big, chunk=64 * 1024, pace=0.002)
        small = os.urandom(3 * MIB)
        digest = sha(small)
        self.fake.scripts["/simple/pkg/"] = Script(
            body=f'<a href="/files/pkg-1.0.tar.gz#sha256={digest}">pkg-1.0.tar.gz</a>'.encode(),
            headers={"Content-Type": "text/html"})
        self.fake.scripts["/files/pkg-1.0.tar.gz"] = Script(body=small, chunk=64 * 1024, pace=0.002)
        self.assertEqual(request("GET", self.daemon.url("/pypi/pkg/"))[0], 200)
        before = sorted(meta["key"] for meta, _ in stored_entries(self.daemon.cache_dir))
        self.disk.fill(leave=MIB)
        stop, errors, count = threading.Event(), [], [0]
        hits = threading.Thread(target=self.hits_served, args=(stop, errors, count), daemon=True)
        hits.start()
        self.addCleanup(stop.set)
        results: dict[str, tuple[object, bytes]] = {}

        def get(name: str, path: str) -> None:
            status, _, got = outcome(self.daemon.port, path)
            results[name] = (status, got)

        clients = [threading.Thread(target=get, args=("big1", "/fake/big.bin")),
                   threading.Thread(target=get, args=("big2", "/fake/big.bin")),
                   threading.Thread(target=get, args=("pkg", f"/pypi/+f/pkg/{digest}/pkg-1.0.tar.gz"))]
        slow = slow_client(self.daemon.port, "/fake/big.bin")
        self.addCleanup(slow.close)
        for t in clients:
            t.start()
        self.daemon.wait_log("cannot write /fake/big.bin to the cache")
        self.daemon.wait_log("the upstream paused for the slowest client")  # (the slow client reads nothing)
        slow.settimeout(30)
        h, got = hashlib.sha256(), 0
        while got < len(big) and (chunk := slow.recv(min(65536, len(big) - got))):
            h.update(chunk)
            got += len(chunk)
        self.assertEqual(h.hexdigest(), sha(big))
        for t in clients:
            t.join(60)
        stop.set()
        hits.join(30)
        self.assertEqual({k: (s, sha(b)) for k, (s, b) in results.items()},
                         {"big1": (200, sha(big)), "big2": (200, sha(big)), "pkg": (200, digest)})
        self.assertEqual(errors, [])
        self.assertGreater(count[0], 0)
        log = self.daemon.log()
        self.assertIn("No space left on device", log)
        self.assertNotIn("Unhandled", log)
        self.assertGreaterEqual(self.metric("artifactvault_cache_write_errors_total"), 2)
        after = sorted(meta["key"] for meta, _ in stored_entries(self.daemon.cache_dir))
        self.assertEqual(after, before)
        deadline = time.monotonic() + 15
        while download_temp_files(self.daemon.cache_dir):
            self.assertLess(time.monotonic(), deadline, "temp files left behind")
            time.sleep(0.02)
        status, headers, got = outcome(self.daemon.port, "/fake/hit.bin")
        self.assertEqual((status, headers["x-cache"], got), (200, "HIT", self.hit))
