"""
L{Vault.serve_cached} (answer from the cache with nothing else looked up),
L{Vault.read} dropping a document whose bytes vanished, and L{Vault.serve}
with an upstream that answers at once, and a HEAD miss.
"""

from __future__ import annotations

import os

from twisted.trial.unittest import SynchronousTestCase

from treq.testing import StubTreq

from artifactvault.cache.store import Entry
from artifactvault.flight import Artifact
from artifactvault.serve import Responder
from artifactvault.upstream import Upstream
from tests.memory import FakeUpstream, Request, World


class VaultExtraTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.world = World(self)

    def put(self, key: str, data: bytes, ttl: float | None = None) -> Entry:
        path, fd = self.world.store.new_temp()
        os.write(fd, data)
        fresh = None if ttl is None else self.world.now + ttl
        entry = Entry(key=key, data="", size=len(data), stored_at=self.world.now,
                      fresh_until=fresh, url=f"http://up/{key}")
        committed = self.successResultOf(self.world.store.commit(path, fd, entry))
        os.close(fd)
        return committed

    def serve(self, key: str, accept=None) -> tuple[bool, Request]:
        request = Request("/x")
        return self.world.vault.serve_cached(Responder(request), key, accept), request

    def test_fresh_entry_served_as_hit(self) -> None:
        """A fresh committed entry is answered in full, marked HIT."""
        self.put("k", b"hello")
        served, request = self.serve("k")
        self.assertTrue(served)
        self.assertEqual((request.body, request.header("x-cache"), request.finished), (b"hello", "HIT", 1))

    def test_missing_entry_sends_nothing(self) -> None:
        """Without an entry it returns False and the request is untouched."""
        served, request = self.serve("nope")
        self.assertFalse(served)
        self.assertEqual((request.written, request.finished), ([], 0))

    def test_stale_entry_is_not_served(self) -> None:
        """An entry past its freshness needs the upstream: not this method's job."""
        self.put("k", b"hello", ttl=10)
        self.world.advance(11)
        served, request = self.serve("k")
        self.assertFalse(served)
        self.assertEqual(request.written, [])

    def test_accept_may_refuse(self) -> None:
        """The caller's check sees the entry and can turn the hit down."""
        self.put("k", b"hello")
        seen = []
        served, request = self.serve("k", lambda e: seen.append(e.url) or False)
        self.assertFalse(served)
        self.assertEqual((seen, request.written), (["http://up/k"], []))


    def test_vanished_document_is_dropped(self) -> None:
        """Reading a document whose data file is gone gives None and forgets the entry."""
        entry = self.put("doc", b"{}")
        os.unlink(self.world.store.data_path(entry))
        self.assertIsNone(self.world.vault.read(entry))
        self.assertIsNone(self.world.store.lookup("doc"))

    def test_flight_finished_at_once(self) -> None:
        """
        An upstream that answers before the request looks at its flight (an
        in-memory one does) still gets the body served, from the stored copy.
        """
        client = StubTreq(FakeUpstream({"/a": (200, "text/plain", b"at once")}))
        upstream = Upstream(client, self.world.reactor)
        request = Request("/a")
        self.world.vault.serve(Responder(request), Artifact(key="a", url="http://up/a", upstream=upstream))
        self.assertEqual((request.body, request.finished, request.header("x-cache")), (b"at once", 1, "MISS"))

    def test_head_miss_reports_upstream_length(self) -> None:
        """A HEAD miss answers with the upstream's Content-Length (the client's body length is 0 for HEAD)."""
        client = StubTreq(FakeUpstream({"/a": (200, "text/plain", b"x" * 1200)}))
        upstream = Upstream(client, self.world.reactor)
        request = Request("/a", method=b"HEAD")
        self.world.vault.serve(Responder(request), Artifact(key="a", url="http://up/a", upstream=upstream))
        client.flush()
        self.assertEqual((request.header("content-length"), request.finished, request.body), ("1200", 1, b""))
