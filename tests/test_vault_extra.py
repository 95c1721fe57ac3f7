"""
What the PyPI backend added to L{Vault}: L{Vault.serve_cached} (answer from
the cache with nothing else looked up) and L{Vault.read} dropping a
document whose bytes vanished.
"""

from __future__ import annotations

import os
from typing import Any, Callable

from twisted.trial.unittest import SynchronousTestCase

from artifactvault.cache.store import Entry
from tests.fakes import Answer, Harness


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
