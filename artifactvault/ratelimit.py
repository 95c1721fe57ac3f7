# -*- test-case-name: tests.test_ratelimit -*-
"""
Backing off an upstream that said ``429 Too Many Requests``, or that failed.

An upstream's 429 is a promise: asking again before its ``Retry-After``
only makes the wait longer (Docker Hub counts every request of an anonymous
client). So after a 429, the L{artifactvault.upstream.Upstream} that got it
sends nothing for that long: its requests fail at once with a 429 of our own
that says how long is left, which the core treats like the upstream's (a
stale copy is served where there is one, a miss gets the 429 and its
``Retry-After``). Fresh cached answers never needed the upstream anyway.

An upstream that fails (no answer within the timeout, the connection
refused or broken before an answer, a 502, 503 or 504) is most likely
still failing a moment later, and one that hangs makes every request wait
the whole timeout. So after a failure it is left alone the same way for
the back-off (``backoff``, 10 s by default; a 503's ``Retry-After`` if it
names one), its requests failing at once with the failure they would
most likely meet; and until it answers again it is I{troubled}: the vault
answers with a stale copy at once, where it has one, and lets at most one
revalidation (L{Backoff.probe}) find out, in the background, whether the
upstream is back. A 500 is not counted: it is usually one path's bug, not
an upstream that is down.

The numbers are counted here (L{Backoff.throttled}, L{Backoff.failures},
L{Backoff.held}) for whoever reports metrics.
"""

from __future__ import annotations

import math
from typing import Callable

from artifactvault.httpcache import loose_date

#: How long to back off after a 429 that names no (readable) Retry-After.
DEFAULT_BACKOFF = 30.0
#: The longest back-off a Retry-After can ask for: a date far ahead (or a
#: broken one) must not shut the upstream out for days.
MAX_BACKOFF = 3600.0
#: How long to back off after a failure (the ``backoff`` setting's default).
FAILURE_BACKOFF = 10.0
#: Upstream statuses that say the upstream (or the gateway before it) is down.
FAILURE_STATUSES = frozenset({502, 503, 504})


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
    when = loose_date(value)
    return None if when is None else max(when - now, 0.0)


class Backoff:
    """
    One upstream origin's back-off: after a 429, for its Retry-After; after
    a failure, for C{after_failure} seconds (0: no back-off after failures,
    and no stale answers at once either: every request waits for the
    upstream, as if it had never failed).

    @ivar until: When requests may go upstream again (the clock's time).
    @ivar failure: The last failure's reason, while the upstream has not
        answered since (it is I{troubled}); else None.
    @ivar throttled: How many 429 answers the upstream gave.
    @ivar failures: How many failures it had.
    @ivar held: How many requests were not sent because of a back-off.
    @ivar probing: Whether a background revalidation is under way.
    """

    def __init__(self, seconds: Callable[[], float], default: float = DEFAULT_BACKOFF,
                 maximum: float = MAX_BACKOFF, after_failure: float = FAILURE_BACKOFF):
        self._seconds = seconds
        self.default = default
        self.maximum = maximum
        self.after_failure = after_failure
        self.until = 0.0
        self.failure: str | None = None
        self.failure_status = 502
        self._throttled_until = 0.0
        self.throttled = 0
        self.failures = 0
        self.held = 0
        self.probing = False

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

    @property
    def throttling(self) -> bool:
        """Whether the back-off under way is a 429's (else a failure's)."""
        return self._throttled_until >= self.until

    def throttle(self, value: str | None) -> float:
        """The upstream answered 429 with Retry-After C{value}: back off; returns the seconds."""
        now = self._seconds()
        wait = retry_after(value, now)
        wait = min(self.default if wait is None else wait, self.maximum)
        self.throttled += 1
        self.until = max(self.until, now + wait)
        self._throttled_until = max(self._throttled_until, now + wait)
        return wait

    def failed(self, reason: str, status: int = 502, retry: str | None = None) -> float:
        """
        The upstream failed (C{reason}, answered to clients with C{status});
        a 503 may say when to retry (C{retry}). Back off, if failures back
        off; returns the seconds.
        """
        self.failures += 1
        if self.after_failure <= 0:
            return 0.0
        now = self._seconds()
        asked = retry_after(retry, now)
        wait = min(self.after_failure if asked is None else max(asked, self.after_failure), self.maximum)
        self.failure, self.failure_status = reason, status
        if now + wait > self.until:
            self.until = now + wait
        return wait

    def answered(self) -> None:
        """The upstream answered (anything but a failure): it is not troubled any more."""
        self.failure = None

    @property
    def troubled(self) -> bool:
        """Whether the upstream failed and has not answered since, or is backed off: stale copies go at once."""
        return self.failure is not None or self.remaining() > 0

    def probe(self) -> bool:
        """
        Whether a background revalidation may start now (and it is counted
        as under way until L{probe_ended}): the back-off is over and none
        runs. At most one at a time finds out whether the upstream is back.
        """
        if self.probing or self.remaining() > 0:
            return False
        self.probing = True
        return True

    def probe_ended(self) -> None:
        self.probing = False
