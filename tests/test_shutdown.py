"""
Tests for L{artifactvault.shutdown} (the stop's order, the drain, with a
controlled clock) and L{artifactvault.startup} (the checks of cache_dir),
and a graceful stop of the real daemon while a client reads a slow download.
"""

from __future__ import annotations

import errno
import hashlib
import os
import signal
import threading

from twisted.application.service import Service
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase, TestCase

from artifactvault.shutdown import InOrder, Drain
from artifactvault.startup import FULL, CacheDirUnusable, check_cache_dir
from tests import support
from tests.fakes import Harness


class Recording(Service):
    def __init__(self, name: str, log: list[str], wait: Deferred | None = None):
        self.name, self.log, self.wait = name, log, wait

    def stopService(self):  # type: ignore[no-untyped-def]
        super().stopService()
        self.log.append(self.name)
        return self.wait


class InOrderTests(SynchronousTestCase):
    def test_one_after_the_other(self) -> None:
        """The last added stops first, and the next only once it has stopped."""
        log: list[str] = []
        top = InOrder()
        gate: Deferred = Deferred()
        for name, wait in (("store", None), ("drain", gate), ("listener", None)):
            Recording(name, log, wait).setServiceParent(top)
        top.startService()
        d = top.stopService()
        self.assertEqual(log, ["listener", "drain"])
        self.assertNoResult(d)
        gate.callback(None)
        self.assertEqual(log, ["listener", "drain", "store"])
        self.successResultOf(d)


class DrainTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.harness = Harness(self, idle_timeout=100, timeout=100)
        self.drain = Drain(self.harness.site, self.harness.vault, self.harness.clock, timeout=30)
        self.drain.startService()

    def test_idle(self) -> None:
        """Nothing under way: the stop is at once."""
        self.assertIsNone(self.drain.stopService())

    def test_waits_for_the_download(self) -> None:
        """A download under way is let finish, and its client gets all of it."""
        client = self.harness.get("/files/a.bin")
        response = self.harness.requests[0].respond(200, length=10)
        response.send(b"01234")
        d = self.drain.stopService()
        self.harness.clock.advance(10)
        self.assertNoResult(d)
        response.send(b"56789").finish()
        self.harness.clock.advance(1)
        self.successResultOf(d)
        self.assertEqual((client.answer().body, client.answer().complete), (b"0123456789", True))

    def test_cut_after_timeout(self) -> None:
        """Past shutdown_timeout the download is cancelled (temp file removed) and its client cut."""
        client = self.harness.get("/files/a.bin")
        response = self.harness.requests[0].respond(200, length=10)
        response.send(b"01234")
        d = self.drain.stopService()
        self.harness.clock.advance(31)
        self.successResultOf(d)
        self.assertTrue(client.aborted)
        self.assertEqual(self.harness.store.spool.in_use(), [])
        self.assertEqual(len(self.harness.vault.flights), 0)


class StatVfs:
    def __init__(self, free: int, size: int, frsize: int = 4096):
        self.f_bavail, self.f_blocks, self.f_frsize = free // frsize, size // frsize, frsize


class StartupTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.root = self.mktemp()
        self.tmp = os.path.join(self.root, "tmp")
        os.makedirs(self.tmp)

    def test_fine(self) -> None:
        self.assertEqual(check_cache_dir(self.root, self.tmp, lambda p: StatVfs(50 << 30, 100 << 30)), [])
        self.assertEqual(os.listdir(self.tmp), [])

    def test_low(self) -> None:
        """Less than 5 % free: a warning, not a refusal."""
        warnings = check_cache_dir(self.root, self.tmp, lambda p: StatVfs(4 << 30, 100 << 30))
        self.assertEqual(len(warnings), 1)
        self.assertIn("only 4.0% free on the filesystem of cache_dir", warnings[0])

    def test_full(self) -> None:
        """A full filesystem, or one that refuses the probe's bytes: one line, no start."""
        e = self.assertRaises(CacheDirUnusable, check_cache_dir, self.root, self.tmp,
                              lambda p: StatVfs(FULL - 4096, 100 << 30))
        self.assertIn("its filesystem is full", str(e))

        def enospc(fd: int, data: bytes) -> int:
            raise OSError(errno.ENOSPC, "No space left on device")
        e = self.assertRaises(CacheDirUnusable, check_cache_dir, self.root, self.tmp,
                              lambda p: StatVfs(50 << 30, 100 << 30), enospc)
        self.assertEqual(str(e), f"cannot use cache_dir {self.root}: its filesystem is full")
        self.assertEqual(os.listdir(self.tmp), [])

    def test_not_writable(self) -> None:
        def erofs(fd: int, data: bytes) -> int:
            raise OSError(errno.EROFS, "Read-only file system")
        e = self.assertRaises(CacheDirUnusable, check_cache_dir, self.root, self.tmp,
                              lambda p: StatVfs(50 << 30, 100 << 30), erofs)
        self.assertEqual(str(e), f"cannot use cache_dir {self.root}: cannot write there (Read-only file system)")


class GracefulStopDaemonTests(TestCase):
    """SIGTERM to the real daemon."""

    def test_reader_gets_the_whole_file(self) -> None:
        """A client reading a slow download when SIGTERM arrives gets the whole file; new connections are refused; exit 0."""
        slow = support.upstream_url("slow")
        daemon = support.Daemon([{"type": "http", "config": {"prefix": "/slow/", "base_url": slow}}],
                                shutdown_timeout=30)
        self.addCleanup(daemon.cleanup)
        daemon.start()
        got: dict[str, object] = {}

        def read() -> None:
            got["answer"] = support.request("GET", daemon.url("/slow/slow.bin"))

        reader = threading.Thread(target=read, daemon=True)
        reader.start()
        support.wait_for_hits("slow", "GET /slow.bin", 1)
        assert daemon.proc is not None
        daemon.proc.send_signal(signal.SIGTERM)
        daemon.wait_log("stopping: waiting up to 30 s")
        with self.assertRaises(OSError):
            support.request("GET", daemon.url("/-/health"), timeout=2)
        reader.join(60)
        status, _headers, body = got["answer"]  # type: ignore[misc]
        with open(os.path.join(support.upstream_dir("slow"), "www", "slow.bin"), "rb") as f:
            expected = hashlib.sha256(f.read()).hexdigest()
        self.assertEqual((status, len(body), hashlib.sha256(body).hexdigest()), (200, 4 << 20, expected))
        self.assertEqual(daemon.proc.wait(30), 0)
        daemon.proc = None
        self.assertEqual(os.listdir(os.path.join(daemon.cache_dir, "tmp")), [])
