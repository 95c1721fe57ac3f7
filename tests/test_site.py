"""
Tests for L{artifactvault.site}: one log line per request, aborted ones too,
never with the query string, never with a password a proxy request's
target carries.
"""

from __future__ import annotations

import json
import socket
import subprocess

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet import error as neterror
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.logger import formatEvent
from twisted.trial.unittest import SynchronousTestCase, TestCase
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET

from artifactvault.site import VaultSite, _plain_get, own_path
from tests import support
from tests.fakes import Harness, log_events
from tests.test_limits_wire import read_answer


class SiteLogTests(SynchronousTestCase):

    def setUp(self) -> None:
        self.harness = Harness(self)
        self.events = log_events(self, "artifactvault.site")

    def line(self) -> str:
        """The one line logged so far."""
        self.harness.clock.advance(0)  # connections the server aborted are lost now
        self.assertEqual(len(self.events), 1, [formatEvent(e) for e in self.events])
        return formatEvent(self.events[0])

    def test_hit(self) -> None:
        """A request's line: method, path, status, cache status, bytes, backend."""
        self.harness.fetched("a.bin", b"0123456789")
        del self.events[:]
        self.harness.get("/files/a.bin")
        self.assertRegex(self.line(), r"^GET /files/a\.bin 200 HIT 10 bytes [\d.]+ ms \[test /files/\]$")

    def test_no_query_string(self) -> None:
        """The query string (it may hold a signature or token) is not logged."""
        client = self.harness.get("/files/a.bin?X-Signature=s3cret&token=t0ken")
        self.harness.requests[0].respond(200, b"x")
        self.assertEqual(client.answer().body, b"x")
        line = self.line()
        self.assertTrue(line.startswith("GET /files/a.bin 200 MISS 1 bytes"), line)
        for value in self.events[0].values():
            self.assertNotIn("s3cret", str(value))

    def test_decoded_path(self) -> None:
        """
        The path is logged percent-decoded (a PyPI file's C{+f}, not C{%2Bf}),
        and escaped: a C{%0A} in it cannot start a forged line, a space cannot
        split its field, a byte that is not UTF-8 shows as C{\\xNN}.
        """
        client = self.harness.get("/files/%2Bf/a%0AGET%20/x%20200%20HIT%ff.bin")
        self.assertEqual(client.answer().status, 400)  # (not UTF-8)
        line = self.line()
        self.assertTrue(line.startswith("GET /files/+f/a\\x0aGET\\x20/x\\x20200\\x20HIT\\xff.bin 400 - "),
                        line)
        self.assertNotIn("\n", line)
        self.assertEqual(self.events[0]["path"], "/files/+f/a\\x0aGET\\x20/x\\x20200\\x20HIT\\xff.bin")

    def test_error_reason(self) -> None:
        """An error's line carries its reason."""
        self.harness.get("/files/a.bin")
        self.harness.requests[0].fail(neterror.ConnectionRefusedError())
        self.assertRegex(self.line(), r"^GET /files/a\.bin 502 MISS .*: cannot connect to upstream upstream\.test: "
                                      r"connection refused$")

    def test_bad_path(self) -> None:
        """A refused path is logged once, as a 400."""
        self.harness.get("/files/a/../b")
        self.assertIn(" 400 - ", self.line())

    def test_aborted_by_server(self) -> None:
        """A response cut because the upstream broke is one line, marked as such."""
        self.harness.get("/files/a.bin")
        self.harness.requests[0].respond(200, length=10).send(b"01234").cut()
        line = self.line()
        self.assertRegex(line, r"^GET /files/a\.bin 200 MISS 5 bytes .* \(client gone\)$")
        self.assertTrue(self.events[0]["aborted"])

    def test_client_left(self) -> None:
        """A client that leaves mid-download is one line too."""
        client = self.harness.get("/files/a.bin")
        self.harness.requests[0].respond(200, length=10).send(b"012")
        client.leave()
        self.assertIn("(client gone)", self.line())

    def test_duration_from_arrival(self) -> None:
        """
        A request's duration counts from when its first bytes arrived, not
        from when the server got round to it: the second of two pipelined
        requests waited while the first was answered (5 s on the site's
        clock), and its line says so, as the client saw it.
        """
        now = [100.0]
        self.harness.site.monotonic = lambda: now[0]
        channel = self.harness.site.buildProtocol(None)
        transport = StringTransport()
        channel.makeConnection(transport)
        channel.dataReceived(b"GET /files/a.bin HTTP/1.1\r\nHost: x\r\n\r\n"
                             b"GET /files/a.bin HTTP/1.1\r\nHost: x\r\n\r\n")
        now[0] += 5
        self.harness.requests[0].respond(200, b"0123456789")
        self.assertEqual(transport.value().count(b"HTTP/1.1 200 OK"), 2)
        self.assertEqual([e["ms"] for e in self.events], [5000.0, 5000.0])

    def test_pipelined_from_own_arrival(self) -> None:
        """
        Each pipelined request counts from when the first bytes of its own
        request line arrived, not from the oldest bytes buffered behind the
        request being answered: the third of three began 3 s after the
        second (and ended a second later still), both while the first was
        answered; its line says 2000 ms (it said 4000).
        """
        now = [100.0]
        self.harness.site.monotonic = lambda: now[0]
        channel = self.harness.site.buildProtocol(None)
        transport = StringTransport()
        channel.makeConnection(transport)
        request = b"GET /files/a.bin HTTP/1.1\r\nHost: x\r\n\r\n"
        for at, data in ((100, request), (101, request), (103, request[:10]), (104, request[10:])):
            now[0] = at
            channel.dataReceived(data)
        now[0] = 105
        self.harness.requests[0].respond(200, b"0123456789")
        self.assertEqual(transport.value().count(b"HTTP/1.1 200 OK"), 3)
        self.assertEqual([e["ms"] for e in self.events], [5000.0, 4000.0, 2000.0])

    def test_server_header(self) -> None:
        """Responses name the vault in Server."""
        answer = self.harness.get("/files/a/../b").answer()
        self.assertTrue(answer.header("Server").startswith("artifactvault/"))


class _HoldFirst(Resource):
    """Answers every request at once but the first, which waits for L{release}."""

    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.held: list = []
        self.seen = 0

    def render_GET(self, request):
        self.seen += 1
        if self.seen == 1:
            self.held.append(request)
            return NOT_DONE_YET
        return b"ok"

    def release(self) -> None:
        request = self.held.pop()
        request.write(b"ok")
        request.finish()


_HEADS = st.lists(st.sampled_from([b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n",
                                   b"GET /bb/c HTTP/1.1\r\nHost: x\r\nAccept: */*\r\n\r\n",
                                   b"HEAD /d HTTP/1.1\r\nHost: a-longer-host.test\r\n\r\n"]),
                  min_size=1, max_size=6)


class PipelinedDurationTests(SynchronousTestCase):
    """Every request's logged duration, however its pipelined bytes were cut into reads."""

    @settings(max_examples=300, deadline=None)
    @given(_HEADS, st.data())
    def test_each_from_its_first_byte(self, heads: list[bytes], data: st.DataObject) -> None:
        """
        Requests pipelined on one connection, their bytes cut into reads at
        any places, one second apart, the first request answered only after
        the last read: each request's line counts from the read that held
        the first byte of its request line.
        """
        stream = b"".join(heads)
        cuts = sorted(data.draw(st.sets(st.integers(1, len(stream) - 1), max_size=8), label="cuts"))
        reads = [stream[a:b] for a, b in zip([0, *cuts], [*cuts, len(stream)])]
        events: list[dict] = []
        from twisted.logger import globalLogPublisher

        def observe(event: dict) -> None:
            if event.get("log_namespace") == "artifactvault.site":
                events.append(event)
        globalLogPublisher.addObserver(observe)
        try:
            now = [0.0]
            resource = _HoldFirst()
            site = VaultSite(resource, reactor=Clock())
            site.monotonic = lambda: now[0]
            channel = site.buildProtocol(IPv4Address("TCP", "127.0.0.1", 1234))
            transport = StringTransport()
            channel.makeConnection(transport)
            for second, read in enumerate(reads):
                now[0] = float(second)
                channel.dataReceived(read)
            end = now[0] = float(len(reads))
            resource.release()
        finally:
            globalLogPublisher.removeObserver(observe)
        starts = [sum(map(len, heads[:i])) for i in range(len(heads))]
        read_of = [sum(1 for c in cuts if c <= start) for start in starts]  # (the read each begins in)
        self.assertEqual([e["ms"] for e in events], [(end - second) * 1000 for second in read_of])


    def test_reads_parsed_forgotten(self) -> None:
        """
        The reads a channel remembers (for the arrival of request lines not
        parsed yet) are only those whose bytes may still hold one: a body
        sent in 2,000 reads leaves no trail of them.
        """
        site = VaultSite(_HoldFirst(), reactor=Clock())
        channel = site.buildProtocol(IPv4Address("TCP", "127.0.0.1", 1234))
        transport = StringTransport()
        channel.makeConnection(transport)
        channel.dataReceived(b"POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: 2000\r\n\r\n")
        most = 0
        for _ in range(2000):
            channel.dataReceived(b"x")
            most = max(most, len(channel._reads))
        self.assertTrue(transport.value().startswith(b"HTTP/1.1 405 "), transport.value()[:40])
        self.assertLessEqual(most, 2)


class _Hello(Resource):
    isLeaf = True

    def render_GET(self, request):
        return b"hello"


class TlsOnPlainPortTests(SynchronousTestCase):
    def connect(self):
        # (its own clock: the channel's timeouts must not stay behind in the global reactor)
        protocol = VaultSite(_Hello(), reactor=Clock()).buildProtocol(IPv4Address("TCP", "127.0.0.1", 1234))
        transport = StringTransport()
        protocol.makeConnection(transport)
        return protocol, transport

    def test_tls_handshake_answered_at_once(self) -> None:
        """A TLS ClientHello gets a 400 and a closed connection at once, not a wait for a request line."""
        protocol, transport = self.connect()
        protocol.dataReceived(b"\x16\x03\x01\x00\xde\x01\x00\x00\xda\x03\x03" + b"\x00" * 40)
        self.assertTrue(transport.value().startswith(b"HTTP/1.1 400 Bad Request\r\n"))
        self.assertTrue(transport.disconnecting)

    def test_plain_http_served(self) -> None:
        """Plain HTTP is served as before, also when the request arrives in pieces."""
        protocol, transport = self.connect()
        protocol.dataReceived(b"GE")
        protocol.dataReceived(b"T / HTTP/1.1\r\nHost: x\r\n\r\n")
        self.assertIn(b"200 OK", transport.value())
        self.assertTrue(transport.value().endswith(b"hello"))


class _CountingTransport(StringTransport):
    asked = 0

    def getHost(self):
        self.asked += 1
        return super().getHost()


class LocalAddressTests(SynchronousTestCase):
    def test_asked_of_the_socket_once(self) -> None:
        """Every request of a connection knows the local address; the socket is asked once (a syscall each)."""
        protocol = VaultSite(_Hello(), reactor=Clock()).buildProtocol(IPv4Address("TCP", "127.0.0.1", 1234))
        transport = _CountingTransport(hostAddress=IPv4Address("TCP", "127.0.0.1", 8080))
        protocol.makeConnection(transport)
        protocol.dataReceived(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n" * 3)
        self.assertEqual(transport.value().count(b"200 OK"), 3)
        self.assertEqual(protocol.getHost(), IPv4Address("TCP", "127.0.0.1", 8080))
        self.assertEqual(transport.asked, 1)


class _CountingSocket(socket.socket):
    """A UNIX socket (it takes no TCP option) that counts the options it is asked to set."""

    tries = 0

    def setsockopt(self, *args):
        self.tries += 1
        return super().setsockopt(*args)


class _NotTcpTransport(StringTransport):
    """A connection on a UNIX socket."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.socket = _CountingSocket(socket.AF_UNIX, socket.SOCK_STREAM)

    def getHandle(self):
        return self.socket


class QuickAckTests(SynchronousTestCase):
    def test_not_a_tcp_socket(self) -> None:
        """
        Heads that come in pieces on a connection that cannot be told to
        acknowledge at once: answered all the same, and asked once only.
        (Through a real socket: tests.test_pipelining.SplitHeadTests.)
        """
        protocol = VaultSite(_Hello(), reactor=Clock()).buildProtocol(IPv4Address("TCP", "127.0.0.1", 1234))
        transport = _NotTcpTransport(hostAddress=IPv4Address("TCP", "127.0.0.1", 8080))
        self.addCleanup(transport.socket.close)
        protocol.makeConnection(transport)
        for _ in range(2):
            protocol.dataReceived(b"GET / HTTP/1.1\r\nHo")
            protocol.dataReceived(b"st: x\r\n\r\n")
        self.assertEqual(transport.value().count(b"200 OK"), 2)
        self.assertEqual(transport.socket.tries, 1)


class LookAheadTests(SynchronousTestCase):
    """Which pipelined request heads the channel lets the site fetch ahead (L{_plain_get})."""

    def test_plain_get(self) -> None:
        """A GET's target, in origin or absolute form."""
        self.assertEqual(_plain_get(b"GET /debian/pool/a.deb HTTP/1.1\r\nHost: x\r\nUser-Agent: apt"),
                         b"/debian/pool/a.deb")
        self.assertEqual(_plain_get(b"GET http://deb.example/debian/a.deb HTTP/1.1\r\nHost: deb.example"),
                         b"http://deb.example/debian/a.deb")
        self.assertEqual(_plain_get(b"GET /a.deb HTTP/1.1\r\nContent-Length: 0"), b"/a.deb")  # (no body)

    def test_not_ahead(self) -> None:
        """Other methods, a query, a Range, a condition or credentials: answered in turn, not fetched ahead."""
        for head in (b"HEAD /a.deb HTTP/1.1\r\nHost: x", b"GET /a.deb?x=1 HTTP/1.1\r\nHost: x",
                     b"GET /a.deb HTTP/1.1\r\nRange: bytes=0-1", b"GET /a.deb HTTP/1.1\r\nIf-Range: \"e\"",
                     b"GET /a.deb HTTP/1.1\r\nIf-None-Match: \"e\"", b"GET /a.deb HTTP/1.1\r\nAuthorization: x"):
            self.assertIsNone(_plain_get(head), head)

    def test_stop(self) -> None:
        """A request that may have a body, or cannot be read: nothing after it is looked at."""
        for head in (b"POST /a HTTP/1.1\r\nContent-Length: 5", b"GET /a HTTP/1.1\r\nTransfer-Encoding: chunked",
                     b"GET /a", b"GET /a HTTP/1.1\r\nno colon", b"\r\nGET /a HTTP/1.1"):
            self.assertIs(_plain_get(head), False, head)

    def test_look_ahead_bounded(self) -> None:
        """
        Behind a request being answered, the channel asks the site to fetch
        ahead at most C{prefetch_limit} pipelined GETs; one more each time
        a request is answered; and none once the connection is not persistent.
        """
        harness = Harness(self)
        asked: list[bytes] = []
        harness.site.prefetch = asked.append  # type: ignore[method-assign]
        harness.site.prefetch_limit = 2
        channel = harness.site.buildProtocol(None)
        channel.makeConnection(StringTransport())
        channel.dataReceived(b"".join(b"GET /files/%d.bin HTTP/1.1\r\nHost: x\r\n\r\n" % i for i in range(5)))
        self.assertEqual(asked, [b"/files/1.bin", b"/files/2.bin"])
        harness.requests[0].respond(200, b"0123456789")
        self.assertEqual(asked, [b"/files/1.bin", b"/files/2.bin", b"/files/3.bin"])


#: Requests whose targets carry a client's credentials (as the trial that found them sent them):
#: a proxy request no backend claims, in two methods, a CONNECT, one a backend claims (served), and
#: one refused by a limit (414) before it was parsed.
_WITH_PASSWORD = (
    b"GET http://alice:hunter2@other.example/x?q=1 HTTP/1.1\r\nHost: other.example\r\nConnection: close\r\n\r\n",
    b"HEAD http://alice:hunter2@other.example/x HTTP/1.1\r\nHost: other.example\r\nConnection: close\r\n\r\n",
    b"CONNECT alice:hunter2@other.example:443 HTTP/1.1\r\nHost: other.example:443\r\n\r\n",
    b"GET http://alice:hunter2@deb.example.test/debian/dists/stable/InRelease HTTP/1.1\r\n"
    b"Host: deb.example.test\r\nConnection: close\r\n\r\n",
    b"GET http://alice:hunter2@other.example/" + b"a" * 9000 + b" HTTP/1.1\r\nHost: x\r\n\r\n",
)


class ProxyCredentialsWireTests(TestCase):
    """
    A password in a proxy request's target (userinfo) is in no answer and
    no log line, text or JSON lines, through the real daemon and sockets.
    """

    timeout = 60

    def answers(self, *args: str) -> tuple[support.Daemon, list[bytes]]:
        """A daemon (started with C{args}) asked each of L{_WITH_PASSWORD}: it, and its answers."""
        mirror = f"http://127.0.0.1:{support.free_port()}/debian"  # (nothing there: a served request fails)
        d = support.Daemon([{"type": "apt", "config": {"prefix": "/debian/", "mirror_url": mirror,
                                                       "hosts": ["deb.example.test"]}}])
        self.addCleanup(d.cleanup)
        d.start(args=args)
        answers = []
        for head in _WITH_PASSWORD:
            with socket.create_connection(("127.0.0.1", d.port), timeout=10) as sock:
                sock.sendall(head)
                answers.append(read_answer(sock))
        self.assertEqual([a.split(b" ", 2)[1] for a in answers[:3]], [b"403"] * 3, [a[:200] for a in answers])
        self.assertNotEqual(answers[3].split(b" ", 2)[1], b"403", answers[3][:200])  # (served by the backend)
        self.assertTrue(answers[4].startswith(b"HTTP/1.1 414 "), answers[4][:100])
        return d, answers

    def assert_hidden(self, d: support.Daemon, answers: list[bytes]) -> None:
        """Neither the user name nor the password is in any answer or log line."""
        leaks = [answer[:300] for answer in answers if b"hunter2" in answer or b"alice" in answer]
        leaks += [line[:300] for line in d.log().splitlines() if "hunter2" in line or "alice" in line]
        self.assertEqual(leaks, [])
        self.assertIn(b"http://***@other.example/x", answers[0])

    def test_text_log(self) -> None:
        """Each request is one line, its target's userinfo shown as C{***}."""
        d, answers = self.answers()
        d.wait_log(" 414 - ")  # (the last: all were logged)
        self.assert_hidden(d, answers)
        log = d.log()
        self.assertIn("GET http://***@other.example/x 403 ", log)
        self.assertIn("HEAD http://***@other.example/x 403 ", log)
        self.assertIn("CONNECT ***@other.example:443 403 ", log)
        self.assertIn("GET /debian/dists/stable/InRelease ", log)

    def test_json_log(self) -> None:
        """The same in JSON lines: no field (text, request_line, path, reason) has it."""
        d, answers = self.answers("--log-format", "json")
        d.wait_log('"status": 414')
        self.assert_hidden(d, answers)
        records = [json.loads(line) for line in d.log().splitlines() if line.startswith("{")]
        paths = [r["path"] for r in records if "status" in r]
        self.assertIn("http://***@other.example/x", paths)
        self.assertIn("***@other.example:443", paths)


class OwnPathTests(SynchronousTestCase):
    """Which absolute-form targets name the vault itself (L{own_path}), by the connection's own address."""

    def test_own(self) -> None:
        """Its address and port, literally (port 80 by default; 443 for TLS), or localhost for a loopback one."""
        here = IPv4Address("TCP", "127.0.0.1", 8080)
        for target, local, secure, path in (
                (b"http://127.0.0.1:8080/flat/./InRelease", here, False, b"/flat/./InRelease"),
                (b"HTTP://localhost:8080/-/status?x=1", here, False, b"/-/status?x=1"),
                (b"http://127.0.0.1:8080", here, False, b"/"),
                (b"http://10.1.2.3/a", IPv4Address("TCP", "10.1.2.3", 80), False, b"/a"),
                (b"https://10.1.2.3/a", IPv4Address("TCP", "10.1.2.3", 443), True, b"/a"),
                (b"http://[::1]:8080/a", IPv6Address("TCP", "::1", 8080), False, b"/a"),
                (b"http://127.0.0.1:8080/a", IPv6Address("TCP", "::ffff:127.0.0.1", 8080), False, b"/a")):
            self.assertEqual(own_path(target, local, secure), path, target)

    def test_not_own(self) -> None:
        """
        Another port, address, scheme or name (even one that would resolve
        to the vault), localhost for an address that is not loopback, a
        path, an authority: not the vault itself.
        """
        here = IPv4Address("TCP", "127.0.0.1", 8080)
        for target, local, secure in (
                (b"http://127.0.0.1:8081/a", here, False), (b"http://127.0.0.1/a", here, False),
                (b"http://127.0.0.2:8080/a", here, False), (b"http://127.1:8080/a", here, False),
                (b"http://vault.example:8080/a", here, False), (b"https://127.0.0.1:8080/a", here, False),
                (b"http://127.0.0.1:8080/a", here, True), (b"ftp://127.0.0.1:8080/a", here, False),
                (b"http://localhost:80/a", IPv4Address("TCP", "10.1.2.3", 80), False),
                (b"http://127.0.0.1:x/a", here, False), (b"/a", here, False), (b"127.0.0.1:8080", here, False),
                (b"http://127.0.0.1:8080/\xff", here, False)):
            self.assertIsNone(own_path(target, local, secure), target)


class ProxyToItselfWireTests(TestCase):
    """
    A proxy request (absolute form) for the vault's own address is answered
    as its path (RFC 9112 3.2.2); one for another port or address stays a
    403. Through the real daemon, with curl as the proxy client.
    """

    timeout = 60

    def curl(self, d: support.Daemon, proxy: str, url: str) -> str:
        """The status curl gets for C{url} asked through C{proxy} (no proxy of the environment's)."""
        p = subprocess.run(["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", "-x", proxy, url],
                           capture_output=True, text=True, timeout=30, env=support.no_proxy_env())
        return p.stdout

    def test_itself(self) -> None:
        """curl -x VAULT http://VAULT/-/status is the status page; another port or address is refused."""
        d = support.Daemon([])
        self.addCleanup(d.cleanup)
        d.start()
        other = support.free_port()
        got = {url: self.curl(d, d.base, url)
               for url in (d.url("/-/status"), d.url("/-/health"), f"http://localhost:{d.port}/-/health",
                           f"http://127.0.0.1:{other}/-/health", f"http://127.0.0.2:{d.port}/-/health")}
        self.assertEqual(got, {d.url("/-/status"): "200", d.url("/-/health"): "200",
                               f"http://localhost:{d.port}/-/health": "200",
                               f"http://127.0.0.1:{other}/-/health": "403",
                               f"http://127.0.0.2:{d.port}/-/health": "403"})
        d.wait_log(f"GET http://127.0.0.2:{d.port}/-/health 403 ")
        self.assertIn("GET /-/status 200 ", d.log())  # (logged as the path it was answered as)


class NothingHereWireTests(TestCase):
    """
    Through the real daemon, what Twisted would answer its own way: a path
    nothing answers (the vault's plain 404, not Twisted's HTML page), and
    OPTIONS * (the vault's Server).
    """

    timeout = 60

    def test_plain_404(self) -> None:
        d = support.Daemon([])
        self.addCleanup(d.cleanup)
        d.start()
        for path in ("/favicon.ico", "/-/", "/nothing/here"):
            p = subprocess.run(["curl", "-s", "-i", d.url(path)], capture_output=True, timeout=30,
                               env=support.no_proxy_env())
            head, _, body = p.stdout.partition(b"\r\n\r\n")
            self.assertTrue(head.startswith(b"HTTP/1.1 404"), head)
            self.assertIn(b"content-type: text/plain; charset=utf-8", head.lower())
            self.assertEqual(body, b"nothing here: GET / lists what this vault serves\n")

    def test_options_star(self) -> None:
        """OPTIONS * (which Twisted answers itself) names the vault as its Server, as every other answer."""
        d = support.Daemon([])
        self.addCleanup(d.cleanup)
        d.start()
        p = subprocess.run(["curl", "-s", "-i", "-X", "OPTIONS", "--request-target", "*", d.url("/")],
                           capture_output=True, timeout=30, env=support.no_proxy_env())
        head = p.stdout.partition(b"\r\n\r\n")[0].lower()
        self.assertTrue(head.startswith(b"http/1.1 200"), head)
        self.assertIn(b"\r\nserver: artifactvault/", head)
