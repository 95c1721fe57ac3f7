"""The shared child resource of backends: methods, path checks, error format."""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from artifactvault.backends.base import BackendResource, dispatch
from tests.webhelpers import FakeRequest


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
