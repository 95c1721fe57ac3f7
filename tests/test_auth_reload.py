"""
Tests for L{artifactvault.auth.reload}: the credential files read again when
they change, the gate renewed with them (its verified logins forgotten), and
files that do not read leaving the credentials read before in force.
"""

from __future__ import annotations

import base64
import os

import bcrypt
from twisted.cred.credentials import UsernamePassword
from twisted.internet.defer import Deferred, succeed
from twisted.internet.task import Clock
from twisted.logger import formatEvent
from twisted.trial.unittest import SynchronousTestCase

from artifactvault.auth.access import AUTHENTICATED, AuthSettings, Principal, read_credentials
from artifactvault.auth.checkers import BearerToken, make_portal
from artifactvault.auth.gate import Gate
from artifactvault.auth.reload import CredentialFiles
from tests.fakes import log_events

HASH = bcrypt.hashpw(b"secret", bcrypt.gensalt(4)).decode()
TOKEN = "0123456789abcdef0123"
OTHER = "fedcba9876543210fedc"


class _Request:
    """What the gate reads of a request: its headers and peer."""

    def __init__(self, authorization: bytes | None):
        from twisted.web.http_headers import Headers
        self.requestHeaders = Headers({b"authorization": [authorization]} if authorization else {})

    def getHeader(self, name: bytes) -> bytes | None:
        found = self.requestHeaders.getRawHeaders(name)
        return found[0] if found else None

    def getClientAddress(self):  # type: ignore[no-untyped-def]
        from twisted.internet.address import IPv4Address
        return IPv4Address("TCP", "127.0.0.1", 40000)


class CredentialFilesTests(SynchronousTestCase):

    def setUp(self) -> None:
        self.dir = self.mktemp()
        os.makedirs(self.dir)
        self.tokens = os.path.join(self.dir, "tokens")
        self.htpasswd = os.path.join(self.dir, "htpasswd")
        self.write(self.tokens, f"ci:{TOKEN}\n")
        self.write(self.htpasswd, f"alice:{HASH}\n")
        self.settings = AuthSettings(configured=True, source="vault.yml", groups={"team": frozenset({"alice", "ci"})},
                                     htpasswd_file=(self.htpasswd, "auth.htpasswd"),
                                     tokens_file=(self.tokens, "auth.tokens_file"))
        self.settings.htpasswd, self.settings.tokens = read_credentials(self.settings)
        self.taken: list[AuthSettings] = []
        self.files = CredentialFiles(self.settings, self.taken.append)
        self.events = log_events(self, "artifactvault.auth.reload")

    @staticmethod
    def write(path: str, text: str) -> None:
        with open(path, "w") as f:
            f.write(text)

    def logged(self) -> list[str]:
        return [formatEvent(e) for e in self.events]

    def test_unchanged(self) -> None:
        """Files as they were: nothing read again, nothing taken, nothing logged."""
        self.assertFalse(self.files())
        self.assertEqual((self.taken, self.events), ([], []))

    def test_token_revoked_and_added(self) -> None:
        """A tokens file rewritten: the new tokens are taken, the users and groups kept."""
        self.write(self.tokens, f"ci:{OTHER}\n")
        self.assertTrue(self.files())
        [settings] = self.taken
        self.assertEqual(settings.tokens, [("ci", OTHER.encode())])
        self.assertEqual(set(settings.htpasswd), {"alice"})
        self.assertEqual(settings.groups, self.settings.groups)
        self.assertIn("credential files read again: 2 users, 1 tokens", self.logged()[0])
        self.assertFalse(self.files())  # (taken once)

    def test_edited_since_read(self) -> None:
        """A file edited after the settings read it and before the watch began: taken at the first look."""
        self.write(self.tokens, f"ci:{OTHER}\n")
        files = CredentialFiles(self.settings, self.taken.append)
        self.assertTrue(files())
        self.assertEqual(self.taken[0].tokens, [("ci", OTHER.encode())])

    def test_broken_since_read(self) -> None:
        """The same, for an edit that broke the file: logged at the first look, the credentials kept."""
        self.write(self.tokens, "ci:short\n")
        files = CredentialFiles(self.settings, self.taken.append)
        self.assertFalse(files())
        self.assertIn("a token must be at least 16 characters", self.logged()[0])
        self.assertEqual(self.taken, [])

    def test_same_size_same_tick(self) -> None:
        """A second edit that keeps the size and the time stamp is seen too (the contents are compared)."""
        stamp = os.stat(self.tokens).st_mtime_ns
        self.write(self.tokens, f"ci:{OTHER}\n")
        os.utime(self.tokens, ns=(stamp, stamp))
        self.assertTrue(self.files())

    def test_bad_line_keeps_credentials(self) -> None:
        """
        A line that cannot be used: logged once with the file and the line,
        nothing taken; fixed, the file is taken.
        """
        self.write(self.htpasswd, f"alice:{HASH}\nbob:$apr1$abc$def\n")
        self.assertFalse(self.files())
        self.assertFalse(self.files())
        [line] = self.logged()
        self.assertIn(f"{self.htpasswd}: line 2: user bob: only bcrypt entries are supported", line)
        self.assertIn("the ones read before stay", line)
        self.assertEqual(self.taken, [])
        self.write(self.htpasswd, f"alice:{HASH}\nbob:{HASH}\n")
        self.assertTrue(self.files())
        self.assertEqual(set(self.taken[0].htpasswd), {"alice", "bob"})

    def test_missing_file_keeps_credentials(self) -> None:
        """A file gone (a secret being swapped): the credentials read before stay, until it is back."""
        os.remove(self.tokens)
        self.assertFalse(self.files())
        self.assertIn(f"vault.yml: auth.tokens_file: cannot read {self.tokens}", self.logged()[0])
        self.write(self.tokens, f"ci:{TOKEN}\n")
        self.assertFalse(self.files())  # (back as it was: nothing to take)
        self.write(self.tokens, f"ci:{OTHER}\n")
        self.assertTrue(self.files())

    def test_group_member_gone(self) -> None:
        """A user auth.groups names, gone from the files: taken (revocation must work), and named in a warning."""
        self.write(self.tokens, "")
        self.assertTrue(self.files())
        self.assertIn("no longer in the credential files (they cannot log in): ci", self.logged()[1])

    def test_user_named_as_a_group(self) -> None:
        """A new user named like a group would make access lists ambiguous: refused, as at start."""
        self.write(self.tokens, f"ci:{TOKEN}\nteam:{OTHER}\n")
        self.assertFalse(self.files())
        self.assertIn("auth.groups: team is a user's name too", self.logged()[0])


class GateRenewTests(SynchronousTestCase):
    """L{Gate.renew}: new credentials, and the logins verified with the old ones forgotten."""

    def setUp(self) -> None:
        self.clock = Clock()
        settings = AuthSettings(configured=True, tokens=[("ci", TOKEN.encode())])
        self.gate = Gate(settings, make_portal(settings, lambda f, *a: succeed(f(*a))), self.clock)

    def admit(self, token: str) -> int:
        verdicts = []
        self.gate.admit(_Request(b"Bearer " + token.encode()), AUTHENTICATED).addCallback(verdicts.append)
        return verdicts[0].status

    def test_revoked_token_refused_at_once(self) -> None:
        """A token verified (and remembered) before the files changed is refused right after."""
        self.assertEqual(self.admit(TOKEN), 200)
        self.assertIsNotNone(self.gate.cache.get(BearerToken(TOKEN.encode())))
        settings = AuthSettings(configured=True, tokens=[("ci", OTHER.encode())])
        self.gate.renew(settings, make_portal(settings, lambda f, *a: succeed(f(*a))))
        self.assertEqual(self.admit(TOKEN), 401)
        self.assertEqual(self.admit(OTHER), 200)

    def test_check_under_way_not_remembered(self) -> None:
        """
        A check that began before the files changed and ends after them is
        answered, but not remembered: the next request is checked against
        the new files (a revoked password must not stay verified).
        """
        pending: list[Deferred] = []
        slow = AuthSettings(configured=True, htpasswd={"alice": HASH.encode()})
        self.gate.renew(slow, make_portal(slow, lambda f, *a: pending.append(Deferred()) or pending[-1]))
        verdicts = []
        self.gate.admit(_Request(b"Basic " + base64.b64encode(b"alice:secret")), AUTHENTICATED) \
            .addCallback(verdicts.append)
        settings = AuthSettings(configured=True, tokens=[("ci", TOKEN.encode())])
        self.gate.renew(settings, make_portal(settings, lambda f, *a: succeed(f(*a))))  # (alice gone)
        pending[0].callback(True)  # (her bcrypt check, begun before, says yes)
        self.assertEqual(verdicts[0].status, 200)
        self.assertIsNone(self.gate.cache.get(UsernamePassword(b"alice", b"secret")))

    def test_failures_kept(self) -> None:
        """The failed logins counted against an address are not wiped by a renewal."""
        self.assertEqual(self.admit(OTHER), 401)
        self.gate.renew(self.gate.settings, self.gate.portal)
        self.assertEqual(self.gate.failures, 1)
        self.assertEqual(len(self.gate.limiter._failures), 1)

    def test_basic(self) -> None:
        """A Basic password verified before is forgotten too."""
        settings = AuthSettings(configured=True, htpasswd={"alice": HASH.encode()})
        self.gate.renew(settings, make_portal(settings, lambda f, *a: succeed(f(*a))))
        self.gate.cache.put(UsernamePassword(b"alice", b"secret"), Principal("alice"))
        self.assertIsNotNone(self.gate.cache.get(UsernamePassword(b"alice", b"secret")))
        self.gate.renew(settings, self.gate.portal)
        self.assertIsNone(self.gate.cache.get(UsernamePassword(b"alice", b"secret")))
