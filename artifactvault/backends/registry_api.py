# -*- test-case-name: tests.test_registry_api -*-
"""
The registry API that real clients speak: ``/v2/`` and its errors.

One L{RegistryApi} resource, shared by every registry backend of a daemon,
sits at ``/v2/``: it answers the version check, and routes
``/v2/<prefix-name>/<name>/…`` to the backend whose prefix that is (Harbor's
proxy-project form: ``docker pull HOST/dockerhub/library/alpine``) and, for
the one backend marked ``mirror: true``, ``/v2/<name>/…`` unprefixed (what the
Docker daemon's ``registry-mirrors`` asks for). Every answer carries
``Docker-Distribution-API-Version: registry/2.0``; errors are the
registry's JSON (``{"errors": [{"code": …, "message": …}]}``).
"""

from __future__ import annotations

import json
from typing import Any

from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request

from artifactvault.backends.base import dispatch
from artifactvault.config import ConfigError
from artifactvault.serve import Responder

API_VERSION = (b"docker-distribution-api-version", b"registry/2.0")

#: The error code for a status when the backend named none for the request.
_CODES = {400: "UNSUPPORTED", 401: "UNAUTHORIZED", 403: "DENIED", 405: "UNSUPPORTED",
          429: "TOOMANYREQUESTS", 500: "UNKNOWN"}
#: The code of a 404, by what was asked for (``request.registry_kind``).
_UNKNOWN = {"manifest": "MANIFEST_UNKNOWN", "blob": "BLOB_UNKNOWN"}
#: Headers that describe an artifact, set before an error was known.
_ARTIFACT_HEADERS = (b"docker-content-digest", b"etag", b"last-modified", b"accept-ranges",
                     b"content-range", b"warning")


def error_code(request: Request, status: int) -> str:
    """The registry error code for C{status}, given what C{request} asked for."""
    code = getattr(request, "registry_code", None)
    if code:
        return code
    if status == 404:
        return _UNKNOWN.get(getattr(request, "registry_kind", None), "NAME_UNKNOWN")
    return _CODES.get(status, "UNAVAILABLE" if status >= 500 else "UNSUPPORTED")


def registry_error(request: Request, status: int, message: str) -> None:
    """Answer with the registry's JSON error form (an L{ErrorRenderer})."""
    body = json.dumps({"errors": [{"code": error_code(request, status), "message": message,
                                   "detail": None}]}).encode() + b"\n"
    for name in _ARTIFACT_HEADERS:
        request.responseHeaders.removeHeader(name)
    request.setResponseCode(status)
    request.setHeader(*API_VERSION)
    request.setHeader(b"content-type", b"application/json; charset=utf-8")
    request.setHeader(b"content-length", str(len(body)).encode())
    request.setHeader(b"cache-control", b"no-store")
    request.write(body)
    request.finish()


def reject(responder: Responder, status: int, code: str, message: str) -> None:
    """An error with a code of our choosing (NAME_INVALID, DIGEST_INVALID, …)."""
    responder.request.registry_code = code  # type: ignore[attr-defined]
    responder.error(status, message)


class RegistryApi(Resource):
    """``/v2/``: the version check and the routing to registry backends (module doc)."""

    isLeaf = True
    SHARED_KEY = "registry /v2/"

    def __init__(self) -> None:
        super().__init__()
        self._backends: dict[tuple[bytes, ...], Any] = {}
        self._longest = 0
        self.mirror: Any = None

    @classmethod
    def of(cls, context: Any) -> "RegistryApi":
        """The one instance among the backends built with C{context}."""
        return context.shared.setdefault(cls.SHARED_KEY, cls())

    def add(self, backend: Any, mirror_key: str = "mirror") -> None:
        """Route C{backend}'s prefix (and, if it is the mirror, unprefixed names) to it."""
        if backend.mirror:
            if self.mirror is not None:
                raise ConfigError(f"{mirror_key}: only one registry backend can be the mirror; "
                                  f"{self.mirror.name} already is")
            self.mirror = backend
        segments = tuple(s.encode() for s in backend.prefix.strip("/").split("/"))
        self._backends[segments] = backend
        self._longest = max(self._longest, len(segments))

    def route(self, postpath: list[bytes]) -> tuple[Any, int]:
        """The backend for a path below ``/v2/`` and how many segments name it."""
        for n in range(min(self._longest, len(postpath) - 1), 0, -1):
            backend = self._backends.get(tuple(postpath[:n]))
            if backend is not None:
                return backend, n
        return self.mirror, 0

    def render(self, request: Request) -> Any:
        request.setHeader(*API_VERSION)
        postpath = request.postpath or []
        if postpath in ([], [b""]):
            return self._version_check(request)
        backend, used = self.route(postpath)
        if backend is None:
            reject(Responder(request, registry_error), 404, "NAME_UNKNOWN",
                   "no registry is proxied here: ask for /v2/<prefix>/<name>/…")
            return NOT_DONE_YET
        request.prepath = (request.prepath or []) + postpath[:used]
        request.postpath = postpath[used:]
        return dispatch(backend, request, request.postpath)

    def _version_check(self, request: Request) -> Any:
        if request.method not in (b"GET", b"HEAD"):
            request.setHeader(b"allow", b"GET, HEAD")
            registry_error(request, 405, "this is a read-only registry cache")
            return NOT_DONE_YET
        request.setHeader(b"content-type", b"application/json; charset=utf-8")
        request.setHeader(b"cache-control", b"no-store")
        return b"{}"
