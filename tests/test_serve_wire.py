"""
What the real daemon puts on the wire, read through real sockets: body
framing (chunked or by length, with and without sendfile), ranges on misses,
fallbacks that start from clean headers, hostile Range and Content-Length
values, and the daemon's file descriptors afterwards.
"""

from __future__ import annotations

import atexit
import hashlib
import http.client
import os
import socket
import subprocess
import threading
import time

from twisted.trial.unittest import TestCase

from tests import support
from tests.fakeupstream import FakeUpstream, Script
from tests.support import Daemon, request

#: Large enough that a miss is sent with sendfile many times over.
BIG = 6 * 1024 * 1024


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def read_raw(port: int, path: str, headers: dict[str, str] | None = None,
             method: str = "GET", timeout: float = 30) -> tuple[int, dict[str, str], bytes]:
    """
    One HTTP/1.1 request on a raw socket; the response parsed here, strictly:
    a chunked body chunk by chunk (sizes, CRLFs, the last chunk), else exactly
    Content-Length bytes. Raises AssertionError on any framing error.
    """
    lines = [f"{method} {path} HTTP/1.1", "Host: x", "Connection: close"]
    lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))
        data = b""
        while chunk := s.recv(1 << 20):
            data += chunk
    head, sep, rest = data.partition(b"\r\n\r\n")
    assert sep, f"no end of headers in {data[:200]!r}"
    status_line, *fields = head.decode("latin-1").split("\r\n")
    status = int(status_line.split(" ", 2)[1])
    found: dict[str, str] = {}
    for field in fields:
        name, _, value = field.partition(":")
        assert name.lower() not in found, f"{name} sent twice"
        found[name.lower()] = value.strip()
    if method == "HEAD" or status in (204, 304) or 100 <= status < 200:
        assert rest == b"", f"a body after a {method} {status}: {rest[:100]!r}"
        return status, found, b""
    if found.get("transfer-encoding") == "chunked":
        assert "content-length" not in found, "both chunked and Content-Length"
        body = b""
        while True:
            size_line, sep, rest = rest.partition(b"\r\n")
            assert sep and size_line and all(c in b"0123456789abcdefABCDEF" for c in size_line), \
                f"bad chunk size line {size_line[:40]!r} after {len(body)} bytes"
            size = int(size_line, 16)
            if size == 0:
                assert rest == b"\r\n", f"bad end of chunked body: {rest[:40]!r}"
                return status, found, body
            assert len(rest) >= size + 2 and rest[size:size + 2] == b"\r\n", \
                f"chunk of {size} bytes not followed by CRLF after {len(body)} bytes"
            body += rest[:size]
            rest = rest[size + 2:]
    assert "content-length" in found, f"neither chunked nor Content-Length: {found}"
    length = int(found["content-length"])
    assert len(rest) == length, f"Content-Length {length}, got {len(rest)} bytes"
    return status, found, rest


def curl(url: str, *args: str) -> tuple[int, bytes]:
    """curl's exit status (56: a framing error) and the body it got."""
    p = subprocess.run(["curl", "-sS", "--max-time", "60", *args, url], capture_output=True)
    return p.returncode, p.stdout


#: Idle upstream connections the daemon's pool may keep (service.py: maxPersistentPerHost).
POOLED = 16


def open_fds(pid: int) -> tuple[int, int]:
    """The process's open descriptors: (files, pipes and the like; sockets)."""
    targets = []
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            targets.append(os.readlink(f"/proc/{pid}/fd/{fd}"))
        except FileNotFoundError:
            pass
    sockets = sum(1 for t in targets if t.startswith("socket:"))
    return len(targets) - sockets, sockets


class _Shared:
    """One daemon in front of one scripted upstream for the whole module."""

    def __init__(self) -> None:
        self.fake = FakeUpstream()
        self.daemon = Daemon([
            {"type": "http", "config": {"prefix": "/fake/", "base_url": self.fake.base,
                                        "timeout": 5, "idle_timeout": 5}},
            {"type": "http", "config": {"prefix": "/fresh/", "base_url": self.fake.base + "/fresh",
                                        "ttl": 0}},
        ]).start()
        atexit.register(self.close)

    def close(self) -> None:
        self.daemon.cleanup()
        self.fake.close()


class WireTests(TestCase):

    def setUp(self) -> None:
        shared = support.shared_fixture(_Shared)
        self.daemon, self.fake = shared.daemon, shared.fake
        self.n = 0

    def script(self, script: Script, prefix: str = "") -> str:
        """A new upstream path answering with C{script}; its path at the daemon."""
        name = f"{prefix}/w-{os.urandom(6).hex()}.bin"
        self.fake.scripts[name] = script
        return ("/fresh" if prefix else "/fake") + (name[len(prefix):] if prefix else name)

    def stored(self, path: str) -> None:
        """Wait until C{path}'s download is stored and has ended (a new request then reads the entry)."""
        key = self.fake.base + (path if path.startswith("/fresh/") else path[len("/fake"):])
        self.daemon.wait_stored(key)
        self.daemon.wait_log(f"stored {path}:")

    def assertFdsReturn(self, baseline: tuple[int, int]) -> None:
        """
        The daemon's file descriptors come back to C{baseline} (flights close
        theirs when done), its sockets to at most the idle upstream
        connections its pool may keep more.
        """
        pid = self.daemon.proc.pid
        deadline = time.monotonic() + 10
        while True:
            files, sockets = open_fds(pid)
            if files <= baseline[0] and sockets <= baseline[1] + POOLED:
                return
            if time.monotonic() > deadline:
                self.fail(f"daemon holds {files - baseline[0]} more files and {sockets - baseline[1]} "
                          f"more sockets: {sorted(os.readlink(f'/proc/{pid}/fd/{fd}') for fd in os.listdir(f'/proc/{pid}/fd'))}")
            time.sleep(0.05)

    # -- framing ----------------------------------------------------------------

    def test_chunked_upstream_miss_is_well_framed(self) -> None:
        """
        An upstream that sends a large body chunked (no Content-Length): the
        miss reaches curl, http.client and a strict raw reader intact and
        well framed, and so does the hit that follows.
        """
        data = os.urandom(BIG)
        for reader in ("raw", "curl", "http.client"):
            path = self.script(Script(body=data, chunked=True, chunk=256 * 1024))
            if reader == "raw":
                status, headers, body = read_raw(self.daemon.port, path)
                self.assertEqual((status, headers["x-cache"], len(body), sha(body)),
                                 (200, "MISS", len(data), sha(data)))
            elif reader == "curl":
                code, body = curl(self.daemon.url(path))
                self.assertEqual((code, len(body), sha(body)), (0, len(data), sha(data)))
            else:
                status, headers, body = request("GET", self.daemon.url(path))
                self.assertEqual((status, len(body), sha(body)), (200, len(data), sha(data)))
            self.stored(path)
            status, headers, body = read_raw(self.daemon.port, path)
            self.assertEqual((status, headers["x-cache"], headers["content-length"], sha(body)),
                             (200, "HIT", str(len(data)), sha(data)))
            code, body = curl(self.daemon.url(path))
            self.assertEqual((code, sha(body)), (0, sha(data)))

    # -- hostile numbers ------------------------------------------------------------

    def test_huge_range_numbers_hit_and_miss(self) -> None:
        """
        Range values of 5000 digits, on hits and misses, 20 requests each: every
        one gets an answer as for a huge number (416 for a first byte beyond
        the end, else the whole body as 206), never a 500 or silence, and the
        daemon's descriptors return to their count before.
        """
        huge = "9" * 5000
        data = os.urandom(100_000)
        hit = self.script(Script(body=data))
        self.assertEqual(request("GET", self.daemon.url(hit))[0], 200)
        self.stored(hit)
        baseline = open_fds(self.daemon.proc.pid)
        cases = [(f"bytes={huge}-", 416, b""), (f"bytes=0-{huge}", 206, data), (f"bytes=-{huge}", 206, data)]
        for cache in ("HIT", "MISS"):
            answers = []
            for header, status, body in cases:
                for _ in range(20):
                    path = hit if cache == "HIT" else self.script(Script(body=data))
                    answer = read_raw(self.daemon.port, path, {"Range": header}, timeout=10)
                    answers.append(((answer[0], answer[1]["x-cache"], answer[2]), (status, cache, body)))
            self.assertFdsReturn(baseline)
            for got, expected in answers:
                self.assertEqual(got, expected)

    def test_garbage_upstream_content_length(self) -> None:
        """
        An upstream Content-Length that is not a number (a superscript two, digits
        and letters, a sign, 5000 digits): a GET miss gets a 502 that says why; a
        HEAD miss, where the length frames nothing, a 200 without one. Never silence.
        """
        for value in ("\u00b2".encode("latin-1"), b"12abc", b"+5", "\u0663".encode("utf-8"), b"9" * 5000):
            path = self.script(Script(body=b"12345", content_length=value))
            status, headers, _ = read_raw(self.daemon.port, path, method="HEAD", timeout=10)
            self.assertEqual((status, headers.get("content-length")), (200, None), value[:10])
            status, _, body = read_raw(self.daemon.port, path, timeout=10)
            self.assertEqual(status, 502, value[:10])
            self.assertIn(b"invalid Content-Length", body, value[:10])

    # -- ranges on misses and fallbacks -----------------------------------------------

    def test_range_on_chunked_miss_is_206(self) -> None:
        """A Range on a miss the upstream sends chunked (no length) is a 206 of those bytes, a suffix too; beyond the end 416."""
        data = os.urandom(BIG)
        for header, status, body, content_range in [
                ("bytes=1000000-1000999", 206, data[1000000:1001000], f"bytes 1000000-1000999/{BIG}"),
                ("bytes=-5000", 206, data[-5000:], f"bytes {BIG - 5000}-{BIG - 1}/{BIG}"),
                (f"bytes={BIG}-", 416, b"", f"bytes */{BIG}")]:
            path = self.script(Script(body=data, chunked=True, chunk=256 * 1024))
            got = read_raw(self.daemon.port, path, {"Range": header})
            self.assertEqual((got[0], got[1].get("content-range"), got[2]), (status, content_range, body), header)

    def test_close_delimited_miss_is_relayed_not_stored(self) -> None:
        """
        An upstream that ends its body by closing (no length, no chunks, no
        digest): the miss is relayed whole and well framed (never a 200 cut
        by a reset), a Range of it is a 206 once the end is known, and it is
        never stored, so the next request asks the upstream again.
        """
        data = os.urandom(BIG)
        path = self.script(Script(body=data, close_delimited=True, chunk=256 * 1024))
        status, headers, body = read_raw(self.daemon.port, path)
        self.assertEqual((status, len(body), sha(body)), (200, len(data), sha(data)))
        self.daemon.wait_log(f"not storing {path}: the upstream ended its body by closing")
        got = read_raw(self.daemon.port, path, {"Range": "bytes=-5000"})
        self.assertEqual((got[0], got[1].get("content-range"), got[1].get("x-cache"), got[2]),
                         (206, f"bytes {BIG - 5000}-{BIG - 1}/{BIG}", "MISS", data[-5000:]))
        self.assertEqual(sum(1 for _, asked, _ in self.fake.requests if asked == path[len("/fake"):]), 2)

    def test_stale_copy_after_a_failed_range_is_clean(self) -> None:
        """
        An expired entry, a Range, an upstream that answers 200 (compressed, a
        new ETag) and then closes before the body: the stale copy's own 206,
        not the failed attempt's Content-Range, length or Content-Encoding.
        """
        old = os.urandom(200_000)
        path = self.script(Script(body=old, headers={"ETag": '"v1"'}), prefix="/fresh")
        self.assertEqual(request("GET", self.daemon.url(path))[2], old)
        self.stored(path)
        self.fake.scripts[path] = Script(body=os.urandom(300_000), cut_at=0,
                                         headers={"ETag": '"v2"', "Content-Encoding": "gzip"})
        status, headers, body = read_raw(self.daemon.port, path, {"Range": "bytes=100-199"})
        self.assertEqual((status, headers["x-cache"], headers["content-range"], headers["etag"], body),
                         (206, "STALE", f"bytes 100-199/{len(old)}", '"v1"', old[100:200]))
        self.assertNotIn("content-encoding", headers)
