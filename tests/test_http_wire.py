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
