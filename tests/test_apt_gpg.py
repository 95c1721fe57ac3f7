"""
Checking Release signatures with gpgv (L{artifactvault.backends.apt_gpg}):
gpgv's verdict read as apt reads it, and real gpgv on the test kit's
signed repository (a good signature, a tampered file, another keyring).
"""

from __future__ import annotations

import os
import tempfile

from twisted.internet import reactor
from twisted.trial.unittest import SynchronousTestCase, TestCase

from artifactvault.backends import apt_gpg
from tests import support

GOOD = (b"[GNUPG:] NEWSIG\n[GNUPG:] KEY_CONSIDERED ABC 0\n[GNUPG:] SIG_ID x 2026-01-01 1\n"
        b"[GNUPG:] GOODSIG ABCDEF Test\n[GNUPG:] VALIDSIG ABC 2026-01-01 1 0 4 0 22 10 01 ABC\n")


class VerdictTests(SynchronousTestCase):
    def test_good(self) -> None:
        self.assertIsNone(apt_gpg.verdict(GOOD, 0))

    def test_bad_words_win(self) -> None:
        """Any status word apt counts as failure fails the check, whatever else was said."""
        for word in apt_gpg.BAD:
            reason = apt_gpg.verdict(GOOD + f"[GNUPG:] {word} ABC\n".encode(), 0)
            self.assertIn(word, reason)

    def test_no_good_signature(self) -> None:
        self.assertIsNotNone(apt_gpg.verdict(b"", 0))
        self.assertIsNotNone(apt_gpg.verdict(GOOD, 1))
        self.assertIsNotNone(apt_gpg.verdict(GOOD.replace(b"VALIDSIG", b"OTHER"), 0))


class GpgvTests(TestCase):
    def setUp(self) -> None:
        support.upstream_url("apt")
        self.dist = os.path.join(support.upstream_dir("apt"), "repos", "v1", "dists", "stable")
        self.keyring = os.path.join(support.upstream_dir("apt"), "gpg", "key.gpg")

    def read(self, name: str) -> bytes:
        with open(os.path.join(self.dist, name), "rb") as f:
            return f.read()

    async def test_clearsigned_and_detached(self) -> None:
        """The kit's InRelease, and its Release with Release.gpg, verify against its key."""
        await apt_gpg.verify(reactor, [self.keyring], self.read("InRelease"))
        await apt_gpg.verify(reactor, [self.keyring], self.read("Release"), self.read("Release.gpg"))

    async def test_tampered(self) -> None:
        """A changed byte in the signed text, or a Release that is not the signed one, fails."""
        inrelease = self.read("InRelease").replace(b"Suite: stable", b"Suite: stabl3")
        with self.assertRaises(apt_gpg.SignatureError) as e:
            await apt_gpg.verify(reactor, [self.keyring], inrelease)
        self.assertIn("BADSIG", str(e.exception))
        with self.assertRaises(apt_gpg.SignatureError):
            await apt_gpg.verify(reactor, [self.keyring], self.read("Release") + b"X: y\n", self.read("Release.gpg"))

    async def test_other_keyring(self) -> None:
        """A keyring without the signing key: NO_PUBKEY."""
        empty = os.path.abspath(self.mktemp())
        open(empty, "wb").close()
        with self.assertRaises(apt_gpg.SignatureError) as e:
            await apt_gpg.verify(reactor, [empty], self.read("InRelease"))
        self.assertIn("NO_PUBKEY", str(e.exception))


class HangingGpgvTests(TestCase):
    """A gpgv that never answers (a stuck child): the check fails within the bound, and the child is gone."""

    timeout = 20

    def setUp(self) -> None:
        work = os.path.abspath(self.mktemp())
        os.makedirs(work)
        self.pidfile = os.path.join(work, "pid")
        fake = os.path.join(work, "gpgv")
        with open(fake, "w") as f:  # (exec: the pid written is the one that sleeps)
            f.write(f"#!/bin/sh\necho $$ > {self.pidfile}\nexec sleep 600\n")
        os.chmod(fake, 0o755)
        self.patch(apt_gpg, "GPGV", fake)
        self.patch(apt_gpg, "TIMEOUT", 0.5)

    async def test_hanging_gpgv_is_killed(self) -> None:
        """SignatureError saying gpgv did not answer in time; the process was killed and reaped."""
        before = set(os.listdir(tempfile.gettempdir()))
        with self.assertRaises(apt_gpg.SignatureError) as e:
            await apt_gpg.verify(reactor, ["/nonexistent/keyring.gpg"], b"signed text\n")
        self.assertIn("did not answer in 0.5 s", str(e.exception))
        with open(self.pidfile) as f:
            pid = int(f.read())
        self.assertFalse(os.path.exists(f"/proc/{pid}"), f"gpgv (pid {pid}) is still there")
        self.assertEqual({n for n in set(os.listdir(tempfile.gettempdir())) - before
                          if n.startswith("artifactvault-gpgv-")}, set())
