"""
Tests for L{artifactvault.admin}: the token, purge and revalidate, in
memory and through the real daemon with curl (as the README shows).
"""

from __future__ import annotations

import json
import subprocess

from twisted.logger import formatEvent
from twisted.trial.unittest import SynchronousTestCase, TestCase

from artifactvault.admin import Admin, AdminResource, BadRequest, select
from artifactvault.negative import NegativeCache
from tests import support
from tests.fakes import UPSTREAM, Client, Harness, log_events

TOKEN = "0123456789abcdef0123456789abcdef"
BODY = b"0123456789"


class AdminTests(SynchronousTestCase):

    def setUp(self) -> None:
        self.harness = h = Harness(self, ttl=3600, idle_timeout=10, timeout=5)
        h.upstream.origin_url = UPSTREAM
        h.site.resource.children[b"-"].putChild(b"admin", AdminResource(Admin(h.vault, [h.backend]), TOKEN))
        self.events = log_events(self)

    def post(self, action: str, doc: object, token: str | None = TOKEN, method: bytes = b"POST"):  # type: ignore[no-untyped-def]
        body = json.dumps(doc).encode()
        headers = {"Content-Length": str(len(body)), "Content-Type": "application/json"}
        if token is not None:
            headers["Authorization"] = f"Bearer {token}"
        client = Client(self.harness.site, self.harness.clock, f"/-/admin/{action}".encode(), method, headers)
        client.channel.dataReceived(body)
        answer = client.answer()
        return answer.status, json.loads(answer.body) if answer.body else None

    def test_token(self) -> None:
        """No token or a wrong one → 401, logged without the token; the right one passes."""
        self.assertEqual(self.post("purge", {"path": "/files/a"}, token=None)[0], 401)
        self.assertEqual(self.post("purge", {"path": "/files/a"}, token="wrong-" + TOKEN[6:])[0], 401)
        self.assertEqual(self.post("purge", {"path": "/files/a"})[0], 200)
        text = "\n".join(formatEvent(e) + repr(e) for e in self.events)
        self.assertIn("admin request from", text)
        self.assertNotIn(TOKEN[6:], text)

    def test_bad_requests(self) -> None:
        """Wrong method, action or body: 405, 404, 400 with the reason."""
        self.assertEqual(self.post("purge", {"path": "/files/a"}, method=b"GET")[0], 405)
        self.assertEqual(self.post("nuke", {"path": "/files/a"})[0], 404)
        for doc in ({"path": "/elsewhere/a"}, {"path": "files/a"}, {"path": 3}, {"both": 1},
                    {"path": "/files/a", "prefix": "/files/"}, [1], {"path": "/files/a?x=1"}):
            status, answer = self.post("purge", doc)
            self.assertEqual(status, 400, doc)
            self.assertIn("error", answer)

    def test_purge_path(self) -> None:
        """A path removes its entry, nothing else; the next request is a miss."""
        h = self.harness
        h.fetched("a/b.tgz", BODY)
        h.fetched("a/c.tgz", BODY)
        status, answer = self.post("purge", {"path": "/files/a/b.tgz"})
        self.assertEqual((status, answer["entries"], answer["bytes"]), (200, 1, 10))
        self.assertIsNone(h.store.lookup(h.url("a/b.tgz")))
        self.assertIsNotNone(h.store.lookup(h.url("a/c.tgz")))
        h.get("/files/a/b.tgz")
        self.assertEqual(len(h.requests), 3)

    def test_purge_prefix_and_negative(self) -> None:
        """A prefix removes everything under it, and the backend's remembered 404s."""
        h = self.harness
        h.upstream.negative = NegativeCache(h.clock.seconds, 60)
        h.fetched("a/b.tgz", BODY)
        h.fetched("a/c/d.tgz", BODY)
        h.fetched("z.tgz", BODY)
        h.get("/files/a/gone")
        h.requests[-1].respond(404, b"")
        status, answer = self.post("purge", {"prefix": "/files/a/"})
        self.assertEqual((status, answer["entries"], answer["negative_forgotten"]), (200, 2, 1))
        self.assertEqual(len(h.store.usage), 1)

    def test_purge_in_flight_not_committed(self) -> None:
        """A download in flight for a purged entry goes on for its client, and is not stored."""
        h = self.harness
        client = h.get("/files/a.bin")
        response = h.requests[-1].respond(200, length=10)
        response.send(b"01234")
        status, answer = self.post("purge", {"path": "/files/a.bin"})
        self.assertEqual((status, answer["downloads_not_stored"]), (200, 1))
        response.send(b"56789").finish()
        self.assertEqual(client.answer().body, BODY)
        self.assertIsNone(h.store.lookup(h.url("a.bin")))

    def test_revalidate(self) -> None:
        """revalidate marks entries stale: the next request asks the upstream (a 304 keeps the bytes)."""
        h = self.harness
        h.fetched("a.bin", BODY, headers={"ETag": '"v1"'})
        self.assertEqual(h.get("/files/a.bin").answer().header("X-Cache"), "HIT")
        status, answer = self.post("revalidate", {"prefix": "/files/"})
        self.assertEqual((status, answer["entries"]), (200, 1))
        client = h.get("/files/a.bin")
        self.assertEqual(h.requests[-1].header("If-None-Match"), '"v1"')
        h.requests[-1].respond(304, b"", headers={"ETag": '"v1"'})
        self.assertEqual((client.answer().body, client.answer().header("X-Cache")), (BODY, "HIT"))
        self.assertEqual(h.get("/files/a.bin").answer().header("X-Cache"), "HIT")


class SelectTests(SynchronousTestCase):
    def test_longest_prefix(self) -> None:
        """A path goes to the backend with the longest prefix it is under."""
        class B:
            def __init__(self, prefix: str) -> None:
                self.prefix = prefix
        a, ab = B("/a/"), B("/a/b/")
        self.assertIs(select([a, ab], b'{"path": "/a/b/c"}').backend, ab)
        self.assertIs(select([a, ab], b'{"prefix": "/a/c/"}').backend, a)
        self.assertRaises(BadRequest, select, [a], b"not json")


class AdminDaemonTests(TestCase):
    """The admin API of the real daemon, driven with curl."""

    def curl(self, daemon: support.Daemon, action: str, data: str, token: str | None = TOKEN) -> tuple[int, dict]:
        args = ["curl", "-s", "--noproxy", "*", "-w", "\n%{http_code}", "-X", "POST", "--data", data,
                "-H", "Content-Type: application/json"]
        if token:
            args += ["-H", f"Authorization: Bearer {token}"]
        out = subprocess.run(args + [daemon.url(f"/-/admin/{action}")], capture_output=True, text=True,
                             check=True).stdout
        body, _, code = out.rpartition("\n")
        return int(code), json.loads(body)

    def test_purge_and_revalidate(self) -> None:
        files = support.upstream_url("files")
        daemon = support.Daemon([{"type": "http", "config": {"prefix": "/files/", "base_url": files, "ttl": "1h"}}],
                                admin_token_env="AV_TEST_ADMIN_TOKEN")
        self.addCleanup(daemon.cleanup)
        daemon.start(env={"AV_TEST_ADMIN_TOKEN": TOKEN})
        self.assertEqual(support.request("GET", daemon.url("/files/small.bin"))[0], 200)
        daemon.wait_log("stored /files/small.bin")
        self.assertEqual(self.curl(daemon, "purge", '{"path": "/files/small.bin"}', token="nope")[0], 401)
        self.assertEqual(self.curl(daemon, "revalidate", '{"prefix": "/files/"}'),
                         (200, {"action": "revalidate", "prefix": "/files/", "entries": 1, "bytes": 4096}))
        log = support.AccessLog("files")
        status, headers, _ = support.request("GET", daemon.url("/files/small.bin"))
        self.assertEqual((status, headers["x-cache"]), (200, "HIT"))  # (revalidated: nginx said 304)
        self.assertEqual([r[2] for r in log.wait("small.bin", 1)], [304])
        self.assertEqual(support.request("GET", daemon.url("/files/small.bin?v=2"))[0], 200)
        daemon.wait_log("stored /files/small.bin")
        daemon.wait_stored(f"{files}/small.bin?v=2")
        code, answer = self.curl(daemon, "purge", '{"path": "/files/small.bin"}')  # (every variant: any query)
        self.assertEqual((code, answer["entries"], answer["bytes"]), (200, 2, 8192))
        self.assertEqual(support.request("GET", daemon.url("/files/small.bin"))[1]["x-cache"], "MISS")
        self.assertNotIn(TOKEN, daemon.log())

    def test_no_token_no_admin(self) -> None:
        """Without an admin token every /-/admin/ path is a 404."""
        files = support.upstream_url("files")
        daemon = support.Daemon([{"type": "http", "config": {"prefix": "/files/", "base_url": files}}])
        self.addCleanup(daemon.cleanup)
        daemon.start()
        for path in ("/-/admin/", "/-/admin/purge"):
            self.assertEqual(support.request("POST", daemon.url(path), body=b"{}")[0], 404)
