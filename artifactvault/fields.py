# -*- test-case-name: tests.test_fields -*-
"""
What the core keeps from an upstream answer, each decided in one place: the
headers an entry keeps (and a miss, a HEAD miss and a revalidation replay)
and the time an artifact stays fresh, so that a hit, a miss and a HEAD say
the same thing; and which of a client's request fields go upstream.
(Lengths are read by L{artifactvault.upstream.content_length}.)

Most backends name the few upstream fields they keep (C{keep_headers}).
An artifact with an HTTP caching policy (the generic http backend's:
L{artifactvault.httpcache.HttpPolicy}) keeps every end-to-end field but
L{NOT_KEPT}, and its freshness is the policy's.
"""

from __future__ import annotations

from email.utils import formatdate
from typing import TYPE_CHECKING, Any, Iterable

from artifactvault.httpcache import Exchange, fields_of, stored_fields
from artifactvault.upstream import header

if TYPE_CHECKING:
    from artifactvault.cache.store import Entry
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


#: Upstream response fields no answer passes on: hop-by-hop ones (RFC 9110
#: 7.6.1; Twisted's client already keeps Connection, Keep-Alive, TE,
#: Trailer, Transfer-Encoding and Upgrade apart, and L{artifactvault.framing}
#: drops those a Connection names), those carrying credentials or a client's
#: state (cookies, authentication exchanges), and those the vault states itself,
#: from the stored copy (its length, type, validators, Accept-Ranges, Age,
#: X-Cache, the Content-Encoding it keeps apart).
NOT_KEPT = frozenset({
    "connection", "keep-alive", "proxy-connection", "te", "trailer", "transfer-encoding", "upgrade",
    "proxy-authenticate", "proxy-authentication-info", "proxy-authorization",
    "set-cookie", "set-cookie2", "authentication-info",
    "content-length", "content-type", "etag", "last-modified", "accept-ranges", "age", "x-cache",
    "content-encoding", "x-upstream-content-encoding",
})

#: Client request fields never sent upstream: hop-by-hop ones, cookies (a
#: client's state, not the shared cache's), and those the vault sets itself
#: for what it fetches (a whole body, unconditionally, uncoded, as itself).
#: A client's Authorization goes, to the configured origin only
#: (L{artifactvault.upstream.ORIGIN_ONLY}; the backend's own credentials win),
#: and an answer to it is stored only as RFC 9111 3.5 allows.
NOT_FORWARDED = frozenset({
    "host", "connection", "keep-alive", "proxy-connection", "te", "trailer", "transfer-encoding", "upgrade",
    "proxy-authorization", "content-length", "expect", "cookie",
    "range", "if-range", "if-match", "if-none-match", "if-modified-since", "if-unmodified-since",
    "cache-control", "pragma", "accept-encoding", "user-agent",
})


def end_to_end(response: Any) -> dict[str, str]:
    """
    Every field of an upstream answer but L{NOT_KEPT}, a name's field lines
    joined by ", " (RFC 9110 5.3), under the name's usual spelling.
    """
    kept = {}
    for raw, values in response.headers.getAllRawHeaders():
        name = raw.decode("latin-1")
        if name.lower() not in NOT_KEPT:
            kept[name] = ", ".join(v.decode("latin-1") for v in values)
    return kept


def forwarded(headers: Any, own: Iterable[str] = ()) -> dict[str, str]:
    """
    The fields of a client's request (Twisted C{Headers}) sent upstream with
    what it fetches: every one but L{NOT_FORWARDED}, any ``Proxy-*`` (meant
    for a proxy: the vault), those its Connection names, and C{own} (the
    backend's configured headers, which win), by lower-case name, field
    lines joined by ", ". (With client authentication configured the
    client's Authorization never gets here: L{artifactvault.auth.gate}
    takes it off the request.)
    """
    hop = {token.strip(" \t").lower() for value in headers.getRawHeaders(b"connection", [])
           for token in value.decode("latin-1").split(",")}
    skip = NOT_FORWARDED | hop | {name.lower() for name in own}
    out = {}
    for raw, values in headers.getAllRawHeaders():
        name = raw.decode("latin-1").lower()
        if name not in skip and not name.startswith("proxy-"):  # (every Proxy-* is for a proxy: the vault)
            out[name] = ", ".join(v.decode("latin-1") for v in values)
    return out


def response_headers(artifact: "Artifact", response: Any, answered: float | None = None) -> dict[str, str]:
    """
    The headers an answer for C{artifact} carries, on a miss as on every
    later hit: the backend's C{keep_headers} from the upstream's answer
    (an allow-list; never one of L{NOT_KEPT}, whatever a backend lists) (with
    an HTTP caching policy: L{end_to_end}, and a Date of when it C{answered}
    if it had none, as RFC 9110 6.6.1 has a recipient with a clock add), the
    upstream's Content-Encoding (the stored bytes are still encoded) unless
    a transform stored something else, and L{IMMUTABLE_HEADERS} for a
    content-addressed artifact.
    """
    if artifact.policy is not None:
        kept = end_to_end(response)
        if answered is not None and not response.headers.hasHeader(b"date"):
            kept["Date"] = formatdate(answered, usegmt=True)
    else:
        kept = {name: value for name in artifact.keep_headers
                if name.lower() not in NOT_KEPT and (value := header(response, name.encode("latin-1")))}
    encoding = header(response, b"x-upstream-content-encoding")
    if encoding and artifact.transform is None:
        kept["Content-Encoding"] = encoding
    if content_addressed(artifact):
        kept.update(IMMUTABLE_HEADERS)
    return kept


def fresh_until(artifact: "Artifact", now: float) -> float | None:
    """Until when C{artifact}, fetched or revalidated at C{now}, is fresh; None: forever."""
    return None if artifact.ttl is None else now + artifact.ttl


def stored(artifact: "Artifact", status: int, fields: Any, requested: float, answered: float,
           now: float) -> dict[str, Any]:
    """
    The freshness fields of an entry for C{artifact} stored or revalidated
    at C{now}, from an upstream answer of C{status} with C{fields} (L{fields_of}
    form) asked at C{requested} and come at C{answered}: C{fresh_until}, and
    with an HTTP caching policy also C{age}, C{status} and C{variant}.
    """
    if artifact.policy is None:
        return {"fresh_until": fresh_until(artifact, now)}
    return artifact.policy.stored(Exchange(status, fields, requested, answered), now)


def current_age(artifact: "Artifact", response: Any, requested: float, answered: float, now: float) -> int | None:
    """
    The Age a miss's answer carries at C{now} (with an HTTP caching policy,
    when it is at least a second: the upstream's Age and the time the
    answer took, RFC 9111 4.2.3); None: no Age.
    """
    if artifact.policy is None:
        return None
    age = int(Exchange(response.code, fields_of(response.headers), requested, answered).initial_age()
              + max(0.0, now - answered))
    return age or None


def refreshed(artifact: "Artifact", entry: "Entry", response: Any, requested: float, answered: float,
              now: float) -> "Entry":
    """
    C{entry}, revalidated at C{now} by the upstream's C{response} (a 304, or
    a HEAD's 200 with the same ETag): its validators, the headers it keeps,
    and its freshness as the updated headers give it (RFC 9111 4.3.4, 4.3.5).
    The caller stores it.
    """
    etag = header(response, b"etag")
    if etag:
        entry.etag = etag
    last_modified = header(response, b"last-modified")
    if last_modified:
        entry.last_modified = last_modified
    entry.headers.update(response_headers(artifact, response, answered))
    fields = stored_fields(entry.headers)
    if entry.last_modified:
        fields["last-modified"] = [entry.last_modified]
    updated = stored(artifact, entry.status, fields, requested, answered, now)
    if "age" in updated:
        entry.stored_at = now  # (its age is counted from here on)
    for name, value in updated.items():
        setattr(entry, name, value)
    return entry
