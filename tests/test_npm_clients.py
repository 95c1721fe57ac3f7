"""
npm itself through the real daemon, against the test kit's verdaccio
(tests/upstreams/npm-up: @av/base and av-app, two versions each; more
published here when a test needs its own). Every npm run has a fresh
cache, an empty user config and an empty global config, so it really goes
through the vault; a dead proxy for anything but 127.0.0.1 makes sure a
request meant for the public registry could never leave the machine.

The opt-in test against the public registry runs only with
AV_TEST_PUBLIC_NPM=1 (and is skipped, saying why, when it cannot be reached).
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import shutil
import subprocess
import tempfile
import threading
import time
import uuid
from typing import Any

from twisted.trial.unittest import SkipTest, TestCase

from tests.support import (UPSTREAMS, Daemon, UpstreamUnavailable, hits, request, stop_upstream,
                           upstream_dir, upstream_url, wait_for_hits)

PUBLIC_REGISTRY = "https://registry.npmjs.org/"
NPM = shutil.which("npm")
#: yarn v1 and pnpm, installed into the kit by npm-kit-install.
KIT_BIN = os.path.join(UPSTREAMS, "npm-kit", "node_modules", ".bin")


def publish(spec: list[dict[str, Any]]) -> None:
    """Publish packages to the kit's verdaccio (tests/upstreams/npm-publish.py)."""
    subprocess.run(["python3", os.path.join(UPSTREAMS, "npm-publish.py"), upstream_url("npm"), "-"],
                   input=json.dumps(spec), text=True, check=True, capture_output=True)


def npm_env() -> dict[str, str]:
    """The environment with no npm settings of its own (npm_config_* variables)."""
    return {k: v for k, v in os.environ.items() if not k.lower().startswith("npm_config_")}


class NpmClient:
    """npm with a fresh cache and empty user and global configs, in its own directory."""

    def __init__(self, testcase: TestCase, registry: str):
        self.dir = tempfile.mkdtemp(prefix="av-npm-")
        testcase.addCleanup(shutil.rmtree, self.dir, True)
        self.cache = os.path.join(self.dir, "cache")
        self.userconfig = os.path.join(self.dir, "userconfig")
        self.globalconfig = os.path.join(self.dir, "globalconfig")
        for path in (self.userconfig, self.globalconfig):
            open(path, "w").close()
        self.registry = registry

    def project(self, name: str = "proj", dependencies: dict[str, str] | None = None,
                lock: dict | None = None, private: bool = True) -> str:
        path = os.path.join(self.dir, name)
        os.makedirs(path)
        with open(os.path.join(path, "package.json"), "w") as f:
            json.dump({"name": name, "version": "1.0.0", "private": private,
                       "dependencies": dependencies or {}}, f)
        if lock is not None:
            with open(os.path.join(path, "package-lock.json"), "w") as f:
                json.dump(lock, f)
        return path

    def run(self, cwd: str, *args: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess:
        command = [NPM, *args, "--registry", self.registry, "--cache", self.cache,
                   "--userconfig", self.userconfig, "--globalconfig", self.globalconfig,
                   "--no-audit", "--no-fund", "--no-update-notifier", "--loglevel=http",
                   "--proxy", "http://127.0.0.1:9/", "--https-proxy", "http://127.0.0.1:9/",
                   "--noproxy", "127.0.0.1"]
        p = subprocess.run(command, cwd=cwd, env=npm_env(), capture_output=True, text=True, timeout=timeout)
        if check and p.returncode != 0:
            raise AssertionError(f"npm {' '.join(args)} failed ({p.returncode}):\n{p.stdout[-2000:]}\n{p.stderr[-3000:]}")
        return p


def installed(project: str, name: str) -> str:
    with open(os.path.join(project, "node_modules", name, "package.json")) as f:
        return json.load(f)["version"]


def to_public(lock: dict, vault_registry: str) -> dict:
    """The lockfile as if made against the public registry (as real ones are)."""
    text = json.dumps(lock).replace(vault_registry, PUBLIC_REGISTRY)
    assert PUBLIC_REGISTRY in text
    return json.loads(text)


class _Case(TestCase):
    def setUp(self) -> None:
        if NPM is None:
            raise SkipTest("npm is not installed")
        try:
            self.upstream = upstream_url("npm")
        except UpstreamUnavailable as e:
            self.fail(str(e))

    def daemon(self, **config: Any) -> Daemon:
        d = Daemon([{"type": "npm", "config": {"prefix": "/npm/", "registry_url": self.upstream + "/",
                                                **config}}])
        self.addCleanup(d.cleanup)
        return d.start()


class InstallTests(_Case):
    def test_install_then_ci_from_a_public_lockfile(self) -> None:
        """
        npm install resolves through the vault (lockfile URLs on the vault);
        npm ci from a lockfile whose resolved URLs are the public registry's
        (replace-registry-host's default, with the vault's /npm/ path) then
        installs the same from the vault's cache, with no upstream request.
        """
        d = self.daemon()
        registry = d.url("/npm/")
        first = NpmClient(self, registry)
        proj = first.project()
        first.run(proj, "install", "av-app")
        self.assertEqual((installed(proj, "av-app"), installed(proj, "@av/base")), ("1.1.0", "1.1.0"))
        with open(os.path.join(proj, "package-lock.json")) as f:
            lock = json.load(f)
        self.assertEqual(lock["packages"]["node_modules/@av/base"]["resolved"],
                         registry + "@av/base/-/base-1.1.0.tgz")
        before = hits("npm", r"\.tgz$")
        ci = NpmClient(self, registry)
        ci_proj = ci.project(dependencies={"av-app": "^1.1.0"}, lock=to_public(lock, registry))
        out = ci.run(ci_proj, "ci")
        self.assertEqual((installed(ci_proj, "av-app"), installed(ci_proj, "@av/base")), ("1.1.0", "1.1.0"))
        self.assertNotIn("registry.npmjs.org", out.stderr)
        self.assertEqual(hits("npm", r"\.tgz$"), before)
        self.assertIn("GET /npm/@av/base/-/base-1.1.0.tgz 200 HIT", d.log())

    def test_view_and_outdated(self) -> None:
        """npm view lists both versions; npm outdated sees 1.1.0 over an installed 1.0.0."""
        d = self.daemon()
        npm = NpmClient(self, d.url("/npm/"))
        proj = npm.project()
        view = npm.run(proj, "view", "@av/base", "versions", "--json")
        self.assertEqual(json.loads(view.stdout), ["1.0.0", "1.1.0"])
        npm.run(proj, "install", "av-app@1.0.0", "--save-exact")
        self.assertEqual(installed(proj, "av-app"), "1.0.0")
        outdated = npm.run(proj, "outdated", "--json", check=False)
        self.assertEqual(json.loads(outdated.stdout)["av-app"]["latest"], "1.1.0")

    def test_publish_refused(self) -> None:
        """npm publish through the vault fails with npm's 405 and our reason."""
        d = self.daemon()
        npm = NpmClient(self, d.url("/npm/"))
        proj = npm.project("av-never", private=False)
        with open(npm.userconfig, "w") as f:
            f.write(f"//127.0.0.1:{d.port}/npm/:_authToken=x\n")
        p = npm.run(proj, "publish", check=False)
        self.assertNotEqual(p.returncode, 0)
        self.assertIn("405", p.stderr)
        self.assertIn("read-only", p.stderr)


class RelayTests(_Case):
    def test_search_and_ping(self) -> None:
        """npm search goes to the registry through the vault; npm ping is answered."""
        d = self.daemon()
        npm = NpmClient(self, d.url("/npm/"))
        proj = npm.project()
        found = npm.run(proj, "search", "av-app", "--json")
        self.assertIn("av-app", [p["name"] for p in json.loads(found.stdout)])
        npm.run(proj, "ping")
        self.assertIn("GET /npm/-/v1/search 200 PASS", d.log())

    def test_audit_with_the_registry_down_fails_fast_and_says_why(self) -> None:
        """npm audit with the registry unreachable: a 502 at once that says so, not a hang."""
        d = Daemon([{"type": "npm", "config": {"prefix": "/npm/", "registry_url": "http://127.0.0.1:9/"}}])
        self.addCleanup(d.cleanup)
        d.start()
        npm = NpmClient(self, d.url("/npm/"))
        proj = npm.project()
        started = time.monotonic()
        status, _, body = request("POST", d.url("/npm/-/npm/v1/security/advisories/bulk"), {"content-length": "0"})
        # (refused at once: well within the 30 s the vault would wait for an answer)
        self.assertLess(time.monotonic() - started, 10)
        self.assertEqual(status, 502)
        self.assertIn("127.0.0.1:9", json.loads(body)["error"])
        p = npm.run(proj, "search", "anything", "--fetch-retries=0", check=False)
        self.assertNotEqual(p.returncode, 0)
        self.assertIn("502", p.stderr)


class OtherClientTests(_Case):
    def _client(self, tool: str, *args: str) -> str:
        """Run C{tool} (yarn or pnpm from the kit) in a fresh project, with a fresh HOME (no user config)."""
        path = os.path.join(KIT_BIN, tool)
        if not os.path.exists(path):
            raise SkipTest(f"{tool} is not in the kit: run tests/upstreams/npm-kit-install")
        npm = NpmClient(self, "")
        proj = npm.project()
        home = os.path.join(npm.dir, "home")
        os.makedirs(home)
        env = {**npm_env(), "HOME": home, "XDG_CONFIG_HOME": home, "XDG_CACHE_HOME": home}
        env = {k: v for k, v in env.items() if not k.lower().startswith(("yarn_", "pnpm_"))}
        p = subprocess.run([path, *args], cwd=proj, env=env, capture_output=True, text=True, timeout=120)
        if p.returncode != 0:
            raise AssertionError(f"{tool} {' '.join(args)} failed:\n{p.stdout[-2000:]}\n{p.stderr[-2000:]}")
        return proj

    def test_yarn_v1(self) -> None:
        """yarn (v1) add resolves and fetches through the vault: its lockfile names the vault."""
        d = self.daemon()
        registry = d.url("/npm/")
        proj = self._client("yarn", "add", "av-app", "--registry", registry, "--no-progress",
                            "--non-interactive", "--cache-folder", "cache")
        self.assertEqual((installed(proj, "av-app"), installed(proj, "@av/base")), ("1.1.0", "1.1.0"))
        with open(os.path.join(proj, "yarn.lock")) as f:
            self.assertIn(f'resolved "{registry}@av/base/-/base-1.1.0.tgz#', f.read())

    def test_pnpm(self) -> None:
        """
        pnpm add resolves and fetches through the vault (it asks for scoped
        names as @scope%2Fname, which the log shows decoded).
        """
        d = self.daemon()
        proj = self._client("pnpm", "add", "av-app", "--registry", d.url("/npm/"), "--store-dir", "store",
                            "--config.update-notifier=false")
        self.assertEqual(installed(proj, "av-app"), "1.1.0")
        self.assertIn("GET /npm/@av/base 200", d.log())
        self.assertIn("GET /npm/@av/base/-/base-1.1.0.tgz 200", d.log())


class OfflineTests(_Case):
    def test_ci_and_install_with_the_registry_stopped(self) -> None:
        """
        Installed once, then the registry stops: npm ci (fresh cache) gets
        every tarball from the vault, and npm install gets the stale
        packuments (X-Cache: STALE) and the tarballs.
        """
        d = self.daemon(metadata_ttl="1s")
        registry = d.url("/npm/")
        first = NpmClient(self, registry)
        proj = first.project()
        first.run(proj, "install", "av-app@1.1.0")
        with open(os.path.join(proj, "package-lock.json")) as f:
            lock = json.load(f)
        self.addCleanup(upstream_url, "npm")  # (started again for the tests after this one)
        stop_upstream("npm")
        self.assertIsNone(_status(self.upstream + "/-/ping"))
        deadline = time.monotonic() + 10  # until metadata_ttl has passed: the copy is stale now
        while _cache_status(d.url("/npm/av-app")) != "STALE" and time.monotonic() < deadline:
            time.sleep(0.1)
        self.assertEqual(_cache_status(d.url("/npm/@av/base")), "STALE")
        ci = NpmClient(self, registry)
        ci_proj = ci.project(dependencies={"av-app": "1.1.0"}, lock=to_public(lock, registry))
        ci.run(ci_proj, "ci")
        self.assertEqual(installed(ci_proj, "@av/base"), "1.1.0")
        again = NpmClient(self, registry)
        again_proj = again.project()
        again.run(again_proj, "install", "av-app@1.1.0")
        self.assertEqual(installed(again_proj, "av-app"), "1.1.0")
        self.assertIn("GET /npm/av-app 200 STALE", d.log())


def _cache_status(url: str) -> str | None:
    status, headers, _ = request("GET", url, {"accept": "application/vnd.npm.install-v1+json"})
    return headers.get("x-cache") if status == 200 else None


def _status(url: str) -> int | None:
    try:
        return request("GET", url, timeout=2)[0]
    except OSError:
        return None


class IntegrityTests(_Case):
    def test_corrupted_tarball_refused(self) -> None:
        """
        A tarball whose bytes upstream no longer match the packument's
        integrity: npm fails, the vault stores nothing and fetches again next
        time (never serving the bad bytes as good).
        """
        name = f"av-corrupt-{uuid.uuid4().hex[:8]}"
        publish([{"name": name, "version": "1.0.0", "size": 256 * 1024}])
        stored = os.path.join(upstream_dir("npm"), "storage", name, f"{name}-1.0.0.tgz")
        with open(stored, "r+b") as f:
            f.seek(100 * 1024)
            data = f.read(16)
            f.seek(100 * 1024)
            f.write(bytes(b ^ 0xFF for b in data))
        d = self.daemon()
        npm = NpmClient(self, d.url("/npm/"))
        proj = npm.project()
        p = npm.run(proj, "install", name, "--fetch-retries=0", check=False)
        self.assertNotEqual(p.returncode, 0, p.stdout)
        # (the vault answers 502 when it knew before sending, else it holds the
        # last byte back and cuts the connection: npm says E502 or ECONNRESET)
        self.assertTrue(any(code in p.stderr for code in ("E502", "ECONNRESET", "EINTEGRITY")), p.stderr[-1500:])
        self.assertFalse(os.path.exists(os.path.join(proj, "node_modules", name)))
        self.assertIn("expected", d.log())  # the vault's digest mismatch
        tarball = f"^GET /{name}/-/{name}-1.0.0\\.tgz$"
        fetched = hits("npm", tarball)
        with open(stored, "rb") as f:
            bad = f.read()
        try:
            answer = request("GET", d.url(f"/npm/{name}/-/{name}-1.0.0.tgz"))
        except OSError:  # the connection cut when the digest did not match: the way it should end
            answer = None
        self.assertNotEqual(answer and answer[::2], (200, bad))
        self.assertEqual(wait_for_hits("npm", tarball, fetched + 1), fetched + 1)  # nothing was stored

    def test_ten_concurrent_cold_requests_one_fetch(self) -> None:
        """Ten clients at once for one cold 2 MB tarball: each gets the verified bytes; one upstream GET."""
        name = f"av-conc-{uuid.uuid4().hex[:8]}"
        publish([{"name": name, "version": "1.0.0", "size": 2 * 1024 * 1024}])
        status, _, doc = request("GET", f"{self.upstream}/{name}")
        integrity = json.loads(doc)["versions"]["1.0.0"]["dist"]["integrity"]
        d = self.daemon()
        url = d.url(f"/npm/{name}/-/{name}-1.0.0.tgz")
        results: list[Any] = [None] * 10
        start = threading.Barrier(10)

        def fetch(i: int) -> None:
            start.wait()
            results[i] = request("GET", url)
        threads = [threading.Thread(target=fetch, args=(i,)) for i in range(10)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        for status, _, body in results:
            self.assertEqual(status, 200)
            self.assertEqual("sha512-" + base64.b64encode(hashlib.sha512(body).digest()).decode(), integrity)
        self.assertEqual(hits("npm", f"^GET /{name}/-/{name}-1\\.0\\.0\\.tgz$"), 1)
        self.assertEqual(hits("npm", f"^GET /{name}$"), 2)  # ours above, and the vault's one


class PublicRegistryTests(TestCase):
    def test_install_from_the_public_registry(self) -> None:
        """
        Opt-in (AV_TEST_PUBLIC_NPM=1): the vault with its default registry
        installs a small real package and serves it again from its cache.
        """
        if os.environ.get("AV_TEST_PUBLIC_NPM") != "1":
            raise SkipTest("talks to the public npm registry: set AV_TEST_PUBLIC_NPM=1 to run it")
        if NPM is None:
            raise SkipTest("npm is not installed")
        d = Daemon([{"type": "npm", "config": {}}])
        self.addCleanup(d.cleanup)
        d.start()
        status, _, body = request("GET", d.url("/npm/is-number"), {"accept": "application/vnd.npm.install-v1+json"})
        if status in (502, 504):
            raise SkipTest(f"the public npm registry cannot be reached from here: {body[:200]!r}")
        self.assertEqual(status, 200)
        npm = NpmClient(self, d.url("/npm/"))
        proj = npm.project()
        npm.run(proj, "install", "is-number@7.0.0")
        self.assertEqual(installed(proj, "is-number"), "7.0.0")
        again = NpmClient(self, d.url("/npm/"))
        with open(os.path.join(proj, "package-lock.json")) as f:
            lock = to_public(json.load(f), d.url("/npm/"))
        again_proj = again.project(dependencies={"is-number": "7.0.0"}, lock=lock)
        again.run(again_proj, "ci")
        self.assertIn("is-number-7.0.0.tgz 200 HIT", d.log())
