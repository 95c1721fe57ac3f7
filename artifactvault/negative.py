# -*- test-case-name: tests.test_negative -*-
"""
The negative cache: an upstream's 404 or 410, remembered for a while.

Build tools ask for what does not exist again and again (pip probing
every index for a private package, a registry client looking for a
referrers tag): within C{negative_ttl} the same request (method and URL)
is answered 404 without asking the upstream. It is kept per backend (one
per L{artifactvault.upstream.Upstream}), in memory only, and bounded: the
oldest answers go first when it is full. The upstream's own error answer
(a registry's JSON words) is kept with it, so the client hears the same.
"""

from __future__ import annotations

import collections
from dataclasses import dataclass
from typing import Callable

#: The default C{negative_ttl} (seconds).
NEGATIVE_TTL = 60.0
#: The most answers remembered per backend.
MAX_ENTRIES = 10_000


@dataclass
class Remembered:
    """An upstream's 404/410: what the client is told again."""

    code: int
    phrase: str
    until: float
    host: str | None = None
    body: bytes | None = None
    content_type: str | None = None


class NegativeCache:
    """
    Upstream 404/410 answers by (method, URL), for C{ttl} seconds of
    C{seconds()} (0: nothing is remembered).
    """

    def __init__(self, seconds: Callable[[], float], ttl: float = NEGATIVE_TTL,
                 limit: int = MAX_ENTRIES):
        self._seconds = seconds
        self.ttl = ttl
        self.limit = limit
        self._known: collections.OrderedDict[tuple[str, str], Remembered] = collections.OrderedDict()

    def __len__(self) -> int:
        return len(self._known)

    def remember(self, method: str, url: str, code: int, phrase: str = "",
                 host: str | None = None) -> Remembered | None:
        """The upstream answered C{code} (404/410) to C{method url}: remember it; what is kept (None: nothing)."""
        if self.ttl <= 0:
            return None
        key = (method, url)
        self._known.pop(key, None)
        found = self._known[key] = Remembered(code, phrase, self._seconds() + self.ttl, host)
        while len(self._known) > self.limit:
            self._known.popitem(last=False)
        return found

    def lookup(self, method: str, url: str) -> Remembered | None:
        """What the upstream answered to C{method url} within the ttl, or None."""
        found = self._known.get((method, url))
        if found is None:
            return None
        if self._seconds() >= found.until:
            del self._known[(method, url)]
            return None
        return found

    def forget(self, url_prefix: str = "") -> int:
        """Forget answers for URLs starting with C{url_prefix} (all, by default); how many."""
        doomed = [key for key in self._known if key[1].startswith(url_prefix)]
        for key in doomed:
            del self._known[key]
        return len(doomed)
