"""
Client limits through real sockets against the real daemon: a slowloris
connection is closed at client_header_timeout while other clients are
served meanwhile; an over-long request line gets a 414 on the wire (Twisted
alone closes without a word); the connection cap answers 503 and frees its
place when a connection ends; an HTTP/1.1 request without Host is a 400;
every refusal carries a Date.
"""

from __future__ import annotations

import socket
import time
from email.utils import parsedate_to_datetime

from twisted.trial.unittest import TestCase

from tests import support


def read_answer(sock: socket.socket, timeout: float = 10.0) -> bytes:
    """Everything the daemon sends until it closes the connection (or C{timeout})."""
    sock.settimeout(timeout)
    out = b""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            chunk = sock.recv(65536)
        except socket.timeout:
            break
        if not chunk:
            break
        out += chunk
    return out


class WireLimitTests(TestCase):

    timeout = 60

    def setUp(self) -> None:
        self.d = support.Daemon([], client_header_timeout=2, max_connections_per_client=4,
                                max_request_body="1K")
        self.addCleanup(self.d.cleanup)
        self.d.start()

    def connect(self) -> socket.socket:
        sock = socket.create_connection(("127.0.0.1", self.d.port), timeout=10)
        self.addCleanup(sock.close)
        return sock

    def test_slowloris(self) -> None:
        """
        A client trickling its head a byte every 0.2 s gets a 408 and a closed
        connection at client_header_timeout (2 s here), however long it would
        go on; another client asking meanwhile is answered at once each time.
        """
        slow = self.connect()
        head = b"GET /-/health HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"v" * 1000
        started = time.monotonic()
        served = []
        closed_at = None
        slow.settimeout(0.2)
        for i in range(len(head)):
            try:
                slow.sendall(head[i:i + 1])
            except OSError:
                closed_at = time.monotonic()
                break
            t0 = time.monotonic()
            status = support.request("GET", self.d.url("/-/health"), timeout=5)[0]
            served.append((status, time.monotonic() - t0))
            try:
                data = slow.recv(65536)
            except socket.timeout:
                continue
            closed_at = time.monotonic()
            break
            self.assertFalse(data)  # pragma: no cover
        self.assertIsNotNone(closed_at, "the slow connection was never closed")
        self.assertGreaterEqual(closed_at - started, 1.9)
        self.assertLess(closed_at - started, 6)
        self.assertTrue(data.startswith(b"HTTP/1.1 408 "), data[:100])
        self.assertGreaterEqual(len(served), 5)
        self.assertEqual({status for status, _ in served}, {200})
        self.assertLess(max(seconds for _, seconds in served), 1.0, served)
        self.d.wait_log(" 408 - ")

    def test_request_line_too_long(self) -> None:
        """A request line over max_request_line (8 KiB) is answered 414 on the wire, then closed."""
        sock = self.connect()
        sock.sendall(b"GET /" + b"a" * 9000 + b" HTTP/1.1\r\nHost: x\r\n\r\n")
        answer = read_answer(sock)
        self.assertTrue(answer.startswith(b"HTTP/1.1 414 URI Too Long\r\n"), answer[:100])
        self.assertIn(b"the request line is longer than 8192 bytes", answer)

    def test_body_too_large(self) -> None:
        """A GET announcing a body over max_request_body is a 413 before its body is sent."""
        sock = self.connect()
        sock.sendall(b"GET /-/health HTTP/1.1\r\nHost: x\r\nContent-Length: 100000000\r\n\r\n")
        answer = read_answer(sock)
        self.assertTrue(answer.startswith(b"HTTP/1.1 413 "), answer[:100])

    def test_host_required(self) -> None:
        """
        An HTTP/1.1 request without Host, or any with two, is a 400 (RFC
        9112 3.2), logged; an HTTP/1.0 one without Host is answered.
        """
        answers = {}
        for name, head in (("1.1 none", b"GET /-/health HTTP/1.1\r\n\r\n"),
                           ("two", b"GET /-/health HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n"),
                           ("1.0 none", b"GET /-/health HTTP/1.0\r\n\r\n")):
            sock = self.connect()
            sock.sendall(head)
            answers[name] = read_answer(sock).partition(b"\r\n")[0]
        self.assertEqual(answers, {"1.1 none": b"HTTP/1.1 400 Bad Request", "two": b"HTTP/1.1 400 Bad Request",
                                   "1.0 none": b"HTTP/1.0 200 OK"})
        self.d.wait_log("GET /-/health 400 - ")
        self.assertIn("an HTTP/1.1 request must have one Host header field", self.d.log())

    def test_refusals_dated(self) -> None:
        """
        Every answer has a Date (RFC 9110 6.6.1), also those the vault
        writes itself: a proxy request's 403, a CONNECT's, a 414, a 408
        (client_header_timeout), a 400, one for a TLS handshake on the plain
        port, as any 200.
        """
        heads = {"proxy 403": b"GET http://other.example/x HTTP/1.1\r\nHost: other.example\r\n\r\n",
                 "CONNECT 403": b"CONNECT other.example:443 HTTP/1.1\r\nHost: other.example:443\r\n\r\n",
                 "414": b"GET /" + b"a" * 9000 + b" HTTP/1.1\r\nHost: x\r\n\r\n",
                 "408": b"GET /-/health HTTP/1.1\r\nHost: x\r\n",
                 "400": b"GET /-/health HTTP/1.1\r\nHost: x\r\nbad header\r\n\r\n",
                 "200": b"GET /-/health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
                 "TLS 400": b"\x16\x03\x01\x00\xde\x01\x00\x00\xda\x03\x03" + b"\x00" * 40}
        slow = self.connect()  # (first: its 408 comes after client_header_timeout, while the others are asked)
        slow.sendall(heads["408"])
        dates = {}
        for name in heads:
            if name == "408":
                sock = slow
            else:  # (one at a time: at most two connections, under max_connections_per_client)
                sock = self.connect()
                sock.sendall(heads[name])
            head = read_answer(sock).partition(b"\r\n\r\n")[0].decode("latin-1")
            sock.close()
            fields = dict(line.split(": ", 1) for line in head.split("\r\n")[1:])
            date = fields.get("Date")
            dates[name] = (head.split(" ")[1], date and abs(parsedate_to_datetime(date).timestamp() - time.time()) < 60)
        self.assertEqual(dates, {"proxy 403": ("403", True), "CONNECT 403": ("403", True), "414": ("414", True),
                                 "408": ("408", True), "400": ("400", True), "200": ("200", True),
                                 "TLS 400": ("400", True)})

    def test_connection_cap(self) -> None:
        """Past 4 connections from one address: a 503 with Retry-After; one closed, a new one is served."""
        held = [self.connect() for _ in range(4)]
        for sock in held:  # (each accepted and counted before the next is tried)
            sock.sendall(b"GET /-/health HTTP/1.1\r\nHost: x\r\n\r\n")
            sock.settimeout(10)
            self.assertIn(b"200 OK", sock.recv(65536))
        extra = self.connect()
        extra.sendall(b"GET /-/health HTTP/1.1\r\nHost: x\r\n\r\n")
        answer = read_answer(extra)
        self.assertTrue(answer.startswith(b"HTTP/1.1 503 "), answer[:100])
        self.assertIn(b"Retry-After: 1", answer)
        held[0].close()
        deadline = time.monotonic() + 10
        while True:  # (the daemon notices the close a moment later)
            status = support.request("GET", self.d.url("/-/health"), timeout=5)[0]
            if status == 200 or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        self.assertEqual(status, 200)


class DownloadCapWireTests(TestCase):

    timeout = 120

    def test_queued_misses_complete(self) -> None:
        """
        max_downloads: 2 and 8 clients each missing another 10 MiB file at
        once: every one gets its file whole and right (the excess waited for
        a slot, none failed), and the upstream was asked once per file.
        """
        from concurrent.futures import ThreadPoolExecutor
        files = support.upstream_url("files")
        names = [support.new_upstream_file("medium.bin") for _ in range(8)]
        for name, _ in names:
            self.addCleanup(support.drop_upstream_file, name)
        d = support.Daemon([{"type": "http", "config": {"prefix": "/files/", "base_url": files,
                                                        "max_downloads": 2}}])
        self.addCleanup(d.cleanup)
        d.start()
        log = support.AccessLog("files")

        def get(name: str) -> tuple[int, str]:
            status, _, body = support.request("GET", d.url("/files/" + name))
            import hashlib
            return status, hashlib.sha256(body).hexdigest()

        with ThreadPoolExecutor(8) as pool:
            results = list(pool.map(get, [name for name, _ in names]))
        self.assertEqual(results, [(200, digest) for _, digest in names])
        self.assertEqual(len(log.wait(r"^/t-", 8)), 8)
        self.assertIn("wait for a slot: 2 in flight (max_downloads)", d.log())  # (some did wait)
