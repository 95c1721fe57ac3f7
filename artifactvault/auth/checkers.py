# -*- test-case-name: tests.test_auth_checkers -*-
"""
Client credentials checked the C{twisted.cred} way: a L{Portal} over a
L{Realm} (which makes a L{Principal} of a user name, with its groups) and
credential checkers, one per kind of credential:

- L{IUsernamePassword} (HTTP Basic): the password is one of the user's
  tokens (L{TokenChecker}: pip, npm's ``_auth`` and ``docker login`` speak
  only Basic, so a token works as a password), else the user's bcrypt hash
  (L{HtpasswdChecker}), tokens first because they are cheap;
- L{IBearerToken} (``Authorization: Bearer``): one of the tokens;
- L{IAnonymous} (no credentials): the anonymous principal, which only an
  ``anonymous`` backend admits.

bcrypt is slow on purpose (tens of milliseconds at cost 10): the check runs
in a thread (C{run_blocking}), never on the reactor, and a user not in the
file is checked against a dummy hash of the same cost so the time taken
does not say which user names exist. Tokens are compared with
C{hmac.compare_digest}, each given token against every token, so the time
taken does not depend on how much of it matched. The gate keeps the
credentials it saw verified in a L{VerifiedCache}, so a client that sends
them with every request (all do) pays for bcrypt once per
L{VerifiedCache.ttl}.
"""

from __future__ import annotations

import hashlib
import hmac
import os
from collections import OrderedDict
from typing import Any, Callable

import bcrypt
from twisted.cred.checkers import ANONYMOUS as ANONYMOUS_ID, AllowAnonymousAccess, ICredentialsChecker
from twisted.cred.credentials import IAnonymous, IUsernamePassword
from twisted.cred.error import UnauthorizedLogin
from twisted.cred.portal import IRealm, Portal
from twisted.internet.defer import Deferred, fail, succeed
from zope.interface import Attribute, Interface, implementer

from artifactvault.auth.access import ANONYMOUS, AuthSettings, IPrincipal, Principal


class IBearerToken(Interface):
    """A bearer token (RFC 6750) as the client sent it."""

    token = Attribute("The token, bytes.")


@implementer(IBearerToken)
class BearerToken:
    def __init__(self, token: bytes):
        self.token = token

    def __repr__(self) -> str:
        return "BearerToken(<hidden>)"


@implementer(ICredentialsChecker)
class TokenChecker:
    """The tokens of a tokens file, as bearer tokens and as Basic passwords."""

    credentialInterfaces = (IBearerToken, IUsernamePassword)

    def __init__(self, tokens: list[tuple[str, bytes]]):
        self._tokens = list(tokens)

    def requestAvatarId(self, credentials: Any) -> Deferred:
        user = None
        if IBearerToken.providedBy(credentials):
            for owner, token in self._tokens:  # (every one compared: no early exit)
                if hmac.compare_digest(token, credentials.token):
                    user = owner
        else:
            name = _text(credentials.username)
            for owner, token in self._tokens:
                if hmac.compare_digest(token, credentials.password) and owner == name:
                    user = owner
        if user is None:
            return fail(UnauthorizedLogin("no such token"))
        return succeed(user.encode("utf-8"))


@implementer(ICredentialsChecker)
class HtpasswdChecker:
    """Basic credentials against an htpasswd file's bcrypt hashes, checked in a thread."""

    credentialInterfaces = (IUsernamePassword,)

    def __init__(self, users: dict[str, bytes], run_blocking: Callable[..., Deferred]):
        self._users = dict(users)
        self._run = run_blocking
        cost = max((int(h[4:6]) for h in self._users.values()), default=10)
        # (a valid hash nobody's password matches, of the file's usual cost)
        self._dummy = b"$2b$%02d$" % cost + b"." * 53

    def requestAvatarId(self, credentials: Any) -> Deferred:
        name = _text(credentials.username)
        hashed = self._users.get(name) if name is not None else None
        password = credentials.password
        if b"\x00" in password:  # (bcrypt refuses NUL; no htpasswd password has one)
            return fail(UnauthorizedLogin("wrong password"))

        def check() -> bool:
            return bcrypt.checkpw(password, hashed or self._dummy) and hashed is not None

        def decided(ok: bool) -> bytes:
            if not ok:
                raise UnauthorizedLogin("wrong password" if hashed is not None else "no such user")
            return name.encode("utf-8")  # type: ignore[union-attr]

        return self._run(check).addCallback(decided)


@implementer(ICredentialsChecker)
class FirstOf:
    """The first of several checkers (for one kind of credentials) that accepts them."""

    def __init__(self, checkers: list[Any]):
        self.checkers = checkers
        self.credentialInterfaces = tuple({i for c in checkers for i in c.credentialInterfaces})

    def requestAvatarId(self, credentials: Any) -> Deferred:
        usable = [c for c in self.checkers if any(i.providedBy(credentials) for i in c.credentialInterfaces)]
        if not usable:
            return fail(UnauthorizedLogin("no checker for these credentials"))
        d = usable[0].requestAvatarId(credentials)
        for checker in usable[1:]:
            d.addErrback(lambda f, c=checker: f.trap(UnauthorizedLogin) and c.requestAvatarId(credentials))
        return d


@implementer(IRealm)
class Realm:
    """Makes the L{Principal} of a user name: the name and its groups."""

    def __init__(self, settings: AuthSettings):
        self.settings = settings

    def requestAvatar(self, avatarId: Any, mind: Any, *interfaces: Any) -> tuple[Any, Any, Callable[[], None]]:
        if IPrincipal not in interfaces:
            raise NotImplementedError("only IPrincipal avatars are made here")
        if avatarId is ANONYMOUS_ID:
            return IPrincipal, ANONYMOUS, lambda: None
        name = avatarId.decode("utf-8")
        return IPrincipal, Principal(name, self.settings.groups_of(name)), lambda: None


def make_portal(settings: AuthSettings, run_blocking: Callable[..., Deferred]) -> Portal:
    """The portal for the configured files: Basic, Bearer and anonymous logins."""
    checkers: list[Any] = []
    if settings.tokens:
        checkers.append(TokenChecker(settings.tokens))
    if settings.htpasswd:
        checkers.append(HtpasswdChecker(settings.htpasswd, run_blocking))
    return Portal(Realm(settings), [FirstOf(checkers), AllowAnonymousAccess()])


def _text(raw: Any) -> str | None:
    """A user name as text (None if it is not UTF-8)."""
    if isinstance(raw, str):
        return raw
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return None


class VerifiedCache:
    """
    Credentials lately verified, and whose they are: at most L{size}, each
    for L{ttl} seconds. Kept by a keyed hash of the credentials (a secret
    made at start), never the credentials themselves; only successes are
    kept, so a wrong password is always checked (and counted).
    """

    def __init__(self, clock: Any, ttl: float = 300.0, size: int = 1024):
        self.clock = clock
        self.ttl = ttl
        self.size = size
        self._key = os.urandom(32)
        self._entries: OrderedDict[bytes, tuple[float, Principal]] = OrderedDict()

    def key(self, credentials: Any) -> bytes:
        if IBearerToken.providedBy(credentials):
            material = b"bearer\x00" + credentials.token
        else:
            username = credentials.username if isinstance(credentials.username, bytes) \
                else credentials.username.encode("utf-8")
            material = b"basic\x00" + username + b"\x00" + credentials.password
        return hmac.new(self._key, material, hashlib.sha256).digest()

    def get(self, credentials: Any) -> Principal | None:
        if IAnonymous.providedBy(credentials):
            return None
        key = self.key(credentials)
        found = self._entries.get(key)
        if found is None:
            return None
        until, principal = found
        if until <= self.clock.seconds():
            del self._entries[key]
            return None
        self._entries.move_to_end(key)
        return principal

    def put(self, credentials: Any, principal: Principal) -> None:
        if IAnonymous.providedBy(credentials) or principal.anonymous:
            return
        self._entries[self.key(credentials)] = (self.clock.seconds() + self.ttl, principal)
        while len(self._entries) > self.size:
            self._entries.popitem(last=False)
