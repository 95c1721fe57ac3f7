"""
Tests for the limits a client is held to (L{artifactvault.site}, the
L{ClientLimits} keys of L{artifactvault.config}): each excess answered with
its own status, a reason and a closed connection, in memory on the site's
clock. Through real sockets against the daemon: L{tests.test_limits_wire}.
"""

from __future__ import annotations

from twisted.internet.address import IPv4Address
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.logger import formatEvent
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET

from artifactvault import config as configmod
from artifactvault.backends import parse_backend
from artifactvault.config import ClientLimits, ConfigError
from artifactvault.site import VaultSite
from tests.fakes import log_events


class _Hello(Resource):
    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.held: list = []

    def render_GET(self, request):
        if request.path == b"/slow":
            self.held.append(request)
            return NOT_DONE_YET
        return b"hello"

    def render_POST(self, request):
        return b"got %d" % len(request.content.read())


LIMITS = ClientLimits(max_request_line=1024, max_path_length=512, max_headers=10, max_header_size=2048,
                      max_request_body=100, client_header_timeout=10.0, max_connections_per_client=2)


class LimitsMixin:

    def setUp(self) -> None:
        self.clock = Clock()
        self.resource = _Hello()
        self.site = VaultSite(self.resource, reactor=self.clock, limits=LIMITS)
        self.events = log_events(self, "artifactvault.site")

    def connect(self, host: str = "127.0.0.1") -> tuple:
        protocol = self.site.buildProtocol(IPv4Address("TCP", host, 40000))
        transport = StringTransport(peerAddress=IPv4Address("TCP", host, 40000))
        protocol.makeConnection(transport)
        return protocol, transport

    def assertRefused(self, transport: StringTransport, status: int, reason: str) -> None:
        """The connection got one whole C{status} answer saying C{reason}, and is being closed."""
        answer = transport.value()
        head, _, body = answer.partition(b"\r\n\r\n")
        self.assertTrue(head.startswith(b"HTTP/1.1 %d " % status), answer[:200])
        self.assertIn(b"\r\nConnection: close", head)
        self.assertIn(b"\r\nContent-Length: %d" % len(body), head)
        self.assertIn(reason.encode(), body)
        self.assertTrue(transport.disconnecting)

    def logged(self) -> str:
        self.assertEqual(len(self.events), 1, [formatEvent(e) for e in self.events])
        return formatEvent(self.events[0])


class HeadLimitTests(LimitsMixin, SynchronousTestCase):

    def test_request_line_too_long(self) -> None:
        """A request line over max_request_line is a 414 with a reason (Twisted would close without a word)."""
        protocol, transport = self.connect()
        protocol.dataReceived(b"GET /" + b"a" * 1100 + b" HTTP/1.1\r\nHost: x\r\n\r\n")
        self.assertRefused(transport, 414, "the request line is longer than 1024 bytes")
        self.assertRegex(self.logged(), r"^GET /a+ 414 - \d+ bytes .*: the request line is longer")

    def test_request_line_that_never_ends(self) -> None:
        """A request line still arriving past every limit is refused as it comes, not buffered on."""
        protocol, transport = self.connect()
        for _ in range(40):
            protocol.dataReceived(b"GET /" + b"a" * 100)
        self.assertRefused(transport, 414, "the request line is longer than 1024 bytes")

    def test_path_too_long(self) -> None:
        """A path over max_path_length (its query not counted) is a 414."""
        protocol, transport = self.connect()
        protocol.dataReceived(b"GET /?" + b"q" * 600 + b" HTTP/1.1\r\nHost: x\r\n\r\n")
        self.assertIn(b"200 OK", transport.value())
        protocol, transport = self.connect()
        protocol.dataReceived(b"GET /" + b"p" * 600 + b" HTTP/1.1\r\nHost: x\r\n\r\n")
        self.assertRefused(transport, 414, "the request path is longer than 512 bytes")

    def test_too_many_header_fields(self) -> None:
        """More than max_headers fields is a 431."""
        protocol, transport = self.connect()
        protocol.dataReceived(b"GET / HTTP/1.1\r\n" + b"".join(b"X-%d: v\r\n" % i for i in range(11)) + b"\r\n")
        self.assertRefused(transport, 431, "more than 10 header fields")

    def test_header_fields_too_large(self) -> None:
        """Header fields over max_header_size in all, or in one line, are a 431."""
        protocol, transport = self.connect()
        protocol.dataReceived(b"GET / HTTP/1.1\r\n" + b"".join(b"X-%d: %s\r\n" % (i, b"v" * 300)
                                                                for i in range(8)) + b"\r\n")
        self.assertRefused(transport, 431, "header fields are larger than 2048 bytes")
        protocol, transport = self.connect()
        protocol.dataReceived(b"GET / HTTP/1.1\r\nX-Big: " + b"v" * 5000 + b"\r\n\r\n")
        self.assertRefused(transport, 431, "header fields are larger than 2048 bytes")

    def test_within_limits(self) -> None:
        """A request just inside every limit is served, and the connection kept."""
        protocol, transport = self.connect()
        protocol.dataReceived(b"GET /" + b"p" * 500 + b" HTTP/1.1\r\nHost: x\r\n" +
                              b"".join(b"X-%d: v\r\n" % i for i in range(9)) + b"\r\n")
        self.assertIn(b"200 OK", transport.value())
        self.assertFalse(transport.disconnecting)

    def test_malformed_head(self) -> None:
        """A malformed head gets a whole 400 with a reason (Twisted's is a status line alone)."""
        protocol, transport = self.connect()
        protocol.dataReceived(b"GET / HTTP/1.1\r\nno colon here\r\n\r\n")
        self.assertRefused(transport, 400, "the request is malformed")

    def test_nothing_read_after_a_refusal(self) -> None:
        """What follows a refused head (a pipelined request) is not answered."""
        protocol, transport = self.connect()
        protocol.dataReceived(b"GET / HTTP/1.1\r\n" + b"".join(b"X-%d: v\r\n" % i for i in range(11)) +
                              b"\r\nGET / HTTP/1.1\r\nHost: x\r\n\r\n")
        self.assertEqual(transport.value().count(b"HTTP/1.1 "), 1)

    def test_refused_client_that_does_not_read(self) -> None:
        """A refused client that does not read its answer is cut after abortTimeout."""
        protocol, transport = self.connect()
        protocol.dataReceived(b"GET /" + b"a" * 1100 + b" HTTP/1.1\r\n\r\n")
        self.assertFalse(transport.disconnected)
        self.clock.advance(protocol.abortTimeout)
        self.assertTrue(transport.disconnected)


class BodyLimitTests(LimitsMixin, SynchronousTestCase):

    def test_announced_body_too_large(self) -> None:
        """A Content-Length over max_request_body is a 413 at once: no 100 Continue, no body read."""
        protocol, transport = self.connect()
        protocol.dataReceived(b"GET / HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 101\r\n\r\n")
        self.assertNotIn(b"100 Continue", transport.value())
        self.assertRefused(transport, 413, "the request body is larger than 100 bytes")

    def test_chunked_body_too_large(self) -> None:
        """A chunked body (no length announced) is counted as it comes: a 413 once over the limit."""
        protocol, transport = self.connect()
        protocol.dataReceived(b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n")
        protocol.dataReceived(b"40\r\n" + b"x" * 64 + b"\r\n")
        self.assertEqual(transport.value(), b"")
        protocol.dataReceived(b"40\r\n" + b"x" * 64 + b"\r\n0\r\n\r\n")
        self.assertRefused(transport, 413, "the request body is larger than 100 bytes")
        self.assertEqual(transport.value().count(b"HTTP/1.1 "), 1)

    def test_small_body(self) -> None:
        """A body within the limit is read as before."""
        protocol, transport = self.connect()
        protocol.dataReceived(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n" + b"x" * 100)
        self.assertTrue(transport.value().endswith(b"got 100"), transport.value())


class HeaderTimeoutTests(LimitsMixin, SynchronousTestCase):

    def test_trickled_head(self) -> None:
        """
        A head trickled a byte a second (slowloris) is cut at
        client_header_timeout from its first byte with a 408, however
        often bytes come.
        """
        protocol, transport = self.connect()
        request = b"GET / HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"v" * 100
        for i in range(9):
            protocol.dataReceived(request[i:i + 1])
            self.clock.advance(1)
        self.assertEqual(transport.value(), b"")
        protocol.dataReceived(request[9:10])
        self.clock.advance(1)
        self.assertRefused(transport, 408, "the request did not arrive within 10 s")

    def test_idle_connection(self) -> None:
        """A connection that sends nothing is closed at client_header_timeout, without an answer."""
        protocol, transport = self.connect()
        self.clock.advance(9.9)
        self.assertFalse(transport.disconnecting)
        self.clock.advance(0.1)
        self.assertTrue(transport.disconnecting)
        self.assertEqual(transport.value(), b"")

    def test_slow_answer_not_cut(self) -> None:
        """The deadline is the request's, not its answer's: an answer taking a minute goes on."""
        protocol, transport = self.connect()
        protocol.dataReceived(b"GET /slow HTTP/1.1\r\nHost: x\r\n\r\n")
        self.clock.advance(60)
        self.assertFalse(transport.disconnecting)
        [request] = self.resource.held
        request.write(b"done")
        request.finish()
        self.assertIn(b"200 OK", transport.value())

    def test_each_request_its_own_deadline(self) -> None:
        """On a kept connection, the next request's deadline starts at its first byte."""
        protocol, transport = self.connect()
        protocol.dataReceived(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        self.clock.advance(8)
        protocol.dataReceived(b"GET / HTTP/1.1\r\n")
        self.clock.advance(8)
        protocol.dataReceived(b"Host: x\r\n\r\n")
        self.assertEqual(transport.value().count(b"200 OK"), 2)
        self.assertFalse(transport.disconnecting)
        self.clock.advance(5)
        protocol.dataReceived(b"GET / HTTP/1.1\r\n")
        self.clock.advance(10)
        self.assertIn(b"HTTP/1.1 408 ", transport.value())


class ConnectionCapTests(LimitsMixin, SynchronousTestCase):

    def test_cap_per_address(self) -> None:
        """
        A third connection from one address gets a 503 (once its head is
        in); another address is served; once one closes, the first address
        may connect again.
        """
        first, _ = self.connect()
        self.connect()
        busy, busy_transport = self.connect()
        busy.dataReceived(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        self.assertRefused(busy_transport, 503, "too many connections from 127.0.0.1 (more than 2)")
        self.assertIn(b"Retry-After: 1", busy_transport.value())
        other, other_transport = self.connect("10.0.0.2")
        other.dataReceived(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        self.assertIn(b"200 OK", other_transport.value())
        first.connectionLost(None)
        again, again_transport = self.connect()
        again.dataReceived(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        self.assertIn(b"200 OK", again_transport.value())
        self.assertEqual(self.site.connections, {"127.0.0.1": 2, "10.0.0.2": 1})

    def test_busy_answer_without_a_request(self) -> None:
        """A connection over the cap that sends nothing is answered and closed at client_header_timeout."""
        self.connect()
        self.connect()
        _, transport = self.connect()
        self.clock.advance(10)
        self.assertIn(b"HTTP/1.1 503 ", transport.value())
        self.assertTrue(transport.disconnecting)


class ConfigTests(SynchronousTestCase):

    def load(self, text: str) -> configmod.Config:
        path = self.mktemp()
        with open(path, "w") as f:
            f.write(text)
        return configmod.load(path, parse_backend)

    def test_defaults(self) -> None:
        """Without the keys: nginx-like sizes, 10 s for a head, 1024 connections an address."""
        self.assertEqual(self.load("").limits, ClientLimits())
        self.assertEqual(ClientLimits().client_header_timeout, 10.0)

    def test_keys(self) -> None:
        """Every limit is a top-level key, sizes and durations in the usual units."""
        limits = self.load("max_request_line: 16K\nmax_path_length: 8K\nmax_headers: 200\n"
                           "max_header_size: 64K\nmax_request_body: 1M\nclient_header_timeout: 30s\n"
                           "max_connections_per_client: 50\n").limits
        self.assertEqual(limits, ClientLimits(16384, 8192, 200, 65536, 1 << 20, 30.0, 50))

    def test_errors(self) -> None:
        """Limits that make no sense are one-line errors naming the key."""
        for text, key in (("max_path_length: 16K\n", "max_path_length"), ("max_headers: 0\n", "max_headers"),
                          ("client_header_timeout: 0\n", "client_header_timeout"),
                          ("max_request_line: 10\n", "max_request_line"),
                          ("max_connections_per_client: 0\n", "max_connections_per_client")):
            error = self.assertRaises(ConfigError, self.load, text)
            self.assertIn(f": {key}: ", str(error))


class DownloadCapTests(SynchronousTestCase):
    """max_downloads: a backend's downloads in flight at once; misses over it wait, in order."""

    def setUp(self) -> None:
        from twisted.internet.defer import DeferredSemaphore

        from tests.fakes import Harness
        self.harness = Harness(self)
        self.harness.upstream.download_slots = DeferredSemaphore(2)

    def test_queued_misses_all_complete(self) -> None:
        """Five misses, two slots: two are asked at once, each end lets the next go; all five complete."""
        clients = [self.harness.get(f"/files/f{i}.bin") for i in range(5)]
        self.assertEqual([r.url for r in self.harness.requests],
                         [self.harness.url("f0.bin"), self.harness.url("f1.bin")])
        for i in range(5):
            self.harness.requests[i].respond(200, b"body %d" % i)
            self.assertEqual(len(self.harness.requests), min(i + 3, 5))
        for i, client in enumerate(clients):
            answer = client.answer()
            self.assertEqual((answer.status, answer.body), (200, b"body %d" % i))
        self.assertEqual(self.harness.upstream.download_slots.tokens, 2)

    def test_failure_frees_its_slot(self) -> None:
        """A download that fails gives its slot to the next in line."""
        first = self.harness.get("/files/a.bin")
        self.harness.get("/files/b.bin")
        third = self.harness.get("/files/c.bin")
        self.harness.requests[0].respond(500, b"broken")
        self.assertEqual(first.answer().status, 502)
        self.assertEqual(len(self.harness.requests), 3)
        self.harness.requests[2].respond(200, b"c")
        self.assertEqual(third.answer().body, b"c")

    def test_cancelled_while_waiting(self) -> None:
        """A flight stopped while it waits (a graceful stop) leaves the queue and takes no slot."""
        self.harness.get("/files/a.bin")
        self.harness.get("/files/b.bin")
        waiting = self.harness.get("/files/c.bin")
        flight = self.harness.vault.flights.get(self.harness.url("c.bin"))
        flight.cancel("the daemon is stopping")
        self.assertEqual(waiting.answer().status, 502)
        self.harness.requests[0].respond(200, b"a")
        self.harness.requests[1].respond(200, b"b")
        self.assertEqual(len(self.harness.requests), 2)
        self.assertEqual(self.harness.upstream.download_slots.tokens, 2)

    def test_config(self) -> None:
        """max_downloads is a backend key: 64 by default, 0 for no cap."""
        from artifactvault.backends.base import BuildContext
        path = self.mktemp()
        with open(path, "w") as f:
            f.write("backends:\n"
                    "  - {type: http, config: {prefix: /a/, base_url: 'http://a.test/'}}\n"
                    "  - {type: http, config: {prefix: /b/, base_url: 'http://b.test/', max_downloads: 3}}\n"
                    "  - {type: http, config: {prefix: /c/, base_url: 'http://c.test/', max_downloads: 0}}\n")
        config = configmod.load(path, parse_backend)
        self.assertEqual([s.max_downloads for s in config.settings], [64, 3, 0])
        context = BuildContext(vault=None, reactor=Clock(), client=object())  # type: ignore[arg-type]
        slots = [context.upstream("http://x.test/", s).download_slots for s in config.settings]
        self.assertEqual([s.limit if s else None for s in slots], [64, 3, None])
