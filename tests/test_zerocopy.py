"""Tests for L{artifactvault.zerocopy}: when file bytes may bypass Twisted's buffer, and sending them."""

from __future__ import annotations

import os
import socket

from twisted.internet import tcp
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.test.requesthelper import DummyRequest

from artifactvault import zerocopy


class _Channel:
    def __init__(self, transport: object):
        self.transport = transport


class _Request:
    def __init__(self, transport: object):
        self.channel = _Channel(transport)


class ZeroCopyTests(SynchronousTestCase):

    def test_only_plain_tcp(self) -> None:
        """In-memory, TLS-wrapped or missing transports never take the sendfile path."""
        self.assertIsNone(zerocopy.direct_transport(_Request(StringTransport())))
        self.assertIsNone(zerocopy.direct_transport(_Request(None)))
        self.assertIsNone(zerocopy.direct_transport(object()))

    def test_plain_tcp_server_qualifies(self) -> None:
        """A real TCP server transport qualifies, and is drained only with nothing buffered."""
        transport = tcp.Server.__new__(tcp.Server)
        transport.dataBuffer, transport.offset, transport._tempDataLen = b"", 0, 0
        transport.socket, transport.connected, transport.disconnecting = None, 1, False
        self.assertIs(zerocopy.direct_transport(_Request(transport)), transport)
        self.assertTrue(zerocopy.drained(transport))
        transport._tempDataLen = 10
        self.assertFalse(zerocopy.drained(transport))
        transport._tempDataLen, transport.disconnecting = 0, True
        self.assertFalse(zerocopy.drained(transport))

    def test_raw_body_only_when_twisted_does_not_frame_it(self) -> None:
        """File bytes may bypass request.write only once headers are out and for an unframed body."""
        request = DummyRequest([b""])
        request.method, request.code, request.startedWriting, request.chunked = b"GET", 200, 1, 0
        self.assertTrue(zerocopy.raw_body(request))
        for name, value in [("startedWriting", 0), ("chunked", 1), ("method", b"HEAD"), ("code", 304),
                            ("code", 204)]:
            with self.subTest(**{name: value}):
                saved = getattr(request, name)
                setattr(request, name, value)
                self.assertFalse(zerocopy.raw_body(request))
                setattr(request, name, saved)

    def test_send_file_bytes(self) -> None:
        """send() puts the file's bytes from an offset on the socket; a broken socket gives None."""
        path = self.mktemp()
        with open(path, "wb") as f:
            f.write(b"0123456789")
        fd = os.open(path, os.O_RDONLY)
        self.addCleanup(os.close, fd)
        a, b = socket.socketpair()
        self.addCleanup(b.close)

        class T:
            socket = a
        self.assertEqual(zerocopy.send(T, fd, 3, 5), 5)
        self.assertEqual(b.recv(100), b"34567")
        a.close()
        self.assertIsNone(zerocopy.send(T, fd, 0, 5))
