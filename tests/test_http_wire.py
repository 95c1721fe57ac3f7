"""
The http backend as an HTTP cache, through real sockets: the real daemon
against a scripted upstream (L{FakeUpstream}), real clients (http.client,
curl). What is kept of an upstream's answer, which statuses pass, the
framings the upstream may use, and (freshness: upstream) RFC 9111.
"""

from __future__ import annotations

import gzip
import os
import shutil
import subprocess
import uuid

from twisted.trial.unittest import TestCase

from tests import support
from tests.fakeupstream import FakeUpstream, Script
from tests.support import Daemon, request


def chunk(data: bytes) -> bytes:
    return b"%x\r\n" % len(data) + data + b"\r\n0\r\n\r\n"


class _Shared:
    """One daemon with an http backend per freshness mode, over one scripted upstream."""

    def __init__(self) -> None:
        self.fake = FakeUpstream()
        common = {"base_url": self.fake.base, "backoff": 0, "timeout": 5, "idle_timeout": 5}
        self.daemon = Daemon([
            {"type": "http", "config": {"prefix": "/imm/", **common}},
            {"type": "http", "config": {"prefix": "/ttl/", "ttl": 60, **common}},
        ]).start()

    def close(self) -> None:
        self.daemon.cleanup()
        self.fake.close()


class WireTests(TestCase):
    """Whatever the mode: headers, statuses and framings pass as an HTTP intermediary passes them."""

    def setUp(self) -> None:
        shared = support.shared_fixture(_Shared)
        self.daemon, self.fake = shared.daemon, shared.fake

    def path(self) -> str:
        return f"/{uuid.uuid4().hex[:12]}"

    def get(self, prefix: str, path: str, headers: dict[str, str] | None = None, method: str = "GET"):
        return request(method, self.daemon.url(f"/{prefix}{path}"), headers)

    # -- framing -----------------------------------------------------------------

    def test_transfer_encodings_nginx_serves(self) -> None:
        """
        Transfer-Encoding forms Twisted's client alone refuses are answers:
        'identity, chunked', two lines, a trailing comma, 'gzip, chunked'
        (decoded), 'identity' with a length; a coding nobody can undo is a
        502 that says so.
        """
        body = b"hello world" * 50
        forms = {
            "list": ([("Transfer-Encoding", "identity, chunked")], chunk(body)),
            "lines": ([("Transfer-Encoding", "identity"), ("Transfer-Encoding", "chunked")], chunk(body)),
            "comma": ([("Transfer-Encoding", "chunked,")], chunk(body)),
            "gzip": ([("Transfer-Encoding", "gzip, chunked")], chunk(gzip.compress(body))),
            "identity": ([("Transfer-Encoding", "identity"), ("Content-Length", str(len(body)))], body),
        }
        for name, (lines, wire) in forms.items():
            path = self.path()
            self.fake.scripts[path] = Script(raw_headers=lines, wire_body=wire)
            status, headers, got = self.get("imm", path)
            self.assertEqual((status, got), (200, body), name)
            self.assertNotIn("transfer-encoding", {k for k in headers if headers[k] != "chunked"}, name)
        path = self.path()
        self.fake.scripts[path] = Script(raw_headers=[("Transfer-Encoding", "foo")], wire_body=body)
        status, _, got = self.get("imm", path)
        self.assertEqual(status, 502)
        self.assertIn(b"transfer coding foo, which cannot be decoded", got)

    # -- what is kept ----------------------------------------------------------------

    def test_end_to_end_headers_kept_on_miss_and_hit(self) -> None:
        """
        Every end-to-end header of the upstream's answer reaches the client,
        on the miss and from the cache; hop-by-hop ones (and those the
        Connection field names), cookies and authentication exchanges do not.
        """
        kept = {"Content-Disposition": 'attachment; filename="report.txt"', "Cache-Control": "max-age=60",
                "Expires": "Thu, 01 Jan 2037 00:00:00 GMT", "Content-Language": "de", "Link": "<https://x/>; rel=next",
                "X-Custom": "yes", "Content-Security-Policy": "default-src 'self'"}
        dropped = {"Set-Cookie": "session=secret", "Proxy-Authenticate": "Basic", "Authentication-Info": "x",
                   "X-Hop": "1", "Keep-Alive": "timeout=5"}
        for prefix in ("imm", "ttl"):
            path = self.path()
            self.fake.scripts[path] = Script(body=b"report", headers={**kept, **dropped},
                                             raw_headers=[("Connection", "X-Hop")])
            for cache in ("MISS", "HIT"):
                status, headers, body = self.get(prefix, path)
                self.assertEqual((status, headers["x-cache"], body), (200, cache, b"report"))
                for name, value in kept.items():
                    self.assertEqual(headers.get(name.lower()), value, (prefix, cache, name))
                for name in dropped:
                    self.assertNotIn(name.lower(), headers, (prefix, cache))
            self.assertEqual(self.fake.count("GET", path), 1)

    def test_curl_takes_the_file_name(self) -> None:
        """curl -OJ names the file as the upstream's Content-Disposition says, on a miss and on a hit."""
        curl = shutil.which("curl")
        if curl is None:
            self.skipTest("curl is not installed")
        path = self.path()
        self.fake.scripts[path] = Script(body=b"tool v1", headers={"Content-Disposition": "attachment; filename=tool-1.0.tgz"})
        for _ in range(2):
            work = self.mktemp()
            os.makedirs(work)
            subprocess.run([curl, "-sSfOJ", self.daemon.url(f"/imm{path}")], cwd=work, check=True, timeout=30)
            self.assertEqual(os.listdir(work), ["tool-1.0.tgz"])
            with open(os.path.join(work, "tool-1.0.tgz"), "rb") as f:
                self.assertEqual(f.read(), b"tool v1")

    # -- statuses ----------------------------------------------------------------------

    def test_final_statuses_pass_with_their_bodies(self) -> None:
        """
        The upstream's final status and body reach the client as they are (a
        410 stays 410, a 403's words are its own, a 300 is not followed, 201
        to 204 and 5xx are not 502s), with its headers; none of them is stored.
        """
        for status in (201, 202, 203, 204, 300, 403, 405, 410, 418, 500, 501, 503, 599):
            path = self.path()
            body = b"" if status == 204 else b"upstream says %d" % status
            self.fake.scripts[path] = Script(body=body, status=status, headers={"X-Why": f"because {status}"})
            for prefix in ("imm", "ttl"):
                for _ in range(2):
                    got, headers, content = self.get(prefix, path)
                    self.assertEqual((got, content, headers.get("x-why")), (status, body, f"because {status}"),
                                     (prefix, status))
                    self.assertEqual(headers["x-cache"], "MISS", (prefix, status))
            self.assertEqual(self.fake.count("GET", path), 4, status)

    def test_unasked_partial_content_is_relayed(self) -> None:
        """An upstream 206 to a request without Range is passed on as it came (its Content-Range too), not stored."""
        path = self.path()
        self.fake.scripts[path] = Script(body=b"part", status=206, headers={"Content-Range": "bytes 0-3/10"})
        for _ in range(2):
            status, headers, body = self.get("imm", path)
            self.assertEqual((status, body, headers.get("content-range")), (206, b"part", "bytes 0-3/10"))
        self.assertEqual(self.fake.count("GET", path), 2)

    def test_relayed_status_is_no_condition_or_range(self) -> None:
        """A relayed 404 is a 404 whatever the request's If-None-Match or Range (those are for a 200's bytes)."""
        path = self.path()
        self.fake.scripts[path] = Script(body=b"no such thing", status=404, headers={"ETag": '"x"'})
        status, _, body = self.get("imm", path, {"If-None-Match": '"x"', "Range": "bytes=0-1"})
        self.assertEqual((status, body), (404, b"no such thing"))
        status, headers, body = self.get("imm", path, method="HEAD")
        self.assertEqual((status, body), (404, b""))

    def test_head_relays_the_status(self) -> None:
        """A HEAD miss answers with the upstream's own status: a 410 is a 410."""
        path = self.path()
        self.fake.scripts[path] = Script(body=b"gone", status=410)
        self.assertEqual(self.get("imm", path, method="HEAD")[0], 410)

    def test_conditional_miss(self) -> None:
        """A conditional GET on a miss gets its 304 when the upstream's validators match, else the body."""
        path = self.path()
        self.fake.scripts[path] = Script(body=b"v1", headers={"ETag": '"v1"'})
        self.assertEqual(self.get("imm", path, {"If-None-Match": '"v1"'})[:1], (304,))
        path = self.path()
        self.fake.scripts[path] = Script(body=b"v1", headers={"ETag": '"v1"'})
        self.assertEqual(self.get("imm", path, {"If-None-Match": '"v0"'})[::2], (200, b"v1"))
