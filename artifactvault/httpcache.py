# -*- test-case-name: tests.test_httpcache -*-
"""
HTTP caching as RFC 9111 has it, for the generic http backend: reading the
fields that decide whether and for how long an answer may be reused, and
the decisions themselves. Pure functions of field values and times (no
I/O, no reactor): the core asks them through an L{HttpPolicy}, which an
L{artifactvault.flight.Artifact} of the http backend carries.

Three ways to be fresh (a backend's C{freshness}, or a C{ttl}):

- L{Mode.IMMUTABLE}: an artifact tree; a 200 is kept and served forever,
  whatever the upstream says of its freshness (as the vault always did);
- L{Mode.TTL}: a 200 is fresh for a fixed time, then revalidated;
- L{Mode.UPSTREAM}: the upstream's word, as a shared cache reads it:
  ``Cache-Control`` (or a valid ``CDN-Cache-Control``, RFC 9213, in its
  place), ``Expires``, ``Age`` and ``Date``, heuristic freshness from
  ``Last-Modified`` where nothing explicit is said (10 % of its age, at
  most a day: RFC 9111 4.2.2), ``no-store``, ``private``, ``no-cache``,
  ``must-revalidate``/``proxy-revalidate``/``s-maxage`` (no stale copy),
  ``stale-while-revalidate``, ``must-understand``; and a client's
  ``no-cache``, ``max-age``, ``min-fresh``, ``max-stale``.

In every mode: final statuses other than 200 are relayed (stored only in
L{Mode.UPSTREAM}, when RFC 9111 section 3 allows), ``Vary`` selects
variants by the request fields sent upstream, and a client's
``only-if-cached`` gets a stored answer or a 504.

Field values come as a mapping of lower-case names to their field lines
(L{fields_of} for an upstream response, L{stored_fields} for an entry's
kept headers).
"""

from __future__ import annotations

import calendar
import functools
import json
import re
import time
from dataclasses import dataclass, field
from email.utils import parsedate_to_datetime
from enum import Enum
from typing import Any, Iterable, Mapping

#: The largest delta-seconds a cache must represent; anything larger counts as this (RFC 9111 1.2.2).
DELTA_MAX = 2 ** 31
#: The longest heuristic freshness lifetime given (RFC 9111 4.2.2 suggests 10 % of the Last-Modified age).
HEURISTIC_MAX = 86400.0
HEURISTIC_FRACTION = 0.1
#: Statuses a response may be stored for by heuristic freshness alone (RFC 9110 15.1).
HEURISTIC_STATUSES = frozenset({200, 203, 204, 206, 300, 301, 308, 404, 405, 410, 414, 501})
#: Statuses whose caching rules the vault knows (RFC 9110): ``must-understand`` lets
#: these be stored in spite of ``no-store``, and no others.
UNDERSTOOD_STATUSES = frozenset({200, 203, 204, 300, 301, 302, 303, 307, 308, 404, 405, 410, 414, 501})
#: The field RFC 9213 targets at a CDN: when valid, read in place of Cache-Control.
TARGETED_FIELD = "cdn-cache-control"

Fields = Mapping[str, list[str]]


class Mode(Enum):
    """How a backend's artifacts stay fresh (its C{freshness}, or a C{ttl})."""

    IMMUTABLE = "immutable"
    TTL = "ttl"
    UPSTREAM = "upstream"


def fields_of(headers: Any) -> dict[str, list[str]]:
    """An upstream response's (Twisted) C{Headers} as lower-case name → field line values."""
    out: dict[str, list[str]] = {}
    for name, values in headers.getAllRawHeaders():
        out.setdefault(name.decode("latin-1").lower(), []).extend(v.decode("latin-1") for v in values)
    return out


def stored_fields(headers: Mapping[str, str]) -> dict[str, list[str]]:
    """An entry's kept headers (one value per name) as L{Fields}."""
    return {name.lower(): [value] for name, value in headers.items()}


def first(fields: Fields, name: str) -> str | None:
    values = fields.get(name)
    return values[0] if values else None


# -- Cache-Control ---------------------------------------------------------------------

_TCHAR = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_DIGITS = re.compile(r"[0-9]+")


class Directives:
    """
    Cache directives by lower-case name, each with its argument (None when
    it has none); the first occurrence of a name wins (RFC 9111 4.2.1).
    """

    def __init__(self, items: Iterable[tuple[str, Any]] = ()):
        self._items: dict[str, Any] = {}
        for name, value in items:
            self._items.setdefault(name, value)

    def __contains__(self, name: str) -> bool:
        return name in self._items

    def __repr__(self) -> str:
        return f"Directives({self._items!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Directives) and other._items == self._items

    def value(self, name: str) -> Any:
        return self._items.get(name)

    def seconds(self, name: str) -> int | None:
        """
        A delta-seconds argument: None when the directive is absent; 0 when
        its argument is not 1*DIGIT (a negative, decimal or quoted-oddly
        number: as good as stale); at most L{DELTA_MAX}.
        """
        if name not in self._items:
            return None
        value = self._items[name]
        if isinstance(value, bool) or value is None:
            return 0
        if isinstance(value, int):
            return min(max(value, 0), DELTA_MAX)
        return delta_seconds(value) or 0

    @property
    def names(self) -> frozenset[str]:
        return frozenset(self._items)


def delta_seconds(value: str | None) -> int | None:
    """1*DIGIT as a number (at most L{DELTA_MAX}), or None if it is not that."""
    if value is None or not _DIGITS.fullmatch(value):
        return None
    digits = value.lstrip("0") or "0"
    return DELTA_MAX if len(digits) > 10 else min(int(digits), DELTA_MAX)


def parse_cache_control(lines: Iterable[str]) -> Directives:
    """
    ``Cache-Control`` field lines as L{Directives}: ``#( token [ "="
    ( token / quoted-string ) ] )`` (RFC 9111 5.2), names case-insensitive,
    a quoted argument unquoted (recipients accept both forms). A member that
    does not follow the grammar (``max-age =5``, ``max-age= 5``) is left out
    whole; commas inside a quoted string separate nothing.
    """
    text = ",".join(lines)
    items = []
    i, n = 0, len(text)
    while i < n:
        while i < n and text[i] in " \t,":
            i += 1
        if i >= n:
            break
        m = _TCHAR.match(text, i)
        ok = m is not None
        name, value = (m.group(0).lower(), None) if m else ("", None)
        i = m.end() if m else i
        if ok and i < n and text[i] == "=":
            i += 1
            if i < n and text[i] == '"':
                value, i = _quoted(text, i)
                ok = value is not None
            else:
                m = _TCHAR.match(text, i)
                ok = m is not None
                if m:
                    value, i = m.group(0), m.end()
        while i < n and text[i] in " \t":
            i += 1
        if i < n and text[i] != ",":
            ok = False
            i = _skip_member(text, i)
        if ok:
            items.append((name, value))
    return Directives(items)


def _quoted(text: str, i: int) -> tuple[str | None, int]:
    """The quoted-string at C{text[i]} (a ``"``): (its content, the index after), or (None, where it ran out)."""
    out = []
    i += 1
    while i < len(text):
        c = text[i]
        if c == "\\" and i + 1 < len(text):
            out.append(text[i + 1])
            i += 2
        elif c == '"':
            return "".join(out), i + 1
        else:
            out.append(c)
            i += 1
    return None, i


def _skip_member(text: str, i: int) -> int:
    """The index of the next comma outside a quoted string (or the end)."""
    while i < len(text) and text[i] != ",":
        if text[i] == '"':
            _, i = _quoted(text, i)
        else:
            i += 1
    return i


# -- Structured Field dictionaries (RFC 8941), for CDN-Cache-Control -------------------

_SF_KEY = re.compile(r"[a-z*][a-z0-9_\-.*]*")
_SF_TOKEN = re.compile(r"[A-Za-z*][!#$%&'*+\-.^_`|~0-9A-Za-z:/]*")
_SF_NUMBER = re.compile(r"-?[0-9]{1,15}(\.[0-9]{1,3})?")


class _SFError(ValueError):
    pass


def parse_sf_dictionary(lines: Iterable[str]) -> dict[str, Any] | None:
    """
    An RFC 8941 Dictionary (``CDN-Cache-Control``) as key → bare item
    (int, float, str, bytes marker, bool; an inner list as a list), or
    None when it does not parse: RFC 9213 then has the field ignored.
    """
    text = ",".join(lines).strip(" ")
    out: dict[str, Any] = {}
    i, n = 0, len(text)
    try:
        while i < n:
            m = _SF_KEY.match(text, i)
            if not m:
                raise _SFError
            key, i = m.group(0), m.end()
            if i < n and text[i] == "=":
                if i + 1 < n and text[i + 1] == "(":
                    value, i = _sf_inner_list(text, i + 2)
                else:
                    value, i = _sf_bare(text, i + 1)
            else:
                value = True
            i = _sf_params(text, i)
            out[key] = value
            while i < n and text[i] in " \t":
                i += 1
            if i >= n:
                break
            if text[i] != ",":
                raise _SFError
            i += 1
            while i < n and text[i] in " \t":
                i += 1
            if i >= n:
                raise _SFError  # a trailing comma
    except (_SFError, IndexError):
        return None
    return out


def _sf_bare(text: str, i: int) -> tuple[Any, int]:
    c = text[i]
    if c == '"':
        out = []
        i += 1
        while True:
            c = text[i]
            if c == "\\":
                if text[i + 1] not in '"\\':
                    raise _SFError
                out.append(text[i + 1])
                i += 2
            elif c == '"':
                return "".join(out), i + 1
            elif not (" " <= c <= "~"):
                raise _SFError
            else:
                out.append(c)
                i += 1
    if c == "?":
        if text[i + 1] not in "01":
            raise _SFError
        return text[i + 1] == "1", i + 2
    if c == ":":
        end = text.index(":", i + 1)
        return b"", end + 1
    m = _SF_NUMBER.match(text, i)
    if m:
        return (float(m.group(0)) if m.group(1) else int(m.group(0))), m.end()
    m = _SF_TOKEN.match(text, i)
    if m:
        return m.group(0), m.end()
    raise _SFError


def _sf_params(text: str, i: int) -> int:
    while i < len(text) and text[i] == ";":
        i += 1
        while i < len(text) and text[i] == " ":
            i += 1
        m = _SF_KEY.match(text, i)
        if not m:
            raise _SFError
        i = m.end()
        if i < len(text) and text[i] == "=":
            _, i = _sf_bare(text, i + 1)
    return i


def _sf_inner_list(text: str, i: int) -> tuple[list[Any], int]:
    items = []
    while True:
        while text[i] == " ":
            i += 1
        if text[i] == ")":
            return items, _sf_params(text, i + 1)
        item, i = _sf_bare(text, i)
        i = _sf_params(text, i)
        items.append(item)
        if text[i] not in " )":
            raise _SFError


def targeted_directives(fields: Fields) -> Directives | None:
    """
    The directives of a valid ``CDN-Cache-Control`` (RFC 9213), or None.
    A directive whose value has the wrong type for it (``max-age="5"``) is
    left out; the field still counts.
    """
    lines = fields.get(TARGETED_FIELD)
    if not lines:
        return None
    parsed = parse_sf_dictionary(lines)
    if parsed is None:
        return None
    items = []
    for name, value in parsed.items():
        if name in ("max-age", "s-maxage", "stale-while-revalidate", "stale-if-error"):
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                continue
        items.append((name, value))
    return Directives(items)


def response_directives(fields: Fields) -> Directives:
    """What governs a response's caching: a valid CDN-Cache-Control, else its Cache-Control."""
    targeted = targeted_directives(fields)
    return targeted if targeted is not None else parse_cache_control(fields.get("cache-control", []))


def request_directives(fields: Fields) -> Directives:
    """
    A client's directives: its Cache-Control, or from a client that sends
    none, ``Pragma: no-cache`` as ``no-cache`` (RFC 9111 5.4).
    """
    if "cache-control" in fields:
        return parse_cache_control(fields["cache-control"])
    pragma = ",".join(fields.get("pragma", []))
    if any(p.strip(" \t").lower() == "no-cache" for p in pragma.split(",")):
        return Directives([("no-cache", None)])
    return Directives()


# -- dates and ages --------------------------------------------------------------------

_MONTHS = {m: i for i, m in enumerate(
    ("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"), 1)}
_DAYS = "(?:mon|tue|wed|thu|fri|sat|sun)"
_DAYS_LONG = "(?:monday|tuesday|wednesday|thursday|friday|saturday|sunday)"
_TIME = r"([0-9]{2}):([0-9]{2}):([0-9]{2})"
_IMF = re.compile(rf"{_DAYS}, ([0-9]{{2}}) ([a-z]{{3}}) ([0-9]{{4}}) {_TIME} gmt", re.IGNORECASE)
_RFC850 = re.compile(rf"{_DAYS_LONG}, ([0-9]{{2}})-([a-z]{{3}})-([0-9]{{2}}) {_TIME} gmt", re.IGNORECASE)
_ASCTIME = re.compile(rf"{_DAYS} ([a-z]{{3}}) ([0-9 ][0-9]) {_TIME} ([0-9]{{4}})", re.IGNORECASE)


def parse_http_date(value: str | None, now: float | None = None) -> float | None:
    """
    An HTTP-date (RFC 9110 5.6.7) as a POSIX time, or None when it is not
    one: IMF-fixdate, or the obsolete RFC 850 and asctime forms, exactly
    (one space where one is due, ``GMT``, two-digit hours); names of days
    and months in any case. An RFC 850 two-digit year more than 50 years
    ahead of C{now} is in the past century.
    """
    if value is None:
        return None
    text = value.strip(" \t")
    if m := _IMF.fullmatch(text):
        day, month, year, hh, mm, ss = m.groups()
    elif m := _RFC850.fullmatch(text):
        day, month, yy, hh, mm, ss = m.groups()
        this_year = _year(now)
        year = str(this_year - this_year % 100 + int(yy))
        if int(year) > this_year + 50:
            year = str(int(year) - 100)
    elif m := _ASCTIME.fullmatch(text):
        month, day, hh, mm, ss, year = m.groups()
        day = day.strip()
    else:
        return None
    number = _MONTHS.get(month.lower())
    if number is None:
        return None
    try:
        parts = (int(year), number, int(day), int(hh), int(mm), int(ss))
        if not (1 <= parts[2] <= 31 and parts[3] < 24 and parts[4] < 60 and parts[5] < 61):
            return None
        calendar.weekday(parts[0], parts[1], parts[2])  # (a 31st of February raises)
        return float(calendar.timegm(parts + (0, 0, 0)))
    except ValueError:
        return None


def loose_date(value: str | None) -> float | None:
    """
    A date however a server or file wrote it (RFC 5322's forms and what
    C{email.utils} forgives: a Release file's ``Date``, an S3 answer's
    fields, a client's ``If-Modified-Since``, a ``Retry-After``) as a POSIX
    time, or None when it is none. Where a cache must be exact about an
    HTTP-date (freshness, RFC 9111), L{parse_http_date} is used instead.
    Remembered: the same ``Last-Modified`` comes with every answer of an
    entry.
    """
    return _loose_date(value) if value else None


@functools.lru_cache(maxsize=1024)
def _loose_date(value: str) -> float | None:
    try:
        return parsedate_to_datetime(value).timestamp()
    except (TypeError, ValueError, IndexError, OverflowError):
        return None


def _year(now: float | None) -> int:
    return time.gmtime(now if now is not None else time.time()).tm_year


def age_value(fields: Fields) -> int:
    """The upstream's ``Age``: its first value, if delta-seconds; anything else counts as none (0)."""
    values = fields.get("age")
    if not values:
        return 0
    return delta_seconds(values[0].split(",")[0].strip(" \t")) or 0


@dataclass
class Exchange:
    """
    One upstream answer as freshness is computed from it.

    @ivar requested: When the request was sent (the cache's clock).
    @ivar answered: When the answer's head arrived (the cache's clock).
    """

    status: int
    fields: Fields
    requested: float
    answered: float

    @property
    def date(self) -> float:
        """The origin's Date, or when the answer arrived if it gave none that parses."""
        parsed = parse_http_date(first(self.fields, "date"), self.answered)
        return self.answered if parsed is None else parsed

    def initial_age(self) -> float:
        """RFC 9111 4.2.3: the corrected initial age, when the answer arrived."""
        apparent = max(0.0, self.answered - self.date)
        corrected = age_value(self.fields) + max(0.0, self.answered - self.requested)
        return max(apparent, corrected)

    def lifetime(self) -> float | None:
        """
        RFC 9111 4.2.1: the freshness lifetime a shared cache gives it:
        ``s-maxage``, ``max-age``, ``Expires`` - ``Date`` (an invalid or
        repeated Expires: already expired), or heuristic freshness from
        ``Last-Modified`` (heuristically cacheable statuses, or ``public``);
        None when there is nothing to go by.
        """
        directives = response_directives(self.fields)
        for name in ("s-maxage", "max-age"):
            seconds = directives.seconds(name)
            if seconds is not None:
                return float(seconds)
        expires = self.fields.get("expires")
        if expires is not None:
            when = parse_http_date(expires[0], self.answered) if len(expires) == 1 else None
            return 0.0 if when is None else when - self.date
        if self.status in HEURISTIC_STATUSES or "public" in directives:
            modified = parse_http_date(first(self.fields, "last-modified"), self.answered)
            if modified is not None and modified <= self.date:
                return min((self.date - modified) * HEURISTIC_FRACTION, HEURISTIC_MAX)
        return None


def storable(status: int, fields: Fields, request: Directives | None = None, authorized: bool = False) -> bool:
    """
    RFC 9111 section 3 for a shared cache: whether an answer to a GET may
    be stored (C{authorized}: the request carried a client's Authorization,
    3.5).
    """
    if status < 200 or status in (206, 304):
        return False
    if request is not None and "no-store" in request:
        return False
    if vary_fields(fields) == STAR:
        return False  # (it would never be chosen again)
    directives = response_directives(fields)
    understood = "must-understand" in directives and status in UNDERSTOOD_STATUSES
    if "must-understand" in directives and not understood:
        return False
    if "no-store" in directives and not understood:
        return False
    if "private" in directives:
        return False
    if authorized and not {"public", "s-maxage", "must-revalidate"} & directives.names:
        return False
    return bool({"public", "max-age", "s-maxage"} & directives.names) or "expires" in fields \
        or status in HEURISTIC_STATUSES


def no_stale(directives: Directives) -> bool:
    """Whether a stored response may never be served stale (RFC 9111 5.2.2.2, 5.2.2.8, 5.2.2.10, 4.2.4)."""
    return bool({"must-revalidate", "proxy-revalidate", "s-maxage", "no-cache"} & directives.names)


# -- Vary ----------------------------------------------------------------------------

STAR = ("*",)


def vary_fields(fields: Fields) -> tuple[str, ...]:
    """
    The request fields a response varies on (lower-case, in order, each
    once), L{STAR} when it names ``*`` anywhere, () when it has no Vary.
    """
    names: list[str] = []
    for line in fields.get("vary", []):
        for element in line.split(","):
            name = element.strip(" \t").lower()
            if name == "*":
                return STAR
            if name and name not in names:
                names.append(name)
    return tuple(names)


def normalise(value: str | None) -> str | None:
    """A field value as Vary compares it: its list elements trimmed, joined by ', ' (RFC 9111 4.1)."""
    if value is None:
        return None
    return ", ".join(element.strip(" \t") for element in value.split(","))


def selecting(names: tuple[str, ...], sent: Mapping[str, str]) -> dict[str, str | None]:
    """The values of C{names} among the request fields C{sent} upstream (lower-case names), normalised."""
    return {name: normalise(sent.get(name)) for name in names}


def variant_key(key: str, values: Mapping[str, str | None]) -> str:
    """The secondary cache key of a variant: the primary key and the values that selected it."""
    return f"{key}\nvary {json.dumps(values, sort_keys=True)}"


# -- the policy the core consults -----------------------------------------------------

#: L{HttpPolicy.rejoin}: a download of its own, which nobody joins.
ALONE = "\x00alone"


class Reuse(Enum):
    """What a stored response is good for, for one request."""

    FRESH = "fresh"  # served as it is
    STALE = "stale"  # served stale, as the client allows (max-stale)
    STALE_REVALIDATE = "stale-revalidate"  # served stale now, revalidated in the background
    VALIDATE = "validate"  # only after the upstream confirmed it


@dataclass
class HttpPolicy:
    """
    How one request's artifact is cached (see the module docstring): the
    backend's mode, the request fields sent upstream (lower-case names; they
    decide between variants), and the client's cache directives.

    @ivar hops: How often this request was sent to another flight after the
        one it joined turned out not to be for it (a variant, an answer that
        is not shared); past two it gets a flight of its own.
    """

    mode: Mode
    ttl: float | None = None
    sent: dict[str, str] = field(default_factory=dict)
    client: Directives = field(default_factory=Directives)
    #: The primary cache key (variants are stored under L{variant_key}s of it).
    key: str = ""
    hops: int = 0

    @property
    def upstream(self) -> bool:
        return self.mode is Mode.UPSTREAM

    # -- an upstream answer ----------------------------------------------------

    def relays(self, status: int, revalidating: bool) -> bool:
        """Whether an upstream answer of C{status} is passed on as it is (not made an error of ours)."""
        return status >= 200 and not (status == 304 and not revalidating)

    def storable(self, status: int, fields: Fields) -> bool:
        """Whether the answer is stored (else relayed to the requests that share it, and dropped)."""
        if not self.upstream:
            return status == 200 and vary_fields(fields) != STAR
        return storable(status, fields, self.client, authorized="authorization" in self.sent)

    def shared(self, status: int, fields: Fields) -> bool:
        """
        Whether requests that joined this one's download may be answered
        from it too: only what the cache may store (a private or no-store
        answer is one client's), and in the other modes anything.
        """
        return self.storable(status, fields) if self.upstream else vary_fields(fields) != STAR

    def stored(self, exchange: Exchange, now: float) -> dict[str, Any]:
        """
        The freshness fields of an entry stored (or revalidated) at C{now}
        from C{exchange}: C{fresh_until} (None: forever), C{age} (its age at
        C{now}), C{status} and C{variant} (the request values its Vary selected on).
        """
        age = exchange.initial_age() + max(0.0, now - exchange.answered)
        if self.mode is Mode.IMMUTABLE:
            until = None
        elif self.mode is Mode.TTL:
            until = now + (self.ttl or 0.0)
        else:
            lifetime = exchange.lifetime()
            until = now + (lifetime if lifetime is not None else 0.0) - age
        names = vary_fields(exchange.fields)
        return {"fresh_until": until, "age": age, "status": exchange.status,
                "variant": selecting(names, self.sent) if names and names != STAR else None}

    def rejoin(self, starter: "HttpPolicy", response: Any) -> str | None:
        """
        Whether this request may be answered from the download another
        request (whose policy is C{starter}) started and it joined, now that
        its C{response} came: None if so (a shared answer whose Vary, if any,
        selects the same request fields); else the cache key to fetch under
        instead (its own variant's), or L{ALONE} for a download of its own
        (an answer that is not shared; or past two such hops).
        """
        fields = fields_of(response.headers)
        if not starter.shared(response.code, fields):
            return ALONE
        names = vary_fields(fields)
        if not names or all(normalise(self.sent.get(n)) == normalise(starter.sent.get(n)) for n in names):
            return None
        self.hops += 1
        return variant_key(self.key, selecting(names, self.sent)) if self.hops <= 2 else ALONE

    # -- a stored answer -------------------------------------------------------

    def selects(self, variant: Mapping[str, str | None] | None) -> bool:
        """Whether a stored answer that varies on C{variant}'s fields (None: on none) answers this request."""
        if not variant:
            return True
        return all(normalise(self.sent.get(name)) == value for name, value in variant.items())

    def reuse(self, fresh_until: float | None, age: float | None, stored_at: float, headers: Mapping[str, str],
              now: float) -> Reuse:
        """What a stored answer (its freshness fields, its kept headers) is good for at C{now}."""
        if self.mode is Mode.IMMUTABLE:
            return Reuse.FRESH
        client = self.client
        fresh = fresh_until is None or now < fresh_until
        if self.mode is Mode.TTL:
            return Reuse.FRESH if fresh and not _client_refresh(client) else Reuse.VALIDATE
        directives = response_directives(stored_fields(headers))
        current_age = (age or 0.0) + max(0.0, now - stored_at)
        if "no-cache" in directives or "no-cache" in client:
            return Reuse.VALIDATE
        max_age = client.seconds("max-age")
        if max_age is not None and current_age > max_age:
            return Reuse.VALIDATE
        if fresh:
            min_fresh = client.seconds("min-fresh")
            if min_fresh is not None and fresh_until is not None and fresh_until - now < min_fresh:
                return Reuse.VALIDATE
            return Reuse.FRESH
        if no_stale(directives):
            return Reuse.VALIDATE
        staleness = now - (fresh_until or now)
        if "max-stale" in client:
            limit = client.seconds("max-stale") if client.value("max-stale") is not None else None
            if limit is None or staleness <= limit:
                return Reuse.STALE
        window = directives.seconds("stale-while-revalidate")
        if window is not None and staleness <= window:
            return Reuse.STALE_REVALIDATE
        return Reuse.VALIDATE

    def reuse_arriving(self, starter: "HttpPolicy", exchange: Exchange, now: float) -> Reuse:
        """
        What an answer still arriving (the download another request, whose
        policy is C{starter}, started) is good for, for this request: joining
        it once its head has come is reusing it, so it must be fresh enough.
        """
        stored = starter.stored(exchange, now)
        headers = {name: ", ".join(values) for name, values in exchange.fields.items()}
        return self.reuse(stored["fresh_until"], stored["age"], now, headers, now)

    def stale_on_failure(self, headers: Mapping[str, str]) -> bool:
        """
        Whether a stale copy may stand in when the upstream fails (the
        vault's policy, as for every backend), as far as the stored answer
        says: not when it forbade serving it stale.
        """
        return not (self.upstream and no_stale(response_directives(stored_fields(headers))))

    @property
    def cache_only(self) -> bool:
        """The client asked for a stored answer or nothing (``only-if-cached``: a 504 then)."""
        return "only-if-cached" in self.client

    @property
    def no_store(self) -> bool:
        """The client asked that nothing of this exchange be stored (upstream mode only)."""
        return self.upstream and "no-store" in self.client


def _client_refresh(client: Directives) -> bool:
    """A client's ``no-cache`` or ``max-age=0`` (pip --refresh-package, uv --refresh)."""
    return "no-cache" in client or client.seconds("max-age") == 0
