"""
Reading a Debian repository's files (L{artifactvault.backends.apt_meta}):
clear-signed text as apt reads it, Release fields and hash lists, by-hash
paths, and the pool files a Packages or Sources index lists.
"""

from __future__ import annotations

import bz2
import gzip
import hashlib
import lzma

from twisted.trial.unittest import SynchronousTestCase

from artifactvault.backends import apt_meta as meta

RELEASE = b"""Origin: Test
Suite: stable
Date: Sat, 01 Jan 2022 00:00:00 UTC
Valid-Until: Sat, 08 Jan 2022 00:00:00 UTC
Acquire-By-Hash: yes
MD5Sum:
 d41d8cd98f00b204e9800998ecf8427e 10 main/binary-amd64/Packages
SHA256:
 %s 10 main/binary-amd64/Packages
 %s 20 main/binary-amd64/Packages.xz
""" % (b"a" * 64, b"b" * 64)


def clearsign(text: bytes, after: bytes = b"") -> bytes:
    escaped = b"".join(b"- " + line + b"\n" if line.startswith(b"-") else line + b"\n"
                       for line in text.rstrip(b"\n").split(b"\n"))
    return (b"-----BEGIN PGP SIGNED MESSAGE-----\nHash: SHA256\n\n" + escaped +
            b"-----BEGIN PGP SIGNATURE-----\n\niQ==\n=abcd\n-----END PGP SIGNATURE-----\n" + after)


class SignedTextTests(SynchronousTestCase):
    def test_signed_text_is_the_release(self) -> None:
        """The signed text of a clear-signed Release is that Release, byte for byte."""
        self.assertEqual(meta.signed_text(clearsign(RELEASE)), RELEASE)

    def test_dash_escaping_undone(self) -> None:
        """Lines that start with a dash are dash-escaped in the file and read back as they were."""
        self.assertEqual(meta.signed_text(clearsign(b"A: b\n-x\n")), b"A: b\n-x\n")

    def test_crlf(self) -> None:
        self.assertEqual(meta.signed_text(clearsign(RELEASE).replace(b"\n", b"\r\n")), RELEASE)

    def test_refused(self) -> None:
        """Anything apt would refuse is refused: the vault must read the hashes apt reads."""
        good = clearsign(RELEASE)
        for bad in (RELEASE, good + b"Injected: yes\n", b"junk\n" + good,
                    clearsign(b"A: b\n").replace(b"A: b", b"-A: b"),
                    good.split(b"-----BEGIN PGP SIGNATURE")[0],
                    good.replace(b"-----END PGP SIGNATURE-----\n", b""), b""):
            self.assertRaises(meta.MetaError, meta.signed_text, bad)

    def test_blank_lines_around(self) -> None:
        self.assertEqual(meta.signed_text(b"\n" + clearsign(RELEASE) + b"\n\n"), RELEASE)


class ReleaseTests(SynchronousTestCase):
    def test_fields_and_files(self) -> None:
        release = meta.parse_release(RELEASE)
        self.assertTrue(release.by_hash)
        self.assertEqual(release.date, 1640995200.0)
        self.assertEqual(release.valid_until, 1640995200.0 + 7 * 86400)
        info = release.files["main/binary-amd64/Packages"]
        self.assertEqual(info.size, 10)
        self.assertEqual(info.best(), ("sha256", "a" * 64))
        self.assertEqual(info.hashes["md5"], "d41d8cd98f00b204e9800998ecf8427e")
        self.assertEqual(release.find_hash("sha256", "b" * 64)[0], "main/binary-amd64/Packages.xz")
        self.assertIsNone(release.find_hash("sha256", "c" * 64))

    def test_no_by_hash_no_valid_until(self) -> None:
        release = meta.parse_release(RELEASE.replace(b"Acquire-By-Hash: yes\n", b"").replace(
            b"Valid-Until: Sat, 08 Jan 2022 00:00:00 UTC\n", b""))
        self.assertFalse(release.by_hash)
        self.assertIsNone(release.valid_until)

    def test_same_as(self) -> None:
        """InRelease and Release say the same when date and files agree."""
        a = meta.parse_release(RELEASE)
        self.assertTrue(a.same_as(meta.parse_release(RELEASE)))
        self.assertFalse(a.same_as(meta.parse_release(RELEASE.replace(b"Jan 2022 00:00:00 UTC\nValid",
                                                                      b"Jan 2022 00:00:01 UTC\nValid"))))
        self.assertFalse(a.same_as(meta.parse_release(RELEASE.replace(b" 20 main", b" 21 main"))))

    def test_refused(self) -> None:
        for bad in (b"", b"Origin: x\n", b"Origin: x\n\nOther: y\nSHA256:\n", RELEASE.replace(b"a" * 64, b"g" * 64),
                    RELEASE.replace(b"8427e 10 main", b"8427e x main"),
                    RELEASE.replace(b"d41d8cd98f00b204e9800998ecf8427e 10", b"d41d8cd98f00b204e9800998ecf8427e 11"),
                    b"\x00garbage"):
            self.assertRaises(meta.MetaError, meta.parse_release, bad)


class PathTests(SynchronousTestCase):
    def test_by_hash(self) -> None:
        self.assertEqual(meta.by_hash_path("dists/s/main/binary-amd64/by-hash/SHA256/" + "A" * 64),
                         ("sha256", "a" * 64))
        self.assertEqual(meta.by_hash_path("x/by-hash/SHA512/" + "0" * 128), ("sha512", "0" * 128))
        self.assertEqual(meta.by_hash_path("x/by-hash/MD5Sum/" + "0" * 32), ("md5", "0" * 32))
        for bad in ("x/by-hash/SHA256/" + "0" * 63, "x/by-hash/SHA3/" + "0" * 64, "by-hash/SHA256",
                    "x/by-hash/SHA256/" + "g" * 64, "pool/x.deb"):
            self.assertIsNone(meta.by_hash_path(bad))
        self.assertEqual(meta.by_hash_label("sha256"), "SHA256")
        self.assertEqual(meta.by_hash_label("md5"), "MD5Sum")

    def test_kinds(self) -> None:
        self.assertEqual(meta.index_kind("main/binary-amd64/Packages.xz"), "Packages")
        self.assertEqual(meta.index_kind("main/source/Sources.gz"), "Sources")
        self.assertIsNone(meta.index_kind("main/i18n/Translation-en.bz2"))
        self.assertEqual(meta.uncompressed("a/Packages.zst"), "a/Packages")
        for pool in ("pool/main/h/hello/hello_1.0_amd64.deb", "hello_1.0.dsc", "x/hello_1.0.orig.tar.xz",
                     "x/y.udeb", "hello_1.0-1.diff.gz"):
            self.assertTrue(meta.is_pool_file(pool), pool)
        for other in ("ls-lR.gz", "project/trace/master", "dists/stable/ChangeLog", "README"):
            self.assertFalse(meta.is_pool_file(other), other)
        self.assertEqual(meta.normalize_pool_path("./pool//a.deb"), "pool/a.deb")
        self.assertIsNone(meta.normalize_pool_path("../a.deb"))
        self.assertIsNone(meta.normalize_pool_path("./"))


PACKAGES = b"""Package: hello
Version: 1.0
Filename: pool/main/h/hello/hello_1.0_all.deb
Size: 1234
MD5sum: 00000000000000000000000000000000
SHA256: %s
Description: hi
 more text: with a colon

Package: nohash
Filename: ./pool/main/n/nohash_1.0_all.deb
Size: 99

Package: evil
Filename: ../../etc/passwd
Size: 1
""" % (b"c" * 64)

SOURCES = b"""Package: hello
Directory: pool/main/h/hello
Files:
 00000000000000000000000000000000 100 hello_1.0.dsc
Checksums-Sha256:
 %s 100 hello_1.0.dsc
 %s 2000 hello_1.0.tar.xz
""" % (b"d" * 64, b"e" * 64)


class PoolTableTests(SynchronousTestCase):
    def test_packages_every_compression(self) -> None:
        """A Packages index, however compressed: each pool file's sha256 and size; unsafe paths left out."""
        want = {"pool/main/h/hello/hello_1.0_all.deb": ("c" * 64, 1234),
                "pool/main/n/nohash_1.0_all.deb": (None, 99)}
        for name, data in (("Packages", PACKAGES), ("Packages.xz", lzma.compress(PACKAGES)),
                           ("Packages.gz", gzip.compress(PACKAGES)), ("Packages.bz2", bz2.compress(PACKAGES))):
            self.assertEqual(meta.pool_table(data, "main/binary-amd64/" + name), want)

    def test_sources(self) -> None:
        self.assertEqual(meta.pool_table(SOURCES, "main/source/Sources"),
                         {"pool/main/h/hello/hello_1.0.dsc": ("d" * 64, 100),
                          "pool/main/h/hello/hello_1.0.tar.xz": ("e" * 64, 2000)})

    def test_unreadable(self) -> None:
        """A compression the vault does not read, or a broken stream: nothing (or what came before) is learnt."""
        self.assertEqual(meta.pool_table(b"zstd bytes", "Packages.zst"), {})
        self.assertEqual(meta.pool_table(b"not xz", "Packages.xz"), {})
        self.assertEqual(meta.pool_table(hashlib.sha256().digest(), "Packages.gz"), {})
