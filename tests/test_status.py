"""
Tests for L{artifactvault.status}: the document C{/-/status.json} gives
(in memory), and the page in a real browser (headless Chromium) while a
download from a throttled upstream is in flight.
"""

from __future__ import annotations

import json
import socket
import threading


from twisted.trial.unittest import SkipTest, SynchronousTestCase, TestCase

from artifactvault.metrics import Metrics
from artifactvault.status import StatusJson, StatusPage, StatusSource, low_disk_warning
from tests import browser as browsermod
from tests import support
from tests.fakes import Harness

BODY = b"0123456789"


class StatusDocumentTests(SynchronousTestCase):

    def setUp(self) -> None:
        self.harness = h = Harness(self, idle_timeout=10, timeout=5)
        self.metrics = Metrics(h.vault)
        self.metrics.add_backend(h.backend)
        h.upstream.observer = self.metrics.observe("/files/")
        h.upstream.observer.watch(h.upstream)
        h.site.observers.append(self.metrics)
        self.source = StatusSource(h.vault, [h.backend], self.metrics, seconds=h.clock.seconds)
        pages = h.site.resource.children[b"-"]
        pages.putChild(b"status", StatusPage())
        pages.putChild(b"status.json", StatusJson(self.source))

    def document(self) -> dict:
        answer = self.harness.get("/-/status.json").answer()
        self.assertEqual((answer.status, answer.header("Content-Type")), (200, "application/json"))
        return json.loads(answer.body)

    def test_flight_progress(self) -> None:
        """A download in flight: bytes, total, rate, clients; and what the cache holds, the hit ratio."""
        h = self.harness
        h.fetched("small.bin", BODY)
        h.get("/files/small.bin")
        h.get("/files/big.bin")
        h.get("/files/big.bin")
        response = h.requests[-1].respond(200, length=1000)
        response.send(b"x" * 100)
        h.clock.advance(2)
        doc = self.document()
        self.assertEqual(doc["flights"], [{"what": "big.bin", "backend": "/files/", "state": "streaming",
                                           "bytes": 100, "total": 1000, "seconds": 2.0, "rate": 50,
                                           "clients": 2}])
        self.assertEqual((doc["cache"]["bytes"], doc["cache"]["entries"]), (10, 1))
        self.assertEqual(doc["totals"]["results"]["hit"], 1)
        self.assertEqual(doc["totals"]["hit_ratio"], 0.5)
        self.assertEqual(doc["totals"]["bytes_saved"], 10)
        self.assertEqual(doc["biggest"], [{"key": h.url("small.bin"), "bytes": 10}])
        self.assertEqual(doc["most_requested"], [{"path": "/files/small.bin", "count": 2}])
        response.send(b"x" * 900).finish()
        self.assertEqual(self.document()["flights"], [])

    def test_last_error_and_no_query(self) -> None:
        """A backend's last upstream error; no query string anywhere (it may carry a token)."""
        h = self.harness
        client = h.get("/files/a.bin?sig=s3cret")
        h.requests[-1].respond(503, b"")
        self.assertEqual(client.answer().status, 502)
        doc = self.document()
        backend = doc["backends"][0]
        self.assertEqual(backend["last_error"]["reason"], "upstream answered 503")
        self.assertEqual(backend["origins"][0]["origin"], "http://upstream.test:80")
        self.assertNotIn("s3cret", json.dumps(doc))

    def test_page(self) -> None:
        """The page is self-contained HTML: no external script, style or font."""
        answer = self.harness.get("/-/status").answer()
        self.assertEqual(answer.header("Content-Type"), "text/html; charset=utf-8")
        self.assertIn("default-src 'none'", answer.header("Content-Security-Policy"))
        body = answer.body.decode()
        self.assertNotIn("http://", body)
        self.assertNotIn("https://", body)
        self.assertNotIn("innerHTML", body)

    def test_low_disk(self) -> None:
        """Under 5 % free: a warning; above: none."""
        self.assertIsNone(low_disk_warning("/c", (6, 100)))
        self.assertIn("only 4.0% free", low_disk_warning("/c", (4, 100)))


#: A path that would be markup if the page put it in as such.
HOSTILE = "<img id=injected src=x onerror=document.title='pwned'>.bin"


class StatusBrowserTests(TestCase):
    """The page in headless Chromium while a download from a throttled upstream is in flight."""

    def setUp(self) -> None:
        if browsermod.chromium_path() is None:
            raise SkipTest("Debian's chromium is not installed (./dev.sh test installs it)")
        slow = support.upstream_url("slow")
        with open(support.os.path.join(support.upstream_dir("slow"), "www", HOSTILE), "wb") as f:
            f.write(BODY)
        self.daemon = support.Daemon([{"type": "http", "config": {"prefix": "/slow/", "base_url": slow}}],
                                     max_size="1G")
        self.addCleanup(self.daemon.cleanup)
        self.daemon.start()

    def raw_get(self, path: bytes) -> int:
        """A GET whose path goes as it is (a browser or curl would encode '<')."""
        with socket.create_connection(("127.0.0.1", self.daemon.port), timeout=10) as s:
            s.sendall(b"GET " + path + b" HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            data = b""
            while chunk := s.recv(65536):
                data += chunk
        return int(data.split(b" ", 2)[1])

    def test_live_progress(self) -> None:
        """The page renders, escapes what it shows, and its progress bar grows between two looks."""
        self.assertEqual(self.raw_get(b"/slow/" + HOSTILE.replace(" ", "%20").encode()), 200)
        reader = threading.Thread(target=support.request, args=("GET", self.daemon.url("/slow/slow.bin")),
                                  daemon=True)
        reader.start()
        tab = browsermod.browser().tab()
        self.addCleanup(tab.close)
        tab.navigate(self.daemon.url("/-/status?every=250"))
        first = tab.wait_for("(() => { const p = document.querySelector('progress.flight');"
                             " return p && p.max > 0 && p.value > 0 ? p.value : 0; })()")
        second = tab.wait_for(f"(() => {{ const p = document.querySelector('progress.flight');"
                              f" return p && p.value > {first} ? p.value : 0; }})()")
        self.assertGreater(second, first)
        self.assertEqual(tab.evaluate("document.querySelector('progress.flight').max"), 4 * 1024 * 1024)
        text = tab.evaluate("document.body.innerText")
        self.assertIn("/slow/slow.bin", text)
        self.assertIn("Downloads in flight", text)
        self.assertIn("<img id=injected", text)  # shown as text...
        self.assertIsNone(tab.evaluate("document.getElementById('injected')"))  # ...never as markup
        self.assertNotEqual(tab.evaluate("document.title"), "pwned")
        path = tab.screenshot(browsermod.artifact_path("status-page.png"))
        with open(path, "rb") as f:
            self.assertEqual(f.read(8), b"\x89PNG\r\n\x1a\n")



