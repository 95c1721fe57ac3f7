"""
Tests for L{artifactvault.framing}: upstream answers framed by the forms of
Transfer-Encoding that nginx serves and Twisted's client alone refuses,
codings decoded, Connection-listed fields dropped. (Through the real daemon:
tests.test_http_wire.)
"""

from __future__ import annotations

import gzip
import zlib
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectionDone
from twisted.internet.protocol import Protocol
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from twisted.web._newclient import HTTP11ClientProtocol, Request, ResponseFailed
from twisted.web.client import ResponseDone
from twisted.web.http import PotentialDataLoss
from twisted.web.http_headers import Headers

from artifactvault.framing import (TolerantClientFactory, TolerantClientProtocol, UnsupportedTransferCoding,
                                   transfer_codings)
from artifactvault.upstream import describe_failure


def chunk(data: bytes) -> bytes:
    return b"%x\r\n" % len(data) + data + b"\r\n0\r\n\r\n"


class _Body(Protocol):
    def __init__(self) -> None:
        self.data = b""
        self.reason: Failure | None = None

    def dataReceived(self, data: bytes) -> None:
        self.data += data

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        self.reason = reason


class TransferCodingsTests(SynchronousTestCase):

    def test_lists(self) -> None:
        """Every line is one list; identity and empty elements code nothing; chunked last frames."""
        self.assertEqual(transfer_codings([b"chunked"]), (True, []))
        self.assertEqual(transfer_codings([b"Identity, Chunked"]), (True, []))
        self.assertEqual(transfer_codings([b"identity", b"chunked"]), (True, []))
        self.assertEqual(transfer_codings([b"chunked,"]), (True, []))
        self.assertEqual(transfer_codings([b"chunked", b"chunked"]), (True, []))
        self.assertEqual(transfer_codings([b"gzip, chunked"]), (True, [b"gzip"]))
        self.assertEqual(transfer_codings([b"identity"]), (False, []))
        self.assertEqual(transfer_codings([b"deflate"]), (False, [b"deflate"]))

    def test_refused(self) -> None:
        """A coding that cannot be undone, or chunked before another coding, is refused."""
        for lines in ([b"foo"], [b"compress, chunked"], [b"chunked, gzip"], [b"br"]):
            self.assertRaises(UnsupportedTransferCoding, transfer_codings, lines)


class ParserTests(SynchronousTestCase):
    """The tolerant protocol reading answers from bytes, as from an upstream's socket."""

    def exchange(self, wire: bytes, method: bytes = b"GET") -> tuple[Deferred, StringTransport]:
        protocol = TolerantClientFactory(lambda p: None, "test").buildProtocol(None)
        self.assertIsInstance(protocol, TolerantClientProtocol)
        transport = StringTransport()
        protocol.makeConnection(transport)
        d = protocol.request(Request(method, b"/x", Headers({b"host": [b"up.test"]}), None))
        protocol.dataReceived(wire)
        self.protocol = protocol
        return d, transport

    def body(self, wire: bytes, close: bool = False) -> tuple[Any, bytes, Failure]:
        d, _ = self.exchange(wire)
        response = self.successResultOf(d)
        body = _Body()
        response.deliverBody(body)
        if close:
            self.protocol.connectionLost(Failure(ConnectionDone()))
        self.assertIsNotNone(body.reason, "the body has not ended")
        return response, body.data, body.reason

    def test_identity_then_chunked(self) -> None:
        """'identity, chunked' (one line or two) and a trailing comma are chunked bodies."""
        for te in (b"Transfer-Encoding: identity, chunked", b"Transfer-Encoding: identity\r\nTransfer-Encoding: chunked",
                   b"Transfer-Encoding: chunked,"):
            _, data, reason = self.body(b"HTTP/1.1 200 OK\r\n" + te + b"\r\n\r\n" + chunk(b"hello world"))
            self.assertEqual(data, b"hello world", te)
            self.assertTrue(reason.check(ResponseDone), te)

    def test_gzip_chunked_is_decoded(self) -> None:
        """'gzip, chunked': the chunks are joined and the gzip undone; the body is the content."""
        _, data, reason = self.body(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n"
                                    + chunk(gzip.compress(b"hello world" * 100)))
        self.assertEqual((data, reason.check(ResponseDone)), (b"hello world" * 100, ResponseDone))

    def test_truncated_coding_is_not_complete(self) -> None:
        """A gzip stream cut short inside complete chunks is a broken body, never a complete one."""
        coded = gzip.compress(b"hello world" * 100)[:-9]
        _, data, reason = self.body(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n" + chunk(coded))
        self.assertTrue(reason.check(ResponseFailed))

    def test_deflate_until_close(self) -> None:
        """Chunked not last: the body runs to the close (a Content-Length is not its length), decoded."""
        coded = zlib.compress(b"abc" * 1000)
        _, data, reason = self.body(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: deflate\r\nContent-Length: 3\r\n\r\n"
                                    + coded, close=True)
        self.assertEqual(data, b"abc" * 1000)
        self.assertTrue(reason.check(PotentialDataLoss))

    def test_identity_with_length(self) -> None:
        """'identity' codes nothing: the Content-Length frames the body as usual."""
        _, data, reason = self.body(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: identity\r\nContent-Length: 5\r\n\r\nhello")
        self.assertEqual((data, reason.check(ResponseDone)), (b"hello", ResponseDone))

    def test_unknown_coding_is_refused_with_a_reason(self) -> None:
        """A coding nobody can undo fails the request, and the reason names it (for the 502)."""
        d, transport = self.exchange(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: foo\r\n\r\nhello")
        failure = self.failureResultOf(d, ResponseFailed)
        error = describe_failure(failure.value, "http://up.test/x", 30)
        self.assertIn("transfer coding foo", error.reason)
        self.assertEqual(error.status, 502)

    def test_connection_listed_fields_are_dropped(self) -> None:
        """Fields the Connection field names were for that hop: not part of the response."""
        response, _, _ = self.body(b"HTTP/1.1 200 OK\r\nConnection: a, B\r\na: 1\r\nb: 2\r\nc: 3\r\n"
                                   b"Content-Length: 0\r\n\r\n")
        self.assertEqual([response.headers.hasHeader(n) for n in (b"a", b"b", b"c")], [False, False, True])

    def test_plain_answers_unchanged(self) -> None:
        """Chunked and length-framed answers read as Twisted reads them; a HEAD has no body."""
        _, data, _ = self.body(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + chunk(b"abc"))
        self.assertEqual(data, b"abc")
        d, _ = self.exchange(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n", method=b"HEAD")
        self.assertEqual(self.successResultOf(d).code, 200)

    def test_class(self) -> None:
        """The pool's protocols are Twisted's own, with our parser."""
        self.assertTrue(issubclass(TolerantClientProtocol, HTTP11ClientProtocol))
