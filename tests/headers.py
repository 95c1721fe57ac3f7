"""
Hypothesis strategies for the request headers the property tests send:
C{Range}, C{If-Range}, C{If-None-Match}, C{If-Modified-Since} and C{Accept}
in valid forms, odd but legal ones, and garbage. Values that depend on the
artifact (its real ETag, dates around its Last-Modified) are drawn as
L{Sym}bols and made concrete with L{resolve} once the artifact is known, so
that a shrunk example reads as what it means (C{<weak etag>}). And
L{bounded}, the settings every property test here runs with.
"""

from __future__ import annotations

import functools
import os
import time
import traceback
from dataclasses import dataclass
from email.utils import formatdate
from typing import Any, Callable

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

from tests import rfc9110

#: More examples for a deeper run (AV_PROPERTY_SCALE=10 ./dev.sh test tests.test_http_properties).
SCALE = float(os.environ.get("AV_PROPERTY_SCALE", "1"))


def bounded(examples: int) -> Callable[[Callable[..., None]], Callable[..., None]]:
    """
    Bounded, repeatable hypothesis settings: the same C{examples} examples
    on every run (no example database, nothing written to the checkout), no
    per-example deadline (a hang is caught by the tests' socket timeout),
    and only the first failure shrunk and reported (shrinking a hang costs a
    timeout per attempt). The falsifying example, which hypothesis attaches
    as exception notes, goes into the failure's message: trial does not
    print notes.
    """
    chosen = settings(max_examples=max(1, round(examples * SCALE)), deadline=None, derandomize=True,
                      database=None, report_multiple_bugs=False,
                      suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

    def decorate(test: Callable[..., None]) -> Callable[..., None]:
        run = chosen(test)

        @functools.wraps(test)
        def with_examples(*args: Any, **kwargs: Any) -> None:
            try:
                run(*args, **kwargs)
            except Exception as e:
                if not getattr(e, "__notes__", None) and not isinstance(e, BaseExceptionGroup):
                    raise
                raise AssertionError("".join(traceback.format_exception(e))) from None
        return with_examples
    return decorate


#: Header characters a client may send that are neither CR, LF nor NUL.
_TEXT = "".join(chr(c) for c in range(0x20, 0x7f)) + "\t\xe9\xb2\xff"
garbage = st.text(alphabet=_TEXT, max_size=40)


@dataclass(frozen=True)
class Sym:
    """A value that depends on the artifact (its real ETag, a date near its Last-Modified…)."""
    name: str

    def __repr__(self) -> str:
        return f"<{self.name}>"


def _position(size: int, huge: bool = True) -> st.SearchStrategy[str]:
    """A byte position as a client may write it."""
    forms = [st.sampled_from(sorted({0, 1, size // 2, max(size - 1, 0), size, size + 1})).map(str),
             st.integers(0, size + 100).map(str),
             st.tuples(st.integers(1, 60), st.integers(0, size + 1)).map(lambda t: "0" * t[0] + str(t[1]))]
    if huge:
        # beyond any size; past 4300 digits Python's int() refuses to read it
        forms.append(st.one_of(st.sampled_from([19, 20, 64, 4300, 4301, 5000]), st.integers(19, 5000))
                     .map(lambda n: "9" * n))
    return st.one_of(*forms)


def _spec(position: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
    return st.one_of(st.tuples(position, position).map(lambda t: f"{t[0]}-{t[1]}"),
                     position.map(lambda a: f"{a}-"),
                     position.map(lambda n: f"-{n}"))


_SPACED = [" bytes={}", "bytes={} ", "bytes= {}", "bytes ={}", "bytes={},", "bytes=,{}", "\tbytes={}\t"]
_ODD_RANGES = ["bytes=", "bytes=-", "bytes=--1", "bytes=1-2-3", "bytes=0x10-", "bytes=+5-", "bytes=1.5-2",
               "bytes=-1-", "bytes", "=0-1", "bytes=\xb2-", "bytes 0-1", "bytes=0-1;x", "bytes=-0", "bytes=0-0"]


def _huge(form: str, digits: int) -> str:
    return "bytes=" + form.format(n="9" * digits)


def range_values(size: int) -> st.SearchStrategy[str]:
    """
    A Range header for a body of C{size} bytes. The kind of value is drawn
    first, evenly, so that each kind is tried in a short run and a shrunk
    example keeps its kind.
    """
    small = _position(size, huge=False)
    kinds = {
        "one range": st.tuples(st.just("bytes"), _spec(_position(size))),
        "one range, unit in another case": st.tuples(st.sampled_from(["Bytes", "BYTES"]), _spec(small)),
        "one range, another unit": st.tuples(st.sampled_from(["items", "byte", "none"]), _spec(small)),
        # numbers longer than Python's int() reads (4300 digits), in every form of a range
        "more than 4300 digits": st.builds(_huge, st.sampled_from(["{n}-", "0-{n}", "-{n}", "{n}-{n}", "1-{n}"]),
                                           st.sampled_from([4301, 5000])),
        "several ranges": st.tuples(st.lists(_spec(small), min_size=2, max_size=4),
                                    st.sampled_from([",", ", ", " ,\t", ",,"])),
        "whitespace or empty elements": st.tuples(_spec(small), st.sampled_from(_SPACED)),
        "spaces inside": _spec(small),
        "odd": st.sampled_from(_ODD_RANGES),
        "garbage": garbage,
    }
    render = {
        "one range": lambda t: f"{t[0]}={t[1]}",
        "one range, unit in another case": lambda t: f"{t[0]}={t[1]}",
        "one range, another unit": lambda t: f"{t[0]}={t[1]}",
        "several ranges": lambda t: "bytes=" + t[1].join(t[0]),
        "whitespace or empty elements": lambda t: t[1].format(t[0]),
        "spaces inside": lambda spec: "bytes=" + spec.replace("-", " - "),
    }
    return st.sampled_from(list(kinds)).flatmap(
        lambda kind: kinds[kind].map(render.get(kind, lambda value: value)))


_DATES = ["last-modified", "last-modified rfc850", "last-modified asctime", "last-modified +1s",
          "last-modified -1s", "last-modified +1d", "last-modified -1d", "1994", "2100", "now"]
if_range_values = st.one_of(st.sampled_from(["etag", "weak etag", "other etag"] + _DATES).map(Sym), garbage)
if_none_match_values = st.one_of(
    st.sampled_from(["etag", "weak etag", "other etag", "*", "etag in a list", "etag and garbage in a list",
                     "other etags"]).map(Sym),
    st.sampled_from(["", ",", "*, *", '"', "W/", 'W/ "x"']), garbage)
if_modified_since_values = st.one_of(
    st.sampled_from(_DATES).map(Sym),
    st.sampled_from(["0", "-1", "9" * 300, "Sat, 99 Foo 2000 99:99:99 GMT", "Mon, 01 Jan 99999999 00:00:00 GMT",
                     "Thu, 01 Jan 1970 00:00:00 GMT", "Fri, 31 Dec 9999 23:59:59 GMT",
                     "Fri, 04 Dec 2026 05:12:09 +0000", "2026-12-04T05:12:09Z"]),
    garbage)
_MEDIA = ["*/*", "text/html", "text/*", "application/vnd.pypi.simple.v1+json",
          "application/vnd.pypi.simple.v1+html", "application/vnd.pypi.simple.latest+json",
          "application/json", "image/png", "application/octet-stream"]
_Q = ["", ";q=1", ";q=0", ";q=0.5", ";q=0.001", ";q=1.000", ";q=abc", ";q=nan", ";q=-1", ";q=inf", ";q=1e400",
      ";q=" + "9" * 2000, ";level=1", ";q", "; q = 0.2"]
accept_values = st.one_of(
    st.lists(st.tuples(st.sampled_from(_MEDIA), st.sampled_from(_Q)).map("".join), min_size=1, max_size=4)
    .map(", ".join),
    st.sampled_from(["", ",", ";", "*", "text", "*/*;q=0", "text/html;q=0, */*;q=0"]),
    garbage)


def request_headers(size: int, accept: st.SearchStrategy[str] = accept_values) -> st.SearchStrategy[dict]:
    """Any mix of the five headers; most requests have a Range (most of what can go wrong is there)."""
    others = {"If-Range": if_range_values, "If-None-Match": if_none_match_values,
              "If-Modified-Since": if_modified_since_values, "Accept": accept}
    return st.one_of(st.fixed_dictionaries({"Range": range_values(size)}, optional=others),
                     st.fixed_dictionaries({}, optional=others))


methods = st.sampled_from(["GET", "GET", "GET", "HEAD"])


def _dates(t: float) -> dict[str, str]:
    g = time.gmtime(t)
    return {"imf": formatdate(t, usegmt=True),
            "rfc850": time.strftime("%A, %d-%b-%y %H:%M:%S GMT", g),
            "asctime": time.strftime("%a %b ", g) + f"{g.tm_mday:2d}" + time.strftime(" %H:%M:%S %Y", g)}


def resolve(value: Any, etag: str | None, last_modified: str | None) -> str:
    """A generated header value for an artifact with these validators (what a client would have seen)."""
    if not isinstance(value, Sym):
        return value
    tag = etag or '"no-etag-known"'
    opaque = tag[2:] if tag.startswith("W/") else tag
    modified = rfc9110.lenient_date(last_modified) if last_modified else None
    if modified is None:
        modified = float(int(time.time()) - 3600)
    name = value.name
    values = {
        "etag": tag, "weak etag": "W/" + opaque, "other etag": '"not-' + opaque.strip('"') + '"',
        "*": "*", "etag in a list": f'"a", {tag}, W/"b"', "etag and garbage in a list": f"{tag}, garbage",
        "other etags": '"a", W/"b"',
        "last-modified": last_modified or _dates(modified)["imf"],
        "last-modified rfc850": _dates(modified)["rfc850"], "last-modified asctime": _dates(modified)["asctime"],
        "last-modified +1s": _dates(modified + 1)["imf"], "last-modified -1s": _dates(modified - 1)["imf"],
        "last-modified +1d": _dates(modified + 86400)["imf"], "last-modified -1d": _dates(modified - 86400)["imf"],
        "1994": "Sun, 06 Nov 1994 08:49:37 GMT", "2100": "Fri, 01 Jan 2100 00:00:00 GMT",
        "now": _dates(time.time())["imf"],
    }
    return values[name]
