# -*- test-case-name: tests.test_registry_auth -*-
"""
Token auth with an upstream registry, as Docker Hub does it.

A registry answers ``401`` with ``WWW-Authenticate: Bearer realm=…,service=…,
scope=…``; the client gets a token from the realm (anonymously, or with Basic
credentials) and retries with ``Authorization: Bearer <token>``. L{TokenAuth}
is the L{artifactvault.upstream.Upstream}'s C{auth} object that does this:
tokens are cached per scope until shortly before they expire, one token
request per scope is in flight at a time, and once the realm is known a new
repository's token is fetched before its first request (no 401 round trip).

Credentials go to the token realm only, and only over https or to the
registry's own host; tokens go to the registry's origin only (the
L{Upstream} never sends auth headers across a redirect to a CDN). Neither is
ever logged.

Every wait has a deadline: the token request and its answer each within the
backend's C{timeout}, and a token request that is still running after both
have passed is given up (L{SingleFlight}'s guard), so that a stalled realm
never holds a scope's key. Expired tokens are dropped as new ones come, and
at most L{MAX_TOKENS} are kept.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode, urlsplit

from twisted.internet.defer import Deferred, succeed
from twisted.logger import Logger
from zope.interface import implementer

from artifactvault import logs
from artifactvault.singleflight import SingleFlight
from artifactvault.upstream import (IUpstreamAuth, StaticAuth, Upstream, UpstreamError, discard,
                                    host_of, loggable, origin)

_log = Logger(observer=logs.observer)

#: A token is used until this share of its lifetime is left (at least 5 s early).
EXPIRY_MARGIN = 0.1
#: Lifetime of a token whose answer has no ``expires_in`` (the spec's default).
DEFAULT_EXPIRES_IN = 60
#: A token answer larger than this is refused.
MAX_TOKEN_ANSWER = 1024 * 1024
#: Tokens kept at most (one per repository pulled); the oldest go first.
MAX_TOKENS = 1000

_TOKEN = r"[!#$%&'*+.^_`|~0-9A-Za-z-]+"
_PARAM = re.compile(r'\s*(' + _TOKEN + r')\s*=\s*("(?:[^"\\]|\\.)*"|[^,\s"]*)\s*(?:,|$)')
_SCHEME = re.compile(r"\s*(" + _TOKEN + r")(?:\s+|$)")


def parse_challenge(value: str) -> tuple[str, dict[str, str]] | None:
    """
    One ``WWW-Authenticate`` value as (lower-case scheme, params), params
    unquoted: ``Bearer realm="https://a/token",scope="repository:x:pull,push"``
    → ``("bearer", {"realm": "https://a/token", "scope": "repository:x:pull,push"})``.
    None if it cannot be read.
    """
    m = _SCHEME.match(value)
    if not m:
        return None
    params: dict[str, str] = {}
    pos = m.end()
    while pos < len(value):
        p = _PARAM.match(value, pos)
        if not p or p.end() == pos:
            return None
        raw = p.group(2)
        if raw.startswith('"'):
            raw = re.sub(r"\\(.)", r"\1", raw[1:-1])
        params[p.group(1).lower()] = raw
        pos = p.end()
    return m.group(1).lower(), params


def bearer_challenge(response: Any) -> dict[str, str] | None:
    """
    The params of the first Bearer challenge in C{response} whose realm is an
    http(s) URL, if any (a realm we could not ask leaves the 401 standing).
    """
    for raw in response.headers.getRawHeaders(b"www-authenticate", []):
        parsed = parse_challenge(raw.decode("latin-1"))
        if parsed and parsed[0] == "bearer" and _fetchable(parsed[1].get("realm", "")):
            return parsed[1]
    return None


def _fetchable(url: str) -> bool:
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 (raises ValueError for a bad port)
    except ValueError:
        return False
    return parts.scheme in ("http", "https") and bool(parts.hostname)


_API_PATH = re.compile(r"^/v2/(.+?)/(?:manifests|blobs|tags)/[^/]*(?:/[^/]*)?$")


def scope_for(url: str) -> str | None:
    """The pull scope a registry API URL needs: ``repository:<name>:pull``."""
    m = _API_PATH.match(urlsplit(url).path)
    return f"repository:{m.group(1)}:pull" if m else None


@dataclass
class _Token:
    value: str
    use_until: float


@implementer(IUpstreamAuth)
class TokenAuth:
    """The Bearer token flow against one upstream registry (see the module doc)."""

    def __init__(self, registry_url: str, client: Any, reactor: Any,
                 username: str | None = None, password: str | None = None,
                 timeout: float = 30.0):
        self._origin = origin(registry_url)
        self._host = self._origin[1]
        self._client = client
        self._reactor = reactor
        self._username = username
        self._password = password
        self._timeout = timeout
        self._realm: tuple[str, str | None] | None = None  # (realm, service) last challenged
        self._tokens: dict[str, _Token] = {}
        # (the guard: the token request's own deadline, then its answer's)
        self._pending = SingleFlight(reactor, timeout=2 * timeout + 1)
        self._warned: set[str] = set()

    def __repr__(self) -> str:  # never show a secret
        return f"TokenAuth({self._host!r})"

    # -- the Upstream's auth interface --------------------------------------

    def headers_for(self, url: str) -> Deferred | dict[str, str]:
        if origin(url) != self._origin:
            return {}
        scope = scope_for(url)
        if scope is None:
            return {}
        token = self._valid(scope)
        if token is not None:
            return _bearer(token)
        if self._realm is None:
            return {}  # the first request finds out where tokens come from
        return self._token(scope, scope).addCallback(lambda t: _bearer(t) if t else {})

    def challenged(self, url: str, response: Any) -> Deferred:
        """A 401 for C{url}: get a token for the scope it asks for; True if we got one."""
        params = bearer_challenge(response)
        if params is None or origin(url) != self._origin:
            return succeed(False)
        self._realm = (params["realm"], params.get("service"))
        key = scope_for(url) or params.get("scope") or ""
        self._tokens.pop(key, None)  # the one we sent (if any) was not good enough
        return self._token(key, params.get("scope") or key).addCallback(bool)

    # -- tokens ---------------------------------------------------------------

    def _valid(self, key: str) -> str | None:
        token = self._tokens.get(key)
        if token is None or self._reactor.seconds() >= token.use_until:
            return None
        return token.value

    def _token(self, key: str, scope: str) -> Deferred:
        """Fires with a token for C{scope} (cached under C{key}), or None; one request per key."""
        return self._pending.run(key, lambda: Deferred.fromCoroutine(self._fetch(key, scope)))

    async def _fetch(self, key: str, scope: str) -> str | None:
        assert self._realm is not None
        realm, service = self._realm
        query = ([("service", service)] if service else []) + \
            [("scope", s) for s in scope.split() if s]
        url = realm + ("&" if "?" in realm else "?") + urlencode(query)
        auth = None
        if self._username is not None:
            if self._may_send_credentials(realm):
                auth = StaticAuth(realm, username=self._username, password=self._password)
            elif realm not in self._warned:
                self._warned.add(realm)
                _log.warn("not sending credentials to token realm {realm}: neither https nor the "
                          "registry's own host; asking for an anonymous token", realm=loggable(realm))
        upstream = Upstream(self._client, self._reactor, auth=auth, timeout=self._timeout)
        started = self._reactor.seconds()
        response = await upstream.request("GET", url)
        if response.code != 200:
            discard(response)
            _log.warn("token realm {realm} refused a token for {scope}: {code}",
                      realm=loggable(realm), scope=scope, code=response.code)
            return None
        body = await upstream.read_small(response, MAX_TOKEN_ANSWER,
                                         f"the token answer of {host_of(realm)}")
        try:
            answer = json.loads(body)
            token = answer.get("token") or answer.get("access_token")
            expires_in = int(answer.get("expires_in") or DEFAULT_EXPIRES_IN)
        except (ValueError, TypeError, AttributeError):
            token = None
        if not isinstance(token, str) or not token:
            raise UpstreamError(f"token realm {host_of(realm)} sent no token")
        lifetime = max(expires_in - max(5.0, expires_in * EXPIRY_MARGIN), 0.0)
        self._keep(key, _Token(token, started + lifetime))
        _log.debug("got a token for {scope}, valid {seconds} s", scope=scope, seconds=expires_in)
        return token

    def _keep(self, key: str, token: _Token) -> None:
        """Remember C{token}, dropping expired ones and, beyond L{MAX_TOKENS}, the oldest."""
        now = self._reactor.seconds()
        for old in [k for k, t in self._tokens.items() if t.use_until <= now]:
            del self._tokens[old]
        self._tokens.pop(key, None)  # (re-inserted: the newest)
        while len(self._tokens) >= MAX_TOKENS:
            del self._tokens[next(iter(self._tokens))]
        self._tokens[key] = token

    def _may_send_credentials(self, realm: str) -> bool:
        parts = urlsplit(realm)
        return parts.scheme == "https" or (parts.hostname or "").lower() == self._host


def _bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}
