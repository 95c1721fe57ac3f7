"""Tests for L{artifactvault.fields}: the headers kept, freshness."""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from artifactvault.fields import IMMUTABLE, fresh_until, response_headers
from artifactvault.flight import Artifact
from tests.fakes import FakeResponse


class KeptTests(SynchronousTestCase):

    def artifact(self, **kwargs: object) -> Artifact:
        return Artifact(key="k", url="http://u/k", upstream=None, **kwargs)  # type: ignore[arg-type]

    def test_response_headers(self) -> None:
        """The backend's keep_headers that are there, and the upstream's Content-Encoding."""
        response = FakeResponse(headers={"Link": "<x>", "X-Upstream-Content-Encoding": "gzip", "Other": "no"})
        self.assertEqual(response_headers(self.artifact(keep_headers=("Link", "Missing")), response),
                         {"Link": "<x>", "Content-Encoding": "gzip"})

    def test_never_kept(self) -> None:
        """Set-Cookie, authentication exchanges and hop-by-hop fields are never kept, even when a backend lists them."""
        response = FakeResponse(headers={"Set-Cookie": "s=1", "Proxy-Authenticate": "Basic", "Keep-Alive": "5",
                                         "Authentication-Info": "x", "Link": "<x>"})
        listed = ("Set-Cookie", "proxy-authenticate", "Keep-Alive", "Authentication-Info", "Link")
        self.assertEqual(response_headers(self.artifact(keep_headers=listed), response), {"Link": "<x>"})

    def test_forwarded(self) -> None:
        """A client's Cookie, Proxy-* and hop-by-hop fields are never sent upstream; its Accept is."""
        from twisted.web.http_headers import Headers

        from artifactvault.fields import forwarded
        headers = Headers({b"Cookie": [b"c=1"], b"Proxy-Authorization": [b"Basic x"], b"Proxy-Foo": [b"1"],
                           b"Connection": [b"x-hop"], b"X-Hop": [b"1"], b"Accept": [b"*/*"]})
        self.assertEqual(forwarded(headers), {"accept": "*/*"})

    def test_transformed_has_no_encoding(self) -> None:
        """What a transform stored is not the upstream's encoded bytes."""
        response = FakeResponse(headers={"X-Upstream-Content-Encoding": "gzip"})
        artifact = self.artifact(transform=lambda body, response: (body, "text/html"))
        self.assertEqual(response_headers(artifact, response), {})

    def test_content_addressed_is_immutable(self) -> None:
        """An artifact with a digest and no ttl says so (Cache-Control: immutable); one with a ttl or no digest does not."""
        response = FakeResponse()
        digest = ("sha256", "0" * 64)
        self.assertEqual(response_headers(self.artifact(digest=digest), response), {"Cache-Control": IMMUTABLE})
        self.assertEqual(response_headers(self.artifact(digest=digest, ttl=60), response), {})
        self.assertEqual(response_headers(self.artifact(), response), {})

    def test_fresh_until(self) -> None:
        """ttl None is forever; else now + ttl."""
        self.assertIsNone(fresh_until(self.artifact(), 100.0))
        self.assertEqual(fresh_until(self.artifact(ttl=60), 100.0), 160.0)
