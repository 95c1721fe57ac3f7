"""
Tests for L{artifactvault.relay} and the vault's rule for a Range on a
miss (L{artifactvault.vault.range_to_pass}): which ranges are passed through
to the upstream, and how a passed-through range is relayed and checked, as a
client of the real HTTP server sees it.
"""

from __future__ import annotations

import hashlib

from twisted.internet import error as neterror
from twisted.trial.unittest import SynchronousTestCase

from artifactvault.relay import check_content_range, range_header
from artifactvault.upstream import UpstreamError
from artifactvault.vault import RANGE_FULL_BELOW
from tests.fakes import Harness

BODY = bytes(range(256)) * 4  # 1024 bytes


class PassThroughTests(SynchronousTestCase):
    """A Range on a miss, nothing downloading: a ranged upstream request, relayed, nothing stored."""

    def setUp(self) -> None:
        self.harness = Harness(self, idle_timeout=10, timeout=5)

    def get(self, path: str = "a.bin", **kwargs: object):  # type: ignore[no-untyped-def]
        return self.harness.get("/files/" + path, **kwargs)  # type: ignore[arg-type]

    def options(self, **fields: object) -> None:
        self.harness.backend.options["a.bin"] = fields

    def stored(self) -> bool:
        return self.harness.store.lookup(self.harness.url("a.bin")) is not None

    def ranged(self, spec: str = "bytes=100-199", **respond: object):  # type: ignore[no-untyped-def]
        """A client's Range; the upstream request it made (answered with C{respond} if given)."""
        client = self.get(headers={"Range": spec})
        request = self.harness.requests[-1]
        if respond:
            request.respond(**respond)  # type: ignore[arg-type]
        return client, request

    def partial(self, first: int, last: int, total: str = "1024", **headers: str) -> dict[str, object]:
        return dict(code=206, body=BODY[first:last + 1],
                    headers={"Content-Range": f"bytes {first}-{last}/{total}", **headers})

    def test_relayed(self) -> None:
        """The range goes upstream as asked; its 206 is relayed with Content-Range and validators, X-Cache PASS; nothing stored."""
        self.options(digest=("sha256", hashlib.sha256(BODY).hexdigest()))
        client, request = self.ranged(**self.partial(100, 199, ETag='"up"', **{"Content-Type": "x/y"}))
        self.assertEqual(request.header("Range"), "bytes=100-199")
        answer = client.answer()
        self.assertEqual((answer.status, answer.body, answer.complete, answer.header("Content-Range"),
                          answer.header("Content-Length"), answer.header("X-Cache"), answer.header("ETag"),
                          answer.header("Content-Type")),
                         (206, BODY[100:200], True, "bytes 100-199/1024", "100", "PASS", '"up"', "x/y"))
        self.assertIsNone(answer.header("Cache-Control"), "unverified bytes are not vouched for as immutable")
        self.assertFalse(self.stored())
        self.get(headers={"Range": "bytes=100-199"})
        self.assertEqual(len(self.harness.requests), 2, "nothing stored: asked again")

    def test_suffix_and_open_ranges(self) -> None:
        """A suffix and an open-ended range are passed on as they are."""
        for spec, first, last in (("bytes=-24", 1000, 1023), ("bytes=1000-", 1000, 1023)):
            with self.subTest(spec=spec):
                client, request = self.ranged(spec, **self.partial(first, last))
                self.assertEqual(request.header("Range"), spec)
                self.assertEqual((client.answer().status, client.answer().body), (206, BODY[first:last + 1]))

    def test_streamed_as_it_arrives(self) -> None:
        """The range goes out as its bytes arrive; the end finishes the answer."""
        client, request = self.ranged()
        response = request.respond(206, length=100, headers={"Content-Range": "bytes 100-199/1024"})
        response.send(BODY[100:150])
        self.assertEqual(client.answer().body, BODY[100:150])
        self.assertFalse(client.answer().complete)
        response.send(BODY[150:200]).finish()
        self.assertTrue(client.answer().complete)

    def test_cut_upstream_cuts_the_client(self) -> None:
        """An upstream that breaks mid-range: the client's connection is cut, never a short 206."""
        client, request = self.ranged()
        request.respond(206, length=100, headers={"Content-Range": "bytes 100-199/1024"}) \
            .send(BODY[100:150]).cut()
        self.assertTrue(client.aborted)
        self.assertFalse(client.answer().complete)

    def test_more_than_announced_is_cut(self) -> None:
        """More bytes than the Content-Range names: cut (the client was promised a length)."""
        client, request = self.ranged()
        response = request.respond(206, headers={"Content-Range": "bytes 100-199/1024"})
        response.send(BODY[100:150], BODY[150:250])
        self.assertTrue(client.aborted)
        self.assertEqual(client.answer().body, BODY[100:150])
        self.assertTrue(response.transport.stopped)

    def test_idle_upstream_times_out(self) -> None:
        """An upstream that stalls mid-range is given up after idle_timeout: the client is cut."""
        client, request = self.ranged()
        response = request.respond(206, length=100, headers={"Content-Range": "bytes 100-199/1024"})
        response.send(BODY[100:110])
        self.harness.clock.advance(10)
        self.assertTrue(client.aborted)
        self.assertTrue(response.transport.stopped)

    def test_slow_client_pauses_the_upstream(self) -> None:
        """A client that does not read pauses the upstream body (no idle timeout meanwhile); reading resumes it."""
        client = self.get(headers={"Range": "bytes=100-199"}, limit=1)
        response = self.harness.requests[-1].respond(206, length=100, headers={"Content-Range": "bytes 100-199/1024"})
        response.send(BODY[100:110])
        self.assertTrue(response.transport.paused)
        self.harness.clock.advance(60)
        self.assertFalse(client.aborted)
        client.read()
        self.assertFalse(response.transport.paused)
        response.send(BODY[110:200]).finish()
        self.assertEqual(client.answer().body, BODY[100:200])

    def test_client_leaving_stops_the_upstream(self) -> None:
        """A client that leaves mid-range: the upstream request is dropped too."""
        client, request = self.ranged()
        response = request.respond(206, length=100, headers={"Content-Range": "bytes 100-199/1024"})
        response.send(BODY[100:110])
        client.leave()
        self.assertTrue(response.transport.stopped)

    def test_wrong_content_range_is_502(self) -> None:
        """A 206 for other bytes than asked, or of another size than the index says: 502 with the reason."""
        size = 2 * RANGE_FULL_BELOW  # (known, and large enough to be passed through)
        self.options(size=size)
        for headers in ({"Content-Range": f"bytes 0-99/{size}"}, {"Content-Range": "bytes 100-199/2048"}, {}):
            with self.subTest(headers=headers):
                client, request = self.ranged(code=206, body=BODY[:100], headers=headers)
                answer = client.answer()
                self.assertEqual((answer.status, answer.header("X-Cache")), (502, "MISS"))
                self.assertIn("Content-Range", answer.body.decode())
                self.assertTrue(request.response.transport.stopped)

    def test_unsatisfiable_relayed(self) -> None:
        """The upstream's 416 is passed on with its size."""
        client, _ = self.ranged("bytes=5000-", code=416, body=b"", headers={"Content-Range": "bytes */1024"})
        answer = client.answer()
        self.assertEqual((answer.status, answer.header("Content-Range"), answer.header("X-Cache")),
                         (416, "bytes */1024", "PASS"))

    def test_upstream_error_passed_on(self) -> None:
        """A 404 is a 404; a refused connection a 502 with the reason."""
        client, _ = self.ranged(code=404, body=b"", phrase=b"Not Found")
        self.assertEqual(client.answer().status, 404)
        client, request = self.ranged("bytes=7-8")
        request.fail(neterror.ConnectionRefusedError())
        self.assertEqual(client.answer().status, 502)
        self.assertIn("connection refused", client.answer().body.decode())

    def test_fallback_when_missing(self) -> None:
        """A 404 for an artifact with a C{fallback_url} (another name of the same bytes): the range is asked of that."""
        self.options(fallback_url=self.harness.url("b.bin"))
        client, _ = self.ranged(code=404, body=b"", phrase=b"Not Found")
        again = self.harness.requests[-1]
        self.assertEqual((len(self.harness.requests), again.url, again.header("Range")),
                         (2, self.harness.url("b.bin"), "bytes=100-199"))
        again.respond(**self.partial(100, 199))
        self.assertEqual((client.answer().status, client.answer().body), (206, BODY[100:200]))

    def test_upstream_ignoring_range_becomes_the_download(self) -> None:
        """
        An upstream that answers 200 (no ranges) sent the whole file: it
        becomes the download (one upstream request), the range is answered
        from it and the file stored.
        """
        client, _ = self.ranged(code=200, body=BODY)
        self.assertEqual(len(self.harness.requests), 1)
        answer = client.answer()
        self.assertEqual((answer.status, answer.body, answer.header("Content-Range")),
                         (206, BODY[100:200], "bytes 100-199/1024"))
        self.assertTrue(self.stored())


class RuleTests(SynchronousTestCase):
    """When a Range on a miss starts a full download instead (the rule of L{range_to_pass})."""

    def setUp(self) -> None:
        self.harness = Harness(self)

    def asks_whole_file(self, spec: str, path: str = "a.bin", headers: dict[str, str] | None = None) -> bool:
        self.harness.get("/files/" + path, headers={"Range": spec, **(headers or {})})
        return self.harness.requests[-1].header("Range") is None

    def test_whole_file_ranges(self) -> None:
        """From 0 with no end, or an end or suffix reaching the known size: a download."""
        self.harness.backend.options["sized.bin"] = {"size": RANGE_FULL_BELOW + 100}
        last = RANGE_FULL_BELOW + 99
        for spec, path, whole in (("bytes=0-", "a.bin", True), ("bytes=0-99", "a.bin", False),
                                  (f"bytes=0-{last}", "sized.bin", True), (f"bytes=-{last + 1}", "sized.bin", True),
                                  (f"bytes=0-{last - 1}", "sized.bin", False), ("bytes=-10", "sized.bin", False)):
            with self.subTest(spec=spec, path=path):
                self.harness.vault.flights._by_key.clear()  # (each a new miss)
                self.assertEqual(self.asks_whole_file(spec, path), whole)

    def test_small_file(self) -> None:
        """A file the index says is at most RANGE_FULL_BELOW bytes: a download."""
        self.harness.backend.options["a.bin"] = {"size": RANGE_FULL_BELOW}
        self.assertTrue(self.asks_whole_file("bytes=10-19"))

    def test_conditional_or_unreadable(self) -> None:
        """A conditional Range, several ranges, or numbers beyond any file: a download, which evaluates them."""
        for n, (spec, headers) in enumerate((("bytes=10-19", {"If-Range": '"x"'}),
                                             ("bytes=10-19", {"If-None-Match": '"x"'}),
                                             ("bytes=1-2, 5-6", {}), ("bytes=" + "9" * 30 + "-", {}))):
            with self.subTest(spec=spec, headers=headers):
                self.assertTrue(self.asks_whole_file(spec, f"f{n}.bin", headers))


class ContentRangeTests(SynchronousTestCase):
    def test_accepted(self) -> None:
        """The range asked for, or what is left of it at the end of the file."""
        for value, span, size, expected in (
                ("bytes 10-19/100", (10, 19), None, (10, 19, 100)),
                ("bytes 90-99/100", (90, 200), 100, (90, 99, 100)),
                ("bytes 90-99/100", (90, None), None, (90, 99, 100)),
                ("bytes 80-99/100", (None, 20), 100, (80, 99, 100)),
                ("bytes 0-99/100", (None, 500), None, (0, 99, 100)),
                ("bytes 10-19/*", (10, 19), None, (10, 19, None))):
            with self.subTest(value=value, span=span):
                self.assertEqual(check_content_range(value, span, size), expected)

    def test_refused(self) -> None:
        """Other bytes, another size, a shorter answer than the file allows, or nonsense: an UpstreamError."""
        for value, span, size in (("bytes 0-19/100", (10, 19), None), ("bytes 10-19/100", (10, 19), 99),
                                  ("bytes 10-15/100", (10, 19), None), ("bytes 10-19/15", (10, 19), None),
                                  ("bytes 80-98/100", (None, 20), None), ("bytes 10-19/100", (10, None), None),
                                  (None, (10, 19), None), ("bytes=10-19/100", (10, 19), None),
                                  ("bytes 19-10/100", (10, 19), None)):
            with self.subTest(value=value, span=span):
                self.assertRaises(UpstreamError, check_content_range, value, span, size)

    def test_range_header(self) -> None:
        self.assertEqual([range_header(s) for s in ((1, 2), (1, None), (None, 5))],
                         ["bytes=1-2", "bytes=1-", "bytes=-5"])
