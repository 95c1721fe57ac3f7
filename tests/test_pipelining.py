"""
Pipelined requests through the real daemon, on a real socket: cold misses
pipelined behind one another are fetched from the upstream at once (ahead
of their turn), not one after the other, and still answered in order, each
with its own bytes; what may not be fetched ahead (a Range, a mutable file)
waits for its turn. The upstream is a L{FakeUpstream} serving an apt
repository whose pool files it holds back until the test lets them go.
And a request head that comes in two writes (as apt sends some) is not
held back by a delayed acknowledgement (L{SplitHeadTests}).
"""

from __future__ import annotations

import hashlib
import lzma
import re
import socket
import threading
import time
from email.utils import formatdate

from twisted.trial.unittest import TestCase

from tests.fakeupstream import FakeUpstream, Script
from tests.support import Daemon, request
from tests.test_apt_meta import clearsign

#: Pool files in the repository's index (more than a connection may fetch ahead).
PACKAGES = 14
#: How many pipelined requests per connection the site fetches ahead (VaultSite.prefetch_limit).
LIMIT = 10


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def serve_repo(fake: FakeUpstream, debs: dict[str, bytes], holds: dict[str, threading.Event]) -> None:
    """A signed-looking repository on C{fake} at /debian: each pool file waits for its event in C{holds}."""
    packages = "".join(f"Package: {path.split('/')[3]}\nVersion: 1.0\nFilename: {path}\n"
                       f"Size: {len(body)}\nSHA256: {_sha(body)}\n\n" for path, body in debs.items()).encode()
    packages_xz = lzma.compress(packages)
    release = (f"Date: {formatdate(time.time() - 60, usegmt=True)}\nSuite: stable\nAcquire-By-Hash: yes\n"
               f"SHA256:\n {_sha(packages)} {len(packages)} main/binary-amd64/Packages\n"
               f" {_sha(packages_xz)} {len(packages_xz)} main/binary-amd64/Packages.xz\n").encode()
    fake.scripts["/debian/dists/stable/InRelease"] = Script(body=clearsign(release))
    for name, body in (("Packages", packages), ("Packages.xz", packages_xz)):
        fake.scripts[f"/debian/dists/stable/main/binary-amd64/{name}"] = Script(body=body)
        fake.scripts[f"/debian/dists/stable/main/binary-amd64/by-hash/SHA256/{_sha(body)}"] = Script(body=body)
    for path, body in debs.items():
        fake.scripts[f"/debian/{path}"] = Script(body=body, hold_headers=holds[path])


def read_answers(sock: socket.socket, count: int, timeout: float = 30.0) -> list[tuple[int, bytes]]:
    """C{count} HTTP/1.1 answers (status, body; each with a Content-Length), in the order they come."""
    sock.settimeout(timeout)
    buf = b""
    answers = []
    while len(answers) < count:
        end = buf.find(b"\r\n\r\n")
        if end >= 0:
            lines = buf[:end].decode("latin-1").split("\r\n")
            headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
            length = int(headers["content-length"])
            if len(buf) >= end + 4 + length:
                answers.append((int(lines[0].split()[1]), buf[end + 4:end + 4 + length]))
                buf = buf[end + 4 + length:]
                continue
        data = sock.recv(65536)
        if not data:
            raise AssertionError(f"connection closed after {len(answers)} of {count} answers")
        buf += data
    return answers


class PipelinedMissTests(TestCase):
    def setUp(self) -> None:
        self.fake = FakeUpstream()
        self.addCleanup(self.fake.close)
        self.paths = [f"pool/main/p/pkg{i:02d}/pkg{i:02d}_1.0_all.deb" for i in range(PACKAGES)]
        self.debs = {path: f"package {i} ".encode() * (100 + i) for i, path in enumerate(self.paths)}
        self.holds = {path: threading.Event() for path in self.paths}
        self.addCleanup(self.release)  # (before the upstream closes: its held answers end)
        serve_repo(self.fake, self.debs, self.holds)
        self.daemon = Daemon([{"type": "apt", "config": {"prefix": "/debian/",
                                                         "mirror_url": self.fake.base + "/debian"}}])
        self.addCleanup(self.daemon.cleanup)
        self.daemon.start()
        # (apt-get update: the vault learns the pool files' hashes from the index it serves)
        for path in ("dists/stable/InRelease", "dists/stable/main/binary-amd64/Packages.xz"):
            self.assertEqual(request("GET", self.daemon.url(f"/debian/{path}"))[0], 200)
        self.sock = socket.create_connection(("127.0.0.1", self.daemon.port), timeout=30)
        self.addCleanup(self.sock.close)

    def release(self, *paths: str) -> None:
        """Let the upstream answer C{paths} (all pool files if none is named)."""
        for path in paths or self.paths:
            self.holds[path].set()

    def send(self, targets: list[str], extra: str = "") -> None:
        self.sock.sendall(b"".join(f"GET {t} HTTP/1.1\r\nHost: vault\r\n{extra}\r\n".encode() for t in targets))

    def asked(self) -> list[str]:
        """The pool files asked of the upstream so far, in order."""
        return [path[len("/debian/"):] for _, path, _ in list(self.fake.requests) if path.startswith("/debian/pool/")]

    def wait_asked(self, n: int, timeout: float = 15.0) -> list[str]:
        deadline = time.monotonic() + timeout
        while len(self.asked()) < n:
            if time.monotonic() > deadline:
                raise AssertionError(f"{len(self.asked())} of {n} pool files asked of the upstream within "
                                     f"{timeout} s: {self.asked()}")
            time.sleep(0.02)
        return self.asked()

    def test_cold_misses_fetched_together(self) -> None:
        """
        Ten pipelined GETs for cold pool files: all ten are asked of the
        upstream before it answers any (they overlap: the upstream holds
        each answer until the test lets go); then the ten answers come in
        the order asked, each with its own bytes, and each file was asked once.
        """
        paths = self.paths[:10]
        self.send([f"/debian/{p}" for p in paths])
        self.assertEqual(sorted(self.wait_asked(10)), sorted(paths))
        self.release()
        self.assertEqual(read_answers(self.sock, 10), [(200, self.debs[p]) for p in paths])
        self.assertEqual([self.fake.count("GET", f"/debian/{p}") for p in paths], [1] * 10)

    def test_answers_in_order_when_later_ones_end_first(self) -> None:
        """
        The upstream answers the last of four first: the answers still go
        out in the order asked (the later download waits, done, for its turn).
        """
        paths = self.paths[:4]
        self.send([f"/debian/{p}" for p in paths])
        self.wait_asked(4)
        self.release(paths[3])
        self.daemon.wait_log(f"stored /debian/{paths[3]}")
        self.release(*paths[:3])
        self.assertEqual(read_answers(self.sock, 4), [(200, self.debs[p]) for p in paths])

    def test_durations_from_each_arrival(self) -> None:
        """
        Each pipelined request's logged duration counts from when its own
        bytes came over the socket, not from the oldest ones buffered: the
        second and third of three wait behind the first, held; the third is
        sent 0.3 s after the second (a gap made, not an event awaited), so
        its line is ~300 ms shorter (it said the same as the second's).
        """
        first, second, third = self.paths[:3]
        self.send([f"/debian/{first}"])
        self.wait_asked(1)
        self.send([f"/debian/{second}"])
        self.wait_asked(2)  # (read, and fetched ahead: it waits in the buffer)
        time.sleep(0.3)
        self.send([f"/debian/{third}"])
        self.wait_asked(3)
        self.release()
        self.assertEqual(read_answers(self.sock, 3), [(200, self.debs[p]) for p in (first, second, third)])

        def logged_ms(path: str) -> float:
            self.daemon.wait_log(f"GET /debian/{path} 200 ")
            return float(re.search(rf"GET /debian/{re.escape(path)} 200 \S+ \d+ bytes ([\d.]+) ms",
                                   self.daemon.log()).group(1))
        self.assertGreater(logged_ms(second) - logged_ms(third), 250)

    def test_proxy_form(self) -> None:
        """The same for apt's proxy form (absolute URIs of the mirror's host)."""
        paths = self.paths[:4]
        self.send([f"{self.fake.base}/debian/{p}" for p in paths])
        self.assertEqual(sorted(self.wait_asked(4)), sorted(paths))
        self.release()
        self.assertEqual(read_answers(self.sock, 4), [(200, self.debs[p]) for p in paths])

    def test_ranges_wait_for_their_turn(self) -> None:
        """
        A pipelined GET with a Range is never fetched ahead (its answer may
        be a ranged upstream request, not the whole file): behind a held
        first request, the plain GET pipelined after two ranged ones is
        asked of the upstream, the ranged ones are not; once let go, every
        answer comes, in order, the ranges right.
        """
        first, ranged, after = self.paths[0], self.paths[1:3], self.paths[3]
        self.send([f"/debian/{first}"])
        self.wait_asked(1)
        self.send([f"/debian/{p}" for p in ranged], extra="Range: bytes=0-4\r\n")
        self.send([f"/debian/{after}"])
        self.assertEqual(self.wait_asked(2), [first, after])
        self.release()
        self.assertEqual(read_answers(self.sock, 4),
                         [(200, self.debs[first]), (206, self.debs[ranged[0]][:5]),
                          (206, self.debs[ranged[1]][:5]), (200, self.debs[after])])

    def test_limit_per_connection(self) -> None:
        """
        At most ten pipelined requests per connection are fetched ahead:
        behind a held first request, 13 more pipelined make ten more
        upstream requests; each answer that goes out lets one more start.
        """
        self.assertEqual(PACKAGES, LIMIT + 4)
        self.send([f"/debian/{p}" for p in self.paths])
        self.assertEqual(sorted(self.wait_asked(1 + LIMIT)), sorted(self.paths[:1 + LIMIT]))
        self.release(self.paths[0])
        self.assertEqual(read_answers(self.sock, 1), [(200, self.debs[self.paths[0]])])
        self.wait_asked(2 + LIMIT)
        self.release(self.paths[1])
        self.assertEqual(read_answers(self.sock, 1), [(200, self.debs[self.paths[1]])])
        self.assertEqual(sorted(self.wait_asked(3 + LIMIT)), sorted(self.paths[:3 + LIMIT]))
        self.release()
        self.assertEqual(read_answers(self.sock, PACKAGES - 2), [(200, self.debs[p]) for p in self.paths[2:]])


class SplitHeadTests(TestCase):
    """
    A request whose head comes in two writes from a client with Nagle's
    algorithm on (apt is one: 1 in ~50 of its pipelined requests through
    the vault, seen in the daemon's own timeline): the second write waits
    in the client's kernel until the first is acknowledged. The daemon
    acknowledges a read that ends inside a head at once (TCP_QUICKACK,
    VaultChannel._ack_now); without it the kernel delays that ACK by its
    40 ms minimum, and every such request took ~44 ms (so did nginx's).
    The bound below is that kernel timer's, not a speed target: an answer
    under 20 ms means the timer did not fire.
    """

    def test_head_in_two_writes_is_not_held_back(self) -> None:
        daemon = Daemon([{"type": "http", "config": {"prefix": "/f/", "base_url": "http://127.0.0.1:9"}}])
        self.addCleanup(daemon.cleanup)
        daemon.start()
        sock = socket.create_connection(("127.0.0.1", daemon.port), timeout=30)
        self.addCleanup(sock.close)
        assert_heads_in_two_writes_answered_at_once(self, sock)


def assert_heads_in_two_writes_answered_at_once(test: TestCase, sock: socket.socket) -> None:
    """
    On C{sock} (a connection to the daemon, plain or TLS, with Nagle's
    algorithm on): 30 plain exchanges, past the kernel's first quick
    acknowledgements of a new connection; then five requests each written
    in two pieces, the median answered well within the 40 ms a delayed
    acknowledgement costs (L{SplitHeadTests}).
    """
    test.assertEqual(sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY), 0)  # (Nagle on, as apt has it)
    head = b"GET /-/health HTTP/1.1\r\nHost: vault\r\nUser-Agent: split-head\r\nAccept: */*\r\n\r\n"
    for _ in range(30):
        sock.sendall(head)
        test.assertEqual(read_answers(sock, 1)[0][0], 200)
    took = []
    for _ in range(5):
        started = time.monotonic()
        sock.send(head[:30])
        sock.send(head[30:])
        test.assertEqual(read_answers(sock, 1)[0][0], 200)
        took.append(time.monotonic() - started)
    took.sort()
    test.assertLess(took[2], 0.020, f"answers to heads in two writes took {took} s")
