# -*- test-case-name: tests.test_negative -*-
"""
The negative cache: an upstream's 404 or 410, remembered for a while.

Build tools ask for what does not exist again and again (pip probing
every index for a private package, a registry client looking for a
referrers tag): within C{negative_ttl} the same request (method, URL and
the headers that choose the answer, such as a registry's C{Accept}: a 404
for a manifest index asked by a client that takes no index says nothing of
one that does) is answered 404 without asking the upstream. It is kept per backend (one
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
    #: An answer the backend relays as it came (the http backend): replayed
    #: so, its status (a 410 stays 410), words and end-to-end headers.
    relayed: bool = False
    headers: dict[str, str] | None = None
    key: tuple = ()


#: Request headers that do not choose which answer an upstream gives (a
#: revalidation's 404 is the same as a download's).
_NOT_VARIANTS = frozenset({"if-none-match", "if-modified-since", "range", "if-range"})


def variant(headers: dict[str, str] | None) -> tuple[tuple[str, str], ...]:
    """The headers of a request that may choose its answer, in one order: part of its key."""
    return tuple(sorted((k.lower(), v) for k, v in (headers or {}).items() if k.lower() not in _NOT_VARIANTS))


class NegativeCache:
    """
    Upstream 404/410 answers by (method, URL, L{variant} of the request's
    headers), for C{ttl} seconds of C{seconds()} (0: nothing is remembered).
    """

    def __init__(self, seconds: Callable[[], float], ttl: float = NEGATIVE_TTL,
                 limit: int = MAX_ENTRIES):
        self._seconds = seconds
        self.ttl = ttl
        self.limit = limit
        self._known: collections.OrderedDict[tuple[str, str, tuple], Remembered] = collections.OrderedDict()

    def __len__(self) -> int:
        return len(self._known)

    def remember(self, method: str, url: str, code: int, phrase: str = "",
                 host: str | None = None, headers: dict[str, str] | None = None) -> Remembered | None:
        """
        The upstream answered C{code} (404/410) to C{method url} with
        C{headers}: remember it; what is kept (None: nothing).
        """
        if self.ttl <= 0:
            return None
        key = (method, url, variant(headers))
        self._known.pop(key, None)
        found = self._known[key] = Remembered(code, phrase, self._seconds() + self.ttl, host, key=key)
        while len(self._known) > self.limit:
            self._known.popitem(last=False)
        return found

    def lookup(self, method: str, url: str, headers: dict[str, str] | None = None) -> Remembered | None:
        """What the upstream answered to C{method url} with C{headers} within the ttl, or None."""
        key = (method, url, variant(headers))
        found = self._known.get(key)
        if found is None:
            return None
        if self._seconds() >= found.until:
            del self._known[key]
            return None
        return found

    def drop(self, known: Remembered) -> None:
        """Forget C{known} (if it is still what its request is answered with)."""
        if self._known.get(known.key) is known:
            del self._known[known.key]

    def forget(self, url_prefix: str = "") -> int:
        """Forget answers for URLs starting with C{url_prefix} (all, by default); how many."""
        doomed = [key for key in self._known if key[1].startswith(url_prefix)]
        for key in doomed:
            del self._known[key]
        return len(doomed)
