"""
Tests for the negative cache (L{artifactvault.negative}), C{max_stale} and
C{offline}: unit tests with a controlled clock, then each through the real
daemon against a scripted upstream.
"""

from __future__ import annotations

import json

from twisted.internet import error as neterror
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase, TestCase

from artifactvault.negative import NegativeCache
from tests import support
from tests.fakeupstream import FakeUpstream, Script
from tests.fakes import Harness

BODY = b"0123456789"
TOKEN = "t" * 32


class NegativeCacheTests(SynchronousTestCase):

    def setUp(self) -> None:
        self.clock = Clock()
        self.cache = NegativeCache(self.clock.seconds, ttl=60)

    def test_remembered_for_ttl(self) -> None:
        """A 404 is known for the ttl, by method and URL, then forgotten."""
        self.cache.remember("GET", "http://u/a", 404, "Not Found")
        self.clock.advance(59.9)
        self.assertEqual(self.cache.lookup("GET", "http://u/a").code, 404)
        self.assertIsNone(self.cache.lookup("HEAD", "http://u/a"))
        self.assertIsNone(self.cache.lookup("GET", "http://u/b"))
        self.clock.advance(0.1)
        self.assertIsNone(self.cache.lookup("GET", "http://u/a"))
        self.assertEqual(len(self.cache), 0)

    def test_zero_is_off(self) -> None:
        """negative_ttl 0 remembers nothing."""
        cache = NegativeCache(self.clock.seconds, ttl=0)
        self.assertIsNone(cache.remember("GET", "http://u/a", 404))
        self.assertIsNone(cache.lookup("GET", "http://u/a"))

    def test_bounded(self) -> None:
        """Past its limit the oldest answers go first."""
        cache = NegativeCache(self.clock.seconds, ttl=60, limit=2)
        for name in "abc":
            cache.remember("GET", f"http://u/{name}", 404)
        self.assertEqual([cache.lookup("GET", f"http://u/{n}") is not None for n in "abc"], [False, True, True])

    def test_by_variant(self) -> None:
        """The headers that choose the answer are part of the key (a registry's Accept); validators are not."""
        self.cache.remember("GET", "http://u/m", 404, headers={"Accept": "a/index"})
        self.assertIsNotNone(self.cache.lookup("GET", "http://u/m", {"accept": "a/index", "If-None-Match": '"x"'}))
        self.assertIsNone(self.cache.lookup("GET", "http://u/m", {"Accept": "a/manifest"}))
        self.assertIsNone(self.cache.lookup("GET", "http://u/m"))

    def test_forget(self) -> None:
        """forget() drops the answers under a URL prefix, or all."""
        for name in ("a/1", "a/2", "b/1"):
            self.cache.remember("GET", f"http://u/{name}", 410)
        self.assertEqual(self.cache.forget("http://u/a/"), 2)
        self.assertEqual(self.cache.forget(), 1)


class VaultNegativeTests(SynchronousTestCase):
    """The negative cache as a client of the vault sees it."""

    def setUp(self) -> None:
        self.harness = Harness(self, idle_timeout=10, timeout=5)
        self.harness.upstream.negative = NegativeCache(self.harness.clock.seconds, ttl=60)

    def test_404_remembered(self) -> None:
        """Within negative_ttl the same request is a 404 with X-Cache: HIT, not asked upstream; then asked again."""
        first = self.harness.get("/files/gone.bin")
        self.harness.requests[0].respond(404, b"no", phrase=b"Not Found")
        self.assertEqual((first.answer().status, first.answer().header("X-Cache")), (404, "MISS"))
        again = self.harness.get("/files/gone.bin").answer()
        self.assertEqual((again.status, again.header("X-Cache")), (404, "HIT"))
        self.assertEqual(len(self.harness.requests), 1)
        self.harness.clock.advance(60)
        self.harness.get("/files/gone.bin")
        self.assertEqual(len(self.harness.requests), 2)

    def test_410_and_not_500(self) -> None:
        """A 410 is remembered too (answered 404); a 500 never is."""
        self.harness.get("/files/a")
        self.harness.requests[-1].respond(410, b"", phrase=b"Gone")
        self.assertEqual(self.harness.get("/files/a").answer().status, 404)
        self.harness.get("/files/b")
        self.harness.requests[-1].respond(500, b"", phrase=b"Oops")
        self.harness.get("/files/b")
        self.assertEqual(len(self.harness.requests), 3)

    def test_off(self) -> None:
        """negative_ttl 0: every request asks the upstream."""
        self.harness.upstream.negative = NegativeCache(self.harness.clock.seconds, ttl=0)
        for _ in range(2):
            self.harness.get("/files/gone.bin")
            self.harness.requests[-1].respond(404, b"")
        self.assertEqual(len(self.harness.requests), 2)


class MaxStaleTests(SynchronousTestCase):
    """max_stale bounds how long past its freshness a copy answers for a failing upstream."""

    def setUp(self) -> None:
        self.harness = Harness(self, ttl=10, idle_timeout=10, timeout=5)
        self.harness.upstream.backoff = 0  # (every request asks: the decision is the one failure's)
        self.harness.upstream.max_stale = 100
        self.harness.fetched("a.bin", BODY)

    def fails(self) -> tuple[int, str | None]:
        client = self.harness.get("/files/a.bin")
        self.harness.requests[-1].fail(neterror.ConnectionRefusedError())
        answer = client.answer()
        return answer.status, answer.header("X-Cache")

    def test_within(self) -> None:
        """Up to max_stale past its freshness, the stale copy answers."""
        self.harness.clock.advance(10 + 100)
        self.assertEqual(self.fails(), (200, "STALE"))

    def test_beyond(self) -> None:
        """Past max_stale the client gets the upstream's failure."""
        self.harness.clock.advance(10 + 100.5)
        self.assertEqual(self.fails(), (502, "MISS"))

    def test_unlimited_by_default(self) -> None:
        """Without max_stale any stale copy answers."""
        self.harness.upstream.max_stale = None
        self.harness.clock.advance(10 ** 7)
        self.assertEqual(self.fails(), (200, "STALE"))

    def test_not_at_once_beyond(self) -> None:
        """An upstream that failed lately: a copy past max_stale is not answered at once either."""
        self.harness.clock.advance(10 + 100.5)
        backoff = self.harness.upstream.backoff_for(self.harness.url("a.bin"))
        backoff.after_failure = 10
        backoff.failed("down")
        self.assertTrue(backoff.troubled)
        answer = self.harness.get("/files/a.bin").answer()
        self.assertEqual((answer.status, answer.header("X-Cache")), (502, "MISS"))


class OfflineTests(SynchronousTestCase):
    """offline: nothing is sent upstream; hits and stale copies are served, misses are a 504 saying so."""

    def setUp(self) -> None:
        self.harness = Harness(self, ttl=10, idle_timeout=10, timeout=5)
        self.harness.fetched("a.bin", BODY)
        self.harness.upstream.offline = True
        self.harness.upstream.max_stale = 1  # (offline, nothing better will come: ignored)

    def test_hit_stale_miss(self) -> None:
        hit = self.harness.get("/files/a.bin").answer()
        self.harness.clock.advance(3600)
        stale = self.harness.get("/files/a.bin").answer()
        miss = self.harness.get("/files/b.bin").answer()
        head = self.harness.get("/files/c.bin", method=b"HEAD").answer()
        self.assertEqual([(a.status, a.header("X-Cache")) for a in (hit, stale, miss, head)],
                         [(200, "HIT"), (200, "STALE"), (504, "MISS"), (504, "MISS")])
        self.assertEqual(miss.body, b"the vault is offline: upstream upstream.test is not asked\n")
        self.assertEqual(len(self.harness.requests), 1)  # (the fetch before going offline)


class PolicyDaemonTests(TestCase):
    """The three policies through the real daemon, against a scripted upstream."""

    def setUp(self) -> None:
        self.fake = FakeUpstream()
        self.addCleanup(self.fake.close)
        base = self.fake.base
        self.daemon = support.Daemon([
            {"type": "http", "config": {"prefix": "/neg/", "base_url": base}},
            {"type": "http", "config": {"prefix": "/loose/", "base_url": base, "ttl": 0, "backoff": 0,
                                        "max_stale": "1h"}},
            {"type": "http", "config": {"prefix": "/strict/", "base_url": base + "/s", "ttl": 0, "backoff": 0,
                                        "max_stale": 0}},
            {"type": "http", "config": {"prefix": "/on/", "base_url": base + "/o"}},
            {"type": "http", "config": {"prefix": "/off/", "base_url": base + "/o", "offline": True}},
        ], admin_token=TOKEN)
        self.addCleanup(self.daemon.cleanup)
        self.daemon.start()

    def get(self, path: str) -> tuple[int, str | None, bytes]:
        status, headers, body = support.request("GET", self.daemon.url(path))
        return status, headers.get("x-cache"), body

    def test_negative_cache_and_purge(self) -> None:
        """A 404 is answered again without asking (X-Cache: HIT, counted negative); a purge forgets it."""
        self.assertEqual(self.get("/neg/gone.tgz")[:2], (404, "MISS"))
        self.assertEqual(self.get("/neg/gone.tgz")[:2], (404, "HIT"))
        self.assertEqual(self.fake.count("GET", "/gone.tgz"), 1)
        metrics = support.request("GET", self.daemon.url("/-/metrics"))[2].decode()
        self.assertIn('artifactvault_requests_total{backend="/neg/",cache="negative",status="4xx"} 1.0', metrics)
        status, _, body = support.request("POST", self.daemon.url("/-/admin/purge"),
                                          {"Authorization": f"Bearer {TOKEN}"}, body=b'{"prefix": "/neg/"}')
        self.assertEqual((status, json.loads(body)["negative_forgotten"]), (200, 1))
        self.assertEqual(self.get("/neg/gone.tgz")[:2], (404, "MISS"))
        self.assertEqual(self.fake.count("GET", "/gone.tgz"), 2)

    def test_max_stale(self) -> None:
        """A failing upstream: the stale copy within max_stale, the 502 past it."""
        self.fake.scripts["/a.bin"] = Script(body=BODY)
        self.fake.scripts["/s/a.bin"] = Script(body=BODY)
        self.assertEqual(self.get("/loose/a.bin"), (200, "MISS", BODY))
        self.assertEqual(self.get("/strict/a.bin"), (200, "MISS", BODY))
        for what in ("/loose/a.bin", "/strict/a.bin"):  # (until then a request joins the download: a hit)
            self.daemon.wait_log(f"stored {what}")
        self.fake.scripts["/a.bin"] = self.fake.scripts["/s/a.bin"] = Script(status=503)
        self.assertEqual(self.get("/loose/a.bin"), (200, "STALE", BODY))
        self.assertEqual(self.get("/strict/a.bin")[:2], (502, "MISS"), self.daemon.log()[-3000:])

    def test_offline(self) -> None:
        """An offline backend serves what is cached and answers a miss 504 saying the vault is offline."""
        self.fake.scripts["/o/a.bin"] = Script(body=BODY)
        self.assertEqual(self.get("/on/a.bin"), (200, "MISS", BODY))
        self.daemon.wait_log("stored /on/a.bin")
        asked = len(self.fake.requests)
        self.assertEqual(self.get("/off/a.bin"), (200, "HIT", BODY))
        status, cache, body = self.get("/off/b.bin")
        self.assertEqual((status, cache), (504, "MISS"))
        self.assertIn(b"the vault is offline", body)
        self.assertEqual(len(self.fake.requests), asked)
