# -*- test-case-name: tests.test_ratelimit -*-
"""
Backing off an upstream that said ``429 Too Many Requests``.

An upstream's 429 is a promise: asking again before its ``Retry-After``
only makes the wait longer (Docker Hub counts every request of an anonymous
client). So after a 429, the L{artifactvault.upstream.Upstream} that got it
sends nothing for that long: its requests fail at once with a 429 of our own
that says how long is left, which the core treats like the upstream's (a
stale copy is served where there is one, a miss gets the 429 and its
``Retry-After``). Fresh cached answers never needed the upstream anyway.

The numbers are counted here (L{RateLimit.throttled}, L{RateLimit.held}) for
whoever reports metrics.
"""

from __future__ import annotations

import math
from email.utils import parsedate_to_datetime
from typing import Callable

#: How long to back off after a 429 that names no (readable) Retry-After.
DEFAULT_BACKOFF = 30.0
#: The longest back-off a Retry-After can ask for: a date far ahead (or a
#: broken one) must not shut the upstream out for days.
MAX_BACKOFF = 3600.0


def retry_after(value: str | None, now: float) -> float | None:
    """
    Seconds a ``Retry-After`` value asks for (RFC 9110 10.2.3: a number of
    seconds, or an HTTP date), or None when absent or unreadable; a date in
    the past is 0.
    """
    if value is None:
        return None
    value = value.strip()
    if value.isascii() and value.isdigit():
        return float(int(value[:12]))
    try:
        when = parsedate_to_datetime(value).timestamp()
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    return max(when - now, 0.0)


class RateLimit:
    """
    One upstream's back-off after a 429.

    @ivar until: When requests may go upstream again (the clock's time).
    @ivar throttled: How many 429 answers the upstream gave.
    @ivar held: How many requests were not sent because of a back-off.
    """

    def __init__(self, seconds: Callable[[], float], default: float = DEFAULT_BACKOFF,
                 maximum: float = MAX_BACKOFF):
        self._seconds = seconds
        self.default = default
        self.maximum = maximum
        self.until = 0.0
        self.throttled = 0
        self.held = 0

    def remaining(self) -> float:
        """Seconds left of the back-off (0: none)."""
        return max(self.until - self._seconds(), 0.0)

    def hold(self) -> int | None:
        """
        None when a request may go upstream now; else it is held back
        (counted) and this is the whole seconds left to say in ``Retry-After``.
        """
        left = self.remaining()
        if left <= 0:
            return None
        self.held += 1
        return max(math.ceil(left), 1)

    def throttle(self, value: str | None) -> float:
        """The upstream answered 429 with Retry-After C{value}: back off; returns the seconds."""
        now = self._seconds()
        wait = retry_after(value, now)
        wait = min(self.default if wait is None else wait, self.maximum)
        self.throttled += 1
        self.until = max(self.until, now + wait)
        return wait
