"""
What backends added to L{Vault}: L{Vault.serve_cached} (answer from the
cache with nothing else looked up), L{Vault.read} dropping a document whose
bytes vanished (PyPI); L{Vault.read_range} and L{Vault.serve_range}, part
of a stored document read or sent through a rewrite, from a local or a
remote store (npm's templates).
"""

from __future__ import annotations

import os
from typing import Any, Callable

from twisted.internet.defer import fail
from twisted.trial.unittest import SynchronousTestCase

from artifactvault.cache.interface import StoreUnavailable
from artifactvault.cache.store import Entry
from artifactvault.flight import StoreDown
from artifactvault.serve import SMALL
from tests.fakes import Answer, Harness, RemoteBody


class ServeCachedTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.h = Harness(self, ttl=10)
        self.assertEqual(self.h.fetched("a", b"hello").body, b"hello")
        self.key = self.h.url("a")

    def serve_cached(self, accept: Callable[[Entry], bool] | None = None) -> tuple[bool, Answer]:
        """A request answered only by serve_cached; a 404 from the test when it declines."""
        served: list[bool] = []

        def handle(responder: Any, segments: list[str]) -> None:
            def answered(result: bool) -> None:
                served.append(result)
                if not result:
                    responder.error(404, "declined")
            self.h.vault.serve_cached(responder, self.key, accept).addCallback(answered)

        self.h.backend.handle = handle
        answer = self.h.get("/files/whatever").answer()
        return served[0], answer

    def test_fresh_entry_served_as_hit(self) -> None:
        """A fresh committed entry is answered in full, marked HIT, with no upstream request."""
        served, answer = self.serve_cached()
        self.assertTrue(served)
        self.assertEqual((answer.status, answer.body, answer.header("x-cache")), (200, b"hello", "HIT"))
        self.assertEqual(len(self.h.requests), 1)

    def test_missing_entry_sends_nothing(self) -> None:
        """Without an entry it returns False having sent nothing (the caller's 404 is all there is)."""
        self.key = self.h.url("other")
        served, answer = self.serve_cached()
        self.assertEqual((served, answer.status, answer.header("x-cache")), (False, 404, None))

    def test_stale_entry_is_not_served(self) -> None:
        """An entry past its freshness needs the upstream: not this method's job."""
        self.h.clock.advance(11)
        served, answer = self.serve_cached()
        self.assertEqual((served, answer.status), (False, 404))

    def test_accept_may_refuse(self) -> None:
        """The caller's check sees the entry and can turn the hit down."""
        seen: list[str] = []
        served, answer = self.serve_cached(lambda e: seen.append(e.url) or False)
        self.assertEqual((served, answer.status, seen), (False, 404, [self.key]))

    def test_vanished_document_is_dropped(self) -> None:
        """Reading a document whose data file is gone gives None and forgets the entry."""
        entry = self.h.store.lookup(self.key)
        os.unlink(self.h.store.data_path(entry))
        self.assertIsNone(self.successResultOf(self.h.vault.read(entry)))
        self.assertIsNone(self.h.store.lookup(self.key))


class RangeTests(SynchronousTestCase):
    """L{Vault.read_range} and L{Vault.serve_range}, on a disk store and on one whose bodies are remote."""

    BODY = bytes(range(256)) * (SMALL // 256 * 3)  # (larger than SMALL: a producer sends it)

    def stored(self, remote: bool) -> tuple[Harness, Entry]:
        h = Harness(self, remote=remote)
        self.assertEqual(h.fetched("a", self.BODY).status, 200)
        entry = h.store.lookup(h.url("a"))
        assert entry is not None
        return h, entry

    def served(self, h: Harness, entry: Entry, first: int, last: int) -> tuple[list[bool], Answer]:
        """A request answered by serve_range(first, last) with every byte upper-cased (a 502 if it declines)."""
        served: list[bool] = []

        def answered(result: bool, responder: Any) -> None:
            served.append(result)
            if not result:
                responder.error(502, "gone")

        def handle(responder: Any, segments: list[str]) -> None:
            responder.request.setHeader(b"content-length", b"%d" % (last - first + 1))
            h.vault.serve_range(responder, entry, first, last, bytes.upper).addCallback(answered, responder)

        h.backend.handle = handle
        return served, h.get("/files/a").answer()

    def test_read_range(self) -> None:
        """Bytes first..last of a stored entry, the same from either store."""
        for remote in (False, True):
            h, entry = self.stored(remote)
            self.assertEqual(self.successResultOf(h.vault.read_range(entry, 3, 2999)), self.BODY[3:3000])

    def test_read_range_from_a_store_that_breaks_off(self) -> None:
        """A remote store that fails mid-stream is the answer's reason (StoreDown, 503), not a bug (500)."""
        h, entry = self.stored(True)
        self.patch(RemoteBody, "stream", lambda *_: fail(StoreUnavailable("connection reset")))
        self.failureResultOf(h.vault.read_range(entry, 0, 9), StoreDown)

    def test_read_range_of_vanished_bytes(self) -> None:
        """Bytes that vanished give None, and the entry is forgotten (asking again fetches it)."""
        h, entry = self.stored(False)
        os.unlink(h.store.data_path(entry))
        self.assertIsNone(self.successResultOf(h.vault.read_range(entry, 0, 9)))
        self.assertIsNone(h.store.lookup(entry.key))

    def test_serve_range_rewrites(self) -> None:
        """
        A large span (a producer), a small one (written at once) and a
        remote one (streamed in chunks) each go through the rewrite, and
        the answer ends.
        """
        for remote, first, last in ((False, 5, len(self.BODY) - 1), (False, 5, 200), (True, 5, len(self.BODY) - 1)):
            h, entry = self.stored(remote)
            served, answer = self.served(h, entry, first, last)
            self.assertEqual(served, [True])
            self.assertEqual((answer.status, answer.body), (200, self.BODY[first:last + 1].upper()))

    def test_serve_range_of_vanished_bytes(self) -> None:
        """Bytes that vanished are not sent: False, and the caller answers."""
        h, entry = self.stored(False)
        os.unlink(h.store.data_path(entry))
        served, answer = self.served(h, entry, 0, 9)
        self.assertEqual((served, answer.status), ([False], 502))
        self.assertIsNone(h.store.lookup(entry.key))


class StaleReplacedTests(SynchronousTestCase):
    """
    A stale copy whose bytes another download of the same key replaced
    while this request asked the upstream (which then failed): the newer
    entry answers, not the failure (an upstream flapping 200/5xx).
    """

    def test_newer_entry_answers(self) -> None:
        h = Harness(self, ttl=1)
        self.assertEqual(h.fetched("s.bin", b"old copy").body, b"old copy")
        h.clock.advance(5)
        client = h.get("/files/s.bin")  # stale: asks the upstream again
        (old,) = list(h.store.entries())
        # Meanwhile another download of the same key is committed (its bytes replace the old ones).
        temp, fd = h.store.spool.new_temp()
        os.write(fd, b"new copy")
        now = h.clock.seconds()
        h.store.begin(old.key, temp, fd).commit(Entry(key=old.key, data="", size=8, stored_at=now,
                                                      fresh_until=now + 1))
        self.assertNotEqual(next(iter(h.store.entries())).data, old.data)
        h.requests[-1].respond(503, b"")
        answer = client.answer()
        self.assertEqual((answer.status, answer.body), (200, b"new copy"))
