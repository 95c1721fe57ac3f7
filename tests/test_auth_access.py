"""
Tests for L{artifactvault.auth.access} and its config: the ``auth:``
section, each backend's ``access:`` and its default, the config errors
(one line naming the file and the key), the access decisions, and the
start-up warning for a backend with credentials and no auth.
"""

from __future__ import annotations

import os

import bcrypt
import yaml
from hypothesis import given
from hypothesis import strategies as st
from twisted.logger import formatEvent
from twisted.trial.unittest import SynchronousTestCase

from artifactvault.auth.access import (ANONYMOUS, AUTHENTICATED, OPEN, Access, AuthSettings, Kind, Principal,
                                       parse_access)
from artifactvault.config import ConfigError, Section
from artifactvault.service import build
from tests.fakes import ManualPool, log_events
from tests.test_config import ConfigFileMixin, http_backend

HASH = bcrypt.hashpw(b"secret", bcrypt.gensalt(4)).decode()
TOKEN = "0123456789abcdef0123"


class AccessTests(SynchronousTestCase):

    def test_decisions(self) -> None:
        """anonymous admits all; authenticated any user; a list its users and its groups' members."""
        alice, ci = Principal("alice"), Principal("ci", frozenset({"builders"}))
        listed = Access(Kind.LISTED, frozenset({"alice", "builders"}))
        self.assertTrue(all(OPEN.allows(p) for p in (ANONYMOUS, alice, ci)))
        self.assertEqual([AUTHENTICATED.allows(p) for p in (ANONYMOUS, alice, ci)], [False, True, True])
        self.assertEqual([listed.allows(p) for p in (ANONYMOUS, alice, ci, Principal("bob"))],
                         [False, True, True, False])


    @given(st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=12),
                        lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner,
                                                                                    max_size=3), max_leaves=6),
           st.booleans())
    def test_any_access_value(self, value: object, configured: bool) -> None:
        """Any YAML value of access: is an Access or one ConfigError line naming the key; never another error."""
        auth = AuthSettings(htpasswd={"alice": b"x"}, groups={"g": frozenset({"alice"})}, configured=configured)
        try:
            access = parse_access(Section("c.yml", "backends[0].config", {"access": value}), "access", auth, OPEN)
        except ConfigError as e:
            self.assertTrue(str(e).startswith("c.yml: backends[0].config.access: "), str(e))
            self.assertNotIn("\n", str(e))
        else:
            self.assertIsInstance(access, Access)
            self.assertTrue(access.names <= {"alice", "g"})


class AuthConfigTests(ConfigFileMixin, SynchronousTestCase):

    def setUp(self) -> None:
        self.dir = os.path.abspath(self.mktemp())
        os.makedirs(self.dir)
        self.htpasswd = os.path.join(self.dir, "htpasswd")
        with open(self.htpasswd, "w") as f:
            f.write(f"alice:{HASH}\nbob:{HASH}\n")
        self.tokens = os.path.join(self.dir, "tokens")
        with open(self.tokens, "w") as f:
            f.write(f"# CI\nci:{TOKEN}\n")

    def auth(self, **extra: object) -> dict:
        return {"htpasswd": self.htpasswd, "tokens_file": self.tokens, **extra}

    def test_defaults(self) -> None:
        """With auth: a backend with upstream credentials is authenticated, one without anonymous."""
        config = self.load_data({"auth": self.auth(groups={"builders": ["ci", "bob"]}),
                                 "backends": [http_backend(), http_backend(prefix="/private/", token="x" * 20),
                                              http_backend(prefix="/h/", headers={"X-Api-Key": "k"}),
                                              http_backend(prefix="/u/", username="u", password="p")]})
        self.assertTrue(config.auth.configured)
        self.assertEqual(sorted(config.auth.users), ["alice", "bob", "ci"])
        self.assertEqual(config.auth.groups_of("ci"), frozenset({"builders"}))
        self.assertEqual(config.access, [OPEN, AUTHENTICATED, AUTHENTICATED, AUTHENTICATED])
        self.assertEqual(config.auth.pages, AUTHENTICATED)
        self.assertNotIn(HASH, repr(config.auth))

    def test_access_values(self) -> None:
        """access: anonymous, authenticated, a name, or a list of users and groups."""
        config = self.load_data({"auth": self.auth(groups={"builders": ["ci"]}, pages="anonymous"),
                                 "backends": [http_backend(access="authenticated"),
                                              http_backend(prefix="/p/", token="x" * 20, access="anonymous"),
                                              http_backend(prefix="/q/", access=["alice", "builders"]),
                                              http_backend(prefix="/r/", access="ci")]})
        self.assertEqual(config.access, [AUTHENTICATED, OPEN, Access(Kind.LISTED, frozenset({"alice", "builders"})),
                                         Access(Kind.LISTED, frozenset({"ci"}))])
        self.assertEqual(config.auth.pages, OPEN)

    def test_relative_paths(self) -> None:
        """File names are relative to the config file's directory."""
        path = os.path.join(self.dir, "vault.yml")
        with open(path, "w") as f:
            yaml.safe_dump({"auth": {"htpasswd": "htpasswd"}, "backends": [http_backend()]}, f)
        from artifactvault import config as configmod
        from artifactvault.backends import parse_backend
        self.assertEqual(sorted(configmod.load(path, parse_backend).auth.htpasswd), ["alice", "bob"])

    def test_errors(self) -> None:
        """Each mistake is one line naming the file and the key."""
        cases = [
            ({"auth": {}}, "auth: give htpasswd, tokens_file or both"),
            ({"auth": {"htpasswd": "/nonexistent/h"}}, "auth.htpasswd: cannot read /nonexistent/h"),
            ({"auth": self.auth(typo=1)}, "auth.typo: unknown key"),
            ({"auth": self.auth(groups={"g": ["nobody"]})}, "auth.groups.g: no such user: nobody"),
            ({"auth": self.auth(groups={"alice": ["bob"]})}, "auth.groups.alice: alice is a user's name too"),
            ({"auth": self.auth(groups={"g": "bob"})}, "auth.groups.g: must be a list"),
            ({"auth": self.auth(realm='a"b')}, "auth.realm: must be printable"),
            ({"auth": self.auth(pages=["nobody"])}, "auth.pages: no such user or group: nobody"),
            ({"auth": self.auth(), "backends": [http_backend(access=["alice", "mallory"])]},
             "backends[0].config.access: no such user or group: mallory"),
            ({"auth": self.auth(), "backends": [http_backend(access=[])]}, "backends[0].config.access: must be"),
            ({"auth": self.auth(), "backends": [http_backend(access=7)]}, "backends[0].config.access: must be"),
            ({"backends": [http_backend(access="authenticated")]}, "backends[0].config.access: needs auth:"),
            ({"backends": [http_backend(access=["alice"])]}, "backends[0].config.access: needs auth:"),
        ]
        for data, fragment in cases:
            self.assertConfigError(yaml.safe_dump(data), fragment)

    def test_htpasswd_error_names_its_file(self) -> None:
        """A line of the htpasswd file the vault cannot use: its file and line, not the config's key."""
        with open(self.htpasswd, "a") as f:
            f.write("carol:$apr1$abcdefgh$0123456789012345678901\n")
        error = self.assertRaises(ConfigError, self.load_data, {"auth": {"htpasswd": self.htpasswd}})
        self.assertEqual(str(error), f"{self.htpasswd}: line 3: user carol: only bcrypt entries are supported "
                                     f"(make them with htpasswd -B); this one is apr1-MD5 (htpasswd -m)")


class StartTests(ConfigFileMixin, SynchronousTestCase):

    def test_warning_without_auth(self) -> None:
        """Without auth:, the start warns for each backend with upstream credentials (and no other)."""
        events = log_events(self)
        config = self.load_data({"cache_dir": self.mktemp(), "http_port": 0,
                                 "backends": [http_backend(), http_backend(prefix="/private/", token="x" * 20)]})
        _, root = build(config, threadpool=_Inline())
        self.addCleanup(root.backends[0].vault.store.close)
        warnings = [formatEvent(e) for e in events if "no auth: is configured" in formatEvent(e)]
        self.assertEqual(len(warnings), 1)
        self.assertIn("/private/", warnings[0])
        self.assertNotIn("x" * 20, warnings[0])


class _Inline(ManualPool):
    """A store thread pool that runs work at once (no thread)."""

    def callInThreadWithCallback(self, onResult, f, *args, **kwargs):  # type: ignore[no-untyped-def]
        try:
            result = f(*args, **kwargs)
        except Exception:
            from twisted.python.failure import Failure
            onResult(False, Failure())
        else:
            onResult(True, result)
