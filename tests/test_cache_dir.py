"""
The real daemon and its cache directory: one daemon per directory,
max_object_size, and a directory that fails writes (see also
tests.test_faults.FullDiskTests: clients and hits served throughout).

A directory that fails writes is a small tmpfs mounted for the test (root
only; the tests that need one are skipped, saying why, where mounting is
impossible) and filled up, so that the daemon's own writes fail with ENOSPC
exactly where the test wants: mid-download, or at the commit.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import socket
import subprocess
import tempfile
import threading
import time

from twisted.trial.unittest import SkipTest, TestCase

from tests import support
from tests.fakeupstream import FakeUpstream, Script
from tests.support import Daemon, request

MIB = 1024 * 1024


class Tmpfs:
    """A size-limited tmpfs, mounted for one test."""

    def __init__(self, size: str):
        self.path = tempfile.mkdtemp(prefix="av-tmpfs-")
        p = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", self.path],
                           capture_output=True, text=True)
        if p.returncode != 0:
            os.rmdir(self.path)
            raise SkipTest(f"cannot mount a tmpfs for a cache that fails writes "
                           f"(needs root): {p.stderr.strip() or p.returncode}")

    def free(self) -> int:
        st = os.statvfs(self.path)
        return st.f_bavail * st.f_frsize

    def fill(self, leave: int) -> None:
        """Take all the space but C{leave} bytes (a multiple of the page size)."""
        with open(os.path.join(self.path, f"filler-{time.monotonic_ns()}"), "wb") as f:
            f.write(b"\0" * (self.free() - leave))
        assert self.free() == leave, (self.free(), leave)

    def close(self) -> None:
        subprocess.run(["umount", "-l", self.path], check=False)
        os.rmdir(self.path)


def fds(daemon: Daemon) -> int:
    """How many descriptors the daemon has open (a baseline may count a connection still closing)."""
    assert daemon.proc is not None
    return len(os.listdir(f"/proc/{daemon.proc.pid}/fd"))


def wait_for(condition, what: str, timeout: float = 15.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


def slow_client(port: int, path: str) -> socket.socket:
    """A GET whose client reads its headers and then nothing (a tiny receive buffer)."""
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16384)
    s.connect(("127.0.0.1", port))
    s.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    s.settimeout(10)
    head = b""
    while b"\r\n\r\n" not in head:
        head += s.recv(1)
    assert head.startswith(b"HTTP/1.1 200"), head
    return s


def read_to_end(s: socket.socket) -> tuple[int, str]:
    """Read until the connection ends: (bytes, how it ended); 'timeout' if it never does."""
    n = 0
    try:
        while chunk := s.recv(65536):
            n += len(chunk)
    except ConnectionResetError:
        return n, "reset"
    except socket.timeout:
        return n, "timeout"
    return n, "closed"


def full_disk_daemon(testcase: TestCase, size: str = "24m") -> tuple["Tmpfs", FakeUpstream, Daemon]:
    """
    The real daemon (an http and a pypi backend over one scripted upstream)
    with its cache on a small tmpfs of its own, all cleaned up after C{testcase}.
    """
    disk = Tmpfs(size)
    testcase.addCleanup(disk.close)
    fake = FakeUpstream()
    testcase.addCleanup(fake.close)
    cache = os.path.join(disk.path, "cache")
    daemon = Daemon([
        {"type": "http", "config": {"prefix": "/fake/", "base_url": fake.base}},
        {"type": "pypi", "config": {"prefix": "/pypi/", "index_url": fake.base + "/simple/"}},
    ], cache_dir=cache)
    daemon.cache_dir = cache
    testcase.addCleanup(daemon.cleanup)
    daemon.start()
    return disk, fake, daemon


class FullDiskTests(TestCase):
    """Every reader ends, and every descriptor is closed, when the cache cannot take a download."""

    def setUp(self) -> None:
        self.disk, self.fake, self.daemon = full_disk_daemon(self)

    def tmp_files(self) -> list[str]:
        return support.download_temp_files(self.daemon.cache_dir)

    def test_commit_fails_under_a_slow_reader(self) -> None:
        """
        A verified download whose commit fails (no room for its metadata)
        while a slow client is still reading: the client's connection is cut
        (its held-back last byte used to be held back for ever, the
        connection and the temp file's descriptor left open), the daemon's
        descriptors return to their count before, and nothing is left behind.
        """
        body = os.urandom(8 * MIB)
        digest = hashlib.sha256(body).hexdigest()
        self.fake.scripts["/simple/pkg/"] = Script(
            body=f'<a href="/files/pkg-1.0.tar.gz#sha256={digest}">pkg-1.0.tar.gz</a>'.encode(),
            headers={"Content-Type": "text/html"})
        self.fake.scripts["/files/pkg-1.0.tar.gz"] = Script(body=body)
        self.assertEqual(request("GET", self.daemon.url("/pypi/pkg/"))[0], 200)  # (answered once stored)
        baseline = fds(self.daemon)
        self.disk.fill(leave=len(body))  # room for the download's data, none for its metadata
        client = slow_client(self.daemon.port, f"/pypi/+f/pkg/{digest}/pkg-1.0.tar.gz")
        self.addCleanup(client.close)
        self.daemon.wait_log("cannot store /pypi/+f/pkg-1.0.tar.gz")
        got, how = read_to_end(client)
        self.assertNotEqual(how, "timeout", f"the client was left waiting after {got} bytes")
        self.assertLess(got, len(body))
        client.close()
        self.assertIn("could not store the download: No space left on device", self.daemon.log())
        wait_for(lambda: fds(self.daemon) <= baseline, f"the daemon's descriptors back to {baseline}")
        self.assertEqual(self.tmp_files(), [])
        stored = [n for _, _, names in os.walk(os.path.join(self.daemon.cache_dir, "data")) for n in names]
        self.assertEqual(len(stored), 2, stored)  # the page's data and metadata: nothing of the failed commit

    def test_disk_full_before_the_first_byte(self) -> None:
        """
        A cache with no room at all: the client still gets the bytes, relayed
        from memory (it used to get a 502), and nothing is stored.
        """
        data = os.urandom(2 * MIB)
        self.fake.scripts["/a.bin"] = Script(body=data)
        self.disk.fill(leave=0)
        status, _, body = request("GET", self.daemon.url("/fake/a.bin"))
        self.assertEqual((status, hashlib.sha256(body).hexdigest()), (200, hashlib.sha256(data).hexdigest()))
        self.assertIn("could not store the download: No space left on device", self.daemon.log())
        wait_for(lambda: self.tmp_files() == [], "the temp file removed")
        self.assertEqual([n for _, _, names in os.walk(os.path.join(self.daemon.cache_dir, "data"))
                          for n in names], [])
        self.assertNotIn("Unhandled", self.daemon.log())

    def test_disk_full_mid_download(self) -> None:
        """
        The disk fills up half-way: the client gets the rest relayed from
        memory (it used to be cut), no error escapes into Twisted, and
        descriptors and temp files are released.
        """
        body = os.urandom(8 * MIB)
        self.fake.scripts["/b.bin"] = Script(body=body)
        # (the download now ends well: its upstream connection goes back to the pool, so the
        # baseline has one there already)
        self.fake.scripts["/warm.bin"] = Script(body=b"w")
        self.assertEqual(request("GET", self.daemon.url("/fake/warm.bin"))[0], 200)
        self.daemon.wait_log("stored /fake/warm.bin")  # (its commit ended: the disk's use is settled)
        baseline = fds(self.daemon)
        self.disk.fill(leave=2 * MIB)
        conn = http.client.HTTPConnection("127.0.0.1", self.daemon.port, timeout=30)
        self.addCleanup(conn.close)
        conn.request("GET", "/fake/b.bin")
        response = conn.getresponse()
        self.assertEqual(response.status, 200)
        self.assertEqual(hashlib.sha256(response.read()).hexdigest(), hashlib.sha256(body).hexdigest())
        conn.close()
        self.assertIn("could not store the download: No space left on device", self.daemon.log())
        self.assertNotIn("Unhandled", self.daemon.log())
        wait_for(lambda: fds(self.daemon) <= baseline, f"the daemon's descriptors back to {baseline}")
        self.assertEqual(self.tmp_files(), [])


class ObjectSizeTests(TestCase):
    """max_object_size: larger artifacts are served through, never stored."""

    def test_too_large_served_not_stored(self) -> None:
        """A 10 MiB file over a 1 MiB limit is served whole, twice from upstream, and logged as not stored."""
        files = support.upstream_url("files")
        daemon = Daemon([{"type": "http", "config": {"prefix": "/files/", "base_url": files}}],
                        max_size="100M", max_object_size="1M")
        self.addCleanup(daemon.cleanup)
        daemon.start()
        name, digest = support.new_upstream_file("medium.bin")
        self.addCleanup(support.drop_upstream_file, name)
        for _ in range(2):
            status, headers, body = request("GET", daemon.url(f"/files/{name}"))
            self.assertEqual((status, headers["x-cache"], hashlib.sha256(body).hexdigest()), (200, "MISS", digest))
        self.assertIn("10485760 bytes is more than max_object_size (1048576); served, not stored "
                      "(2 refused since start)", daemon.log())
        self.assertEqual(support.wait_for_hits("files", f"^GET /{name}$", 2), 2)
        self.assertEqual(support.download_temp_files(daemon.cache_dir), [])

    def test_range_of_too_large_digest_checked(self) -> None:
        """
        A Range of a digest-checked artifact too large to store (a PyPI
        wheel over max_object_size) waits for the check, then is a 206 of
        verified bytes; it was a 502, the range waiting for a commit that
        never comes.
        """
        packages = os.path.join(support.upstream_dir("pypi"), "packages")
        pypi = support.upstream_url("pypi")
        name = sorted(n for n in os.listdir(packages) if n.endswith(".whl"))[0]
        with open(os.path.join(packages, name), "rb") as f:
            data = f.read()
        self.assertGreater(len(data), 1024)
        project = name.split("-")[0].replace("_", "-").lower()
        path = f"/pypi/+f/{project}/{hashlib.sha256(data).hexdigest()}/{name}"
        daemon = Daemon([{"type": "pypi", "config": {"prefix": "/pypi/", "index_url": pypi + "/simple/"}}],
                        max_size="100M", max_object_size="1K")
        self.addCleanup(daemon.cleanup)
        daemon.start()
        for spec, first, last in (("bytes=100-199", 100, 199), ("bytes=-10", len(data) - 10, len(data) - 1)):
            # (conditional: a Range on a miss that is not is passed through to the upstream, no download)
            status, headers, body = request("GET", daemon.url(path), {"Range": spec, "If-None-Match": '"other"'})
            self.assertEqual((status, headers.get("content-range"), body),
                             (206, f"bytes {first}-{last}/{len(data)}", data[first:last + 1]), spec)
        self.assertIn("more than max_object_size (1024); served, not stored", daemon.log())

class OneDaemonPerDirectoryTests(TestCase):
    """Two daemons on one cache_dir would delete each other's downloads: the second refuses to start."""

    def test_second_daemon_refused(self) -> None:
        """
        The second exits non-zero with one line naming the directory and the
        first's pid, and the first's download in progress survives it.
        """
        fake, first = support.fake_behind_daemon(self)
        resume = threading.Event()
        self.addCleanup(resume.set)
        data = os.urandom(4 * MIB)
        fake.scripts["/big.bin"] = Script(body=data, cut_at=MIB, resume=resume)
        conn = http.client.HTTPConnection("127.0.0.1", first.port, timeout=30)
        self.addCleanup(conn.close)
        conn.request("GET", "/fake/big.bin")
        response = conn.getresponse()
        self.assertEqual(response.read(MIB // 2), data[:MIB // 2])
        [temp] = support.download_temp_files(first.cache_dir)

        second = Daemon([{"type": "http", "config": {"prefix": "/fake/", "base_url": fake.base}}],
                        cache_dir=first.cache_dir)
        self.addCleanup(second.cleanup)
        second.write_config()
        p = subprocess.run([support.twistd(), "-n", "--pidfile=", "artifactvault", "--config", second.config_path],
                           capture_output=True, text=True, timeout=30)
        self.assertNotEqual(p.returncode, 0)
        assert first.proc is not None
        self.assertEqual(p.stderr.strip().splitlines(),
                         [f"artifactvault: {first.cache_dir}: in use by another artifactvault (pid {first.proc.pid})"])
        self.assertEqual(support.download_temp_files(first.cache_dir), [temp])
        resume.set()
        self.assertEqual(data[MIB // 2:], response.read())
        first.wait_stored(f"{fake.base}/big.bin")
