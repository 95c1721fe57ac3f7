# -*- test-case-name: tests.test_auth_gate -*-
"""
The HTTP side of client authentication: which credentials a request
carries, whether the backend it asks for admits them, and the answer when
it does not.

- No (usable) credentials where a backend needs them → ``401`` with
  ``WWW-Authenticate: Basic realm="…"`` (pip, curl, skopeo and docker send
  their credentials only once a 401 asks for them; a Bearer challenge would
  send docker off to look for a token server). The registry's ``/v2/``
  asks the same way when any registry backend needs credentials.
- Wrong credentials → ``401`` (never "no such user" in the answer); the
  failure is logged with the client's address and the user name, never the
  secret.
- Right credentials of a user the backend's list does not name → ``403``.
- An address with L{AuthSettings.max_failures} failed logins within
  L{AuthSettings.failure_window} → ``429`` with ``Retry-After`` for every
  request whose credentials are not among those already verified, until
  its oldest failure in the window is older than the window: a password
  guesser is stopped (and no longer costs a bcrypt check each time) while
  the clients behind the same address that log in right go on.
- An ``anonymous`` backend does not look at credentials at all.
- A request to the vault as an HTTP proxy (an absolute URI: apt with
  ``Acquire::http::Proxy "http://user:password@vault:8080"``) carries its
  credentials in ``Proxy-Authorization`` and is asked for them with a
  ``407`` and ``Proxy-Authenticate``, as a proxy asks (RFC 9110 11.7).

When auth is configured, the client's ``Authorization`` (and
``Proxy-Authorization``) is the vault's: it is taken off the request before a backend sees it, so that no backend can
pass it upstream (a backend's own credentials are its own configuration).
"""

from __future__ import annotations

import base64
import binascii
import math
from collections import OrderedDict, deque
from dataclasses import dataclass, field
from typing import Any, Callable

from twisted.cred.credentials import Anonymous, UsernamePassword
from twisted.cred.error import LoginFailed
from twisted.internet.defer import Deferred, succeed
from twisted.logger import Logger
from twisted.web.resource import IResource, Resource
from twisted.web.server import NOT_DONE_YET, Request

from artifactvault import logs
from artifactvault.auth.access import ANONYMOUS, OPEN, Access, AuthSettings, IPrincipal, Principal
from artifactvault.auth.checkers import BearerToken, VerifiedCache
from artifactvault.serve import plain_error

_log = Logger(observer=logs.observer)

#: The longest Authorization value looked at (a token file's tokens and a
#: Basic user:password are far shorter).
MAX_AUTHORIZATION = 4096
#: Addresses whose failures are remembered at most (the oldest forgotten first).
MAX_ADDRESSES = 10000


class Malformed(Exception):
    """An Authorization header that is not Basic or Bearer credentials as RFC 7617/6750 write them."""


def parse_authorization(value: bytes | None) -> Any:
    """
    The credentials an ``Authorization`` value carries: L{UsernamePassword}
    (Basic), L{BearerToken} (Bearer), or L{Anonymous} for none or another
    scheme (Digest, Negotiate: not spoken here, so the 401 asks for Basic).
    L{Malformed} for Basic or Bearer credentials that cannot be read.
    """
    if value is None:
        return Anonymous()
    value = value.strip(b" \t")
    scheme, _, rest = value.partition(b" ")
    scheme = scheme.lower()
    rest = rest.strip(b" \t")
    if scheme not in (b"basic", b"bearer"):
        return Anonymous()
    if len(value) > MAX_AUTHORIZATION:
        raise Malformed("the Authorization header is too long")
    if scheme == b"bearer":
        if not rest or any(c <= 0x20 or c >= 0x7f for c in rest):
            raise Malformed("a Bearer token must be one word of visible ASCII")
        return BearerToken(rest)
    try:
        decoded = base64.b64decode(rest, validate=True)
    except (binascii.Error, ValueError):
        raise Malformed("Basic credentials must be base64") from None
    user, sep, password = decoded.partition(b":")
    if not sep or not user:
        raise Malformed("Basic credentials must be user:password")
    return UsernamePassword(user, password)


class FailureLimiter:
    """Failed logins per client address within a window (see the module doc)."""

    def __init__(self, clock: Any, max_failures: int, window: float):
        self.clock = clock
        self.max_failures = max_failures
        self.window = window
        self._failures: OrderedDict[str, deque[float]] = OrderedDict()

    def _recent(self, address: str) -> deque[float] | None:
        times = self._failures.get(address)
        if times is None:
            return None
        now = self.clock.seconds()
        while times and times[0] <= now - self.window:
            times.popleft()
        if not times:
            del self._failures[address]
            return None
        return times

    def blocked(self, address: str) -> float | None:
        """Seconds until C{address} may try again, or None if it may now."""
        times = self._recent(address)
        if times is None or len(times) < self.max_failures:
            return None
        return max(0.0, times[-self.max_failures] + self.window - self.clock.seconds())

    def failed(self, address: str) -> None:
        times = self._recent(address)
        if times is None:
            times = self._failures[address] = deque(maxlen=self.max_failures)
        times.append(self.clock.seconds())
        self._failures.move_to_end(address)
        while len(self._failures) > MAX_ADDRESSES:
            self._failures.popitem(last=False)


@dataclass
class Verdict:
    """What the gate decided: the principal let in, or the answer refusing it."""

    principal: Principal | None = None
    status: int = 200
    message: str = ""
    headers: dict[str, str] = field(default_factory=dict)

    @property
    def admitted(self) -> bool:
        return self.principal is not None


class Gate:
    """
    The daemon's one gate: the portal, the verified credentials, the failure
    counts, and each backend's L{Access}.

    @ivar failures: Failed logins (wrong or malformed credentials) since start.
    @ivar limited: Requests answered 429 by the failure limit since start.
    @ivar denied: Requests of a user a backend's list does not name (403) since start.
    """

    failures = limited = denied = 0

    def __init__(self, settings: AuthSettings, portal: Any, clock: Any):
        self.settings = settings
        self.portal = portal
        self.clock = clock
        self.cache = VerifiedCache(clock)
        self.limiter = FailureLimiter(clock, settings.max_failures, settings.failure_window)
        self._access: dict[int, Access] = {}
        self.challenge = f'Basic realm="{settings.realm}", charset="UTF-8"'

    def renew(self, settings: AuthSettings, portal: Any) -> None:
        """
        Take new credentials (their files changed: L{artifactvault.auth.reload}),
        and forget every login verified with the old ones: a revoked token
        or password stops working at once, not when its verification expires.
        """
        self.settings = settings
        self.portal = portal
        self.cache = VerifiedCache(self.clock)

    def set_access(self, backend: Any, access: Access) -> None:
        self._access[id(backend)] = access

    def access_of(self, backend: Any) -> Access:
        """A backend's access (C{anonymous} for one the gate was not told of)."""
        return self._access.get(id(backend), OPEN)

    def admit(self, request: Request, access: Access) -> Deferred:
        """
        Decide whether C{request} may read what C{access} guards; fires with
        a L{Verdict} (never fails). The client's Authorization is removed
        from the request either way.
        """
        proxied = getattr(request, "proxied", False)
        raw = request.getHeader(b"proxy-authorization" if proxied else b"authorization")
        request.requestHeaders.removeHeader(b"authorization")
        request.requestHeaders.removeHeader(b"proxy-authorization")
        if access.open:
            return succeed(Verdict(ANONYMOUS))
        peer = _peer(request)
        try:
            credentials = parse_authorization(raw)
        except Malformed as e:
            self._failed(request, peer, None, str(e))
            return succeed(self._refusal(request, f"authentication failed: {e}"))
        known = self.cache.get(credentials)
        if known is not None:
            return succeed(self._decide(request, access, known))
        user = _user(credentials)
        if user is not None:
            wait = self.limiter.blocked(peer)
            if wait is not None:
                self.limited += 1
                return succeed(Verdict(status=429, message="too many failed logins from this address: "
                                                           "try again later",
                                       headers={"Retry-After": str(max(1, math.ceil(wait)))}))
        cache = self.cache
        d = self.portal.login(credentials, None, IPrincipal)

        def in_(result: tuple[Any, Principal, Any]) -> Verdict:
            principal = result[1]
            # (into the cache of the credentials it was checked against: a check
            # the files changed under (L{renew}) is not remembered past them)
            cache.put(credentials, principal)
            return self._decide(request, access, principal)

        def out(failure: Any) -> Verdict:
            failure.trap(LoginFailed)
            self._failed(request, peer, user, str(failure.value) or "wrong credentials")
            return self._refusal(request, "authentication failed: wrong user name, password or token")

        return d.addCallbacks(in_, out)

    def _decide(self, request: Request, access: Access, principal: Principal) -> Verdict:
        if access.allows(principal):
            request.auth_user = principal.name  # type: ignore[attr-defined]
            return Verdict(principal)
        if principal.anonymous:
            return self._refusal(request, "authentication required")
        request.auth_user = principal.name  # type: ignore[attr-defined]
        self.denied += 1
        return Verdict(status=403, message=f"user {logs.printable(principal.name or '')} may not read this")

    def _refusal(self, request: Request, message: str) -> Verdict:
        """A 401 asking for credentials (a 407 asking for proxy credentials, for a proxy request)."""
        if getattr(request, "proxied", False):
            return Verdict(status=407, message=message, headers={"Proxy-Authenticate": self.challenge})
        return Verdict(status=401, message=message, headers={"WWW-Authenticate": self.challenge})

    def _failed(self, request: Request, peer: str, user: str | None, why: str) -> None:
        self.limiter.failed(peer)
        self.failures += 1
        shown = logs.printable(user[:64]) if user else "-"
        _log.warn("authentication failed for user {user} from {peer}: {why}", user=shown, peer=peer, why=why)


def _peer(request: Request) -> str:
    return str(getattr(request.getClientAddress(), "host", "?"))


def _user(credentials: Any) -> str | None:
    """The user name credentials claim (for the log), or the token's kind."""
    username = getattr(credentials, "username", None)
    if username is not None:
        return username.decode("utf-8", "replace") if isinstance(username, bytes) else username
    if isinstance(credentials, BearerToken):
        return "(bearer token)"
    return None


def gate_of(request: Request) -> Gate | None:
    """The gate of the site C{request} came to (None: no auth configured)."""
    return getattr(getattr(request, "site", None), "gate", None)


def guard(request: Request, access: Access | None, proceed: Callable[[], Any],
          refuse: Callable[[Verdict], None]) -> Any:
    """
    Run C{proceed} (a resource's render: bytes or C{NOT_DONE_YET}) once the
    site's gate admits C{request} to what C{access} guards, else
    C{refuse(verdict)}; returns what C{render} returns. Without a gate (or
    with no C{access}), C{proceed} runs at once. A client that leaves while
    its credentials are checked is not answered.
    """
    gate = gate_of(request)
    if gate is None or access is None:
        return proceed()
    d = gate.admit(request, access)
    now: list[Verdict] = []
    d.addCallback(lambda verdict: now.append(verdict) or verdict)
    if now:  # (decided at once: anonymous, or credentials already verified)
        return _settle(request, now[0], proceed, refuse, at_once=True)
    gone: list[Any] = []
    request.notifyFinish().addBoth(gone.append)

    def decided(verdict: Verdict) -> None:
        if not gone and not request.finished:
            _settle(request, verdict, proceed, refuse, at_once=False)

    def failed(failure: Any) -> None:
        _log.failure("checking the credentials of a request failed", failure)
        decided(Verdict(status=500, message="internal error"))

    d.addCallback(decided).addErrback(failed)
    return NOT_DONE_YET


def _settle(request: Request, verdict: Verdict, proceed: Callable[[], Any],
            refuse: Callable[[Verdict], None], at_once: bool) -> Any:
    """Refuse, or proceed (writing out a body C{proceed} returns after the fact)."""
    if not verdict.admitted:
        refuse(verdict)
        return NOT_DONE_YET
    result = proceed()
    if at_once or result is NOT_DONE_YET:
        return result
    request.write(result)
    request.finish()
    return NOT_DONE_YET


class Guarded(Resource):
    """A page (C{/-/metrics}, C{/-/status}) behind the gate, with the access C{auth.pages} gives it."""

    isLeaf = True

    def __init__(self, page: IResource, access: Access):
        super().__init__()
        self.page = page
        self.access = access

    def render(self, request: Request) -> Any:
        return guard(request, self.access, lambda: self.page.render(request),
                     lambda verdict: plain_refusal(request, verdict))


def plain_refusal(request: Request, verdict: Verdict) -> None:
    """A refusal as one line of text."""
    for name, value in verdict.headers.items():
        request.setHeader(name.encode("latin-1"), value.encode("latin-1"))
    request.error_reason = verdict.message  # type: ignore[attr-defined]
    plain_error(request, verdict.status, verdict.message)
