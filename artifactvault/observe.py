# -*- test-case-name: tests.test_metrics -*-
"""
What the core tells whoever watches it (metrics, the status page).

The core calls these hooks at the few places where something worth
counting happens: an upstream request sent and answered, bytes of a
download arriving, a download failing, a request answered. It knows only
these interfaces, never prometheus or the status page, and each hook is
one attribute lookup and a call: a daemon without metrics (or a unit test)
gets L{NULL}, which does nothing.

Nothing passed here may carry a secret: reasons are the core's own words
(hosts, never credentials or query strings).
"""

from __future__ import annotations

from typing import Any

from zope.interface import Attribute, Interface, implementer


class IUpstreamObserver(Interface):
    """Hears about one backend's upstream requests and downloads."""

    backend = Attribute("The backend's prefix, e.g. '/files/' (the metrics label).")

    def sent() -> None:
        """A request went upstream (after back-off, offline and negative cache let it)."""

    def answered(code: int, seconds: float) -> None:
        """The upstream answered with status C{code}, C{seconds} after the request went (time to headers)."""

    def failed(kind: str, reason: str) -> None:
        """
        A request or download failed: C{kind} is one of L{ERROR_KINDS};
        C{reason} says why in words fit for an operator (no secret).
        """

    def received(count: int) -> None:
        """C{count} more body bytes of a download arrived."""

    def negative_hit() -> None:
        """A request was answered from the negative cache (not sent)."""

    def watch(upstream: Any) -> None:
        """C{upstream} is one of the backend's (its back-offs and negative cache are read when scraped)."""


class IRequestObserver(Interface):
    """Hears about every request the site answered (or whose client left)."""

    def request_done(request: Any) -> None:
        """C{request} ended: its C{code}, C{sentLength}, C{cache_status}, C{backend_name} are final."""


#: Kinds of upstream errors, as counted.
ERROR_KINDS = ("refused", "timeout", "4xx", "5xx", "digest_mismatch", "cut_short")


@implementer(IUpstreamObserver)
class _Null:
    backend = "-"

    def sent(self) -> None:
        pass

    def answered(self, code: int, seconds: float) -> None:
        pass

    def failed(self, kind: str, reason: str) -> None:
        pass

    def received(self, count: int) -> None:
        pass

    def negative_hit(self) -> None:
        pass

    def watch(self, upstream: Any) -> None:
        pass


#: The observer of an upstream nobody watches.
NULL = _Null()


def body_error_kind(error: BaseException) -> str | None:
    """
    The kind (L{ERROR_KINDS}) of a download that failed after its headers,
    or None when it is not the upstream's doing (the disk was full).
    """
    from artifactvault.flight import DigestMismatch, StoreError
    from artifactvault.upstream import UpstreamStatus, UpstreamTimeout
    if isinstance(error, StoreError):
        return None
    if isinstance(error, DigestMismatch):
        return "digest_mismatch"
    if isinstance(error, UpstreamTimeout):
        return "timeout"
    if isinstance(error, UpstreamStatus):
        return None  # (counted when it answered)
    return "cut_short"
