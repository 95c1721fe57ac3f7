"""/v2/: the version check, routing to registry backends, the registry's JSON errors."""

from __future__ import annotations

import json
from types import SimpleNamespace

from twisted.trial.unittest import SynchronousTestCase

from artifactvault.backends.registry_api import RegistryApi, error_code, registry_error
from artifactvault.config import ConfigError
from artifactvault.upstream import UpstreamStatus
from tests.webhelpers import FakeRequest


class _Backend:
    def __init__(self, prefix: str, mirror: bool = False) -> None:
        self.prefix, self.mirror, self.name = prefix, mirror, f"registry {prefix}"
        self.seen: list[tuple[list[str], list[bytes]]] = []

    def handle(self, responder, segments):
        self.seen.append((segments, list(responder.request.prepath)))
        responder.finish()

    render_error = staticmethod(registry_error)


def v2(path: bytes, method: bytes = b"GET") -> FakeRequest:
    request = FakeRequest(b"/v2/" + path, method)
    request.prepath, request.postpath = [b"v2"], path.split(b"/")
    return request


class RegistryApiTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.api = RegistryApi()
        self.hub, self.deep = _Backend("/dockerhub/"), _Backend("/r/ghcr/")
        self.api.add(self.hub)
        self.api.add(self.deep)

    def test_shared_per_context(self) -> None:
        """All registry backends built with one context share one /v2/ resource."""
        context = SimpleNamespace(shared={})
        self.assertIs(RegistryApi.of(context), RegistryApi.of(context))

    def test_version_check(self) -> None:
        """GET and HEAD /v2/ are 200 {} with the API version header; a PUT there is 405 UNSUPPORTED."""
        for method in (b"GET", b"HEAD"):
            request = FakeRequest(b"/v2/", method)
            request.postpath = [b""]
            self.assertEqual(self.api.render(request), b"{}")
            self.assertEqual(request.header(b"docker-distribution-api-version"), "registry/2.0")
        request = FakeRequest(b"/v2/", b"PUT")
        request.postpath = [b""]
        self.api.render(request)
        self.assertEqual(request.responseCode, 405)
        self.assertEqual(json.loads(request.body)["errors"][0]["code"], "UNSUPPORTED")

    def test_routes_by_prefix(self) -> None:
        """/v2/<prefix>/<name>/… goes to that backend, with the prefix moved to prepath; longer prefixes first."""
        self.api.render(v2(b"dockerhub/library/alpine/manifests/latest"))
        self.api.render(v2(b"r/ghcr/owner/app/blobs/sha256:00"))
        self.assertEqual(self.hub.seen, [(["library", "alpine", "manifests", "latest"], [b"v2", b"dockerhub"])])
        self.assertEqual(self.deep.seen, [(["owner", "app", "blobs", "sha256:00"], [b"v2", b"r", b"ghcr"])])

    def test_unknown_without_mirror(self) -> None:
        """No backend and no mirror: 404 NAME_UNKNOWN in JSON, with the API version header."""
        request = v2(b"library/alpine/manifests/latest")
        self.api.render(request)
        self.assertEqual(request.responseCode, 404)
        self.assertEqual(json.loads(request.body)["errors"][0]["code"], "NAME_UNKNOWN")
        self.assertEqual(request.header(b"docker-distribution-api-version"), "registry/2.0")

    def test_mirror(self) -> None:
        """The mirror backend answers unprefixed names; a prefix still wins."""
        mirror = _Backend("/hub/", mirror=True)
        self.api.add(mirror)
        self.api.render(v2(b"library/alpine/manifests/latest"))
        self.api.render(v2(b"dockerhub/x/manifests/latest"))
        self.assertEqual(mirror.seen, [(["library", "alpine", "manifests", "latest"], [b"v2"])])
        self.assertEqual(len(self.hub.seen), 1)

    def test_one_mirror_only(self) -> None:
        """A second mirror is a config error naming the file and key."""
        self.api.add(_Backend("/a/", mirror=True))
        e = self.assertRaises(ConfigError, self.api.add, _Backend("/b/", mirror=True),
                              "c.yml: backends[3].config.mirror")
        self.assertIn("c.yml: backends[3].config.mirror", str(e))

    def test_push_methods(self) -> None:
        """PUT, POST, PATCH, DELETE under a backend: 405 UNSUPPORTED, the backend never asked."""
        for method in (b"PUT", b"POST", b"PATCH", b"DELETE"):
            request = v2(b"dockerhub/library/alpine/blobs/uploads/", method)
            self.api.render(request)
            self.assertEqual(request.responseCode, 405)
            self.assertEqual(json.loads(request.body)["errors"][0]["code"], "UNSUPPORTED")
        self.assertEqual(self.hub.seen, [])


class ErrorTests(SynchronousTestCase):
    def test_codes(self) -> None:
        """404s are named by what was asked for; other statuses by the spec's codes."""
        request = FakeRequest(b"/x")
        self.assertEqual(error_code(request, 404), "NAME_UNKNOWN")
        request.registry_kind = "manifest"
        self.assertEqual(error_code(request, 404), "MANIFEST_UNKNOWN")
        request.registry_kind = "blob"
        self.assertEqual(error_code(request, 404), "BLOB_UNKNOWN")
        self.assertEqual([error_code(request, s) for s in (401, 403, 405, 429, 502, 504)],
                         ["UNAUTHORIZED", "DENIED", "UNSUPPORTED", "TOOMANYREQUESTS", "UNAVAILABLE", "UNAVAILABLE"])

    def test_error_drops_artifact_headers(self) -> None:
        """An error set after a digest header was set does not claim that digest."""
        request = FakeRequest(b"/x")
        request.setHeader(b"docker-content-digest", b"sha256:00")
        registry_error(request, 502, "upstream down")
        self.assertIsNone(request.header(b"docker-content-digest"))
        self.assertEqual(json.loads(request.body),
                         {"errors": [{"code": "UNAVAILABLE", "message": "upstream down", "detail": None}]})
        self.assertEqual(request.header(b"content-type"), "application/json; charset=utf-8")

    def error(self, cause: UpstreamStatus | None, status: int = 404, kind: str = "manifest") -> tuple[int, list]:
        request = FakeRequest(b"/x")
        request.registry_kind = kind
        request.error_cause = cause
        registry_error(request, status, "upstream answered")
        return request.responseCode, json.loads(request.body)["errors"]

    def test_upstream_words_kept(self) -> None:
        """An upstream 4xx error's code, message and detail are passed on (NAME_UNKNOWN stays NAME_UNKNOWN for a manifest); a code outside the spec's list is replaced by ours, its words kept."""
        cause = UpstreamStatus(404, "Not Found")
        cause.body = b'{"errors":[{"code":"NAME_UNKNOWN","message":"repository name not known","detail":{"name":"x"}}]}'
        self.assertEqual(self.error(cause), (404, [{"code": "NAME_UNKNOWN", "message": "repository name not known",
                                                    "detail": {"name": "x"}}]))
        cause = UpstreamStatus(400, "Bad Request")
        cause.body = b'{"errors":[{"code":"PAGINATION_NUMBER_INVALID","message":"bad n"}]}'
        self.assertEqual(self.error(cause, 400, "tags"),
                         (400, [{"code": "UNSUPPORTED", "message": "bad n"}]))

    def test_upstream_without_words(self) -> None:
        """An upstream 4xx without a readable JSON error (a HEAD, a text page), or a 5xx, gets our own error."""
        for body in (None, b"404 page not found", b'{"errors": "x"}', b'[1]'):
            cause = UpstreamStatus(404, "Not Found")
            cause.body = body
            self.assertEqual(self.error(cause), (404, [{"code": "MANIFEST_UNKNOWN", "message": "upstream answered",
                                                        "detail": None}]), body)
        cause = UpstreamStatus(500, "Internal Server Error")
        cause.body = b'{"errors":[{"code":"UNKNOWN","message":"boom"}]}'
        self.assertEqual(self.error(cause, 502)[1][0]["code"], "UNAVAILABLE")

    def test_upstream_refusal(self) -> None:
        """An upstream 401/403 is a 502 UNAUTHORIZED/DENIED whose detail names the upstream and keeps its errors."""
        for code, name in ((401, "UNAUTHORIZED"), (403, "DENIED")):
            cause = UpstreamStatus(code, "No", host="reg.test:5000")
            cause.body = b'{"errors":[{"code":"DENIED","message":"no"}]}'
            status, errors = self.error(cause, code)
            self.assertEqual((status, errors[0]["code"], errors[0]["detail"]),
                             (502, name, {"upstream": "reg.test:5000", "status": code,
                                          "errors": [{"code": "DENIED", "message": "no"}]}))
            self.assertIn("reg.test:5000", errors[0]["message"])
