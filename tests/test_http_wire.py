"""
The http backend as an HTTP cache, through real sockets: the real daemon
against a scripted upstream (L{FakeUpstream}), real clients (http.client,
curl). What is kept of an upstream's answer, which statuses pass, the
framings the upstream may use, and (freshness: upstream) RFC 9111.
"""

from __future__ import annotations

import concurrent.futures
import gzip
import os
import shutil
import socket
import subprocess
import threading
import time
import uuid

import unittest

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
            {"type": "http", "config": {"prefix": "/up/", "freshness": "upstream", **common}},
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
                wait_stored(self.daemon, f"/{prefix}{path}")
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
        for status in (201, 202, 203, 204, 300, 403, 404, 405, 410, 418, 500, 501, 503, 599):
            path = self.path()
            body = b"" if status == 204 else b"upstream says %d" % status
            self.fake.scripts[path] = Script(body=body, status=status, headers={"X-Why": f"because {status}"})
            remembered = status in (404, 410)  # (the negative cache answers it again, as it came)
            for prefix in ("imm", "ttl"):
                for n in range(2):
                    got, headers, content = self.get(prefix, path)
                    self.assertEqual((got, content, headers.get("x-why")), (status, body, f"because {status}"),
                                     (prefix, status))
                    self.assertEqual(headers["x-cache"], "HIT" if remembered and n else "MISS", (prefix, status))
            self.assertEqual(self.fake.count("GET", path), 2 if remembered else 4, status)

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


def curl(url: str, *args: str) -> tuple[int, dict[str, str], bytes]:
    """One request with curl (a real client): (status, lower-cased headers of the last answer, body)."""
    exe = shutil.which("curl")
    if exe is None:
        raise unittest.SkipTest("curl is not installed")
    p = subprocess.run([exe, "-sS", "-D", "-", "-o", "/dev/stdout", *args, url], capture_output=True, timeout=30,
                       check=True)
    head, _, body = p.stdout.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return int(lines[0].split()[1]), headers, body


class UpstreamFreshnessWireTests(TestCase):
    """freshness: upstream through the real daemon, with curl: what RFC 9111 asks of a shared cache."""

    def setUp(self) -> None:
        shared = support.shared_fixture(_Shared)
        self.daemon, self.fake = shared.daemon, shared.fake

    def script(self, **kwargs: object) -> str:
        path = f"/{uuid.uuid4().hex[:12]}"
        self.fake.scripts[path] = Script(**kwargs)  # type: ignore[arg-type]
        return path

    def curl(self, path: str, *args: str) -> tuple[int, dict[str, str], bytes]:
        return curl(self.daemon.url(f"/up{path}"), *args)

    def sent(self, path: str) -> list[dict[str, str]]:
        """The headers of each request the upstream got for C{path}."""
        return [headers for _, p, headers in self.fake.requests if p == path]

    def test_fresh_hit_counts_the_upstream_age(self) -> None:
        """max-age=600 with Age: 100: the next request is a hit that says Age of at least 100; one upstream request."""
        path = self.script(body=b"fresh", headers={"Cache-Control": "max-age=600", "Age": "100"})
        status, headers, body = self.curl(path)
        self.assertEqual((status, body, headers["x-cache"]), (200, b"fresh", "MISS"))
        wait_stored(self.daemon, f"/up{path}")
        status, headers, body = self.curl(path)
        self.assertEqual((status, body, headers["x-cache"]), (200, b"fresh", "HIT"))
        self.assertGreaterEqual(int(headers["age"]), 100)
        self.assertEqual(headers["cache-control"], "max-age=600")
        self.assertEqual(self.fake.count("GET", path), 1)

    def test_stale_by_age_is_fetched_again(self) -> None:
        """max-age=60 with Age: 7200 is stale on arrival: every request goes upstream."""
        path = self.script(body=b"old", headers={"Cache-Control": "max-age=60", "Age": "7200"})
        self.curl(path)
        self.curl(path)
        self.assertEqual(self.fake.count("GET", path), 2)

    def test_no_store_is_not_stored(self) -> None:
        """no-store: relayed each time, nothing kept."""
        path = self.script(body=b"secret", headers={"Cache-Control": "no-store, max-age=600"})
        for _ in range(2):
            self.assertEqual(self.curl(path)[2], b"secret")
        self.assertEqual(self.fake.count("GET", path), 2)

    def test_not_found_no_store_is_asked_again(self) -> None:
        """A 404 with no-store: HTTP's rules decide alone (the negative cache does not keep it); asked each time."""
        path = self.script(body=b"nothing here", status=404, headers={"Cache-Control": "no-store"})
        for _ in range(2):
            status, headers, body = self.curl(path)
            self.assertEqual((status, body, headers["x-cache"]), (404, b"nothing here", "MISS"))
        self.assertEqual(self.fake.count("GET", path), 2)

    def test_no_cache_revalidates_every_time(self) -> None:
        """no-cache with an ETag: each request after the first asks with If-None-Match; the 304 serves the copy."""
        path = self.script(body=b"doc", headers={"Cache-Control": "no-cache", "ETag": '"d1"'})
        self.curl(path)
        wait_stored(self.daemon, f"/up{path}")
        status, headers, body = self.curl(path)
        self.assertEqual((status, body, headers["x-cache"]), (200, b"doc", "HIT"))
        self.assertEqual([h.get("if-none-match") for h in self.sent(path)], [None, '"d1"'])

    def test_client_no_cache_and_only_if_cached(self) -> None:
        """curl -H 'Cache-Control: no-cache' revalidates a fresh copy; only-if-cached is a 504 on a miss, a hit after."""
        path = self.script(body=b"doc", headers={"Cache-Control": "max-age=600", "ETag": '"d1"'})
        status, _, _ = self.curl(path, "-H", "Cache-Control: only-if-cached")
        self.assertEqual((status, self.fake.count("GET", path)), (504, 0))
        self.curl(path)
        wait_stored(self.daemon, f"/up{path}")
        self.curl(path, "-H", "Cache-Control: no-cache")
        self.assertEqual([h.get("if-none-match") for h in self.sent(path)], [None, '"d1"'])
        status, headers, body = self.curl(path, "-H", "Cache-Control: only-if-cached")
        self.assertEqual((status, body, headers["x-cache"]), (200, b"doc", "HIT"))

    def test_vary_selects_variants(self) -> None:
        """
        Vary: Accept-Language: the field goes upstream, each language is
        fetched once and then a hit; a request without it is a variant too.
        """
        path = self.script(body=b"hallo", headers={"Cache-Control": "max-age=600", "Vary": "Accept-Language"})
        for n, language in enumerate(("de", "en", "de", "en")):
            self.assertEqual(self.curl(path, "-H", f"Accept-Language: {language}")[0], 200)
            wait_stored(self.daemon, f"/up{path}", min(n + 1, 2))
        self.assertEqual([h.get("accept-language") for h in self.sent(path)], ["de", "en"])
        self.assertEqual(self.curl(path)[1]["x-cache"], "MISS")
        wait_stored(self.daemon, f"/up{path}", 3)
        self.assertEqual(self.curl(path)[1]["x-cache"], "HIT")
        self.assertEqual(self.fake.count("GET", path), 3)

    def test_concurrent_misses_one_fetch_per_variant(self) -> None:
        """Ten clients at once, two languages: two upstream requests, each client its language's answer."""
        hold = threading.Event()
        self.addCleanup(hold.set)
        path = self.script(body=b"x" * 100_000, hold_headers=hold,
                           headers={"Cache-Control": "max-age=600", "Vary": "Accept-Language"})
        languages = ["de", "en"] * 5
        with concurrent.futures.ThreadPoolExecutor(10) as pool:
            futures = [pool.submit(request, "GET", self.daemon.url(f"/up{path}"), {"Accept-Language": lang})
                       for lang in languages]
            wait_until(lambda: self.fake.count("GET", path) >= 1)
            hold.set()
            results = [f.result() for f in futures]
        self.assertEqual([(s, len(b)) for s, _, b in results], [(200, 100_000)] * 10)
        self.assertEqual(sorted(h.get("accept-language") for h in self.sent(path)), ["de", "en"])

    def test_must_revalidate_gives_no_stale_copy(self) -> None:
        """A stale copy stands in for a failing upstream, unless it said must-revalidate: then the 503 is passed on."""
        ok = self.script(body=b"ok", headers={"Cache-Control": "max-age=1, stale-if-error=600", "ETag": '"o"'})
        strict = self.script(body=b"strict", headers={"Cache-Control": "max-age=1, must-revalidate", "ETag": '"s"'})
        self.curl(ok)
        self.curl(strict)
        wait_stored(self.daemon, f"/up{ok}")
        wait_stored(self.daemon, f"/up{strict}")
        for path in (ok, strict):
            self.fake.scripts[path] = Script(body=b"down", status=503)
        wait_until(lambda: self.curl(ok)[1].get("x-cache") == "STALE")
        answers = []
        wait_until(lambda: answers.append(self.curl(strict)) or answers[-1][1].get("x-cache") != "HIT")
        status, headers, body = answers[-1]
        self.assertEqual((status, body, headers.get("x-cache")), (503, b"down", "MISS"))


def wait_stored(daemon: Daemon, label: str, times: int = 1) -> None:
    """
    Wait until the daemon has stored C{label} (a backend prefix and path)
    C{times} times: a request after that finds the entry, not the download
    (which, on a loaded machine, may still be committing).
    """
    wait_until(lambda: daemon.log().count(f"stored {label}:") >= times, timeout=30)


def wait_until(condition, timeout: float = 10.0) -> None:  # type: ignore[no-untyped-def]
    """Poll C{condition} until it holds (or fail after C{timeout} s)."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.02)


class ForwardedFieldTests(TestCase):
    """What goes upstream of a client's request (freshness: upstream), byte for byte."""

    def setUp(self) -> None:
        shared = support.shared_fixture(_Shared)
        self.daemon, self.fake = shared.daemon, shared.fake

    def test_field_octets_are_passed_as_they_came(self) -> None:
        """A field value with obs-text (a latin-1 byte) reaches the upstream as that byte, not re-encoded as UTF-8."""
        path = f"/{uuid.uuid4().hex[:12]}"
        self.fake.scripts[path] = Script(body=b"ok", headers={"Cache-Control": "max-age=60", "Vary": "X-Lang"})
        with socket.create_connection(("127.0.0.1", self.daemon.port), timeout=10) as s:
            s.sendall(f"GET /up{path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n".encode()
                      + b"X-Lang: \xfcber\r\n\r\n")
            data = b""
            while chunk := s.recv(65536):
                data += chunk
        self.assertTrue(data.startswith(b"HTTP/1.1 200 "), data[:60])
        sent = [headers for _, p, headers in self.fake.requests if p == path]
        self.assertEqual([h.get("x-lang") for h in sent], ["\xfcber"])  # (the upstream reads octets as latin-1)
