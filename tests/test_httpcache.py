"""
Tests for L{artifactvault.httpcache}: reading Cache-Control, dates, Age,
Vary and CDN-Cache-Control, and the RFC 9111 decisions made from them
(property tests with Hypothesis for the parser and the freshness
computation; examples for the rules).
"""

from __future__ import annotations

import calendar
from email.utils import formatdate, parsedate_to_datetime

from hypothesis import assume, given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from artifactvault.httpcache import (ALONE, DELTA_MAX, HEURISTIC_MAX, STAR, Directives, Exchange, HttpPolicy, Mode,
                                     Reuse, age_value, delta_seconds, loose_date, parse_cache_control, parse_http_date,
                                     parse_sf_dictionary, request_directives, response_directives, selecting,
                                     storable, targeted_directives, variant_key, vary_fields)
from tests.fakes import EPOCH, FakeResponse

TOKEN = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789-_.!#$%&'*+^`|~", min_size=1, max_size=12)
QUOTED_CONTENT = st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=126), max_size=20)


def quote(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


@st.composite
def directive_lists(draw):  # type: ignore[no-untyped-def]
    """A Cache-Control value as (text, [(name, argument)]) with arguments as tokens or quoted strings."""
    items = []
    parts = []
    for _ in range(draw(st.integers(0, 6))):
        name = draw(TOKEN)
        kind = draw(st.sampled_from(["none", "token", "quoted"]))
        if kind == "none":
            value, text = None, name
        elif kind == "token":
            value = draw(TOKEN)
            text = f"{name}={value}"
        else:
            value = draw(QUOTED_CONTENT)
            text = f"{name}={quote(value)}"
        items.append((name.lower(), value))
        parts.append(text)
    separator = draw(st.sampled_from([",", ", ", " ,", ",\t"]))
    return separator.join(parts), items


def fields(**values: str | list[str]) -> dict[str, list[str]]:
    return {name.replace("_", "-").lower(): (v if isinstance(v, list) else [v]) for name, v in values.items()}


def http_date(t: float) -> str:
    return formatdate(t, usegmt=True)


class CacheControlParserTests(SynchronousTestCase):
    """The Cache-Control grammar (RFC 9111 5.2), read as recipients must."""

    @given(directive_lists())
    def test_round_trip(self, generated) -> None:  # type: ignore[no-untyped-def]
        """Whatever directives are written (token or quoted arguments), each name reads back with its first argument."""
        text, items = generated
        parsed = parse_cache_control([text])
        expected: dict[str, str | None] = {}
        for name, value in items:
            expected.setdefault(name, value)
        self.assertEqual(parsed, Directives(expected.items()))

    @given(directive_lists(), directive_lists())
    def test_lines_are_one_list(self, a, b) -> None:  # type: ignore[no-untyped-def]
        """Two field lines read as one comma-separated value."""
        self.assertEqual(parse_cache_control([a[0], b[0]]), parse_cache_control([a[0] + ", " + b[0]]))

    @given(st.text(max_size=60))
    def test_anything_parses(self, text: str) -> None:
        """Any text gives directives (possibly none), never an exception."""
        parse_cache_control([text])
        parse_sf_dictionary([text])

    @given(QUOTED_CONTENT, st.integers(0, 10 ** 6))
    def test_quoted_commas_separate_nothing(self, content: str, seconds: int) -> None:
        """A directive hidden in a quoted string is not a directive."""
        parsed = parse_cache_control([f'ext={quote(content + ", max-age=99999")}, max-age={seconds}'])
        self.assertEqual(parsed.seconds("max-age"), seconds)

    def test_members_off_the_grammar_are_dropped(self) -> None:
        """'max-age =5', 'max-age= 5' and an unterminated quote are no directives; the others stand."""
        parsed = parse_cache_control(["max-age =5, public, s-maxage= 7, no-cache"])
        self.assertEqual(sorted(parsed.names), ["no-cache", "public"])
        self.assertEqual(parse_cache_control(['private="a, max-age=5']).names, frozenset())

    def test_delta_seconds(self) -> None:
        """Arguments: 1*DIGIT (leading zeros fine, quoted fine); anything else is stale (0); huge is 2^31."""
        cc = parse_cache_control(['a=003600, b="60", c=-1, d=1.5, e=\'5\', f=99999999999, g'])
        self.assertEqual([cc.seconds(n) for n in "abcdefgh"], [3600, 60, 0, 0, 0, DELTA_MAX, 0, None])

    @given(st.integers(0, 10 ** 30))
    def test_delta_seconds_bound(self, n: int) -> None:
        """Every number of digits is read, at most 2^31 (RFC 9111 1.2.2)."""
        self.assertEqual(delta_seconds(str(n)), min(n, DELTA_MAX))


class TargetedFieldTests(SynchronousTestCase):
    """CDN-Cache-Control (RFC 9213): a Structured Field dictionary that, when valid, stands for Cache-Control."""

    def test_used_when_valid(self) -> None:
        """A valid CDN-Cache-Control wins over Cache-Control, no-store included."""
        f = fields(cache_control="no-store", cdn_cache_control="max-age=600")
        self.assertEqual(response_directives(f), Directives([("max-age", 600)]))
        self.assertTrue(storable(200, f))

    def test_invalid_is_ignored(self) -> None:
        """One that does not parse (upper case, stray characters) leaves Cache-Control in charge."""
        for value in ("MaX-aGe=3600", "max-age=10000, &&&&&", "max-age =1", "a,"):
            f = fields(cache_control="no-store", cdn_cache_control=value)
            self.assertIsNone(targeted_directives(f), value)
            self.assertFalse(storable(200, f), value)

    def test_wrong_type_is_no_directive(self) -> None:
        """max-age as a string is left out; the field still counts."""
        self.assertEqual(targeted_directives(fields(cdn_cache_control='max-age="60", private')),
                         Directives([("private", True)]))


class DateTests(SynchronousTestCase):
    """HTTP-dates: the three forms exactly (RFC 9110 5.6.7); anything else is no date."""

    @given(st.integers(0, 2 ** 35))
    def test_imf_fixdate_round_trip(self, t: int) -> None:
        """Every time as an IMF-fixdate reads back as that time (and in any case)."""
        assume(t < calendar.timegm((9999, 12, 31, 0, 0, 0)))
        self.assertEqual(parse_http_date(http_date(t)), float(t))
        self.assertEqual(parse_http_date(http_date(t).upper()), float(t))

    def test_obsolete_forms(self) -> None:
        """RFC 850 (two-digit years within 50 years ahead) and asctime dates are read."""
        t = calendar.timegm((2050, 8, 18, 2, 1, 18))
        self.assertEqual(parse_http_date("Thursday, 18-Aug-50 02:01:18 GMT", now=EPOCH), t)
        self.assertEqual(parse_http_date("Thursday, 18-Aug-99 02:01:18 GMT", now=EPOCH),
                         calendar.timegm((1999, 8, 18, 2, 1, 18)))
        self.assertEqual(parse_http_date("Thu Aug 18 02:01:18 2050"), t)
        self.assertEqual(parse_http_date("Thu Aug  8 02:01:18 2050"), t - 10 * 86400)

    def test_invalid(self) -> None:
        """Other time zones, missing commas, doubled spaces, dashes in an IMF date, one-digit hours, '0'."""
        for value in ("Thu, 18 Aug 2050 02:01:18 UTC", "Thu, 18 Aug 2050 02:01:18 AEST", "Thu, 18 Aug 50 02:01:18 GMT",
                      "Thu 18 Aug 2050 02:01:18 GMT", "Thu, 18  Aug  2050 02:01:18 GMT",
                      "Thu, 18-Aug-2050 02:01:18 GMT", "Thu, 18 Aug 2050 02.01.18 GMT",
                      "Thu, 18 Aug 2050 2:01:18 GMT", "Thu, 31 Feb 2050 02:01:18 GMT", "0", ""):
            self.assertIsNone(parse_http_date(value), value)


def _as_email_utils(value: str | None) -> float | None:
    """What each of loose_date's users did with a date before there was one function (parsedate_to_datetime)."""
    if not value:
        return None
    try:
        return parsedate_to_datetime(value).timestamp()
    except (TypeError, ValueError, IndexError, OverflowError):
        return None


class LooseDateTests(SynchronousTestCase):
    """Dates as servers and files write them (loose_date): email.utils's reading, remembered."""

    @settings(max_examples=500)
    @given(st.one_of(st.none(), st.text(max_size=40),
                     st.integers(0, 2 ** 35).map(lambda t: formatdate(t, usegmt=True)),
                     st.integers(0, 2 ** 33).map(lambda t: formatdate(t, localtime=False)),
                     st.integers(0, 2 ** 33).map(lambda t: formatdate(t).replace("-0000", "UTC"))))
    def test_as_email_utils(self, value: str | None) -> None:
        """Any text, or a date in the forms mail and Release files use: what email.utils makes of it."""
        self.assertEqual(loose_date(value), _as_email_utils(value))
        self.assertEqual(loose_date(value), _as_email_utils(value))  # (and so when remembered)

    def test_forms(self) -> None:
        """A Release file's UTC date and an HTTP-date read; an empty or broken one is no date."""
        t = calendar.timegm((2026, 12, 5, 7, 8, 12))
        self.assertEqual(loose_date("Sat, 05 Dec 2026 07:08:12 UTC"), t)
        self.assertEqual(loose_date("Sat, 05 Dec 2026 07:08:12 GMT"), t)
        for value in (None, "", "yesterday", "Sat, 99 Dec 2026 07:08:12 UTC"):
            self.assertIsNone(loose_date(value), value)


class AgeTests(SynchronousTestCase):

    def test_age_value(self) -> None:
        """The first Age value if it is delta-seconds; anything else counts as none."""
        for lines, expected in ((["7200"], 7200), (["0, 7200"], 0), (["7200, 0"], 7200), (["7200", "0"], 7200),
                                (["abc"], 0), (["-7200"], 0), (["7200.0"], 0), (["2147483649"], DELTA_MAX)):
            self.assertEqual(age_value({"age": lines}), expected, lines)


class FreshnessTests(SynchronousTestCase):
    """The freshness lifetime and age of an answer (RFC 9111 4.2), on the cache's clock."""

    @given(max_age=st.integers(0, 10 ** 7), age=st.integers(0, 10 ** 7), skew=st.integers(-10 ** 5, 10 ** 5),
           delay=st.integers(0, 60), later=st.integers(0, 10 ** 7))
    @settings(max_examples=300)
    def test_fresh_while_lifetime_exceeds_age(self, max_age: int, age: int, skew: int, delay: int,
                                              later: int) -> None:
        """
        Stored at some time, an answer with max-age is fresh exactly while its
        current age (its corrected initial age plus the time since) is below
        max-age; its age is never less than the Age it came with plus the
        time it took, nor than Date says.
        """
        requested = EPOCH
        answered = requested + delay
        exchange = Exchange(200, fields(cache_control=f"max-age={max_age}", age=str(age),
                                        date=http_date(answered + skew)), requested, answered)
        initial = exchange.initial_age()
        self.assertGreaterEqual(initial, age + delay)
        self.assertGreaterEqual(initial, -skew)
        stored = HttpPolicy(Mode.UPSTREAM).stored(exchange, answered)
        now = answered + later
        self.assertEqual(now < stored["fresh_until"], max_age > initial + later)
        self.assertEqual(stored["age"], initial)

    @given(st.integers(0, 10 ** 6), st.integers(0, 10 ** 6), st.integers(-10 ** 6, 10 ** 6))
    def test_precedence(self, s_maxage: int, max_age: int, expires_in: int) -> None:
        """s-maxage over max-age over Expires - Date; and Expires alone is Expires - Date."""
        t = EPOCH
        base = {"date": http_date(t), "expires": http_date(t + expires_in)}
        self.assertEqual(Exchange(200, fields(cache_control=f"max-age={max_age}, s-maxage={s_maxage}", **base),
                                  t, t).lifetime(), s_maxage)
        self.assertEqual(Exchange(200, fields(cache_control=f"max-age={max_age}", **base), t, t).lifetime(), max_age)
        self.assertEqual(Exchange(200, fields(**base), t, t).lifetime(), expires_in)

    def test_invalid_or_repeated_expires_has_expired(self) -> None:
        """An Expires that is not a date, or two of them, is in the past."""
        t = EPOCH
        self.assertEqual(Exchange(200, fields(expires="0"), t, t).lifetime(), 0)
        self.assertEqual(Exchange(200, fields(expires=[http_date(t + 60), http_date(t + 90)]), t, t).lifetime(), 0)

    @given(st.integers(0, 10 ** 8))
    def test_heuristic(self, modified_ago: int) -> None:
        """Without explicit freshness: a tenth of Last-Modified's age, at most a day, for heuristically cacheable statuses."""
        t = EPOCH
        f = fields(date=http_date(t), last_modified=http_date(t - modified_ago))
        self.assertEqual(Exchange(200, f, t, t).lifetime(), min(modified_ago * 0.1, HEURISTIC_MAX))
        self.assertIsNone(Exchange(403, f, t, t).lifetime())
        self.assertEqual(Exchange(599, fields(cache_control="public", **{k: v[0] for k, v in f.items()}), t,
                                  t).lifetime(), min(modified_ago * 0.1, HEURISTIC_MAX))
        self.assertIsNone(Exchange(200, fields(date=http_date(t)), t, t).lifetime())


class StorableTests(SynchronousTestCase):
    """RFC 9111 section 3 for a shared cache."""

    def test_rules(self) -> None:
        """no-store, private, Vary: *, 206 and an unknown status without freshness are not stored."""
        self.assertTrue(storable(200, {}))
        self.assertTrue(storable(404, {}))
        self.assertFalse(storable(403, {}))
        self.assertTrue(storable(403, fields(cache_control="max-age=5")))
        self.assertTrue(storable(599, fields(expires="0")))
        self.assertFalse(storable(200, fields(cache_control="max-age=5, no-store")))
        self.assertFalse(storable(200, fields(cache_control="private, max-age=5")))
        self.assertFalse(storable(200, fields(cache_control="max-age=5", vary="Foo, *")))
        self.assertFalse(storable(206, fields(cache_control="max-age=5")))
        self.assertFalse(storable(200, fields(cache_control="max-age=5"), Directives([("no-store", None)])))

    def test_must_understand(self) -> None:
        """must-understand lifts no-store for a status whose caching is understood, and only then stores."""
        cc = "max-age=3600, no-store, must-understand"
        self.assertTrue(storable(200, fields(cache_control=cc)))
        self.assertFalse(storable(599, fields(cache_control=cc)))

    def test_other_modes(self) -> None:
        """immutable and ttl store 200s only (never Vary: *), whatever Cache-Control says, and share any answer but Vary: *."""
        for policy in (HttpPolicy(Mode.IMMUTABLE), HttpPolicy(Mode.TTL, ttl=60)):
            self.assertTrue(policy.storable(200, fields(cache_control="no-store")))
            self.assertFalse(policy.storable(404, fields(cache_control="max-age=60")))
            self.assertFalse(policy.storable(200, fields(vary="*")))
            self.assertTrue(policy.shared(404, {}))
            self.assertFalse(policy.shared(200, fields(vary="*")))

    def test_authorized(self) -> None:
        """An answer to a request with Authorization is stored only when public, s-maxage or must-revalidate say so."""
        self.assertFalse(storable(200, fields(cache_control="max-age=60"), authorized=True))
        for cc in ("max-age=60, public", "s-maxage=60", "max-age=60, must-revalidate"):
            self.assertTrue(storable(200, fields(cache_control=cc), authorized=True), cc)


class VaryTests(SynchronousTestCase):

    def test_fields(self) -> None:
        """Vary's names, lower-case, once each, in order; '*' anywhere is STAR."""
        self.assertEqual(vary_fields(fields(vary=["Foo, bar", "FOO", ""])), ("foo", "bar"))
        self.assertEqual(vary_fields(fields(vary=["foo", "*"])), STAR)
        self.assertEqual(vary_fields({}), ())

    def test_selecting(self) -> None:
        """Values are compared with their list elements trimmed; absent is None."""
        self.assertEqual(selecting(("foo", "bar"), {"foo": " 1 ,2 "}), {"foo": "1, 2", "bar": None})
        self.assertNotEqual(variant_key("k", {"foo": "1"}), variant_key("k", {"foo": "2"}))
        self.assertEqual(variant_key("k", {"a": "1", "b": None}), variant_key("k", {"b": None, "a": "1"}))

    def test_rejoin(self) -> None:
        """A request joining another's download: same values, the same answer; else its variant's key, or alone."""
        starter = HttpPolicy(Mode.UPSTREAM, sent={"foo": "1"}, key="k")
        answer = FakeResponse(200, {"Vary": "Foo", "Cache-Control": "max-age=60"})
        self.assertIsNone(HttpPolicy(Mode.UPSTREAM, sent={"foo": "1", "x": "y"}, key="k").rejoin(starter, answer))
        other = HttpPolicy(Mode.UPSTREAM, sent={"foo": "2"}, key="k")
        self.assertEqual(other.rejoin(starter, answer), variant_key("k", {"foo": "2"}))
        private = FakeResponse(200, {"Cache-Control": "private, max-age=60"})
        self.assertEqual(other.rejoin(starter, private), ALONE)


class ReuseTests(SynchronousTestCase):
    """What a stored answer is good for (RFC 9111 4, 5.2.1; RFC 5861)."""

    def reuse(self, cc: str, *, client: str = "", fresh_for: float = 60, age: float = 0) -> Reuse:
        policy = HttpPolicy(Mode.UPSTREAM, client=request_directives(fields(cache_control=client) if client else {}))
        now = EPOCH
        return policy.reuse(now + fresh_for, age, now, {"Cache-Control": cc} if cc else {}, now)

    def test_response_directives(self) -> None:
        """Fresh is a hit; no-cache always asks; stale asks unless stale-while-revalidate's window is open."""
        self.assertIs(self.reuse("max-age=60"), Reuse.FRESH)
        self.assertIs(self.reuse("max-age=60, no-cache"), Reuse.VALIDATE)
        self.assertIs(self.reuse("max-age=60", fresh_for=-1), Reuse.VALIDATE)
        self.assertIs(self.reuse("max-age=1, stale-while-revalidate=10", fresh_for=-5), Reuse.STALE_REVALIDATE)
        self.assertIs(self.reuse("max-age=1, stale-while-revalidate=10", fresh_for=-11), Reuse.VALIDATE)
        self.assertIs(self.reuse("max-age=1, must-revalidate, stale-while-revalidate=10", fresh_for=-5),
                      Reuse.VALIDATE)

    def test_client_directives(self) -> None:
        """no-cache, max-age beyond the age, min-fresh beyond what is left ask; max-stale takes a stale copy."""
        self.assertIs(self.reuse("max-age=600", client="no-cache"), Reuse.VALIDATE)
        self.assertIs(self.reuse("max-age=600", client="max-age=10", age=11), Reuse.VALIDATE)
        self.assertIs(self.reuse("max-age=600", client="max-age=10", age=9), Reuse.FRESH)
        self.assertIs(self.reuse("max-age=600", client="min-fresh=100", fresh_for=99), Reuse.VALIDATE)
        self.assertIs(self.reuse("max-age=600", client="max-stale=100", fresh_for=-99), Reuse.STALE)
        self.assertIs(self.reuse("max-age=600", client="max-stale=100", fresh_for=-101), Reuse.VALIDATE)
        self.assertIs(self.reuse("max-age=600", client="max-stale", fresh_for=-10 ** 6), Reuse.STALE)
        self.assertIs(self.reuse("max-age=600, proxy-revalidate", client="max-stale", fresh_for=-1), Reuse.VALIDATE)

    def test_pragma(self) -> None:
        """Pragma: no-cache counts only from a client that sends no Cache-Control."""
        self.assertIn("no-cache", request_directives(fields(pragma="no-cache")))
        self.assertNotIn("no-cache", request_directives(fields(pragma="no-cache", cache_control="x")))

    def test_other_modes(self) -> None:
        """immutable: always fresh; ttl: fresh until the ttl, unless the client asks for a refresh."""
        now = EPOCH
        self.assertIs(HttpPolicy(Mode.IMMUTABLE).reuse(None, 0, now, {}, now), Reuse.FRESH)
        ttl = HttpPolicy(Mode.TTL, ttl=60)
        self.assertIs(ttl.reuse(now + 1, 0, now, {"Cache-Control": "no-cache"}, now), Reuse.FRESH)
        self.assertIs(ttl.reuse(now - 1, 0, now, {}, now), Reuse.VALIDATE)
        refresh = HttpPolicy(Mode.TTL, ttl=60, client=request_directives(fields(cache_control="max-age=0")))
        self.assertIs(refresh.reuse(now + 1, 0, now, {}, now), Reuse.VALIDATE)

    def test_stale_on_failure(self) -> None:
        """must-revalidate, proxy-revalidate, s-maxage and no-cache forbid a stale stand-in (upstream mode only)."""
        upstream = HttpPolicy(Mode.UPSTREAM)
        self.assertTrue(upstream.stale_on_failure({"Cache-Control": "max-age=1"}))
        for cc in ("max-age=1, must-revalidate", "proxy-revalidate", "s-maxage=1", "no-cache"):
            self.assertFalse(upstream.stale_on_failure({"Cache-Control": cc}), cc)
        self.assertTrue(HttpPolicy(Mode.TTL, ttl=1).stale_on_failure({"Cache-Control": "must-revalidate"}))
