"""
The real daemon (``twistd -n artifactvault``) with the http backend, against
the real nginx upstream of ``files-up`` and, for faults nginx cannot make, a
scripted upstream; real HTTP clients (http.client, raw sockets, curl).
"""

from __future__ import annotations

import atexit
import base64
import concurrent.futures
import hashlib
import http.client
import os
import re
import socket
import subprocess
import threading
import time

from twisted.trial.unittest import TestCase

from tests import support
from tests.fakeupstream import FakeUpstream, Script
from tests.support import Daemon, hits, request


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def quoted(name: str) -> str:
    return re.escape(name)


#: What a client sees when the vault cuts its connection mid-body.
CUT = (http.client.IncompleteRead, ConnectionResetError)


def raw_get(port: int, target: str) -> tuple[int, bytes]:
    """A request line sent as is (no client-side normalisation of the path)."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(f"GET {target} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode("latin-1"))
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    status = int(data.split(b" ", 2)[1])
    return status, data.partition(b"\r\n\r\n")[2]


class Streaming:
    """A GET whose body the test reads bit by bit (or abandons)."""

    def __init__(self, daemon: Daemon, path: str, headers: dict[str, str] | None = None):
        self.conn = http.client.HTTPConnection("127.0.0.1", daemon.port, timeout=60)
        self.conn.request("GET", path, headers=headers or {})
        self.response = self.conn.getresponse()

    def read(self, n: int | None = None) -> bytes:
        return self.response.read(n)

    def close(self) -> None:
        self.conn.close()


class _Shared:
    """One daemon and its scripted upstreams for all of HttpBackendTests (trial has no setUpClass)."""

    def __init__(self) -> None:
        files = support.upstream_url("files")
        self.fake = FakeUpstream()
        self.other = FakeUpstream()  # a second origin, for redirects
        self.v6 = FakeUpstream("::1")  # an origin given as an IPv6 literal
        closed = support.free_port()
        self.daemon = Daemon([
            {"type": "http", "config": {"prefix": "/files/", "base_url": files}},
            # (its tests script one fault each, for one request: no back-off between them)
            {"type": "http", "config": {"prefix": "/fake/", "base_url": self.fake.base,
                                        "timeout": 2, "idle_timeout": 2, "backoff": 0}},
            {"type": "http", "config": {"prefix": "/fresh/", "base_url": self.fake.base + "/fresh",
                                        "ttl": 0}},
            {"type": "http", "config": {"prefix": "/down/", "base_url": f"http://127.0.0.1:{closed}"}},
            {"type": "http", "config": {"prefix": "/auth/", "base_url": self.fake.base + "/auth",
                                        "username": "vaultuser", "password_env": "AV_TEST_PASSWORD"}},
            {"type": "http", "config": {"prefix": "/hdr/", "base_url": self.fake.base + "/hdr",
                                        "headers": {"X-Api-Key": "k3y-s3cret"}}},
            {"type": "http", "config": {"prefix": "/v6/", "base_url": self.v6.base}},
        ]).start(env={"AV_TEST_PASSWORD": "s3cret-pw"})
        atexit.register(self.close)

    def close(self) -> None:
        self.daemon.cleanup()
        self.fake.close()
        self.other.close()
        self.v6.close()


_fixture: _Shared | None = None


def _shared() -> _Shared:
    global _fixture
    if _fixture is None:
        _fixture = _Shared()
    return _fixture


class HttpBackendTests(TestCase):
    """Caching, HTTP semantics and safety of the http backend, end to end."""

    def setUp(self) -> None:
        shared = _shared()
        self.daemon, self.fake, self.other, self.v6 = shared.daemon, shared.fake, shared.other, shared.v6

    def new_file(self, source: str = "medium.bin") -> tuple[str, str]:
        name, digest = support.new_upstream_file(source)
        self.addCleanup(support.drop_upstream_file, name)
        return name, digest

    def get(self, path: str, headers: dict[str, str] | None = None):
        return request("GET", self.daemon.url(path), headers)

    # -- caching ------------------------------------------------------------

    def test_miss_then_hit_byte_exact(self) -> None:
        """The first GET streams from upstream (MISS), the second from the cache (HIT), both byte-exact; upstream is asked once."""
        name, digest = self.new_file("large.bin")
        status, headers, body = self.get(f"/files/{name}")
        self.assertEqual((status, headers["x-cache"], sha(body)), (200, "MISS", digest))
        self.assertEqual(int(headers["content-length"]), len(body))
        status, headers, body = self.get(f"/files/{name}")
        self.assertEqual((status, headers["x-cache"], sha(body)), (200, "HIT", digest))
        self.assertEqual(headers["content-type"], "application/octet-stream")
        self.assertEqual(support.wait_for_hits("files", f"^GET /{quoted(name)}$", 1), 1)

    def test_ipv6_literal_upstream(self) -> None:
        """
        An upstream given as ``http://[::1]:PORT``: curl's GET is a MISS
        fetched from it, then a HIT, both byte-exact; it is asked once
        (treq's URL handling refused the IPv6 literal: every request was a 502).
        """
        data = os.urandom(70_000)
        self.v6.scripts["/v6.bin"] = Script(body=data)
        for expected in ("MISS", "HIT"):
            body = self.mktemp()
            out = subprocess.run(["curl", "-s", "--noproxy", "*", "-D", "-", "-o", body, "-w", "%{http_code}",
                                  self.daemon.url("/v6/v6.bin")], capture_output=True, text=True, timeout=30)
            self.assertTrue(out.stdout.endswith("200"), out.stdout)
            self.assertIn(f"x-cache: {expected}".lower(), out.stdout.lower())
            with open(body, "rb") as f:
                self.assertEqual(f.read(), data)
        self.assertEqual(self.v6.count("GET", "/v6.bin"), 1)

    def test_twenty_concurrent_requests_one_upstream_fetch(self) -> None:
        """20 clients asking at once for an uncached file cause exactly one upstream request and all get the exact bytes."""
        name, digest = self.new_file("large.bin")
        with concurrent.futures.ThreadPoolExecutor(20) as pool:
            results = list(pool.map(lambda _: self.get(f"/files/{name}"), range(20)))
        self.assertEqual([(s, sha(b)) for s, _, b in results], [(200, digest)] * 20)
        self.assertEqual(support.wait_for_hits("files", f"^GET /{quoted(name)}$", 1), 1)
        self.assertEqual(hits("files", f"^GET /{quoted(name)}$"), 1)

    def test_query_string_is_part_of_the_key(self) -> None:
        """?v=1 and ?v=2 are two artifacts; asking for ?v=1 again is a hit."""
        name, _ = self.new_file("small.bin")
        for query in ("v=1", "v=2", "v=1"):
            status, _, _ = self.get(f"/files/{name}?{query}")
            self.assertEqual(status, 200)
        self.assertEqual(support.wait_for_hits("files", f"^GET /{quoted(name)}\\?v=", 2), 2)
        _, headers, _ = self.get(f"/files/{name}?v=2")
        self.assertEqual(headers["x-cache"], "HIT")

    def test_upstream_404_is_404_and_remembered(self) -> None:
        """A missing upstream file is a 404 with a reason; within negative_ttl (1 min) not asked again (issue 9)."""
        pattern = r"^GET /no-such-file\.bin$"
        before = hits("files", pattern)
        for cache in ("MISS", "HIT"):
            status, headers, body = self.get("/files/no-such-file.bin")
            self.assertEqual((status, headers["x-cache"]), (404, cache))
            self.assertIn(b"404", body)
        self.assertEqual(support.wait_for_hits("files", pattern, before + 1), before + 1)

    # -- HTTP semantics on hits -------------------------------------------------

    def test_range_head_and_conditional_on_hits(self) -> None:
        """Hits answer single ranges (206/416), HEAD, and If-None-Match/If-Modified-Since (304)."""
        name, _ = self.new_file()
        with open(os.path.join(support.upstream_dir("files"), "www", name), "rb") as f:
            content = f.read()
        _, first, _ = self.get(f"/files/{name}")
        status, headers, body = self.get(f"/files/{name}", {"Range": "bytes=1000-1999"})
        self.assertEqual((status, body, headers["content-range"]),
                         (206, content[1000:2000], f"bytes 1000-1999/{len(content)}"))
        status, _, body = self.get(f"/files/{name}", {"Range": "bytes=-100"})
        self.assertEqual((status, body), (206, content[-100:]))
        status, headers, _ = self.get(f"/files/{name}", {"Range": f"bytes={len(content)}-"})
        self.assertEqual((status, headers["content-range"]), (416, f"bytes */{len(content)}"))
        status, headers, body = request("HEAD", self.daemon.url(f"/files/{name}"))
        self.assertEqual((status, body, headers["x-cache"]), (200, b"", "HIT"))
        self.assertEqual(headers["content-length"], str(len(content)))
        for key in ("etag", "last-modified", "content-type"):
            self.assertEqual(headers[key], first[key])
        status, _, body = self.get(f"/files/{name}", {"If-None-Match": first["etag"]})
        self.assertEqual((status, body), (304, b""))
        status, _, _ = self.get(f"/files/{name}", {"If-Modified-Since": first["last-modified"]})
        self.assertEqual(status, 304)
        status, _, _ = self.get(f"/files/{name}", {"If-None-Match": '"something-else"'})
        self.assertEqual(status, 200)

    def test_head_on_miss_downloads_nothing(self) -> None:
        """HEAD for an uncached file asks upstream with HEAD only; the file is not fetched."""
        name, _ = self.new_file()
        status, headers, body = request("HEAD", self.daemon.url(f"/files/{name}"))
        self.assertEqual((status, body, headers["x-cache"]), (200, b"", "MISS"))
        self.assertEqual(headers["content-length"], str(10 * 1024 * 1024))
        self.assertEqual(support.wait_for_hits("files", f"^HEAD /{quoted(name)}$", 1), 1)
        self.assertEqual(hits("files", f"^GET /{quoted(name)}$"), 0)

    def test_range_on_miss_is_passed_through(self) -> None:
        """
        A Range request for an uncached file gets 206 with those bytes from a
        ranged upstream request (nginx logs the range it was asked: not the
        whole file), X-Cache PASS, nothing stored; ``bytes=0-`` (the whole
        file) downloads it and fills the cache.
        """
        name, digest = self.new_file("large.bin")
        with open(os.path.join(support.upstream_dir("files"), "www", name), "rb") as f:
            f.seek(5_000_000)
            expected = f.read(1000)
        status, headers, body = self.get(f"/files/{name}", {"Range": "bytes=5000000-5000999"})
        self.assertEqual((status, headers["x-cache"], body), (206, "PASS", expected))
        self.assertEqual(support.wait_for_hits("files", f"^GET /{quoted(name)}$", 1), 1)
        with open(os.path.join(support.upstream_dir("files"), "access.log"), encoding="utf-8") as f:
            logged = [line for line in f if f"/{name} " in line]
        self.assertEqual(len(logged), 1)
        self.assertIn(' 206 1000 ', logged[0])
        self.assertIn('range="bytes=5000000-5000999"', logged[0])
        status, headers, body = self.get(f"/files/{name}", {"Range": "bytes=0-"})
        self.assertEqual((status, headers["x-cache"], sha(body)), (206, "MISS", digest))
        self.daemon.wait_stored(f"{support.upstream_url('files')}/{name}")
        self.daemon.wait_log(f"stored /files/{name}")
        _, headers, body = self.get(f"/files/{name}")
        self.assertEqual((headers["x-cache"], sha(body)), ("HIT", digest))
        self.assertEqual(hits("files", f"^GET /{quoted(name)}$"), 2)

    # -- safety ---------------------------------------------------------------

    def test_traversal_attempts_are_rejected(self) -> None:
        """Dot segments, encoded slashes, empty segments and NUL get 400 and never reach a file or the upstream."""
        before = hits("files", "passwd|secret")
        for target in ("/files/../../../etc/passwd", "/files/%2e%2e/%2e%2e/etc/passwd",
                       "/files/a%2f..%2f..%2fetc%2fpasswd", "/files/%2F/etc/passwd",
                       "/files//etc/passwd", "/files/secret%00.bin", "/files/..%5c..%5cetc%5cpasswd",
                       "/files/./secret"):
            status, body = raw_get(self.daemon.port, target)
            self.assertEqual(status, 400, target)
            self.assertIn(b"bad request path", body, target)
        self.assertEqual(hits("files", "passwd|secret"), before)
        for root, _dirs, files in os.walk(self.daemon.dir):
            self.assertNotIn("passwd", files)

    def test_methods_other_than_get_and_head(self) -> None:
        """POST and friends are refused with 405."""
        status, _, _ = request("POST", self.daemon.url("/files/small.bin"))
        self.assertEqual(status, 405)

    # -- upstream failures --------------------------------------------------------

    def test_connection_refused_is_502_with_reason(self) -> None:
        """An upstream nobody listens on: 502 and a body that says why."""
        status, _, body = self.get("/down/anything.bin")
        self.assertEqual(status, 502)
        self.assertIn(b"connection refused", body)

    def test_silent_upstream_is_504(self) -> None:
        """An upstream that never answers: 504 after the configured timeout, with a reason."""
        hold = threading.Event()
        self.fake.scripts["/hold.bin"] = Script(body=b"x", hold_headers=hold)
        self.addCleanup(hold.set)
        status, _, body = self.get("/fake/hold.bin")
        self.assertEqual(status, 504)
        self.assertIn(b"did not answer", body)

    def test_truncated_upstream_aborts_client_and_commits_nothing(self) -> None:
        """Upstream closes halfway: the client's connection is cut (no short 200), nothing is cached."""
        data = os.urandom(3 * 1024 * 1024)
        self.fake.scripts["/cut.bin"] = Script(body=data, cut_at=1024 * 1024)
        stream = Streaming(self.daemon, "/fake/cut.bin")
        self.assertEqual(stream.response.status, 200)
        self.assertRaises(CUT, stream.response.read)
        stream.close()
        self.fake.scripts["/cut.bin"] = Script(body=data)
        status, headers, body = self.get("/fake/cut.bin")
        self.assertEqual((status, headers["x-cache"], sha(body)), (200, "MISS", sha(data)))
        self.assertEqual(self.fake.count("GET", "/cut.bin"), 2)

    def test_stalled_upstream_body_times_out(self) -> None:
        """An upstream that stops sending mid-body is cut after idle_timeout; the client's connection is aborted."""
        resume = threading.Event()
        self.addCleanup(resume.set)
        data = os.urandom(2 * 1024 * 1024)
        self.fake.scripts["/stall.bin"] = Script(body=data, cut_at=512 * 1024, resume=resume)
        stream = Streaming(self.daemon, "/fake/stall.bin")
        self.assertRaises(CUT, stream.response.read)
        stream.close()
        self.assertIn("upstream sent nothing for 2 s", self.daemon.log())

    def test_leaving_client_does_not_cancel_the_download(self) -> None:
        """A client that disconnects mid-download does not stop it for a client that joined, nor for the cache."""
        resume = threading.Event()
        self.addCleanup(resume.set)
        data = os.urandom(4 * 1024 * 1024)
        self.fake.scripts["/shared.bin"] = Script(body=data, cut_at=1024 * 1024, resume=resume)
        first = Streaming(self.daemon, "/fake/shared.bin")
        self.assertEqual(first.read(100_000), data[:100_000])
        second = Streaming(self.daemon, "/fake/shared.bin")
        # the joiner gets the bytes already downloaded while the upstream still stalls
        self.assertEqual(second.read(500_000), data[:500_000])
        first.close()
        resume.set()
        rest = second.read()
        second.close()
        self.assertEqual(sha(data[:500_000] + rest), sha(data))
        status, headers, body = self.get("/fake/shared.bin")
        self.assertEqual((status, headers["x-cache"], sha(body)), (200, "HIT", sha(data)))
        self.assertEqual(self.fake.count("GET", "/shared.bin"), 1)

    def test_stale_copy_served_when_upstream_fails(self) -> None:
        """
        An expired entry is revalidated (304 keeps it); when upstream fails,
        the stale copy is served, marked STALE; and then at once, the
        upstream left alone for its back-off.
        """
        data = os.urandom(200_000)
        self.fake.scripts["/fresh/doc.bin"] = Script(body=data, headers={"ETag": '"v1"'})
        status, headers, body = self.get("/fresh/doc.bin")
        self.assertEqual((status, headers["x-cache"], body), (200, "MISS", data))
        self.daemon.wait_stored(self.fake.base + "/fresh/doc.bin")
        self.daemon.wait_log("stored /fresh/doc.bin")  # the download has ended: a new GET revalidates
        status, headers, body = self.get("/fresh/doc.bin")  # ttl 0: revalidated, 304
        self.assertEqual((status, headers["x-cache"], body), (200, "HIT", data))
        revalidation = [h for m, p, h in self.fake.requests if p == "/fresh/doc.bin"][-1]
        self.assertEqual(revalidation.get("if-none-match"), '"v1"')
        self.fake.scripts["/fresh/doc.bin"] = Script(body=b"oops", status=503)
        status, headers, body = self.get("/fresh/doc.bin")
        self.assertEqual((status, headers["x-cache"], body), (200, "STALE", data))
        self.assertEqual(headers["warning"], '299 - "Response is Stale"')
        asked = self.fake.count("GET", "/fresh/doc.bin")
        self.fake.scripts["/fresh/doc.bin"] = Script(body=b"new content", headers={"ETag": '"v2"'})
        status, headers, body = self.get("/fresh/doc.bin")
        self.assertEqual((status, headers["x-cache"], body), (200, "STALE", data))
        self.assertEqual(self.fake.count("GET", "/fresh/doc.bin"), asked)

    # -- credentials -------------------------------------------------------------

    def test_credentials_go_only_to_the_configured_origin(self) -> None:
        """Basic credentials from an env var reach the upstream, not a redirect target elsewhere, and never the log."""
        self.fake.scripts["/auth/a.bin"] = Script(body=b"A" * 10)
        self.fake.scripts["/auth/moved.bin"] = Script(
            status=302, headers={"Location": f"http://localhost:{self.other.port}/elsewhere.bin"})
        self.other.scripts["/elsewhere.bin"] = Script(body=b"B" * 10)
        expected = "Basic " + base64.b64encode(b"vaultuser:s3cret-pw").decode()
        self.assertEqual(self.get("/auth/a.bin")[2], b"A" * 10)
        self.assertEqual([h.get("authorization") for m, p, h in self.fake.requests if p == "/auth/a.bin"],
                         [expected])
        status, _, body = self.get("/auth/moved.bin")
        self.assertEqual((status, body), (200, b"B" * 10))
        self.assertEqual([h.get("authorization") for m, p, h in self.other.requests if p == "/elsewhere.bin"], [None])
        log = self.daemon.log()
        self.assertNotIn("s3cret-pw", log)
        self.assertNotIn(expected.split()[1], log)

    def test_configured_headers_go_only_to_the_configured_origin(self) -> None:
        """Configured headers (an API key) reach the upstream, not a redirect target elsewhere, and never the log."""
        self.fake.scripts["/hdr/a.bin"] = Script(body=b"A" * 10)
        self.fake.scripts["/hdr/moved.bin"] = Script(
            status=302, headers={"Location": f"http://localhost:{self.other.port}/hdr-elsewhere.bin"})
        self.other.scripts["/hdr-elsewhere.bin"] = Script(body=b"B" * 10)
        self.assertEqual(self.get("/hdr/a.bin")[2], b"A" * 10)
        self.assertEqual([h.get("x-api-key") for m, p, h in self.fake.requests if p == "/hdr/a.bin"],
                         ["k3y-s3cret"])
        status, _, body = self.get("/hdr/moved.bin")
        self.assertEqual((status, body), (200, b"B" * 10))
        self.assertEqual([h.get("x-api-key") for m, p, h in self.fake.requests if p == "/hdr/moved.bin"],
                         ["k3y-s3cret"])
        self.assertEqual([h.get("x-api-key") for m, p, h in self.other.requests if p == "/hdr-elsewhere.bin"],
                         [None])
        self.assertNotIn("k3y-s3cret", self.daemon.log())

    def test_one_log_line_per_request(self) -> None:
        """Each request leaves one line: method, path, status, cache status, bytes, duration, backend; no query string."""
        name, _ = self.new_file("small.bin")
        self.get(f"/files/{name}?token=hide-me")
        self.get(f"/files/{name}?token=hide-me")
        lines = [l for l in self.daemon.log().splitlines() if f"GET /files/{name} " in l]
        self.assertEqual(len(lines), 2, lines)
        self.assertRegex(lines[0], r"GET /files/\S+ 200 MISS 4096 bytes [0-9.]+ ms \[http /files/\]")
        self.assertRegex(lines[1], r" 200 HIT 4096 bytes ")
        self.assertNotIn("hide-me", self.daemon.log())


class CrashSafetyTests(TestCase):
    """A kill -9 of the daemon at any moment never leaves an entry served with wrong bytes."""

    def setUp(self) -> None:
        self.fake, self.daemon = support.fake_behind_daemon(self)

    def cache_files(self) -> list[str]:
        """The cache's files but its lock (which a killed daemon's kernel released, and the next one takes)."""
        out = []
        for root, _dirs, files in os.walk(self.daemon.cache_dir):
            out += [os.path.relpath(os.path.join(root, f), self.daemon.cache_dir) for f in files]
        return sorted(name for name in out if name != "lock")

    def test_kill9_mid_download(self) -> None:
        """Killed while downloading: after restart the temp file is gone, nothing is served from it, the next GET fetches anew."""
        resume = threading.Event()
        self.addCleanup(resume.set)
        data = os.urandom(8 * 1024 * 1024)
        self.fake.scripts["/big.bin"] = Script(body=data, cut_at=3 * 1024 * 1024, resume=resume,
                                               close_after_resume=True)
        stream = Streaming(self.daemon, "/fake/big.bin")
        self.assertEqual(stream.read(1024 * 1024), data[:1024 * 1024])
        self.assertEqual(len(support.download_temp_files(self.daemon.cache_dir)), 1)
        self.daemon.kill9()
        stream.close()
        self.daemon.start()
        # (the temp files in tmp/ now are the empty ones made ahead at start)
        self.assertEqual([f for f in self.cache_files() if not f.startswith("tmp/")], [])
        self.assertEqual(support.download_temp_files(self.daemon.cache_dir), [])
        # (the download's; the empty ones the killed daemon had made ahead went uncounted)
        self.assertIn("temp files of unfinished downloads removed: 1", self.daemon.log())
        self.fake.scripts["/big.bin"] = Script(body=data)
        status, headers, body = request("GET", self.daemon.url("/fake/big.bin"))
        self.assertEqual((status, headers["x-cache"], sha(body)), (200, "MISS", sha(data)))

    def test_kill9_after_commit(self) -> None:
        """Killed right after a download was stored: the entry survives and is served byte-exact."""
        data = os.urandom(1024 * 1024)
        self.fake.scripts["/done.bin"] = Script(body=data)
        self.assertEqual(request("GET", self.daemon.url("/fake/done.bin"))[2], data)
        deadline = time.monotonic() + 10
        while not any(f.endswith(".json") for f in self.cache_files()):
            self.assertLess(time.monotonic(), deadline)
            time.sleep(0.02)
        self.daemon.kill9()
        self.daemon.start()
        status, headers, body = request("GET", self.daemon.url("/fake/done.bin"))
        self.assertEqual((status, headers["x-cache"], body), (200, "HIT", data))


class EvictionTests(TestCase):
    """With max_size, the daemon keeps the cache under it by evicting the least recently used."""

    def test_least_recently_used_is_evicted(self) -> None:
        """Cache of 25 MiB, 10 MiB files: fetching a third evicts the one unused for longest."""
        files = support.upstream_url("files")
        daemon = Daemon([{"type": "http", "config": {"prefix": "/files/", "base_url": files}}],
                        max_size="25M")
        self.addCleanup(daemon.cleanup)
        daemon.start()
        names = {}
        for label in ("a", "b", "c"):
            name, _ = support.new_upstream_file("medium.bin")
            self.addCleanup(support.drop_upstream_file, name)
            names[label] = name

        def get(label: str) -> str:
            status, headers, _ = request("GET", daemon.url(f"/files/{names[label]}"))
            self.assertEqual(status, 200)
            daemon.wait_stored(f"{files}/{names[label]}")
            return headers["x-cache"]

        self.assertEqual([get("a"), get("b"), get("a")], ["MISS", "MISS", "HIT"])
        self.assertEqual(get("c"), "MISS")  # 30 MiB > 25 MiB: b, the least recently used, goes
        self.assertEqual([get("a"), get("c")], ["HIT", "HIT"])
        self.assertIn("evicted 1 entries (10485760 bytes)", daemon.log())
        self.assertEqual(get("b"), "MISS")
        self.assertEqual(hits("files", f"^GET /{quoted(names['b'])}$"), 2)


class StartupTests(TestCase):
    """Starting the daemon: config errors, --listen, and the .tac file."""

    def twistd(self, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
        return subprocess.run([support.twistd(), "-n", "--pidfile=", *args], capture_output=True,
                              text=True, timeout=30, env={**os.environ, **(env or {})})

    def write(self, text: str) -> str:
        path = self.mktemp() + ".yml"
        with open(path, "w") as f:
            f.write(text)
        return path

    def test_config_errors_are_one_line_naming_file_and_key(self) -> None:
        """Each broken config stops the start with exit status 1 and one line naming the file and the key."""
        cases = {
            "backends: [\n": "line 2, column 1: invalid YAML",
            "backends:\n  - type: nosuch\n": "backends[0].type: unknown backend type 'nosuch'",
            "backends:\n  - type: http\n    config: {prefix: /f/}\n": "backends[0].config.base_url: required",
            "http_port: eighty\n": "http_port: must be an integer",
            ("backends:\n  - {type: http, config: {prefix: /f/, base_url: 'http://127.0.0.1:1'}}\n"
             "  - {type: http, config: {prefix: /f, base_url: 'http://127.0.0.1:2'}}\n"):
                "backends[1].config.prefix: /f/ is already used by backends[0]",
            "backends:\n  - {type: http, config: {prefix: /f/, base_url: 'ftp://x'}}\n":
                "backends[0].config.base_url: must be an http:// or https:// URL",
            "cache_dirr: /tmp/x\n": "cache_dirr: unknown key",
            "backends:\n  - {type: http, config: {prefix: /f/, base_url: 'http://x', password_env: NOPE_UNSET_VAR}}\n":
                "backends[0].config.password_env: environment variable NOPE_UNSET_VAR is not set",
            # (these two ended the start with a traceback from urllib.parse)
            "backends:\n  - {type: apt, config: {prefix: /debian/, mirror_url: 'http://x:99999/debian'}}\n":
                "backends[0].config.mirror_url: must have a port from 1 to 65535",
            "backends:\n  - {type: registry, config: {registry_url: 'http://x:abc'}}\n":
                "backends[0].config.registry_url: must have a port from 1 to 65535",
            # (a traceback from the resource tree; a backend whose every path answered 404)
            ("backends:\n  - {type: apt, config: {prefix: /v2/, mirror_url: 'http://x/debian'}}\n"
             "  - {type: registry, config: {prefix: /r/}}\n"): "backends[0].config.prefix: /v2/ is the registry API's",
            ("cache_dir: unused-cache\nhttp_port: 0\n"  # (it started)
             "backends:\n  - {type: apt, config: {prefix: /-/, mirror_url: 'http://x/debian'}}\n"):
                "backends[0].config.prefix: /-/ is the vault's own",
        }
        for text, message in cases.items():
            path = self.write(text)
            p = self.twistd("artifactvault", "--config", path)
            self.assertEqual(p.returncode, 1, (text, p.stderr))
            lines = p.stderr.strip().splitlines()
            self.assertEqual(len(lines), 1, p.stderr)
            self.assertTrue(lines[0].startswith(f"artifactvault: {path}: {message}"), lines[0])
            self.assertNotIn("Traceback", p.stderr + p.stdout)

    def test_listen_is_repeatable_and_overrides_the_port(self) -> None:
        """Two --listen options: the daemon answers on both, not on http_port."""
        files = support.upstream_url("files")
        daemon = Daemon([{"type": "http", "config": {"prefix": "/files/", "base_url": files}}])
        self.addCleanup(daemon.cleanup)
        a, b = support.free_port(), support.free_port()
        daemon.write_config()
        proc = subprocess.Popen([support.twistd(), "-n", "--pidfile=", "artifactvault", "--config",
                                 daemon.config_path, "--listen", f"tcp:{a}:interface=127.0.0.1",
                                 "--listen", f"tcp:{b}:interface=127.0.0.1"],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.addCleanup(lambda: (proc.terminate(), proc.wait()))
        for port in (a, b):
            self.assertEqual(support.wait_http(f"http://127.0.0.1:{port}/files/small.bin"), 200)
        self.assertRaises(OSError, request, "GET", daemon.url("/-/health"), None, 1)

    def test_tac_file_uses_the_environment_config(self) -> None:
        """twistd -ny vault.tac runs the config named by ARTIFACTVAULT_CONFIG."""
        files = support.upstream_url("files")
        port = support.free_port()
        path = self.write(f"http_port: {port}\ncache_dir: {self.mktemp()}\nbackends:\n"
                          f"  - {{type: http, config: {{prefix: /files/, base_url: '{files}'}}}}\n")
        proc = subprocess.Popen([support.twistd(), "-n", "--pidfile=", "-y",
                                 os.path.join(support.REPO, "vault.tac")],
                                env={**os.environ, "ARTIFACTVAULT_CONFIG": path},
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.addCleanup(lambda: (proc.terminate(), proc.wait()))
        self.assertEqual(support.wait_http(f"http://127.0.0.1:{port}/files/small.bin"), 200)

    def test_tac_file_with_a_bad_config(self) -> None:
        """vault.tac with a broken config also stops with one line."""
        path = self.write("http_port: -5\n")
        p = self.twistd("-y", os.path.join(support.REPO, "vault.tac"), env={"ARTIFACTVAULT_CONFIG": path})
        self.assertNotEqual(p.returncode, 0)
        self.assertIn(f"{path}: http_port: must be at least 0", p.stderr)
        self.assertNotIn("Traceback", p.stderr + p.stdout)
