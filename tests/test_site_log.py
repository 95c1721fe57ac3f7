"""
The one log line per request (L{artifactvault.site}): its text, its
structured fields, and that it is formatted without Twisted's per-field
formatter.
"""

from __future__ import annotations

from twisted.internet.address import IPv4Address
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.logger import formatEvent, globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.resource import Resource

from artifactvault.site import VaultSite


class Page(Resource):
    isLeaf = True

    def render_GET(self, request):
        request.cache_status = "HIT"
        return b"hello"


class LogLineTests(SynchronousTestCase):
    def test_request_line(self) -> None:
        """A request logs one line with method, path, status, cache status, bytes and time, and the same as fields."""
        events: list[dict] = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        channel = VaultSite(Page(), reactor=Clock()).buildProtocol(IPv4Address("TCP", "127.0.0.1", 1))
        channel.makeConnection(StringTransport())
        channel.dataReceived(b"GET /a/b?token=secret HTTP/1.1\r\nHost: x\r\n\r\n")
        lines = [e for e in events if e.get("log_namespace") == "artifactvault.site"]
        self.assertEqual(len(lines), 1)
        event = lines[0]
        self.assertRegex(formatEvent(event), r"^GET /a/b 200 HIT 5 bytes \d+\.\d ms$")
        self.assertEqual((event["log_format"], event["path"], event["status"], event["cache"], event["bytes"]),
                         ("{line}", "/a/b", 200, "HIT", 5))
        self.assertNotIn("secret", repr(event))
        self.assertIsInstance(event["ms"], float)
