"""The HTTP site."""

from __future__ import annotations

from twisted.internet.address import IPv4Address
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.resource import Resource

from artifactvault.site import VaultSite


class _Hello(Resource):
    isLeaf = True

    def render_GET(self, request):
        return b"hello"


class TlsOnPlainPortTests(SynchronousTestCase):
    def connect(self):
        protocol = VaultSite(_Hello()).buildProtocol(IPv4Address("TCP", "127.0.0.1", 1234))
        transport = StringTransport()
        protocol.makeConnection(transport)
        return protocol, transport

    def test_tls_handshake_answered_at_once(self) -> None:
        """A TLS ClientHello gets a 400 and a closed connection at once, not a wait for a request line."""
        protocol, transport = self.connect()
        protocol.dataReceived(b"\x16\x03\x01\x00\xde\x01\x00\x00\xda\x03\x03" + b"\x00" * 40)
        self.assertTrue(transport.value().startswith(b"HTTP/1.0 400 Bad Request\r\n"))
        self.assertTrue(transport.disconnecting)

    def test_plain_http_served(self) -> None:
        """Plain HTTP is served as before, also when the request arrives in pieces."""
        protocol, transport = self.connect()
        protocol.dataReceived(b"GE")
        protocol.dataReceived(b"T / HTTP/1.1\r\nHost: x\r\n\r\n")
        self.assertIn(b"200 OK", transport.value())
        self.assertTrue(transport.value().endswith(b"hello"))
