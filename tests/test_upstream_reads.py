"""
L{artifactvault.upstream.Endpoints}: upstream connections read a large
block per call, over plain TCP and under TLS.
"""

from __future__ import annotations

from twisted.internet import reactor
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.web.error import SchemeNotSupported
from twisted.internet.protocol import Factory, Protocol
from twisted.trial.unittest import TestCase
from twisted.web.client import URI
from twisted.web.iweb import IAgentEndpointFactory
from zope.interface.verify import verifyObject

from artifactvault.upstream import READ_SIZE, Endpoints


class EndpointsTests(TestCase):
    def test_interface(self) -> None:
        """It is an endpoint factory an Agent can use."""
        verifyObject(IAgentEndpointFactory, Endpoints(reactor, 5))

    @inlineCallbacks
    def connect(self, scheme: bytes) -> Deferred:
        """A real connection through the endpoint for C{scheme}://127.0.0.1:PORT/ to a local server."""
        port = reactor.listenTCP(0, Factory.forProtocol(Protocol), interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        endpoint = Endpoints(reactor, 5).endpointForURI(
            URI.fromBytes(b"%s://127.0.0.1:%d/x" % (scheme, port.getHost().port)))
        protocol = yield endpoint.connect(Factory.forProtocol(Protocol))
        self.addCleanup(protocol.transport.abortConnection)
        return protocol

    @inlineCallbacks
    def test_http_connection_reads_large_blocks(self) -> Deferred:
        """A connection made for an http URL reads READ_SIZE bytes per call, not 64 KiB."""
        protocol = yield self.connect(b"http")
        self.assertEqual(protocol.transport.bufferSize, READ_SIZE)
        self.assertGreater(READ_SIZE, 64 * 1024)

    @inlineCallbacks
    def test_https_connection_reads_large_blocks(self) -> Deferred:
        """For https, the TCP connection under the TLS layer reads READ_SIZE bytes per call."""
        protocol = yield self.connect(b"https")
        self.assertEqual(protocol.transport.transport.bufferSize, READ_SIZE)

    def test_other_schemes(self) -> None:
        """Only http and https."""
        self.assertRaises(SchemeNotSupported, Endpoints(reactor, 5).endpointForURI,
                          URI.fromBytes(b"ftp://example.org/"))
