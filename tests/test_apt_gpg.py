"""
Checking Release signatures with gpgv (L{artifactvault.backends.apt_gpg}):
gpgv's verdict read as apt reads it, ASCII-armored keyrings dearmored
(properties against base64 and CRC24, and against real gpg), real gpgv on
the test kit's signed repository (a good signature, a tampered file,
another keyring, an armored keyring), and a gpgv that hangs.
"""

from __future__ import annotations

import base64
import os
import shutil
import subprocess
import tempfile
import time

from hypothesis import given
from hypothesis import strategies as st
from twisted.internet import reactor
from twisted.internet.task import deferLater
from twisted.trial.unittest import SynchronousTestCase, TestCase

from artifactvault.backends import apt_gpg
from tests import support
from tests.headers import bounded


def armor(packets: bytes, headers: str = "", checksum: bool = True, width: int = 64) -> bytes:
    """ASCII armor of C{packets} as RFC 4880 6.2 writes it: base64 lines, then "=" and the CRC24 in base64."""
    body = base64.b64encode(packets).decode()
    lines = ["-----BEGIN PGP PUBLIC KEY BLOCK-----", *headers.splitlines(), ""]
    lines += [body[i:i + width] for i in range(0, len(body), width)]
    if checksum:
        lines.append("=" + base64.b64encode(apt_gpg.crc24(packets).to_bytes(3, "big")).decode())
    lines.append("-----END PGP PUBLIC KEY BLOCK-----")
    return ("\n".join(lines) + "\n").encode()


def export_armored(testcase: TestCase, keyring: str) -> str:
    """The keys of a binary keyring exported ASCII-armored by real gpg (``gpg --armor --export``): a .asc path."""
    home = tempfile.mkdtemp(prefix="av-gpg-")  # (gpg-agent's socket path must be short)
    testcase.addCleanup(shutil.rmtree, home, True)
    env = dict(os.environ, GNUPGHOME=home)
    testcase.addCleanup(subprocess.run, ["gpgconf", "--kill", "gpg-agent"], env=env)
    subprocess.run(["gpg", "--batch", "--quiet", "--import", keyring], env=env, check=True, capture_output=True)
    out = os.path.join(home, "key.asc")
    with open(out, "wb") as f:
        subprocess.run(["gpg", "--batch", "--armor", "--export"], env=env, stdout=f, check=True)
    return out


def other_keyring(testcase: TestCase) -> str:
    """A binary keyring with a key of its own made by real gpg, not the kit repository's."""
    other = tempfile.mkdtemp(prefix="av-gpg-")  # (gpg-agent's socket path must be short)
    testcase.addCleanup(shutil.rmtree, other, True)
    env = dict(os.environ, GNUPGHOME=other)
    testcase.addCleanup(subprocess.run, ["gpgconf", "--kill", "gpg-agent"], env=env)  # (gpg started one)
    subprocess.run(["gpg", "--batch", "--quiet", "--passphrase", "", "--quick-gen-key", "Other <o@example.invalid>",
                    "ed25519", "sign", "never"], env=env, check=True)
    with open(os.path.join(other, "other.gpg"), "wb") as f:
        subprocess.run(["gpg", "--batch", "--export"], env=env, stdout=f, check=True)
    return os.path.join(other, "other.gpg")


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


class ArmorTests(SynchronousTestCase):
    def test_crc24_check_value(self) -> None:
        """The OpenPGP CRC-24 of "123456789" is its published check value, 0x21CF02."""
        self.assertEqual(apt_gpg.crc24(b"123456789"), 0x21CF02)
        self.assertEqual(apt_gpg.crc24(b""), 0xB704CE)

    @given(st.binary(min_size=1, max_size=3000), st.sampled_from(["", "Comment: a key\nVersion: x"]),
           st.booleans(), st.sampled_from([64, 76, 4]))
    @bounded(200)
    def test_round_trip(self, packets: bytes, headers: str, checksum: bool, width: int) -> None:
        """Armor of any bytes, with or without headers and checksum, at any line width, dearmors to those bytes."""
        self.assertEqual(apt_gpg.dearmor(armor(packets, headers, checksum, width)), packets)
        self.assertTrue(apt_gpg.is_armored(b"\n  " + armor(packets)))

    @given(st.binary(min_size=1, max_size=3000), st.binary(min_size=1, max_size=300))
    @bounded(100)
    def test_blocks_joined_and_text_around_ignored(self, first: bytes, second: bytes) -> None:
        """Two blocks in one file (cat a.asc b.asc) give both keys' packets; text outside them is ignored."""
        data = b"a key for the repository:\n" + armor(first) + b"\n" + armor(second) + b"that is all\n"
        self.assertEqual(apt_gpg.dearmor(data), first + second)

    @given(st.binary(min_size=1, max_size=3000), st.data())
    @bounded(200)
    def test_corrupted_body_refused(self, packets: bytes, data: st.DataObject) -> None:
        """A body changed anywhere (any bit of any byte) no longer matches its checksum: refused."""
        at = data.draw(st.integers(0, len(packets) - 1))
        bit = data.draw(st.integers(0, 7))
        changed = packets[:at] + bytes([packets[at] ^ (1 << bit)]) + packets[at + 1:]
        good = armor(packets).splitlines()
        bad = armor(changed).splitlines()
        with self.assertRaises(apt_gpg.KeyringError) as e:
            apt_gpg.dearmor(b"\n".join(bad[:-2] + good[-2:]))  # (the body changed, the checksum not)
        self.assertIn("checksum", str(e.exception))

    def test_broken_armor_refused(self) -> None:
        """What is not one whole public key block is refused, saying why."""
        good = armor(b"\x99\x00\x01key")
        for data, why in ((b"", "no BEGIN"), (b"just text\n", "no BEGIN"),
                          (good.replace(b"-----END PGP PUBLIC KEY BLOCK-----\n", b""), "END"),
                          (good.replace(b"\n\n", b"\n\n!!!!\n", 1), "base64"),
                          (good.replace(b"\n=", b"\n=AAAA\n="), "after its checksum"),
                          (good.replace(b"PUBLIC KEY", b"PRIVATE KEY"), "another kind"),
                          (armor(b"").replace(b"\n=", b"\n\n="), "empty")):
            with self.assertRaises(apt_gpg.KeyringError) as e:
                apt_gpg.dearmor(data)
            self.assertIn(why, str(e.exception), data)

    def test_check_keyring(self) -> None:
        """At configuration: binary and armored keyrings pass; empty, other or broken files are refused."""
        def write(data: bytes) -> str:
            path = self.mktemp()
            with open(path, "wb") as f:
                f.write(data)
            return path
        apt_gpg.check_keyring(write(b"\x99\x00\x33rest"))
        apt_gpg.check_keyring(write(armor(b"\x99\x00\x33rest")))
        for data in (b"", b"hello, not a key\n", armor(b"\x99key")[:-20]):
            self.assertRaises(apt_gpg.KeyringError, apt_gpg.check_keyring, write(data))


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

    async def test_armored_keyring(self) -> None:
        """
        The kit's key exported armored by real gpg dearmors to what ``gpg
        --dearmor`` makes of it, and gpgv checks signatures against it
        (gpgv itself reads only binary keyrings).
        """
        asc = export_armored(self, self.keyring)
        with open(asc, "rb") as f:
            data = f.read()
        want = subprocess.run(["gpg", "--dearmor"], input=data, capture_output=True, check=True).stdout
        self.assertEqual(apt_gpg.dearmor(data), want)
        apt_gpg.check_keyring(asc)
        await apt_gpg.verify(reactor, [asc], self.read("InRelease"))
        await apt_gpg.verify(reactor, [asc], self.read("Release"), self.read("Release.gpg"))

    async def test_tampered(self) -> None:
        """A changed byte in the signed text, or a Release that is not the signed one, fails."""
        inrelease = self.read("InRelease").replace(b"Suite: stable", b"Suite: stabl3")
        with self.assertRaises(apt_gpg.SignatureError) as e:
            await apt_gpg.verify(reactor, [self.keyring], inrelease)
        self.assertIn("BADSIG", str(e.exception))
        with self.assertRaises(apt_gpg.SignatureError):
            await apt_gpg.verify(reactor, [self.keyring], self.read("Release") + b"X: y\n", self.read("Release.gpg"))

    async def test_other_keyring(self) -> None:
        """A keyring without the signing key: NO_PUBKEY, a signature that does not hold."""
        with self.assertRaises(apt_gpg.SignatureError) as e:
            await apt_gpg.verify(reactor, [other_keyring(self)], self.read("InRelease"))
        self.assertNotIsInstance(e.exception, apt_gpg.KeyringUnusable)
        self.assertIn("NO_PUBKEY", str(e.exception))

    async def test_keyring_spoilt_since_start(self) -> None:
        """
        A keyring emptied, overwritten with something else or removed after
        the config was read: KeyringUnusable naming the file and why, not a
        signature that fails (gpgv, given it, says NO_PUBKEY: the mirror's
        fault, by its words).
        """
        path = os.path.abspath(self.mktemp())
        for data, reason in ((b"", "the file is empty"), (b"hello, not a key\n", "neither a binary OpenPGP"),
                             (None, "No such file or directory")):
            if data is None:
                os.unlink(path)
            else:
                with open(path, "wb") as f:
                    f.write(data)
            with self.assertRaises(apt_gpg.KeyringUnusable) as e:
                await apt_gpg.verify(reactor, [self.keyring, path], self.read("InRelease"))
            self.assertIn(f"cannot use the keyring {path}: {reason}", str(e.exception))


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
        self.keyring = os.path.join(work, "key.gpg")
        with open(self.keyring, "wb") as f:  # (the fake gpgv never reads it; the check before it does)
            f.write(b"\x99\x00\x33rest")

    async def test_hanging_gpgv_is_killed(self) -> None:
        """
        SignatureError saying gpgv did not answer in time, at the bound; the
        process is killed and reaped, its private directory removed.
        """
        before = set(os.listdir(tempfile.gettempdir()))
        with self.assertRaises(apt_gpg.SignatureError) as e:
            await apt_gpg.verify(reactor, [self.keyring], b"signed text\n")
        self.assertIn("did not answer in 0.5 s", str(e.exception))
        with open(self.pidfile) as f:
            pid = int(f.read())

        def left() -> list[str]:
            ours = [n for n in set(os.listdir(tempfile.gettempdir())) - before if n.startswith("artifactvault-gpgv-")]
            return ours + ([f"gpgv (pid {pid})"] if os.path.exists(f"/proc/{pid}") else [])
        deadline = time.monotonic() + 10
        while left() and time.monotonic() < deadline:
            await deferLater(reactor, 0.05, lambda: None)
        self.assertEqual(left(), [])
