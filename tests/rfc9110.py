"""
A small, independent reference of the RFC 9110 rules the vault must follow
for one representation: conditional requests (§13) and single byte ranges
(§14). The property tests compare every answer the daemon gives with what
this module allows; it shares no code with C{artifactvault.serve} on
purpose, so a bug in one is not copied into the other.

What is allowed, decided once here (the docstrings of the tests point here):

 - C{If-None-Match} (§13.1.2): C{*}, or a list of entity tags one of which
   matches the representation's ETag by weak comparison → 304 (GET and
   HEAD) is required. A list that also holds something that is not an
   entity tag may be answered either way. Otherwise a 304 is wrong.
 - C{If-Modified-Since} (§13.1.3), only without C{If-None-Match} and only
   when the answer has a C{Last-Modified}: a valid HTTP-date (any of the
   three formats) at or after it → 304 required; before it → 304 wrong. A
   date in the future, or one only a lenient parser reads, may be answered
   either way; a value nobody can read as a date never gives a 304.
 - C{Range} (§14.2), after the preconditions: exactly C{bytes=first-last},
   C{bytes=first-} or C{bytes=-suffix} (the unit in any case, digits of any
   length, no whitespace inside) is a single range the server MUST honour
   on GET: 206 with exactly those bytes and C{Content-Range: bytes a-b/size},
   or 416 with C{Content-Range: bytes */size} when it is unsatisfiable. A
   unit other than bytes → the whole body. Anything else (several ranges,
   whitespace, empty list elements, last < first, garbage) MAY be ignored
   (200, the whole body) or rejected (416); a 206 is then accepted only if
   some part of the header could be read as a satisfiable range and the
   206 is right about itself (its C{Content-Range} names the bytes it carries).
 - C{If-Range} (§13.1.5): a strong entity tag equal to the strong ETag →
   the range is honoured; any other entity tag (weak ones included) or a
   value that is no date of the representation → the whole body (200). A
   date equal to C{Last-Modified} may be honoured or not (the server judges
   whether that date is a strong validator).
 - HEAD: a server SHOULD send the headers a GET would get (§9.3.2) but
   MUST ignore Range on methods other than GET (§14.2): both the 200 and
   the GET's 206/416 headers are accepted.
"""

from __future__ import annotations

import calendar
import datetime
import re
import time
from email.utils import parsedate_to_datetime

#: Outcomes an answer can have.
NOT_MODIFIED = "304"
FULL = "200 with the whole body"
UNSATISFIABLE = "416"
#: A 206 that names the bytes it carries (accepted where a range MAY be read leniently).
ANY_PARTIAL = "206 of any range it names"

YES, NO, MAYBE = "yes", "no", "maybe"

_ETAG = re.compile(r'(?:W/)?"[\x21\x23-\x7e\x80-\xff]*"')
_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
_DAYS = "Mon|Tue|Wed|Thu|Fri|Sat|Sun"
_LONG_DAYS = "Monday|Tuesday|Wednesday|Thursday|Friday|Saturday|Sunday"
_MONTHS = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"]
_MON = "|".join(_MONTHS)
_IMF = re.compile(rf"(?:{_DAYS}), (\d\d) ({_MON}) (\d{{4}}) (\d\d):(\d\d):(\d\d) GMT")
_RFC850 = re.compile(rf"(?:{_LONG_DAYS}), (\d\d)-({_MON})-(\d\d) (\d\d):(\d\d):(\d\d) GMT")
_ASCTIME = re.compile(rf"(?:{_DAYS}) ({_MON}) ([ \d]\d) (\d\d):(\d\d):(\d\d) (\d{{4}})")
_SINGLE = re.compile(r"(\d+)-(\d*)|-(\d+)")
#: Any number this long is larger than any artifact.
_HUGE = 10 ** 40


def ows(value: str) -> str:
    """A field value without the optional whitespace around it (RFC 9110 §5.5)."""
    return value.strip(" \t")


# -- dates -------------------------------------------------------------------------

def http_date(value: str, now: float) -> float | None:
    """
    The timestamp of a valid HTTP-date (IMF-fixdate, RFC 850 or asctime,
    §5.6.7), else None. A two-digit year more than 50 years ahead of C{now}
    is in the past century.
    """
    value = ows(value)
    if m := _IMF.fullmatch(value):
        day, mon, year, hh, mm, ss = m.groups()
    elif m := _RFC850.fullmatch(value):
        day, mon, yy, hh, mm, ss = m.groups()
        this_year = time.gmtime(now).tm_year
        year = this_year - this_year % 100 + int(yy)
        if year > this_year + 50:
            year -= 100
    elif m := _ASCTIME.fullmatch(value):
        mon, day, hh, mm, ss, year = m.groups()
    else:
        return None
    try:
        fields = (int(year), _MONTHS.index(mon) + 1, int(day), int(hh), int(mm), int(ss))
        if not (1 <= fields[2] <= 31 and fields[3] < 24 and fields[4] < 60 and fields[5] < 61):
            return None
        datetime.date(*fields[:3])  # a real day of that month
        return float(calendar.timegm(fields + (0, 0, 0)))
    except ValueError:
        return None


def lenient_date(value: str) -> float | None:
    """What a lenient parser (Python's email.utils) makes of a date, if anything."""
    try:
        d = parsedate_to_datetime(ows(value))
        if d.tzinfo is None:
            return float(calendar.timegm(d.timetuple()))
        return d.timestamp()
    except (TypeError, ValueError, IndexError, OverflowError):
        return None


# -- entity tags ---------------------------------------------------------------------

def entity_tags(value: str) -> tuple[list[str], bool]:
    """
    The entity tags of an If-None-Match list, and whether the list held
    nothing else (empty elements are allowed, §5.6.1). Tags containing commas
    are not generated by the tests, so splitting on commas is enough here.
    """
    tags, clean = [], True
    for element in value.split(","):
        element = ows(element)
        if not element:
            continue
        if _ETAG.fullmatch(element):
            tags.append(element)
        else:
            clean = False
    return tags, clean and bool(tags)


def _opaque(tag: str) -> str:
    return tag[2:] if tag.startswith("W/") else tag


def if_none_match(value: str, etag: str | None) -> str:
    """Does If-None-Match C{value} match the representation (so: 304)? YES, NO or MAYBE."""
    value = ows(value)
    if value == "*":
        return YES
    tags, clean = entity_tags(value)
    if etag is not None and any(_opaque(t) == _opaque(etag) for t in tags):
        return YES if clean else MAYBE
    return NO


def if_modified_since(value: str, last_modified: str | None, now: float) -> str:
    """Is the representation unmodified since C{value} (so: 304)? YES, NO or MAYBE."""
    if last_modified is None:
        return NO
    modified = http_date(last_modified, now) or lenient_date(last_modified)
    if modified is None:
        return NO
    since = http_date(value, now)
    if since is None:
        loose = lenient_date(value)
        return MAYBE if loose is not None and modified <= loose else NO
    if modified <= since:
        return MAYBE if since > now + 1 else YES
    return NO


def if_range(value: str, etag: str | None, last_modified: str | None, now: float) -> str:
    """Does If-Range C{value} let the Range through? YES, NO or MAYBE."""
    value = ows(value)
    if _ETAG.fullmatch(value):
        strong = etag is not None and not etag.startswith("W/")
        return YES if strong and not value.startswith("W/") and value == etag else NO
    if last_modified is None:
        return NO
    modified = http_date(last_modified, now) or lenient_date(last_modified)
    date = http_date(value, now)
    if date is None:
        date = lenient_date(value)
    return MAYBE if modified is not None and date is not None and date == modified else NO


# -- ranges --------------------------------------------------------------------------

def _number(digits: str) -> int:
    digits = digits.lstrip("0") or "0"
    return int(digits) if len(digits) < 38 else _HUGE


def _span(spec: str, size: int) -> tuple[int, int] | str | None:
    """One range-spec against C{size} bytes: (first, last), UNSATISFIABLE, or None if invalid."""
    m = _SINGLE.fullmatch(spec)
    if not m:
        return None
    if m.group(3) is not None:
        n = _number(m.group(3))
        if n == 0 or size == 0:
            return UNSATISFIABLE
        return max(size - n, 0), size - 1
    first = _number(m.group(1))
    last = _number(m.group(2)) if m.group(2) else None
    if last is not None and last < first:
        return None
    if first >= size:
        return UNSATISFIABLE
    return first, size - 1 if last is None else min(last, size - 1)


def range_outcomes(value: str, size: int) -> set:
    """What a GET with ``Range: value`` of C{size} bytes may get (see the module docstring)."""
    unit, eq, rest = ows(value).partition("=")
    if eq and _TOKEN.fullmatch(unit) and unit.lower() != "bytes":
        return {FULL}
    if eq and unit.lower() == "bytes":
        span = _span(rest, size)
        if span == UNSATISFIABLE:
            return {UNSATISFIABLE}
        if span is not None:
            return {("206", *span)}
    # Not one strict single range: the server may ignore or reject it, or read it leniently.
    allowed = {FULL, UNSATISFIABLE}
    spans = [_span(re.sub(r"[ \t]", "", e), size) for e in rest.split(",") if ows(e)] \
        if ows(unit).lower() == "bytes" else []
    if any(isinstance(s, tuple) for s in spans):
        allowed.add(ANY_PARTIAL)
        if all(s is not None for s in spans):
            allowed.discard(UNSATISFIABLE)  # a valid set with a satisfiable range is no reason for a 416
    return allowed


def allowed_outcomes(method: str, request: dict[str, str], etag: str | None,
                     last_modified: str | None, size: int, now: float) -> set:
    """
    Every outcome RFC 9110 (as decided in the module docstring) allows for
    C{request}'s headers, for a representation of C{size} bytes whose
    validators are C{etag} and C{last_modified} (those the answer carries).
    """
    allowed: set = set()
    if "If-None-Match" in request:
        condition = if_none_match(request["If-None-Match"], etag)
    elif "If-Modified-Since" in request:
        condition = if_modified_since(request["If-Modified-Since"], last_modified, now)
    else:
        condition = NO
    if condition == YES:
        return {NOT_MODIFIED}
    if condition == MAYBE:
        allowed.add(NOT_MODIFIED)
    if "Range" not in request:
        return allowed | {FULL}
    holds = YES if "If-Range" not in request or method == "HEAD" else \
        if_range(request["If-Range"], etag, last_modified, now)
    if method == "HEAD" or holds != YES:
        allowed.add(FULL)
    if holds != NO:
        allowed |= range_outcomes(request["Range"], size)
    return allowed
