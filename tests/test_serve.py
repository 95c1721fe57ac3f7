"""Serving committed files: sendfile on plain TCP, byte-exact, with slow clients and ranges."""

from __future__ import annotations

import http.client
import os
import time

from twisted.internet import reactor
from twisted.internet.threads import deferToThread
from twisted.trial.unittest import TestCase
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET

from artifactvault.cache.store import Entry, FileStore
from artifactvault.serve import Responder, serve_entry
from artifactvault.site import VaultSite


class _Committed(Resource):
    isLeaf = True

    def __init__(self, store: FileStore, entry: Entry) -> None:
        super().__init__()
        self.store, self.entry = store, entry

    def render_GET(self, request):
        serve_entry(Responder(request), self.store, self.entry, "HIT")
        return NOT_DONE_YET


def fetch(port: int, headers: dict[str, str], slow: bool) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    conn.request("GET", "/x", headers=headers)
    response = conn.getresponse()
    parts = []
    while chunk := response.read(1 << 20):
        parts.append(chunk)
        if slow and len(parts) < 6:
            time.sleep(0.05)  # (a slow reader: the socket fills, sendfile must wait and go on)
    conn.close()
    return response.status, b"".join(parts)


class SendfileTests(TestCase):
    def setUp(self) -> None:
        self.data = os.urandom(12 << 20)
        store = FileStore(self.mktemp())
        store.open()
        self.entry = self.successResultOf(store.put(Entry(key="k", data="", size=0, stored_at=1.0), self.data))
        self.port = reactor.listenTCP(0, VaultSite(_Committed(store, self.entry)), interface="127.0.0.1")
        self.addCleanup(self.port.stopListening)
        self.sent = 0
        real = os.sendfile

        def counting(*args):
            n = real(*args)
            self.sent += n
            return n

        self.patch(os, "sendfile", counting)

    async def test_whole_body_slow_reader(self) -> None:
        """A 12 MiB body to a slow reader arrives byte-exact, most of it by sendfile."""
        status, body = await deferToThread(fetch, self.port.getHost().port, {}, True)
        self.assertEqual((status, len(body)), (200, len(self.data)))
        self.assertEqual(body, self.data)
        self.assertGreater(self.sent, len(self.data) // 2)

    async def test_range(self) -> None:
        """A range is sent exactly, sendfile included."""
        status, body = await deferToThread(fetch, self.port.getHost().port, {"Range": "bytes=1000-9999999"}, False)
        self.assertEqual((status, body), (206, self.data[1000:10_000_000]))
        self.assertGreater(self.sent, 0)
