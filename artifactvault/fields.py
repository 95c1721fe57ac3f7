# -*- test-case-name: tests.test_fields -*-
"""
What the core keeps from an upstream answer, each decided in one place: the
headers an entry keeps (and a miss, a HEAD miss and a revalidation replay)
and the time an artifact stays fresh, so that a hit, a miss and a HEAD say
the same thing. (Lengths are read by L{artifactvault.upstream.content_length}.)
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from artifactvault.upstream import header

if TYPE_CHECKING:
    from artifactvault.flight import Artifact

#: What a content-addressed file's answer says of its freshness: its bytes
#: never change under that URL (a year, the most RFC 9111 advises; what
#: distribution sends for blobs, with ``immutable`` as files.pythonhosted.org
#: sends it, so a browser or a client cache never revalidates it).
IMMUTABLE = "max-age=31536000, immutable"
IMMUTABLE_HEADERS = {"Cache-Control": IMMUTABLE}


def content_addressed(artifact: "Artifact") -> bool:
    """Whether C{artifact} is named by its digest: checked against it, and fresh forever."""
    return artifact.digest is not None and artifact.ttl is None


def response_headers(artifact: "Artifact", response: Any) -> dict[str, str]:
    """
    The headers an answer for C{artifact} carries, on a miss as on every
    later hit: the backend's C{keep_headers} from the upstream's answer, the
    upstream's Content-Encoding (the stored bytes are still encoded) unless
    a transform stored something else, and L{IMMUTABLE_HEADERS} for a
    content-addressed artifact.
    """
    kept = {name: value for name in artifact.keep_headers
            if (value := header(response, name.encode("latin-1")))}
    encoding = header(response, b"x-upstream-content-encoding")
    if encoding and artifact.transform is None:
        kept["Content-Encoding"] = encoding
    if content_addressed(artifact):
        kept.update(IMMUTABLE_HEADERS)
    return kept


def fresh_until(artifact: "Artifact", now: float) -> float | None:
    """Until when C{artifact}, fetched or revalidated at C{now}, is fresh; None: forever."""
    return None if artifact.ttl is None else now + artifact.ttl
