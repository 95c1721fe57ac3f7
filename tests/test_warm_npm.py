"""
Tests for ``artifactvault warm --npm-lock`` (L{artifactvault.warm_npm}): the
lockfile formats, tarball URLs and SRI strings in memory; checked bytes
against a scripted vault (L{FakeUpstream}); and the real thing: a lock made
by npm against the kit's registry (tests/upstreams/npm-up), warmed through
the real daemon, then the daemon again on the same cache with the registry
gone, where a real C{npm ci} and C{npm install} (fresh caches, no config)
succeed from the vault alone.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import os

from hypothesis import given
from hypothesis import strategies as st
from rich.console import Console
from twisted.trial.unittest import SkipTest, SynchronousTestCase, TestCase

from artifactvault import warm, warm_npm
from tests import support
from tests.fakeupstream import FakeUpstream, Script
from tests.test_npm_clients import NPM, NpmClient, installed, to_public
from tests.test_warm import run_warm, start_daemon


def sri(algorithm: str, data: bytes) -> str:
    return f"{algorithm}-{base64.b64encode(hashlib.new(algorithm, data).digest()).decode()}"


V3 = {"name": "p", "lockfileVersion": 3, "packages": {
    "": {"name": "p", "dependencies": {"av-app": "^1.1.0"}},
    "node_modules/@av/base": {"version": "1.1.0", "resolved": "https://registry.npmjs.org/@av/base/-/base-1.1.0.tgz",
                              "integrity": sri("sha512", b"base")},
    "node_modules/av-app": {"version": "1.1.0", "resolved": "https://registry.npmjs.org/av-app/-/av-app-1.1.0.tgz",
                            "integrity": sri("sha1", b"app")},
    "node_modules/av-app/node_modules/@av/base": {
        "version": "1.0.0", "resolved": "https://registry.npmjs.org/@av%2fbase/-/base-1.0.0.tgz"},
    "node_modules/alias": {"name": "av-app", "version": "1.0.0",
                           "resolved": "https://npm.corp.example/api/npm/remote/av-app/-/av-app-1.0.0.tgz"},
    "node_modules/from-git": {"resolved": "git+ssh://git@github.com/x/y.git#abc"},
    "node_modules/local": {"resolved": "packages/local", "link": True},
    "packages/local": {"version": "0.0.1"},
    "node_modules/gone": {"version": "1.0.0"},
    "node_modules/av-app/node_modules/inside": {"version": "1.0.0", "inBundle": True},
    "node_modules/tarball": {"resolved": "file:../t.tgz"},
}}
V1 = {"name": "p", "lockfileVersion": 1, "dependencies": {
    "av-app": {"version": "1.1.0", "resolved": "https://registry.npmjs.org/av-app/-/av-app-1.1.0.tgz",
               "integrity": sri("sha1", b"app"),
               "dependencies": {"@av/base": {"version": "1.0.0",
                                             "resolved": "https://registry.npmjs.org/@av/base/-/base-1.0.0.tgz"}}},
    "bundled-thing": {"version": "1.0.0", "bundled": True},
}}


class LockTests(SynchronousTestCase):
    def lock(self, doc: dict) -> str:
        path = self.mktemp()
        with open(path, "w") as f:
            json.dump(doc, f)
        return path

    def test_v3(self) -> None:
        """
        Every registry package of a v3 lock: one packument per name (the
        install variant), each tarball below the prefix wherever the lock
        was made; the rest left out and named.
        """
        item = warm.Item("npm-lock", "x")
        files = warm_npm.lock_files("npm", self.lock(V3), item)
        short, full = ((("Accept", accept),) for accept in warm_npm.PACKUMENT_ACCEPTS)
        self.assertEqual([(f.path, f.algorithm, f.headers) for f in files], [
            ("/npm/@av%2fbase", None, short), ("/npm/@av%2fbase", None, full), ("/npm/av-app", None, short),
            ("/npm/av-app", None, full),
            ("/npm/@av/base/-/base-1.1.0.tgz", "sha512", ()), ("/npm/av-app/-/av-app-1.1.0.tgz", "sha1", ()),
            ("/npm/@av/base/-/base-1.0.0.tgz", None, ()), ("/npm/av-app/-/av-app-1.0.0.tgz", None, ())])
        self.assertEqual(files[4].digest, hashlib.sha512(b"base").digest())
        self.assertEqual(item.notes, ["left out 6 not from a registry: from-git (git), local (link), packages/local "
                                      "(workspace), gone (no resolved), inside (bundled) and 1 more"])

    def test_v1(self) -> None:
        """A v1 lock: nested dependencies too; bundled ones left out."""
        item = warm.Item("npm-lock", "x")
        files = warm_npm.lock_files("/npm/", self.lock(V1), item)
        self.assertEqual([f.path for f in files], ["/npm/av-app"] * 2 + ["/npm/@av%2fbase"] * 2 +
                         ["/npm/av-app/-/av-app-1.1.0.tgz",
                                                   "/npm/@av/base/-/base-1.0.0.tgz"])
        self.assertEqual(item.notes, ["left out 1 not from a registry: bundled-thing (bundled)"])

    def test_not_a_lock(self) -> None:
        for text in ("[]", "{\"lockfileVersion\": 3}", "not json"):
            path = self.mktemp()
            with open(path, "w") as f:
                f.write(text)
            self.assertRaises(warm.WarmError, warm_npm.lock_files, "/npm/", path, warm.Item("npm-lock", path))
        self.assertRaises(warm.WarmError, warm_npm.lock_files, "/npm/", self.mktemp(), warm.Item("npm-lock", "x"))
        bad = {"packages": {"node_modules/a": {"resolved": "https://r/a/-/a-1.tgz", "integrity": "sha512-!!"}}}
        self.assertRaises(warm.WarmError, warm_npm.lock_files, "/npm/", self.lock(bad), warm.Item("npm-lock", "x"))

    def test_registry_tarball(self) -> None:
        for url, expected in (
                ("https://registry.npmjs.org/a/-/a-1.0.0.tgz", ("a", "a-1.0.0.tgz")),
                ("https://registry.yarnpkg.com/@s/b/-/b-2.0.0.tgz", ("@s/b", "b-2.0.0.tgz")),
                ("https://r.example/npm/@s%2Fb/-/b-2.0.0.tgz", ("@s/b", "b-2.0.0.tgz")),
                ("https://r.example/x/@s/b/-/@s/b-2.0.0.tgz", ("@s/b", "b-2.0.0.tgz")),
                ("https://codeload.github.com/x/y/tar.gz/abc", None), ("git+https://github.com/x/y.git", None),
                ("file:a/-/a-1.tgz", None), ("https://r/@s/-/s-1.tgz", None), ("https://r/a/-/.tgz", None)):
            self.assertEqual(warm_npm.registry_tarball(url), expected, url)

    @given(st.text(max_size=100))
    def test_registry_tarball_any_text(self, text: str) -> None:
        warm_npm.registry_tarball(text)

    @given(st.lists(st.sampled_from(sorted(warm_npm.SRI)), min_size=1, max_size=4, unique=True), st.binary())
    def test_sri(self, algorithms: list[str], data: bytes) -> None:
        """The strongest digest of an SRI string (options after ? ignored)."""
        text = " ".join(sri(a, data) + ("?opt" if i else "") for i, a in enumerate(algorithms))
        best = next(a for a in warm_npm.SRI if a in algorithms)
        self.assertEqual(warm_npm.parse_sri(text), (best, hashlib.new(best, data).digest()))

    @given(st.text(max_size=100))
    def test_sri_any_text(self, text: str) -> None:
        warm_npm.parse_sri(text)


class CheckedBytesTests(SynchronousTestCase):
    """What the vault sends is checked against what the lock says: a corrupted byte fails the item."""

    def setUp(self) -> None:
        self.vault = FakeUpstream()
        self.addCleanup(self.vault.close)
        self.good = b"tarball bytes" * 100

    def warm(self, tarball: bytes) -> tuple[int, str]:
        lock = self.mktemp()
        with open(lock, "w") as f:
            json.dump({"lockfileVersion": 3, "packages": {"node_modules/a": {
                "resolved": "https://registry.npmjs.org/a/-/a-1.0.0.tgz", "integrity": sri("sha512", self.good)}}}, f)
        self.vault.scripts["/npm/a"] = Script(b"{}", headers={"X-Cache": "HIT"})
        self.vault.scripts["/npm/a/-/a-1.0.0.tgz"] = Script(tarball, headers={"X-Cache": "MISS"})
        out = io.StringIO()
        status = warm.main(["--vault", self.vault.base, "--npm-lock", lock, "-q"], console=Console(file=out, width=300))
        return status, out.getvalue()

    def test_good(self) -> None:
        status, out = self.warm(self.good)
        self.assertEqual(status, 0, out)
        self.assertRegex(out, r"│ fetched +│ +3 │ +1 │ +1304 │")

    def test_corrupted_byte(self) -> None:
        bad = bytearray(self.good)
        bad[500] ^= 1
        status, out = self.warm(bytes(bad))
        self.assertEqual(status, 1, out)
        self.assertIn("/npm/a/-/a-1.0.0.tgz: sha512", out)

    def test_size(self) -> None:
        """A file shorter than its item says (a blob, a .deb) fails its item."""
        self.vault.scripts["/f"] = Script(b"12345")
        vault = warm.Vault(self.vault.base)
        self.assertEqual(warm.fetch_file(vault, warm.File("/f", 5)), ("?", 5))
        e = self.assertRaises(warm.WarmError, warm.fetch_file, vault, warm.File("/f", 6))
        self.assertEqual(str(e), "/f: 5 bytes, expected 6")
        self.assertRaises(warm.WarmError, warm.fetch_file, vault,
                          warm.File("/f", None, "sha256", hashlib.sha256(b"12346").digest()))


class NpmWarmTests(TestCase):
    """A lock from the kit's registry, warmed through the real daemon; then the registry is gone."""

    timeout = 240

    def setUp(self) -> None:
        if NPM is None:
            raise SkipTest("npm is not installed")
        self.registry = support.upstream_url("npm") + "/"

    def daemon(self, registry: str, cache_dir: str | None = None) -> support.Daemon:
        return start_daemon(self, {"type": "npm", "config": {"prefix": "/npm/", "registry_url": registry}}, cache_dir)

    def test_warm_then_offline(self) -> None:
        maker = NpmClient(self, self.registry)  # (the lock made against the registry itself, as the public one)
        proj = maker.project(dependencies={"av-app": "^1.1.0"})
        maker.run(proj, "install", "--package-lock-only")
        with open(os.path.join(proj, "package-lock.json")) as f:
            lock = to_public(json.load(f), self.registry)
        with open(os.path.join(proj, "package-lock.json"), "w") as f:
            json.dump(lock, f)
        d = self.daemon(self.registry)
        status, out = run_warm(d.base, "--npm-lock", os.path.join(proj, "package-lock.json"))
        self.assertEqual(status, 0, out)
        self.assertRegex(out, r"npm-lock \S+package-lock\.json +│ fetched +│ +6 │ +6 │")
        status, out = run_warm(d.base, "--npm-lock", os.path.join(proj, "package-lock.json"), "--npm", "/npm")
        self.assertEqual(status, 0, out)
        self.assertRegex(out, r"│ already cached +│ +6 │ +0 │")

        d.stop()  # the same cache, the registry gone: npm is served from the vault alone
        d2 = self.daemon(f"http://127.0.0.1:{support.free_port()}/", cache_dir=d.cache_dir)
        ci = NpmClient(self, d2.url("/npm/"))
        ci_proj = ci.project(dependencies={"av-app": "^1.1.0"}, lock=lock)
        ci.run(ci_proj, "ci", "--fetch-retries=0")
        self.assertEqual((installed(ci_proj, "av-app"), installed(ci_proj, "@av/base")), ("1.1.0", "1.1.0"))
        again = NpmClient(self, d2.url("/npm/"))  # (resolving anew: the warmed packuments)
        again_proj = again.project()
        again.run(again_proj, "install", "av-app@^1.1.0", "--fetch-retries=0")
        self.assertEqual(installed(again_proj, "@av/base"), "1.1.0")
        self.assertNotIn("MISS", d2.log())
