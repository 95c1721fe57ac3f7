# -*- test-case-name: tests.test_fields -*-
"""
What the core reads from an upstream answer, each in one place.

An upstream's header values are input like any other: a Content-Length of
``²`` passes Python's C{str.isdigit} and then makes C{int()} raise, so
lengths are read here, strictly, and nowhere else. The headers an entry
keeps (and a miss, a HEAD miss and a revalidation replay) and the time an
artifact stays fresh are likewise decided once, so that a hit, a miss and a
HEAD say the same thing.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

from artifactvault.upstream import UpstreamError, header

if TYPE_CHECKING:
    from artifactvault.flight import Artifact

#: A length is 1*DIGIT (ASCII only); more digits than this is no file's length.
_LENGTH = re.compile(r"[0-9]{1,18}", re.ASCII)


def parse_length(value: str | bytes | None) -> int | None:
    """
    A Content-Length field value as a number, or None when it is not one:
    ASCII digits, optionally repeated as ``42, 42`` (RFC 9110 8.6), nothing
    else (no sign, no other digits, no conflicting repeats).
    """
    if value is None:
        return None
    if isinstance(value, bytes):
        value = value.decode("latin-1")
    numbers = [v.strip(" \t") for v in value.split(",")]
    if not all(_LENGTH.fullmatch(n) for n in numbers):
        return None
    lengths = {int(n) for n in numbers}
    return lengths.pop() if len(lengths) == 1 else None


def content_length(response: Any) -> int | None:
    """
    The Content-Length an upstream C{response} announces (for a HEAD, the
    size a GET would have); None when it sends none. Raises L{UpstreamError}
    when it sends one that is not a length: a broken upstream, not a bug.
    """
    raw = response.headers.getRawHeaders(b"content-length")
    if not raw:
        return None
    value = b", ".join(raw)
    length = parse_length(value)
    if length is None:
        shown = value[:40].decode("latin-1")
        raise UpstreamError(f"upstream sent an invalid Content-Length: {shown!r}")
    return length


def response_headers(artifact: "Artifact", response: Any) -> dict[str, str]:
    """
    The upstream response headers an answer for C{artifact} carries, on a
    miss as on every later hit: the backend's C{keep_headers}, and the
    upstream's Content-Encoding (the stored bytes are still encoded) unless
    a transform stored something else.
    """
    kept = {name: value for name in artifact.keep_headers
            if (value := header(response, name.encode("latin-1")))}
    encoding = header(response, b"x-upstream-content-encoding")
    if encoding and artifact.transform is None:
        kept["Content-Encoding"] = encoding
    return kept


def fresh_until(artifact: "Artifact", now: float) -> float | None:
    """Until when C{artifact}, fetched or revalidated at C{now}, is fresh; None: forever."""
    return None if artifact.ttl is None else now + artifact.ttl
