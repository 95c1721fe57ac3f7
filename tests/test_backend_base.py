"""
Tests for L{artifactvault.backends.base}: request paths checked once for
every backend, the shared resource, and the settings every backend parses.
"""

from __future__ import annotations

import os

from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from artifactvault.backends.base import (BackendResource, BadPath, BuildContext, CommonSettings, IBackend,
                                         dispatch, parse_common, safe_segments)
from artifactvault.config import ConfigError, Section
from artifactvault.upstream import StaticAuth
from tests.fakes import FakeClient, Harness
from tests.webhelpers import FakeRequest


class SafeSegmentsTests(SynchronousTestCase):

    def test_plain(self) -> None:
        """Ordinary segments come back as text; a trailing slash is kept."""
        self.assertEqual(safe_segments([b"a", b"b.tar.gz", b""]), ["a", "b.tar.gz", ""])
        self.assertEqual(safe_segments([b"caf\xc3\xa9"]), ["caf\u00e9"])
        self.assertEqual(safe_segments([]), [])

    def test_dot_dropped_when_asked(self) -> None:
        """
        With drop_dot (apt: a flat repository's ``URI/./InRelease``), a
        ``.`` segment is dropped, the same place; ``..`` is still refused.
        """
        self.assertEqual(safe_segments([b".", b"InRelease"], drop_dot=True), ["InRelease"])
        self.assertEqual(safe_segments([b"a", b".", b"b", b"."], drop_dot=True), ["a", "b", ""])
        self.assertRaises(BadPath, safe_segments, [b".", b"..", b"a"], drop_dot=True)
        self.assertRaises(BadPath, safe_segments, [b".", b"a"])

    def test_refused(self) -> None:
        """Anything that could climb out or smuggle a separator is refused."""
        for postpath, reason in [
            ([b"a", b"..", b"b"], "dot segment in path"),
            ([b".", b"a"], "dot segment in path"),
            ([b"a", b"", b"b"], "empty path segment"),
            ([b"a/b"], "encoded slash in path segment"),
            ([b"a\\b"], "encoded slash in path segment"),
            ([b"a\x00"], "NUL byte in path"),
            ([b"\xff"], "path is not valid UTF-8"),
        ]:
            with self.subTest(postpath=postpath):
                self.assertEqual(str(self.assertRaises(BadPath, safe_segments, postpath)), reason)


class BackendResourceTests(SynchronousTestCase):
    """The resource at a backend's prefix, through the real HTTP server."""

    def setUp(self) -> None:
        self.harness = Harness(self)

    def test_bad_paths(self) -> None:
        """Dot, empty, encoded-slash, NUL segments are a 400; nothing goes upstream."""
        for path in ["/files/a/../b", "/files/a/%2e%2e/b", "/files/%2E%2E/etc/passwd", "/files/./a",
                     "/files/a//b", "/files/a%2Fb", "/files/a%2fb", "/files/a%5Cb", "/files/a%00b",
                     "/files/%ff"]:
            with self.subTest(path=path):
                answer = self.harness.get(path).answer()
                self.assertEqual(answer.status, 400)
                self.assertTrue(answer.body.startswith(b"bad request path: "))
        self.assertEqual(self.harness.requests, [])

    def test_good_path(self) -> None:
        """An ordinary path reaches the backend, encoded characters decoded."""
        self.harness.get("/files/dir/a%20b.txt")
        self.assertEqual(self.harness.requests[0].url, self.harness.url("dir/a b.txt"))

    def test_head_is_not_get(self) -> None:
        """HEAD is handled as HEAD (Twisted's default would run a GET and download)."""
        self.harness.get("/files/x", method=b"HEAD")
        self.assertEqual(self.harness.requests[0].method, "HEAD")

    def test_other_methods(self) -> None:
        """Methods other than GET and HEAD, known to Twisted or not, are refused with 405 and Allow."""
        for method in (b"POST", b"DELETE", b"PUT"):
            answer = self.harness.get("/files/x", method=method).answer()
            self.assertEqual(answer.status, 405)
            self.assertEqual(sorted(answer.header("Allow").split(", ")), ["GET", "HEAD"])
        self.assertEqual(self.harness.requests, [])

    def test_backend_crash(self) -> None:
        """A backend that raises gives a 500 without the traceback, and it is logged."""
        def broken(responder, segments):  # type: ignore[no-untyped-def]
            raise KeyError("secret detail")
        self.harness.backend.handle = broken
        answer = self.harness.get("/files/x").answer()
        self.assertEqual((answer.status, answer.body), (500, b"internal error\n"))
        self.assertEqual(len(self.flushLoggedErrors(KeyError)), 1)

    def test_custom_error_page(self) -> None:
        """A backend's render_error shapes its error pages."""
        def render_error(request, status, message):  # type: ignore[no-untyped-def]
            request.setResponseCode(status)
            request.write(f"<h1>{message}</h1>".encode())
            request.finish()
        self.harness.backend.render_error = render_error
        answer = self.harness.get("/files/a/../b").answer()
        self.assertEqual((answer.status, answer.body), (400, b"<h1>bad request path: dot segment in path</h1>"))

    def test_fake_backend_is_a_backend(self) -> None:
        """The test backend provides IBackend (so these tests exercise the real contract)."""
        self.assertTrue(verifyObject(IBackend, self.harness.backend))


class CommonSettingsTests(SynchronousTestCase):

    def parse(self, **data: object) -> CommonSettings:
        return CommonSettings(**parse_common(Section("f.yml", "backends[0].config", data)))

    def test_defaults(self) -> None:
        """Only the prefix is required; timeouts default to 30 s and 60 s idle."""
        settings = self.parse(prefix="/p/")
        self.assertEqual((settings.prefix, settings.username, settings.token, settings.headers,
                          settings.timeout, settings.idle_timeout), ("/p/", None, None, {}, 30.0, 60.0))

    def test_verify_before_send(self) -> None:
        """verify_before_send is a size (8 MiB by default); 0 streams every body; a bad one names the key."""
        self.assertEqual(self.parse(prefix="/p/").verify_before_send, 8 << 20)
        self.assertEqual(self.parse(prefix="/p/", verify_before_send="1M").verify_before_send, 1 << 20)
        self.assertEqual(self.parse(prefix="/p/", verify_before_send=0).verify_before_send, 0)
        for value in (-1, "lots"):
            with self.assertRaises(ConfigError) as caught:
                self.parse(prefix="/p/", verify_before_send=value)
            self.assertIn("f.yml: backends[0].config.verify_before_send: must", str(caught.exception))

    def test_default_prefix(self) -> None:
        """A backend type may give a default prefix."""
        section = Section("f.yml", "backends[0].config", {})
        self.assertEqual(parse_common(section, "/pypi/")["prefix"], "/pypi/")
        self.assertRaises(ConfigError, parse_common, section)

    def test_repr_hides_credentials(self) -> None:
        """Settings print without their credentials."""
        self.assertNotIn("hunter2", repr(self.parse(prefix="/p/", username="u", password="hunter2")))

    def test_build_context_upstream(self) -> None:
        """The context's upstream carries the common settings and static credentials for base_url."""
        context = BuildContext(vault=None, reactor=object(), client=FakeClient())
        settings = self.parse(prefix="/p/", username="u", password="pw", headers={"X-A": "1"},
                              timeout="5s", idle_timeout="1m")
        upstream = context.upstream("https://up.test/r/", settings)
        self.assertEqual((upstream.headers, upstream.timeout, upstream.idle_timeout), ({"X-A": "1"}, 5.0, 60.0))
        self.assertIsInstance(upstream.auth, StaticAuth)
        self.assertEqual(upstream.auth.headers_for("https://up.test/r/x"), {"Authorization": "Basic dTpwdw=="})
        self.assertIsNone(context.upstream("https://up.test/", self.parse(prefix="/p/")).auth)

    def test_token_from_environment(self) -> None:
        """token_env gives a bearer token."""
        self.patch(os, "environ", {"T": "tok"})
        context = BuildContext(vault=None, reactor=object(), client=FakeClient())
        upstream = context.upstream("https://up.test/", self.parse(prefix="/p/", token_env="T"))
        self.assertEqual(upstream.auth.headers_for("https://up.test/x"), {"Authorization": "Bearer tok"})


class _Backend:
    name = "test"

    def __init__(self) -> None:
        self.handled: list[list[str]] = []
        self.errors: list[tuple[int, str]] = []

    def handle(self, responder, segments):
        self.handled.append(segments)
        responder.finish()

    def render_error(self, request, status, message):
        self.errors.append((status, message))
        request.setResponseCode(status)
        request.finish()


class DispatchTests(SynchronousTestCase):
    def test_push_methods_refused_in_backend_format(self) -> None:
        """PUT, POST, PATCH, DELETE get a 405 with Allow, rendered by the backend's own error format."""
        for method in (b"PUT", b"POST", b"PATCH", b"DELETE"):
            backend = _Backend()
            request = FakeRequest(b"/x/a", method)
            BackendResource(backend).render(request)
            self.assertEqual(request.responseCode, 405)
            self.assertEqual(request.header(b"allow"), "GET, HEAD")
            self.assertEqual(backend.errors[0][0], 405)
            self.assertIn(method.decode(), backend.errors[0][1])
            self.assertEqual(backend.handled, [])

    def test_get_and_head_reach_the_backend(self) -> None:
        """GET and HEAD are handed to the backend with the checked segments."""
        backend = _Backend()
        for method in (b"GET", b"HEAD"):
            dispatch(backend, FakeRequest(b"/a/b", method), [b"a", b"b"])
        self.assertEqual(backend.handled, [["a", "b"], ["a", "b"]])

    def test_bad_path(self) -> None:
        """A dot segment is a 400 before the backend sees anything."""
        backend = _Backend()
        dispatch(backend, FakeRequest(b"/a/../b"), [b"a", b"..", b"b"])
        self.assertEqual([s for s, _ in backend.errors], [400])
        self.assertEqual(backend.handled, [])
