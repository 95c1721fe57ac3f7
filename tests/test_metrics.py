"""
Tests for L{artifactvault.metrics}: what is counted as requests, upstream
answers and downloads happen (in memory, with a controlled clock), and
C{/-/metrics} of the real daemon.
"""

from __future__ import annotations

from prometheus_client import REGISTRY
from prometheus_client.parser import text_string_to_metric_families
from twisted.internet import error as neterror
from twisted.trial.unittest import SynchronousTestCase, TestCase
from zope.interface.verify import verifyObject

from artifactvault.metrics import BackendObserver, Metrics
from artifactvault.negative import NegativeCache
from artifactvault.observe import NULL, IRequestObserver, IUpstreamObserver
from tests import support
from tests.fakes import Harness

BODY = b"0123456789"


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """The exposition C{text} parsed: (sample name, sorted labels) → value."""
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def value(text: str, name: str, **labels: str) -> float | None:
    return samples(text).get((name, tuple(sorted(labels.items()))))


class MetricsTests(SynchronousTestCase):

    def setUp(self) -> None:
        self.harness = h = Harness(self, idle_timeout=10, timeout=5)
        self.metrics = Metrics(h.vault)
        self.metrics.add_backend(h.backend)
        h.upstream.observer = self.metrics.observe("/files/")
        h.upstream.observer.watch(h.upstream)
        h.site.observers.append(self.metrics)

    def scrape(self) -> str:
        return self.metrics.exposition().decode()

    def test_interfaces(self) -> None:
        verifyObject(IRequestObserver, self.metrics)
        verifyObject(IUpstreamObserver, self.metrics.observe("/files/"))
        verifyObject(IUpstreamObserver, NULL)

    def test_own_registry(self) -> None:
        """Each daemon has its own registry: nothing goes to the library's global one."""
        self.assertIsNone(REGISTRY.get_sample_value("artifactvault_cache_entries"))
        other = Metrics(self.harness.vault)
        self.assertIsNot(other.registry, self.metrics.registry)

    def test_requests_by_result_and_class(self) -> None:
        """Requests are counted by backend (its prefix), cache result and status class; bytes sent too."""
        h = self.harness
        h.fetched("a.bin", BODY)  # miss
        h.get("/files/a.bin")  # hit
        h.get("/files/a.bin", headers={"Range": "bytes=0-1"})  # hit, 206
        h.get("/files/../x")  # 400, no cache result
        text = self.scrape()
        self.assertEqual(value(text, "artifactvault_requests_total", backend="/files/", cache="miss", status="2xx"), 1)
        self.assertEqual(value(text, "artifactvault_requests_total", backend="/files/", cache="hit", status="2xx"), 2)
        self.assertEqual(value(text, "artifactvault_sent_bytes_total", backend="/files/", cache="hit"), 12)
        self.assertEqual(value(text, "artifactvault_sent_bytes_total", backend="/files/", cache="miss"), 10)
        self.assertEqual(self.metrics.totals.bytes_saved, 12)
        self.assertEqual(self.metrics.totals.most_requested(1), [("/files/a.bin", 3)])

    def test_negative_and_stale(self) -> None:
        """A remembered 404 counts as 'negative', a stale copy as 'stale'."""
        h = self.harness
        h.upstream.negative = NegativeCache(h.clock.seconds, 60)
        h.get("/files/gone")
        h.requests[-1].respond(404, b"")
        h.get("/files/gone")
        h.backend.ttl = 1
        h.fetched("s.bin", BODY)
        h.clock.advance(5)
        h.upstream.backoff = 0
        client = h.get("/files/s.bin")
        h.requests[-1].fail(neterror.ConnectionRefusedError())
        self.assertEqual(client.answer().header("X-Cache"), "STALE")
        text = self.scrape()
        self.assertEqual(value(text, "artifactvault_requests_total", backend="/files/", cache="negative",
                               status="4xx"), 1)
        self.assertEqual(value(text, "artifactvault_requests_total", backend="/files/", cache="stale",
                               status="2xx"), 1)
        self.assertEqual(value(text, "artifactvault_negative_cache_hits_total", backend="/files/"), 1)
        self.assertEqual(value(text, "artifactvault_negative_cache_entries", backend="/files/"), 1)

    def test_upstream(self) -> None:
        """Upstream requests, bytes received, errors by kind and the time to headers."""
        h = self.harness
        h.get("/files/a.bin")
        h.clock.advance(0.2)
        response = h.requests[-1].respond(200, length=10)
        response.send(b"01234")
        response.send(b"56789").finish()
        h.get("/files/b.bin")
        h.requests[-1].fail(neterror.ConnectionRefusedError())
        h.upstream.backoff_for(h.url("x")).until = 0  # (the refusal's back-off over)
        h.get("/files/c.bin")
        h.requests[-1].respond(503, b"")
        h.upstream.backoff_for(h.url("x")).until = 0
        h.get("/files/d.bin")
        h.requests[-1].respond(200, length=10).send(b"0123").cut()
        h.upstream.backoff_for(h.url("x")).until = 0
        h.backend.options["e.bin"] = {"digest": ("sha256", "0" * 64)}
        h.get("/files/e.bin")
        h.requests[-1].respond(200, BODY)
        h.backend.options["f.bin"] = {"ttl": None}
        h.get("/files/f.bin")
        h.clock.advance(5)
        text = self.scrape()
        kinds = {k: value(text, "artifactvault_upstream_errors_total", backend="/files/", kind=k)
                 for k in ("refused", "timeout", "4xx", "5xx", "digest_mismatch", "cut_short")}
        self.assertEqual(kinds, {"refused": 1, "timeout": 1, "4xx": 0, "5xx": 1, "digest_mismatch": 1,
                                 "cut_short": 1})
        self.assertEqual(value(text, "artifactvault_upstream_requests_total", backend="/files/"), 6)
        self.assertEqual(value(text, "artifactvault_upstream_received_bytes_total", backend="/files/"), 24)
        self.assertEqual(value(text, "artifactvault_upstream_response_seconds_bucket", backend="/files/",
                               le="0.25"), 4)
        self.assertEqual(value(text, "artifactvault_upstream_response_seconds_bucket", backend="/files/",
                               le="0.1"), 3)
        self.assertEqual(value(text, "artifactvault_upstream_response_seconds_count", backend="/files/"), 4)
        observer = self.metrics.observers["/files/"]
        self.assertIn("did not answer within 5 s", observer.last_error[0])

    def test_flights_and_clients(self) -> None:
        """Downloads in flight and their clients are read when scraped."""
        h = self.harness
        h.get("/files/a.bin")
        h.get("/files/a.bin")
        response = h.requests[-1].respond(200, length=10)
        response.send(b"01")
        text = self.scrape()
        self.assertEqual(value(text, "artifactvault_downloads_in_flight", backend="/files/"), 1)
        self.assertEqual(value(text, "artifactvault_download_clients", backend="/files/"), 2)
        response.send(b"23456789").finish()
        text = self.scrape()
        self.assertEqual(value(text, "artifactvault_downloads_in_flight", backend="/files/"), 0)

    def test_cache_and_backoff(self) -> None:
        """What the cache holds and has done; each origin's back-off counts."""
        h = self.harness
        h.store.max_size = 25
        h.fetched("a.bin", BODY)
        h.fetched("b.bin", BODY)
        h.fetched("c.bin", BODY)  # evicts a.bin
        backoff = h.upstream.backoff_for(h.url("x"))
        backoff.throttle("7")
        backoff.hold()
        text = self.scrape()
        self.assertEqual(value(text, "artifactvault_cache_size_bytes"), 20)
        self.assertEqual(value(text, "artifactvault_cache_entries"), 2)
        self.assertEqual(value(text, "artifactvault_cache_max_size_bytes"), 25)
        self.assertEqual(value(text, "artifactvault_cache_evictions_total"), 1)
        self.assertEqual(value(text, "artifactvault_cache_commits_total"), 3)
        self.assertEqual(value(text, "artifactvault_cache_orphans_removed_total"), 0)
        origin = "http://upstream.test:80"
        self.assertEqual(value(text, "artifactvault_upstream_throttled_total", backend="/files/", origin=origin), 1)
        self.assertEqual(value(text, "artifactvault_upstream_held_total", backend="/files/", origin=origin), 1)
        self.assertEqual(value(text, "artifactvault_upstream_backoff_seconds", backend="/files/", origin=origin), 7)

    def test_no_secrets_in_labels(self) -> None:
        """Query strings and paths never become labels; only prefixes, results, classes, kinds, origins."""
        h = self.harness
        client = h.get("/files/a.bin?token=s3cret")
        h.requests[-1].respond(200, BODY)
        self.assertEqual(client.answer().status, 200)
        text = self.scrape()
        self.assertNotIn("s3cret", text)
        self.assertNotIn("a.bin", text)


class BackendObserverTests(SynchronousTestCase):
    def test_last_error(self) -> None:
        """The last refused/timeout/5xx/digest/cut error is kept, with when; a 4xx is not an outage."""
        observer = BackendObserver(Metrics(), "/x/", wall=lambda: 1234.0)
        observer.answered(404, 0.1)
        self.assertIsNone(observer.last_error)
        observer.answered(503, 0.1)
        self.assertEqual(observer.last_error, ("upstream answered 503", 1234.0))


class MetricsDaemonTests(TestCase):
    """C{/-/metrics} of the real daemon."""

    def test_scrape(self) -> None:
        """Counts after a miss and a hit; the cache's size learnt from the disk at the next start."""
        files = support.upstream_url("files")
        daemon = support.Daemon([{"type": "http", "config": {"prefix": "/files/", "base_url": files}}])
        self.addCleanup(daemon.cleanup)
        daemon.start()
        for _ in range(2):
            self.assertEqual(support.request("GET", daemon.url("/files/small.bin"))[0], 200)
        daemon.wait_log("stored /files/small.bin")
        status, headers, body = support.request("GET", daemon.url("/-/metrics"))
        self.assertEqual(status, 200)
        self.assertTrue(headers["content-type"].startswith("text/plain; version="), headers)
        text = body.decode()
        self.assertEqual(value(text, "artifactvault_requests_total", backend="/files/", cache="hit", status="2xx"), 1)
        self.assertEqual(value(text, "artifactvault_upstream_received_bytes_total", backend="/files/"), 4096)
        self.assertEqual(value(text, "artifactvault_cache_size_bytes"), 4096)
        daemon.stop()
        daemon.start()
        deadline_text = ""
        for _ in range(200):  # (the janitor's scan at start runs in a thread: poll for it)
            deadline_text = support.request("GET", daemon.url("/-/metrics"))[2].decode()
            if value(deadline_text, "artifactvault_cache_entries") == 1:
                break
            support.time.sleep(0.02)
        self.assertEqual(value(deadline_text, "artifactvault_cache_size_bytes"), 4096)
        self.assertEqual(value(deadline_text, "artifactvault_requests_total", backend="/files/", cache="hit",
                               status="2xx"), None)  # (counters start again at every start)

    def test_off(self) -> None:
        """metrics: false → no /-/metrics (404), and nothing counted."""
        files = support.upstream_url("files")
        daemon = support.Daemon([{"type": "http", "config": {"prefix": "/files/", "base_url": files}}],
                                metrics=False)
        self.addCleanup(daemon.cleanup)
        daemon.start()
        self.assertEqual(support.request("GET", daemon.url("/-/metrics"))[0], 404)
        self.assertEqual(support.request("GET", daemon.url("/-/status.json"))[0], 200)

