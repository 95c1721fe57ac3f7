"""
Tests for L{artifactvault.auth.checkers}: the twisted.cred checkers, realm
and portal, and the verified-credentials cache. bcrypt runs in a
L{ManualPool}, so each test sees that nothing of it happens on the
reactor's thread.
"""

from __future__ import annotations

import bcrypt
from twisted.cred.checkers import ICredentialsChecker
from twisted.cred.credentials import Anonymous, UsernamePassword
from twisted.cred.error import UnauthorizedLogin
from twisted.cred.portal import IRealm
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from artifactvault.auth.access import ANONYMOUS, AuthSettings, IPrincipal, Principal
from artifactvault.auth.checkers import (BearerToken, FirstOf, HtpasswdChecker, IBearerToken, Realm, TokenChecker,
                                         VerifiedCache, make_portal)
from tests.fakes import ManualPool

HASH = bcrypt.hashpw(b"secret", bcrypt.gensalt(4))
TOKEN = b"0123456789abcdef0123"


def settings() -> AuthSettings:
    return AuthSettings(htpasswd={"alice": HASH, "bob": HASH}, tokens=[("ci", TOKEN), ("bob", TOKEN + b"b")],
                        groups={"builders": frozenset({"bob", "ci"})}, configured=True)


class CheckerTests(SynchronousTestCase):

    def setUp(self) -> None:
        self.pool = ManualPool()

    def test_interfaces(self) -> None:
        """Each checker is an ICredentialsChecker, the realm an IRealm, credentials IBearerToken."""
        verifyObject(ICredentialsChecker, TokenChecker([]))
        verifyObject(ICredentialsChecker, HtpasswdChecker({}, self.pool.run))
        verifyObject(ICredentialsChecker, FirstOf([TokenChecker([])]))
        verifyObject(IRealm, Realm(settings()))
        verifyObject(IBearerToken, BearerToken(b"x"))
        verifyObject(IPrincipal, Principal("a"))

    def test_bcrypt_in_a_thread(self) -> None:
        """The bcrypt check waits for the pool: nothing is decided on the calling thread."""
        d = HtpasswdChecker({"alice": HASH}, self.pool.run).requestAvatarId(UsernamePassword(b"alice", b"secret"))
        self.assertNoResult(d)
        self.assertEqual(self.pool.names(), ["check"])
        self.pool.run_all()
        self.assertEqual(self.successResultOf(d), b"alice")

    def test_wrong_password_and_unknown_user(self) -> None:
        """A wrong password and an unknown user both fail, both after a bcrypt check (same time taken)."""
        checker = HtpasswdChecker({"alice": HASH}, self.pool.run)
        for user, password in [(b"alice", b"wrong"), (b"mallory", b"secret"), (b"\xff", b"secret")]:
            d = checker.requestAvatarId(UsernamePassword(user, password))
            self.assertEqual(self.pool.run_all(), ["check"])
            self.failureResultOf(d, UnauthorizedLogin)

    def test_nul_in_password(self) -> None:
        """A NUL in the password (bcrypt refuses it) is a wrong password, not an error."""
        d = HtpasswdChecker({"alice": HASH}, self.pool.run).requestAvatarId(UsernamePassword(b"alice", b"se\x00"))
        self.failureResultOf(d, UnauthorizedLogin)

    def test_tokens(self) -> None:
        """A bearer token names its user; as a Basic password it counts only for its own user."""
        checker = TokenChecker([("ci", TOKEN), ("bob", TOKEN + b"b")])
        self.assertEqual(self.successResultOf(checker.requestAvatarId(BearerToken(TOKEN + b"b"))), b"bob")
        self.failureResultOf(checker.requestAvatarId(BearerToken(TOKEN[:-1])), UnauthorizedLogin)
        self.assertEqual(self.successResultOf(checker.requestAvatarId(UsernamePassword(b"ci", TOKEN))), b"ci")
        self.failureResultOf(checker.requestAvatarId(UsernamePassword(b"bob", TOKEN)), UnauthorizedLogin)

    def test_portal(self) -> None:
        """Basic (token or password), Bearer and anonymous logins give principals with their groups."""
        portal = make_portal(settings(), self.pool.run)

        def login(credentials: object) -> Principal:
            d = portal.login(credentials, None, IPrincipal)
            self.pool.run_all()
            return self.successResultOf(d)[1]

        self.assertEqual(login(UsernamePassword(b"alice", b"secret")), Principal("alice"))
        self.assertEqual(login(UsernamePassword(b"bob", TOKEN + b"b")), Principal("bob", frozenset({"builders"})))
        self.assertEqual(self.pool.names(), [], "a token is checked without bcrypt")
        self.assertEqual(login(UsernamePassword(b"bob", b"secret")), Principal("bob", frozenset({"builders"})))
        self.assertEqual(login(BearerToken(TOKEN)), Principal("ci", frozenset({"builders"})))
        self.assertIs(login(Anonymous()), ANONYMOUS)
        d = portal.login(UsernamePassword(b"alice", b"nope"), None, IPrincipal)
        self.pool.run_all()
        self.failureResultOf(d, UnauthorizedLogin)

    def test_htpasswd_only(self) -> None:
        """With no tokens file a bearer token is a failed login, not an error."""
        portal = make_portal(AuthSettings(htpasswd={"alice": HASH}, configured=True), self.pool.run)
        from twisted.cred.error import LoginFailed
        self.failureResultOf(portal.login(BearerToken(TOKEN), None, IPrincipal), LoginFailed)


class VerifiedCacheTests(SynchronousTestCase):

    def test_ttl_and_size(self) -> None:
        """Kept for its ttl, at most size entries (the least recently used go), never anonymous."""
        clock = Clock()
        cache = VerifiedCache(clock, ttl=10, size=2)
        a, b, c = (UsernamePassword(n, b"pw") for n in (b"a", b"b", b"c"))
        cache.put(a, Principal("a"))
        cache.put(b, Principal("b"))
        self.assertEqual(cache.get(a), Principal("a"))
        cache.put(c, Principal("c"))  # b is the least recently used
        self.assertIsNone(cache.get(b))
        self.assertEqual(cache.get(c), Principal("c"))
        self.assertIsNone(cache.get(UsernamePassword(b"a", b"other")))
        clock.advance(10)
        self.assertIsNone(cache.get(a))
        cache.put(Anonymous(), ANONYMOUS)
        self.assertIsNone(cache.get(Anonymous()))

    def test_no_secrets_kept(self) -> None:
        """What is kept is a keyed hash: neither the password nor the token is in it."""
        cache = VerifiedCache(Clock())
        cache.put(UsernamePassword(b"alice", b"hunter2hunter2"), Principal("alice"))
        cache.put(BearerToken(TOKEN), Principal("ci"))
        kept = b"".join(cache._entries)
        self.assertNotIn(b"hunter2", kept)
        self.assertNotIn(TOKEN, kept)
        self.assertEqual(cache.get(BearerToken(TOKEN)), Principal("ci"))
