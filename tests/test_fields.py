"""Tests for L{artifactvault.fields}: lengths read strictly, the headers kept, freshness."""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from artifactvault.fields import content_length, fresh_until, parse_length, response_headers
from artifactvault.flight import Artifact
from artifactvault.upstream import UpstreamError
from tests.fakes import FakeResponse


class LengthTests(SynchronousTestCase):

    def test_parse_length(self) -> None:
        """ASCII digits (repeated equal values allowed) are a length; anything else is not."""
        for value, expected in [("0", 0), ("42", 42), (" 42 ", 42), ("42, 42", 42), ("042,42", 42),
                                (b"7", 7), ("9" * 18, 10 ** 18 - 1), (None, None),
                                ("", None), ("\u00b2", None), ("\u0663", None), ("12abc", None), ("+5", None),
                                ("-1", None), ("1 2", None), ("4, 5", None), ("9" * 19, None), (",", None)]:
            with self.subTest(value=value):
                self.assertEqual(parse_length(value), expected)

    def test_content_length(self) -> None:
        """A response's length: None without one; an UpstreamError naming the bad value."""
        self.assertIsNone(content_length(FakeResponse()))
        self.assertEqual(content_length(FakeResponse(headers={"Content-Length": "10"})), 10)
        error = self.assertRaises(UpstreamError, content_length,
                                  FakeResponse(headers={"Content-Length": "\u00b2".encode("latin-1")}))
        self.assertEqual(error.reason, "upstream sent an invalid Content-Length: '\u00b2'")


class KeptTests(SynchronousTestCase):

    def artifact(self, **kwargs: object) -> Artifact:
        return Artifact(key="k", url="http://u/k", upstream=None, **kwargs)  # type: ignore[arg-type]

    def test_response_headers(self) -> None:
        """The backend's keep_headers that are there, and the upstream's Content-Encoding."""
        response = FakeResponse(headers={"Link": "<x>", "X-Upstream-Content-Encoding": "gzip", "Other": "no"})
        self.assertEqual(response_headers(self.artifact(keep_headers=("Link", "Missing")), response),
                         {"Link": "<x>", "Content-Encoding": "gzip"})

    def test_transformed_has_no_encoding(self) -> None:
        """What a transform stored is not the upstream's encoded bytes."""
        response = FakeResponse(headers={"X-Upstream-Content-Encoding": "gzip"})
        artifact = self.artifact(transform=lambda body, response: (body, "text/html"))
        self.assertEqual(response_headers(artifact, response), {})

    def test_fresh_until(self) -> None:
        """ttl None is forever; else now + ttl."""
        self.assertIsNone(fresh_until(self.artifact(), 100.0))
        self.assertEqual(fresh_until(self.artifact(ttl=60), 100.0), 160.0)
