"""
Tests for L{artifactvault.root}: each backend at its prefix (the longest
prefix wins), and the vault's own pages under C{/-/}.
"""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase
from twisted.web.resource import Resource

from artifactvault.root import Root
from artifactvault.site import VaultSite
from tests.fakes import Client, FakeBackend, Harness


class EchoBackend(FakeBackend):
    """Answers with its prefix and the segments it was given."""

    def __init__(self, prefix: str, extra: dict | None = None):
        self.prefix = prefix
        self.name = f"echo {prefix}"
        self.extra = extra or {}

    def extra_mounts(self) -> dict:
        return self.extra

    def handle(self, responder, segments):  # type: ignore[no-untyped-def]
        responder.request.write(f"{self.prefix} {'/'.join(segments)}".encode())
        responder.finish()


class Text(Resource):
    isLeaf = True

    def __init__(self, text: bytes):
        super().__init__()
        self.text = text

    def render_GET(self, request):  # type: ignore[no-untyped-def]
        return self.text


class RootTests(SynchronousTestCase):

    def setUp(self) -> None:
        self.clock = Harness(self).clock

    def answers(self, root: Root, *paths: str) -> list[str]:
        site = VaultSite(root, reactor=self.clock)
        return [Client(site, self.clock, p.encode()).answer().body.decode() for p in paths]

    def test_by_prefix(self) -> None:
        """Each backend gets the paths below its prefix, multi-segment prefixes too."""
        root = Root([EchoBackend("/a/"), EchoBackend("/b/c/")])
        self.assertEqual(self.answers(root, "/a/x/y", "/b/c/z", "/a/"),
                         ["/a/ x/y", "/b/c/ z", "/a/ "])

    def test_unknown_prefix(self) -> None:
        """
        A path under no prefix, or under ``/-/`` but no page of the vault's,
        or above a prefix (``/b/`` of ``/b/c/``), is a 404 in plain words,
        not Twisted's HTML page; HEAD too, without a body.
        """
        site = VaultSite(Root([EchoBackend("/a/"), EchoBackend("/b/c/")]), reactor=self.clock)
        for path in (b"/nothing/x", b"/b/", b"/b/x", b"/favicon.ico", b"/-/", b"/-/nothing"):
            answer = Client(site, self.clock, path).answer()
            self.assertEqual((answer.status, answer.header("content-type"), answer.body),
                             (404, "text/plain; charset=utf-8", b"nothing here: GET / lists what this vault serves\n"),
                             path)
        head = Client(site, self.clock, b"/nothing", b"HEAD").answer()
        self.assertEqual((head.status, head.body), (404, b""))

    def test_longest_prefix_wins(self) -> None:
        """Nested prefixes, mounted in either order: the longest match gets the request."""
        for order in (["/a/", "/a/b/"], ["/a/b/", "/a/"]):
            with self.subTest(order=order):
                root = Root([EchoBackend(p) for p in order])
                self.assertEqual(self.answers(root, "/a/b/x", "/a/x", "/a/bb/x", "/a/b"),
                                 ["/a/b/ x", "/a/ x", "/a/ bb/x", "/a/b/ "])

    def test_extra_mounts(self) -> None:
        """A backend's extra mounts are put in the tree too (e.g. /v2/ beside /v2/name/)."""
        root = Root([EchoBackend("/v2/hub/", extra={"/v2/": Text(b"version check")})])
        self.assertEqual(self.answers(root, "/v2/", "/v2/hub/library/alpine"),
                         ["version check", "/v2/hub/ library/alpine"])

    def test_duplicate_prefix(self) -> None:
        """Two backends at one prefix is an error when the tree is built."""
        self.assertRaises(ValueError, Root, [EchoBackend("/a/"), EchoBackend("/a/")])

    def test_health(self) -> None:
        """/-/health says ok and is not cached."""
        site = VaultSite(Root([]), reactor=self.clock)
        answer = Client(site, self.clock, b"/-/health").answer()
        self.assertEqual((answer.status, answer.body, answer.header("Cache-Control")), (200, b"ok\n", "no-store"))

    def test_index(self) -> None:
        """/ lists the backends."""
        [text] = self.answers(Root([EchoBackend("/a/")]), "/")
        self.assertIn("/a/  echo /a/", text)


class MountTests(SynchronousTestCase):
    def test_same_resource_twice(self) -> None:
        """Backends of one kind may share a mount: the same resource at the same path is one mount."""
        root, shared = Root([]), Resource()
        root.mount("/v2/", shared)
        root.mount("/v2/", shared)
        self.assertIs(root.children[b"v2"], shared)

