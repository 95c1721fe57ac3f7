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
registry's JSON (``{"errors": [{"code": …, "message": …, "detail": …}]}``)
with codes from the spec's list only (L{SPEC_CODES}) on every 4xx. An
upstream's own 4xx error keeps its words (code, message, detail); an
upstream 401/403 is our misconfiguration, not the client's: a 502 that
names the upstream (L{registry_error}).
"""

from __future__ import annotations

import json
from typing import Any

from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request

from artifactvault.auth.access import AUTHENTICATED
from artifactvault.auth.gate import gate_of, guard
from artifactvault.backends.base import dispatch
from artifactvault.config import ConfigError
from artifactvault.serve import Responder, send_whole
from artifactvault.upstream import UpstreamStatus

API_VERSION = (b"docker-distribution-api-version", b"registry/2.0")

#: The codes the OCI distribution spec allows in a 4xx answer (§Error Codes).
SPEC_CODES = frozenset({
    "BLOB_UNKNOWN", "BLOB_UPLOAD_INVALID", "BLOB_UPLOAD_UNKNOWN", "DIGEST_INVALID",
    "MANIFEST_BLOB_UNKNOWN", "MANIFEST_INVALID", "MANIFEST_UNKNOWN", "NAME_INVALID", "NAME_UNKNOWN",
    "SIZE_INVALID", "UNAUTHORIZED", "DENIED", "UNSUPPORTED", "TOOMANYREQUESTS"})
#: The error code for a status when the backend named none for the request.
#: (5xx are not the spec's business: ``UNAVAILABLE`` and ``UNKNOWN`` are
#: distribution's own codes for them.)
_CODES = {400: "UNSUPPORTED", 401: "UNAUTHORIZED", 403: "DENIED", 405: "UNSUPPORTED",
          429: "TOOMANYREQUESTS", 500: "UNKNOWN"}
#: The code of a 404, by what was asked for (``request.registry_kind``).
_UNKNOWN = {"manifest": "MANIFEST_UNKNOWN", "blob": "BLOB_UNKNOWN"}
#: The largest upstream error list passed on.
_MAX_ERRORS = 10
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


def upstream_errors(error: UpstreamStatus) -> list[dict[str, Any]]:
    """
    The errors of an upstream's JSON error answer (C{error.body}), each
    with a C{code} string and its C{message} and C{detail} if it has them
    (nothing else); [] if it had none we can read.
    """
    try:
        doc = json.loads(error.body or b"")
    except ValueError:
        return []
    found = doc.get("errors") if isinstance(doc, dict) else None
    if not isinstance(found, list):
        return []
    return [{k: e[k] for k in ("code", "message", "detail") if k in e}
            for e in found[:_MAX_ERRORS] if isinstance(e, dict) and isinstance(e.get("code"), str)]


def _errors_for(request: Request, status: int, message: str) -> tuple[int, list[dict[str, Any]]]:
    """The status and the errors of an answer: our own, or the upstream's (see the module doc)."""
    cause = getattr(request, "error_cause", None)
    ours = error_code(request, status)
    if not isinstance(cause, UpstreamStatus) or not 400 <= cause.code < 500:
        return status, [{"code": ours, "message": message, "detail": None}]
    theirs = upstream_errors(cause)
    if cause.code in (401, 403):
        code = "UNAUTHORIZED" if cause.code == 401 else "DENIED"
        host = cause.host or "the upstream"
        return 502, [{"code": code,
                      "message": f"upstream {host} refused the vault ({cause.code}): "
                                 f"the backend's credentials are missing or wrong",
                      "detail": {"upstream": host, "status": cause.code, "errors": theirs}}]
    if not theirs:
        return status, [{"code": ours, "message": message, "detail": None}]
    return status, [{**e, "code": e["code"] if e["code"] in SPEC_CODES else ours} for e in theirs]


def registry_error(request: Request, status: int, message: str) -> None:
    """
    Answer with the registry's JSON error form (an L{ErrorRenderer}): the
    upstream's own errors for its 4xx (C{request.error_cause}: codes outside
    the spec's list replaced by ours), a 502 for its 401/403, else ours.
    """
    status, errors = _errors_for(request, status, message)
    body = json.dumps({"errors": errors}).encode() + b"\n"
    for name in _ARTIFACT_HEADERS:
        request.responseHeaders.removeHeader(name)
    request.setHeader(*API_VERSION)
    send_whole(request, status, b"application/json; charset=utf-8", body)
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
        """
        ``/v2/``: 200, or, when any registry backend needs credentials and
        the request has none that are right, a 401 that asks for Basic ones
        (docker and skopeo send credentials only after this 401).
        """
        gate = gate_of(request)
        access = None
        if gate is not None and not all(gate.access_of(b).open for b in self._backends.values()):
            access = AUTHENTICATED
        return guard(request, access, lambda: self._version(request),
                     lambda verdict: Responder(request, registry_error).error(
                         verdict.status, verdict.message, headers=verdict.headers))

    def _version(self, request: Request) -> Any:
        if request.method not in (b"GET", b"HEAD"):
            request.setHeader(b"allow", b"GET, HEAD")
            registry_error(request, 405, "this is a read-only registry cache")
            return NOT_DONE_YET
        request.setHeader(b"content-type", b"application/json; charset=utf-8")
        request.setHeader(b"cache-control", b"no-store")
        return b"{}"
