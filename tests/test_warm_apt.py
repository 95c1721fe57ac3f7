"""
Tests for ``artifactvault warm --apt LINE --deb PKG`` (L{artifactvault.warm_apt}):
the sources line, apt-get's --print-uris output and the throwaway apt
machine in memory; and the real thing: the real apt-get through the real
daemon against the kit's signed repository (tests/upstreams/apt-up), then
the daemon again on the same cache with the mirror gone, where a real
apt-get update and install --download-only of the same packages succeed
from the vault alone.
"""

from __future__ import annotations

import io
import os
import re
import stat

from hypothesis import given
from hypothesis import strategies as st
from rich.console import Console
from twisted.trial.unittest import SynchronousTestCase, TestCase

from artifactvault import warm, warm_apt
from tests import support
from tests.test_apt_clients import AptClient, key, kit, sha256_file
from tests.test_warm import run_warm, start_daemon

SAMPLE = """\
'http://127.0.0.1:8080/debian/pool/main/a/av-pkg-01/av-pkg-01_1.0-1_all.deb' av-pkg-01_1.0-1_all.deb 824 SHA256:\
5f1e4a2c3b0d9e8f7a6b5c4d3e2f1a0b9c8d7e6f5a4b3c2d1e0f9a8b7c6d5e4f
'http://127.0.0.1:8080/debian/pool/main/libs/libstdc%2b%2b6_12.2.0-14_amd64.deb' libstdc++6_12.2.0-14_amd64.deb 613140 \
SHA512:00ff
'http://127.0.0.1:8080/debian/pool/main/n/nohash/nohash_1_all.deb' nohash_1_all.deb 10 
"""

VAULT = "http://127.0.0.1:18999"
FAILED_TO_FETCH = (f"Failed to fetch {VAULT}/debian/dists/stable/InRelease Could not connect to 127.0.0.1:18999 "
                   f"(127.0.0.1). - connect (111: Connection refused)")
#: apt-get -q update (apt 2.6) with nothing listening at the vault: exit status 0 (stdout, then stderr)...
UPDATE_FAILED = f"""\
Ign:1 {VAULT}/debian stable InRelease
Err:1 {VAULT}/debian stable InRelease
  Could not connect to 127.0.0.1:18999 (127.0.0.1). - connect (111: Connection refused)
Reading package lists...
W: {FAILED_TO_FETCH.replace("InRelease ", "InRelease  ")}
W: Some index files failed to download. They have been ignored, or old ones used instead.
"""
#: ... and what APT::Update::Error-Mode=any adds to stderr, with exit status 100.
ERROR_MODE_ANY = f"""\
E: {FAILED_TO_FETCH.replace("InRelease ", "InRelease  ")}
E: Some index files failed to download. They have been ignored, or old ones used instead.
"""

_token = st.text(st.sampled_from("abcdefghijklmnopqrstuvwxyz0123456789-_.+~:/"), min_size=1, max_size=20)
_option = st.builds(lambda n, v: f"{n}={v}", st.sampled_from(["signed-by", "arch", "trusted", "lang"]),
                    _token.filter(lambda t: "=" not in t))


class SourceTests(SynchronousTestCase):
    def test_examples(self) -> None:
        """The forms the sources.list manual shows: options or none, components or a flat suite."""
        s = warm_apt.parse_source("deb [signed-by=/k.gpg arch=amd64] /debian/ bookworm main contrib")
        self.assertEqual(s, warm_apt.Source("deb", ("signed-by=/k.gpg", "arch=amd64"), "/debian/", "bookworm",
                                            ("main", "contrib")))
        self.assertEqual(s.line("http://v/debian/"),
                         "deb [signed-by=/k.gpg arch=amd64] http://v/debian/ bookworm main contrib")
        self.assertEqual(warm_apt.parse_source("  deb-src\t[ trusted=yes ]  /d/ ./ ").line("U"),
                         "deb-src [trusted=yes] U ./")
        for bad in ("", "rpm /x y z", "deb /debian/", "deb [signed-by=/k /debian/ stable main",
                    "deb /debian/ stable", "deb /flat/ ./ main", "deb [signed-by] /d/ s main", "deb [=x] /d/ s main"):
            self.assertRaises(warm.WarmError, warm_apt.parse_source, bad)

    @given(st.sampled_from(["deb", "deb-src"]), st.lists(_option, max_size=3), _token,
           st.one_of(st.tuples(_token.map(lambda t: t + "/"), st.just(())),
                     st.tuples(_token.filter(lambda t: not t.endswith("/")), st.lists(_token, min_size=1, max_size=4))))
    def test_round_trip(self, kind: str, options: list[str], uri: str, suite_components: tuple) -> None:
        """A line written from its parts parses back into them."""
        suite, components = suite_components
        source = warm_apt.Source(kind, tuple(options), uri, suite, tuple(components))
        self.assertEqual(warm_apt.parse_source(source.line(uri)), source)

    @given(st.text(max_size=80))
    def test_any_text(self, text: str) -> None:
        """Any text is a line or a WarmError, never another exception."""
        try:
            warm_apt.parse_source(text)
        except warm.WarmError:
            pass

    def test_vault_uri(self) -> None:
        """A path is put below the vault; a full URL must be on it (credentials left to auth.conf)."""
        vault = warm.Vault("http://ci:secret@127.0.0.1:8080/av")
        self.assertEqual(warm_apt.vault_uri(vault, "/debian/"), "http://127.0.0.1:8080/av/debian/")
        self.assertEqual(warm_apt.vault_uri(vault, "http://127.0.0.1:8080/av/debian"), "http://127.0.0.1:8080/av/debian")
        for elsewhere in ("http://deb.debian.org/debian", "http://127.0.0.1:8080/debian", "debian", "ftp://x/"):
            self.assertRaises(warm.WarmError, warm_apt.vault_uri, vault, elsewhere)

    def test_request(self) -> None:
        """AptRequest.make checks the lines, the packages and the architecture, and points the lines at the vault."""
        vault = warm.Vault("http://127.0.0.1:8080")
        request = warm_apt.AptRequest.make(vault, ["deb [signed-by=/k.gpg] /debian/ stable main"], ["a", "b=1.0"], None)
        self.assertEqual(request.lines, ("deb [signed-by=/k.gpg] http://127.0.0.1:8080/debian/ stable main",))
        for lines, debs, arch in ((["deb /d/ s main"], ["-o"], None), (["deb /d/ s main"], ["a b"], None),
                                  (["deb /d/ s main"], [], "Arm 64"), (['deb [a="x"] /d/ s main'], [], None)):
            self.assertRaises(warm.WarmError, warm_apt.AptRequest.make, vault, lines, debs, arch)


class Deb822Tests(SynchronousTestCase):
    def sources(self, text: str) -> str:
        path = self.mktemp()
        with open(path, "w") as f:
            f.write(text)
        return path

    def test_example(self) -> None:
        """
        Debian's own form: types × URIs × suites, the components, Signed-By
        and Architectures as options (lists comma-separated), comments and a
        disabled stanza left out, a flat repository with no components.
        """
        path = self.sources("""# the main archive
Types: deb deb-src
URIs: /debian/
Suites: bookworm bookworm-updates
Components: main contrib
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
Architectures: amd64 arm64

Types: deb
URIs: /old/
Suites: buster
Components: main
Enabled: no

types: deb
uris: /flat/
suites: ./
trusted: yes
X-Repolib-Name: a tool's own field
""")
        opts = "[signed-by=/usr/share/keyrings/debian-archive-keyring.gpg arch=amd64,arm64]"
        self.assertEqual(warm_apt.deb822_lines(path), [
            f"deb {opts} /debian/ bookworm main contrib", f"deb {opts} /debian/ bookworm-updates main contrib",
            f"deb-src {opts} /debian/ bookworm main contrib", f"deb-src {opts} /debian/ bookworm-updates main contrib",
            "deb [trusted=yes] /flat/ ./"])
        for line in warm_apt.deb822_lines(path):
            warm_apt.parse_source(line)  # (every line is one apt takes)

    def test_refused(self) -> None:
        """What cannot be made into lines: a WarmError naming the file (and the stanza)."""
        key_inline = "Types: deb\nURIs: /d/\nSuites: s\nComponents: main\nSigned-By:\n -----BEGIN PGP PUBLIC KEY BLOCK-----\n .\n x\n"
        for text, says in (("Types: deb\nURIs: /d/\nComponents: main\n", "stanza 1: needs Types, URIs and Suites"),
                           (key_inline, "stanza 1: signed-by holds a key"),
                           ("Types: deb\nURIs: /d/\nSuites: s\nComponents: main\nEnabled: no\n", "no enabled source"),
                           (" indented first\n", "not a deb822 sources file"),
                           ("no colon here\n", "not a deb822 sources file"),
                           ("", "no enabled source"),
                           ("Types: deb\nURIs: /d/\nSuites: s\nComponents: main\nFoo: a]b\n", "no brackets"),
                           ("Types: deb\nURIs: [/d/\nSuites: s\nComponents: main\n", "no brackets"),
                           ("Types: deb\nURIs: /d/\nSuites: s\nComponents: main\nTrusted:\n", "trusted is empty")):
            path = self.sources(text)
            with self.assertRaises(warm.WarmError) as caught:
                warm_apt.deb822_lines(path)
            self.assertIn(f"--apt-sources {path}", str(caught.exception))
            self.assertIn(says, str(caught.exception))
        with self.assertRaises(warm.WarmError) as caught:
            warm_apt.deb822_lines(self.mktemp())
        self.assertIn("No such file", str(caught.exception))

    @given(st.text(max_size=200))
    def test_any_text(self, text: str) -> None:
        """Any file is lines apt takes (parse_source) or a WarmError, never another exception."""
        path = self.sources(text)
        try:
            lines = warm_apt.deb822_lines(path)
        except warm.WarmError:
            return
        for line in lines:
            try:
                warm_apt.parse_source(line)
            except warm.WarmError:
                pass  # (a suite with no components, say: refused as --apt would be)


class PrintUrisTests(SynchronousTestCase):
    def test_sample(self) -> None:
        """apt's lines: URI (encoded), file, size, the strongest hash (or none); other lines left out."""
        debs = warm_apt.parse_print_uris("Reading package lists...\n" + SAMPLE)
        self.assertEqual([(d.name, d.size, d.algorithm) for d in debs],
                         [("av-pkg-01_1.0-1_all.deb", 824, "sha256"), ("libstdc++6_12.2.0-14_amd64.deb", 613140, "sha512"),
                          ("nohash_1_all.deb", 10, None)])
        self.assertEqual(debs[1].digest, b"\x00\xff")
        self.assertTrue(debs[1].uri.endswith("/libstdc%2b%2b6_12.2.0-14_amd64.deb"))

    @given(st.lists(st.tuples(st.text(st.sampled_from("abz09-_.%+~:/"), min_size=1, max_size=30),
                              st.integers(0, 2 ** 40), st.sampled_from(sorted(warm_apt.HASHES)),
                              st.binary(min_size=1, max_size=64)), max_size=5))
    def test_round_trip(self, rows: list) -> None:
        """What apt-get writes (apt's format) parses back to the same files."""
        text = "".join(f"'http://h/{name}' {name.replace('/', '_')} {size} {algorithm}:{digest.hex()}\n"
                       for name, size, algorithm, digest in rows)
        self.assertEqual([(d.uri, d.size, d.algorithm, d.digest) for d in warm_apt.parse_print_uris(text)],
                         [(f"http://h/{n}", s, warm_apt.HASHES[a], d) for n, s, a, d in rows])

    @given(st.text(max_size=200))
    def test_any_text(self, text: str) -> None:
        warm_apt.parse_print_uris(text)

    def test_index_digests(self) -> None:
        """
        The strongest hash of each listed file, from the Packages indexes
        apt verified (--print-uris shows only MD5); a file in none keeps
        apt's hash.
        """
        lists = self.mktemp()
        os.makedirs(lists)
        with open(os.path.join(lists, "h_debian_dists_s_main_binary-amd64_Packages"), "w") as f:
            f.write("Package: libstdc++6\nFilename: pool/main/libs/libstdc++6_12.2.0-14_amd64.deb\nSize: 613140\n"
                    "MD5sum: 00\nSHA256: " + "ab" * 32 + "\nSHA512: " + "cd" * 64 + "\nDescription: x\n more\n\n"
                    "Package: av-pkg-01\nFilename: pool/main/a/av-pkg-01/av-pkg-01_1.0-1_all.deb\nSHA256: " + "ef" * 32)
        with open(os.path.join(lists, "h_debian_dists_s_InRelease"), "w") as f:
            f.write("Filename: pool/main/n/nohash/nohash_1_all.deb\nSHA256: " + "00" * 32 + "\n")
        debs = warm_apt.parse_print_uris(SAMPLE)
        digests = warm_apt.index_digests(lists, debs)
        self.assertEqual(digests, {debs[0].uri: ("sha256", b"\xef" * 32), debs[1].uri: ("sha512", b"\xcd" * 64)})

    def test_errors(self) -> None:
        """
        apt's last errors (E:), in one line; without any, its last Err: and W:
        lines; without those, its last line. Its closing "Some index files
        failed to download" and a warning the error repeats are left out.
        """
        self.assertEqual(warm_apt.apt_errors("Get:1 x\nErr:1 y\nW: w\nE: one\nE: two\n"), "E: one | E: two")
        self.assertEqual(warm_apt.apt_errors("Get:1 x\nErr:1 y\nW: w\n"), "Err:1 y | W: w")
        self.assertEqual(warm_apt.apt_errors("a\nb\n\n"), "a | b")
        self.assertEqual(warm_apt.apt_errors(UPDATE_FAILED + ERROR_MODE_ANY), f"E: {FAILED_TO_FETCH}")
        self.assertEqual(warm_apt.apt_errors(UPDATE_FAILED + ERROR_MODE_ANY + ERROR_MODE_ANY), f"E: {FAILED_TO_FETCH}")
        self.assertEqual(warm_apt.apt_errors(UPDATE_FAILED),
                         f"Err:1 {VAULT}/debian stable InRelease | W: {FAILED_TO_FETCH}")


class MachineTests(SynchronousTestCase):
    def test_config(self) -> None:
        """The machine's own dirs, nothing of the host's, no proxy; root downloads as root; only the asked arch."""
        self.patch(warm_apt.os, "geteuid", lambda: 0)
        options = warm_apt.apt_config("/m", "arm64", None)
        self.assertEqual(options["Dir::State::Status"], "/m/state/status")
        self.assertEqual((options["Dir::Etc::Main"], options["Dir::Etc::SourceParts"], options["Dir::Etc::netrc"]),
                         ("/dev/null", "/dev/null", "/dev/null"))
        self.assertEqual((options["Acquire::http::Proxy"], options["APT::Sandbox::User"]), ("DIRECT", "root"))
        self.assertEqual((options["APT::Architecture"], options["APT::Architectures::"]), ("arm64", "arm64"))
        self.assertEqual(options["APT::Update::Error-Mode"], "any")  # (update fails when it fetched nothing)
        self.patch(warm_apt.os, "geteuid", lambda: 1000)
        self.assertNotIn("APT::Sandbox::User", warm_apt.apt_config("/m", None, None))
        self.assertNotIn("APT::Architecture", warm_apt.apt_config("/m", None, None))

    def test_credentials_apt_cannot_hold(self) -> None:
        """A password with a blank (or none) cannot go into apt's auth.conf: a clear error, not a broken file."""
        for creds in ("ci:two%20words", "ci:", "c%09i:x"):
            vault = warm.Vault(f"http://{creds}@127.0.0.1:8080/")
            request = warm_apt.AptRequest.make(vault, ["deb /debian/ stable main"], [], "amd64")
            error = self.assertRaises(warm.WarmError, warm_apt.AptMachine, self.mktemp(), vault, request)
            self.assertIn("auth.conf has no quoting", str(error))

    def test_credentials_in_auth_conf(self) -> None:
        """The vault's credentials go to an auth.conf only its owner reads, never into the sources list."""
        root = self.mktemp()
        vault = warm.Vault("http://ci:s%40cret@127.0.0.1:8080/")
        request = warm_apt.AptRequest.make(vault, ["deb /debian/ stable main"], [], "amd64")
        machine = warm_apt.AptMachine(root, vault, request)
        auth = os.path.join(root, "etc", "auth.conf")
        with open(auth) as f:
            self.assertEqual(f.read(), "machine http://127.0.0.1:8080 login ci password s@cret\n")
        self.assertEqual(stat.S_IMODE(os.stat(auth).st_mode), 0o600)
        with open(os.path.join(root, "etc", "sources.list")) as f:
            self.assertEqual(f.read(), "deb http://127.0.0.1:8080/debian/ stable main\n")
        with open(machine.config) as f:
            self.assertIn(f'Dir::Etc::netrc "{auth}";', f.read())

    def test_old_apt_update_fails_quietly(self) -> None:
        """
        An apt older than 2.1.16 ignores APT::Update::Error-Mode: its update
        that could not fetch a file exits 0 all the same; its Err: line fails
        the run, with the reason apt gave.
        """
        old_apt = os.path.abspath(self.mktemp())
        with open(old_apt, "w") as f:
            f.write(f"#!/bin/sh\ncat <<'EOF'\n{UPDATE_FAILED}EOF\nexit 0\n")
        os.chmod(old_apt, 0o755)
        self.patch(warm_apt.shutil, "which", lambda name: old_apt)
        vault = warm.Vault(VAULT)
        request = warm_apt.AptRequest.make(vault, ["deb /debian/ stable main"], [], "amd64")
        machine = warm_apt.AptMachine(self.mktemp(), vault, request)
        error = self.assertRaises(warm.WarmError, machine.run, "-q", "update")
        self.assertEqual(str(error),
                         f"apt-get update failed: Err:1 {VAULT}/debian stable InRelease | W: {FAILED_TO_FETCH}")

    def test_no_apt_get(self) -> None:
        """No apt-get on the machine: the item fails saying so; the others go on."""
        self.patch(warm_apt.shutil, "which", lambda name: None)
        out = io.StringIO()
        status = warm.main(["--vault", "http://127.0.0.1:9", "--apt", "deb /debian/ stable main", "--deb", "curl",
                            "-q"], console=Console(file=out, width=300))
        self.assertEqual(status, 1)
        self.assertIn("--apt needs apt-get, and this machine has none", out.getvalue())

    def test_deb_without_apt(self) -> None:
        """--deb with no --apt line to resolve it from: a usage error."""
        out = io.StringIO()
        self.assertEqual(warm.main(["--vault", "http://127.0.0.1:9", "--deb", "curl"],
                                   console=Console(file=out, width=300)), 2)
        self.assertIn("--deb needs", out.getvalue())


class AptWarmTests(TestCase):
    """Warm through the real daemon with the real apt-get; then the mirror is gone."""

    timeout = 240

    def daemon(self, mirror_url: str, cache_dir: str | None = None) -> support.Daemon:
        return start_daemon(self, {"type": "apt", "config": {"prefix": "/debian/", "mirror_url": mirror_url}}, cache_dir)

    def test_warm_then_offline(self) -> None:
        d = self.daemon(f"{kit()}/debian")
        line = f"deb [signed-by={key()}] /debian/ stable main"
        items = os.path.join(self.mktemp())
        with open(items, "w") as f:
            f.write(f"--apt '{line}'\n--deb av-pkg-01\n# and another\n--deb av-pkg-02\n")
        status, out = run_warm(d.base, "--from", items)
        self.assertEqual(status, 0, out)
        self.assertRegex(out, r"apt av-pkg-01 av-pkg-02 +│ fetched +│ +2 │ +2 │")
        self.assertIn("apt-get update: 2 index files through the vault", out)
        status, out = run_warm(d.base, "--apt", line, "--deb", "av-pkg-02", "--deb", "av-pkg-01")
        self.assertEqual(status, 0, out)
        self.assertRegex(out, r"apt av-pkg-02 av-pkg-01 +│ already cached +│ +2 │ +0 │")
        status, out = run_warm(d.base, "--apt", line, "--deb", "av-no-such")
        self.assertEqual(status, 1, out)
        self.assertIn("Unable to locate package av-no-such", out)

        d.stop()  # the same cache, the mirror gone: apt is served from the vault alone
        d2 = self.daemon(f"http://127.0.0.1:{support.free_port()}/debian", cache_dir=d.cache_dir)
        client = AptClient(os.path.abspath(self.mktemp()), [f"deb [signed-by={key()}] {d2.url('/debian')} stable main"])
        client.ok("update")
        client.ok("install", "--download-only", "-y", "av-pkg-01", "av-pkg-02")
        for package in ("av-pkg-01", "av-pkg-02"):
            deb = f"{package}_1.0-1_all.deb"
            self.assertEqual(sha256_file(client.archive(deb)),
                             sha256_file(os.path.join(support.upstream_dir("apt"), "www", "debian", "pool", "main",
                                                      "a", package, deb)))
        self.assertNotIn("MISS", d2.log())

    def test_two_architectures(self) -> None:
        """
        --arch twice: one apt item for each (named with it), each through its
        own binary index; then, the mirror gone, an arm64 machine and an amd64
        one each update and install from the vault alone (neither asked it before).
        """
        d = self.daemon(f"{kit()}/debian")
        line = f"deb [signed-by={key()}] /debian/ stable main"
        status, out = run_warm(d.base, "--apt", line, "--deb", "av-pkg-05", "--arch", "arm64", "--arch", "amd64",
                               "--arch", "arm64")
        self.assertEqual(status, 0, out)
        self.assertRegex(out, r"apt av-pkg-05 \(arm64\) +│")
        self.assertRegex(out, r"apt av-pkg-05 \(amd64\) +│")
        self.assertEqual(out.count("av-pkg-05 (arm64)"), 1, out)  # (an architecture given twice is one item)
        for arch in ("amd64", "arm64"):
            self.assertIn(f"/binary-{arch}/", d.log())

        d.stop()
        d2 = self.daemon(f"http://127.0.0.1:{support.free_port()}/debian", cache_dir=d.cache_dir)
        for arch in ("arm64", "amd64"):
            client = AptClient(os.path.abspath(self.mktemp()),
                               [f"deb [signed-by={key()}] {d2.url('/debian')} stable main"],
                               extra={"APT::Architecture": arch, "APT::Architectures::": arch})
            client.ok("update")
            client.ok("install", "--download-only", "-y", "av-pkg-05")
            self.assertTrue(os.path.exists(client.archive("av-pkg-05_1.0-1_all.deb")))
        self.assertNotIn("MISS", d2.log())

    def test_deb822_sources(self) -> None:
        """--apt-sources: a deb822 .sources file, given alone or named in a --from file (relative to it)."""
        d = self.daemon(f"{kit()}/debian")
        folder = os.path.abspath(self.mktemp())
        os.makedirs(folder)
        with open(os.path.join(folder, "vault.sources"), "w") as f:
            f.write(f"Types: deb\nURIs: /debian/\nSuites: stable\nComponents: main\nSigned-By: {key()}\n")
        status, out = run_warm(d.base, "--apt-sources", os.path.join(folder, "vault.sources"), "--deb", "av-pkg-03")
        self.assertEqual(status, 0, out)
        self.assertRegex(out, r"apt av-pkg-03 +│ fetched +│ +1 │ +1 │")
        items = os.path.join(folder, "items")
        with open(items, "w") as f:
            f.write("--apt-sources vault.sources\n--deb av-pkg-03\n--deb av-pkg-04\n")
        status, out = run_warm(d.base, "--from", items)
        self.assertEqual(status, 0, out)
        self.assertRegex(out, r"apt av-pkg-03 av-pkg-04 +│ fetched +│ +2 │ +1 │")

    def test_update_fetches_nothing(self) -> None:
        """
        apt-get update that reaches no release file (it exits 0 and only
        warns, unless told otherwise) fails the item with apt's reason: the
        vault not listening, or its mirror down with nothing cached; with
        --deb, that reason and not apt's "Unable to locate package" after it.
        """
        line = f"deb [signed-by={key()}] /debian/ stable main"
        dead = f"http://127.0.0.1:{support.free_port()}"
        status, out = run_warm(dead, "--apt", line)
        self.assertEqual(status, 1, out)
        self.assertRegex(out, r"apt \(indexes only\) +│ failed +│ +0 │ +0 │ +0 │ apt-get update failed: "
                              rf"E: Failed to fetch {re.escape(dead)}/debian/dists/stable/InRelease .*Connection refused")
        status, out = run_warm(dead, "--apt", line, "--deb", "av-pkg-01")
        self.assertEqual(status, 1, out)
        self.assertRegex(out, r"apt av-pkg-01 +│ failed +│ .*apt-get update failed: .*Connection refused")
        self.assertNotIn("Unable to locate package", out)

        d = self.daemon(f"http://127.0.0.1:{support.free_port()}/debian")  # the mirror down, nothing cached
        status, out = run_warm(d.base, "--apt", line)
        self.assertEqual(status, 1, out)
        self.assertRegex(out, rf"apt \(indexes only\) +│ failed +│ .*apt-get update failed: E: Failed to fetch "
                              rf"{re.escape(d.url('/debian'))}/dists/stable/InRelease +502")
