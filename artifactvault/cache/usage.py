# -*- test-case-name: tests.test_usage -*-
"""
How much the cache holds and which entries were used least recently, so the
store can keep it under ``max_size`` by evicting the least recently used.

Last use is kept in memory only: it is learnt from the metadata files at
start (by a scan in a thread; an entry's last use is then when it was
stored or revalidated) and from every hit after that. Losing it in a restart
costs a little precision in the order of eviction, never correctness.
"""

from __future__ import annotations

import collections
import heapq
from operator import itemgetter
from typing import Iterable, Iterator


_size = itemgetter(1)
#: How many of the largest entries are kept track of (L{Usage.largest}).
TOP = 64


class Usage:
    def __init__(self) -> None:
        #: key → size, least recently used first
        self._sizes: collections.OrderedDict[str, int] = collections.OrderedDict()
        self.total = 0
        #: The largest entries, kept as they come (L{largest}): every entry
        #: not in here is no larger than the smallest one in here.
        self._top: dict[str, int] = {}

    def __len__(self) -> int:
        return len(self._sizes)

    def __contains__(self, key: str) -> bool:
        return key in self._sizes

    def stored(self, key: str, size: int) -> None:
        """C{key} was committed (again) with C{size} bytes: it is now the most recent."""
        self.total += size - self._sizes.pop(key, 0)
        self._sizes[key] = size
        top = self._top
        floor = min(top.values()) if top else 0
        if key in top and size < floor:
            del top[key]  # (it shrank: it might not be among the largest now)
        elif key in top or (top and size > floor):
            top[key] = size
            if len(top) > TOP:
                del top[min(top, key=top.__getitem__)]

    def used(self, key: str) -> None:
        if key in self._sizes:
            self._sizes.move_to_end(key)

    def removed(self, key: str) -> None:
        self.total -= self._sizes.pop(key, 0)
        self._top.pop(key, None)

    def largest(self, n: int) -> list[tuple[str, int]]:
        """
        The C{n} (at most L{TOP}) largest entries, (key, size) each, largest
        first: from those kept as they came, a walk of every entry only when
        too many of those were removed.
        """
        n = min(n, TOP)
        if len(self._top) < min(n, len(self._sizes)):
            self._top = dict(heapq.nlargest(TOP, self._sizes.items(), key=_size))
        return sorted(self._top.items(), key=_size, reverse=True)[:n]

    def least_recent(self) -> Iterator[str]:
        return iter(list(self._sizes))

    def load(self, scanned: Iterable[tuple[str, int, float]]) -> None:
        """
        Take in what a scan of the disk found, (key, size, last use) each.
        Entries stored or used since the scan began are more recent than
        anything it found and keep their place.
        """
        since = list(self._sizes.items())
        self._sizes.clear()
        self.total = 0
        self._top.clear()
        for key, size, _ in sorted(scanned, key=lambda item: item[2]):
            self.stored(key, size)
        for key, size in since:
            self.stored(key, size)
        self._top = dict(heapq.nlargest(TOP, self._sizes.items(), key=_size))
