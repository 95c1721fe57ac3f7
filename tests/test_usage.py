"""Tests for L{artifactvault.cache.usage}: the cache's size and its least recently used entries."""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from artifactvault.cache.usage import Usage


class UsageTests(SynchronousTestCase):

    def test_total_and_order(self) -> None:
        """Stored entries add up; a use moves an entry to the most recent end; removal subtracts."""
        u = Usage()
        u.stored("a", 10)
        u.stored("b", 20)
        u.stored("c", 30)
        u.used("a")
        self.assertEqual((u.total, list(u.least_recent())), (60, ["b", "c", "a"]))
        u.stored("b", 5)  # recommitted smaller: counted once, now the most recent
        u.removed("c")
        u.removed("nope")
        self.assertEqual((u.total, list(u.least_recent()), len(u)), (15, ["a", "b"], 2))

    def test_load_keeps_what_came_since(self) -> None:
        """A scan's findings are ordered by last use and stay older than entries stored or used meanwhile."""
        u = Usage()
        u.stored("new", 1)
        u.load([("x", 100, 50.0), ("y", 200, 10.0), ("new", 1, 5.0)])
        self.assertEqual((list(u.least_recent()), u.total), (["y", "x", "new"], 301))
