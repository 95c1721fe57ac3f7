"""
Client authentication through the real daemon, with real clients and the
files htpasswd -B writes: curl (``-u`` and a bearer token), pip and uv
(credentials in the index URL, a token as the password), skopeo
(``--src-creds``, after the ``/v2/`` challenge), against the kit's nginx,
pypiserver and distribution registry. Also: the pages under ``/-/``, the
admin token, what is logged (never a secret), and the failure limit.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile

from twisted.trial.unittest import TestCase

from tests import support
from tests.test_apt_clients import PROXY_HOST, AptTestCase, pool, sha256_file
from tests.test_apt_clients import key as apt_key
from tests.test_apt_clients import kit as apt_kit
from tests.fakeupstream import FakeUpstream, Script
from tests.test_pypi_clients import UV
from tests.test_warm import run_warm

PASSWORD = "s3cret-pa55"
TOKEN = "ci-0123456789abcdef0123456789"
ADMIN = "admin-0123456789abcdef0123456789"


def write_credentials(directory: str) -> tuple[str, str]:
    """An htpasswd file made by htpasswd -B (alice, bob) and a tokens file (ci)."""
    htpasswd = os.path.join(directory, "htpasswd")
    for i, user in enumerate(("alice", "bob")):
        subprocess.run(["htpasswd", "-bB", "-C", "5", *(["-c"] if i == 0 else []), htpasswd, user, PASSWORD],
                       check=True, capture_output=True)
    tokens = os.path.join(directory, "tokens")
    with open(tokens, "w") as f:
        f.write(f"# the CI's token\nci:{TOKEN}\n")
    return htpasswd, tokens


def curl(*args: str) -> tuple[int, str]:
    """curl's status code and response headers (lower-cased names) for one request."""
    p = subprocess.run(["curl", "-s", "-o", "/dev/null", "-D", "-", "-w", "%{http_code}", *args],
                       capture_output=True, text=True, timeout=60)
    lines = p.stdout.strip().splitlines()
    return int(lines[-1]), "\n".join(lines[:-1]).lower()


class _Shared:
    """One daemon for the client tests, with a pypi, a registry and two http backends."""

    def __init__(self) -> None:
        self.tmp = tempfile.mkdtemp(prefix="av-auth-test-")
        htpasswd, tokens = write_credentials(self.tmp)
        self.daemon = support.Daemon([
            {"type": "pypi", "config": {"prefix": "/pypi/", "index_url": support.upstream_url("pypi") + "/simple/",
                                        "access": "authenticated"}},
            {"type": "pypi", "config": {"prefix": "/open/", "index_url": support.upstream_url("pypi") + "/simple/"}},
            {"type": "dockerhub", "config": {"prefix": "/hub/", "registry_url": support.upstream_url("reg"),
                                             "access": ["alice", "builders"]}},
            {"type": "http", "config": {"prefix": "/files/", "base_url": support.upstream_url("files"),
                                        "access": "authenticated"}},
            # (credentials of its own: authenticated by default)
            {"type": "http", "config": {"prefix": "/private/", "base_url": support.upstream_url("files"),
                                        "headers": {"X-Api-Key": "upstream-key-123"}}},
        ], auth={"htpasswd": htpasswd, "tokens_file": tokens, "groups": {"builders": ["ci"]}},
            admin_token=ADMIN).start()

    def close(self) -> None:
        self.daemon.cleanup()
        shutil.rmtree(self.tmp, ignore_errors=True)


class CurlTests(TestCase):
    timeout = 120

    def setUp(self) -> None:
        self.d = support.shared_fixture(_Shared).daemon

    def test_basic_and_bearer(self) -> None:
        """No credentials: 401 asking for Basic; curl -u and a bearer token: 200 with the upstream's bytes; wrong: 401."""
        url = self.d.url("/files/small.bin")
        status, headers = curl(url)
        self.assertEqual(status, 401)
        self.assertIn('www-authenticate: basic realm="artifactvault"', headers)
        self.assertEqual(curl("-u", f"alice:{PASSWORD}", url)[0], 200)
        self.assertEqual(curl("-H", f"Authorization: Bearer {TOKEN}", url)[0], 200)
        self.assertEqual(curl("-u", f"ci:{TOKEN}", url)[0], 200)
        self.assertEqual(curl("-u", "alice:not-the-password", url)[0], 401)
        self.assertEqual(curl("-H", "Authorization: Bearer not-a-token-at-all", url)[0], 401)
        out = subprocess.run(["curl", "-sf", "-u", f"bob:{PASSWORD}", url], capture_output=True, timeout=60).stdout
        with open(os.path.join(support.upstream_dir("files"), "www", "small.bin"), "rb") as f:
            self.assertEqual(out, f.read())

    def test_default_for_upstream_credentials(self) -> None:
        """A backend with upstream credentials (here, an API key header) and no access: is authenticated."""
        self.assertEqual(curl(self.d.url("/private/small.bin"))[0], 401)
        self.assertEqual(curl("-u", f"alice:{PASSWORD}", self.d.url("/private/small.bin"))[0], 200)

    def test_pages_and_admin(self) -> None:
        """/-/health is open; /-/metrics and /-/status need a user; /-/admin/ its own token, not a user's."""
        self.assertEqual(curl(self.d.url("/-/health"))[0], 200)
        for page in ("/-/metrics", "/-/status", "/-/status.json"):
            self.assertEqual(curl(self.d.url(page))[0], 401, page)
            self.assertEqual(curl("-u", f"alice:{PASSWORD}", self.d.url(page))[0], 200, page)
        purge = ["-X", "POST", "-H", "Content-Type: application/json", "--data", '{"path": "/files/x"}',
                 self.d.url("/-/admin/purge")]
        self.assertEqual(curl("-u", f"alice:{PASSWORD}", *purge)[0], 401)
        self.assertEqual(curl("-H", f"Authorization: Bearer {TOKEN}", *purge)[0], 401)
        self.assertEqual(curl("-H", f"Authorization: Bearer {ADMIN}", *purge)[0], 200)
        out = subprocess.run(["curl", "-sf", "-u", f"alice:{PASSWORD}", self.d.url("/-/metrics")],
                             capture_output=True, text=True, timeout=60).stdout
        self.assertRegex(out, r"(?m)^artifactvault_auth_failures_total \d+\.0$")
        self.assertRegex(out, r"(?m)^artifactvault_auth_denied_total \d+\.0$")

    def test_log_names_user_never_secret(self) -> None:
        """A failed login is logged with the user name; no password or token is in the log."""
        curl("-u", "alice:wr0ng-guess-xyz", self.d.url("/files/small.bin"))
        self.d.wait_log("authentication failed for user alice from 127.0.0.1")
        log = self.d.log()
        for secret in (PASSWORD, TOKEN, "wr0ng-guess-xyz", ADMIN):
            self.assertNotIn(secret, log)


class WarmTests(TestCase):
    timeout = 300

    def test_warm_with_credentials(self) -> None:
        """artifactvault warm with user:password in --vault fills an authenticated backend (pip's
        resolution included); the password is shown nowhere; without credentials it fails with the 401."""
        d = support.shared_fixture(_Shared).daemon
        requirements = os.path.abspath(self.mktemp())
        with open(requirements, "w") as f:
            f.write("idna\n")
        warm = os.path.join(os.path.dirname(sys.executable), "artifactvault")
        p = subprocess.run([warm, "warm", "--vault", f"http://alice:{PASSWORD}@127.0.0.1:{d.port}",
                            "-r", requirements, "--url", "/files/medium.bin"],
                           capture_output=True, text=True, timeout=240, env=support.pip_env())
        self.assertEqual(p.returncode, 0, p.stdout + p.stderr)
        self.assertNotIn(PASSWORD, p.stdout + p.stderr)
        p = subprocess.run([warm, "warm", "--vault", d.base, "--url", "/files/medium.bin"],
                           capture_output=True, text=True, timeout=240, env=support.pip_env())
        self.assertEqual(p.returncode, 1)
        self.assertIn("401", p.stdout + p.stderr)


class PipTests(TestCase):
    timeout = 300

    def setUp(self) -> None:
        self.d = support.shared_fixture(_Shared).daemon

    def venv(self) -> str:
        path = os.path.abspath(self.mktemp())
        subprocess.run([sys.executable, "-m", "venv", "--without-pip", path], check=True)
        return os.path.join(path, "bin", "python")

    def index(self, user: str | None, password: str = "", prefix: str = "/pypi/") -> str:
        creds = f"{user}:{password}@" if user else ""
        return f"http://{creds}127.0.0.1:{self.d.port}{prefix}"

    def pip(self, index: str, *args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "pip", "--python", self.venv(), "--isolated", "install",
                               "--no-cache-dir", "--retries", "0", "--no-input", "--index-url", index, *args],
                              env=support.pip_env(), capture_output=True, text=True, timeout=240)

    def uv(self, index: str, *args: str) -> subprocess.CompletedProcess:
        return subprocess.run([UV, "pip", "install", "--no-cache", "--python", self.venv(), "--index-url", index,
                               *args], env=support.pip_env(), capture_output=True, text=True, timeout=240)

    def assertOk(self, p: subprocess.CompletedProcess) -> None:
        self.assertEqual(p.returncode, 0, f"{p.args} failed:\n{p.stdout[-2000:]}\n{p.stderr[-2000:]}")

    def test_pip(self) -> None:
        """pip with user:password in the index URL installs; without credentials it is refused."""
        self.assertOk(self.pip(self.index("alice", PASSWORD), "idna"))
        refused = self.pip(self.index(None), "idna")
        self.assertNotEqual(refused.returncode, 0)
        self.assertIn("No matching distribution", refused.stderr)  # (pip --no-input does not say why)
        self.d.wait_log("GET /pypi/idna/ 401")

    def test_uv(self) -> None:
        """uv with a token as the password installs; with a wrong password it is refused."""
        self.assertOk(self.uv(self.index("ci", TOKEN), "idna"))
        self.assertNotEqual(self.uv(self.index("bob", "wrong-password"), "idna").returncode, 0)

    def test_anonymous_backend(self) -> None:
        """An anonymous backend needs nothing (and ignores the credentials a client sends anyway)."""
        self.assertOk(self.pip(self.index(None, prefix="/open/"), "idna"))
        self.assertOk(self.uv(self.index("alice", "whatever", prefix="/open/"), "idna"))


class SkopeoTests(TestCase):
    timeout = 300

    def setUp(self) -> None:
        self.d = support.shared_fixture(_Shared).daemon
        self.dest = os.path.abspath(self.mktemp())

    def copy(self, *creds: str) -> subprocess.CompletedProcess:
        shutil.rmtree(self.dest, ignore_errors=True)
        return subprocess.run(["skopeo", "copy", "-q", "--all", "--src-tls-verify=false", *creds,
                               f"docker://127.0.0.1:{self.d.port}/hub/library/hello:latest", f"oci:{self.dest}:latest"],
                              capture_output=True, text=True, timeout=120)

    def test_src_creds(self) -> None:
        """skopeo --src-creds (a listed user, a listed group's token user) pulls; none or another user's is refused."""
        ok = self.copy("--src-creds", f"alice:{PASSWORD}")
        self.assertEqual(ok.returncode, 0, ok.stderr[-2000:])
        self.assertTrue(os.path.exists(os.path.join(self.dest, "index.json")))
        ok = self.copy("--src-creds", f"ci:{TOKEN}")
        self.assertEqual(ok.returncode, 0, ok.stderr[-2000:])
        self.assertNotEqual(self.copy("--no-creds").returncode, 0)
        denied = self.copy("--src-creds", f"bob:{PASSWORD}")
        self.assertNotEqual(denied.returncode, 0)
        self.assertRegex(denied.stderr, "denied|403|DENIED")

    def test_version_check(self) -> None:
        """/v2/ answers 401 with a Basic challenge (so clients send credentials), 200 with them."""
        status, headers = curl(self.d.url("/v2/"))
        self.assertEqual(status, 401)
        self.assertIn("www-authenticate: basic realm=", headers)
        self.assertEqual(curl("-u", f"alice:{PASSWORD}", self.d.url("/v2/"))[0], 200)


class HeaderTests(TestCase):
    """What crosses the vault: a client's credentials and cookies never go upstream; an upstream's never come back."""

    timeout = 120

    def setUp(self) -> None:
        tmp = tempfile.mkdtemp(prefix="av-auth-headers-")
        self.addCleanup(shutil.rmtree, tmp, True)
        htpasswd, tokens = write_credentials(tmp)
        self.up = FakeUpstream()
        self.addCleanup(self.up.close)
        self.up.scripts["/a.bin"] = Script(body=b"x" * 1000, headers={
            "Set-Cookie": "session=upstream-secret", "Proxy-Authenticate": "Basic realm=up",
            "Authentication-Info": "nextnonce=1", "Content-Type": "application/octet-stream"})
        self.d = support.Daemon([{"type": "http", "config": {"prefix": "/files/", "base_url": self.up.base,
                                                             **self.backend_config()}}],
                                auth={"htpasswd": htpasswd, "tokens_file": tokens})
        self.addCleanup(self.d.cleanup)
        self.d.start()

    def backend_config(self) -> dict:
        return {"access": "authenticated"}

    def test_not_forwarded_not_replayed(self) -> None:
        """Authorization, Cookie and Proxy-* of the client never reach the upstream; its Set-Cookie,
        Proxy-Authenticate and Authentication-Info reach no client, on the miss or the hit."""
        for _ in range(2):  # a miss, then a hit
            status, headers = curl("-u", f"alice:{PASSWORD}", "-H", "Cookie: client=secret",
                                   "-H", "Proxy-Authorization: Basic cHJveHk6cHc=", "-H", "Proxy-Foo: 1",
                                   self.d.url("/files/a.bin"))
            self.assertEqual(status, 200)
            for name in ("set-cookie", "proxy-authenticate", "authentication-info"):
                self.assertNotIn(name + ":", headers)
        self.assertTrue(self.up.requests)
        for _method, _path, headers in self.up.requests:
            sent = {k.lower() for k in headers}
            for name in ("authorization", "cookie", "proxy-authorization", "proxy-foo"):
                self.assertNotIn(name, sent)


class UpstreamFreshnessHeaderTests(HeaderTests):
    """The same with C{freshness: upstream}, where the http backend passes a client's request
    fields upstream: with auth configured, the client's Authorization is the vault's and stays."""

    def backend_config(self) -> dict:
        return {"access": "authenticated", "freshness": "upstream"}


class AptTests(AptTestCase):
    """apt-get with credentials: as a proxy client (Proxy-Authorization after a 407) and by path (auth.conf)."""

    def test_proxy_and_path_forms(self) -> None:
        """apt-get update and download through an authenticated apt backend, both ways; without
        credentials the proxy form is refused with 407."""
        tmp = tempfile.mkdtemp(prefix="av-auth-apt-")
        self.addCleanup(shutil.rmtree, tmp, True)
        htpasswd, tokens = write_credentials(tmp)
        name = self.repo()
        d = support.Daemon([{"type": "apt", "config": {"prefix": "/debian/", "mirror_url": f"{apt_kit()}/{name}",
                                                       "hosts": [PROXY_HOST], "access": "authenticated"}}],
                           auth={"htpasswd": htpasswd})
        self.addCleanup(d.cleanup)
        d.start()
        refused = self.client(f"http://{PROXY_HOST}/{name}", proxy=d.url("/")).run("update")
        self.assertIn("407", refused.stdout + refused.stderr)
        c = self.client(f"http://{PROXY_HOST}/{name}", proxy=f"http://alice:{PASSWORD}@127.0.0.1:{d.port}/")
        c.ok("update")
        c.ok("download", "av-pkg-01")
        self.assertEqual(sha256_file(c.out("av-pkg-01_1.0-1_all.deb")), self.upstream_sha(name, pool("av-pkg-01")))
        netrc = os.path.join(tmp, "auth.conf")
        with open(netrc, "w") as f:
            f.write(f"machine http://127.0.0.1:{d.port}/debian login bob password {PASSWORD}\n")
        os.chmod(netrc, 0o600)
        c = self.client(d.url("/debian"), **{"Dir::Etc::netrc": netrc})
        c.ok("update")
        c.ok("download", "av-pkg-01")

    def test_warm_with_credentials(self) -> None:
        """artifactvault warm --apt with user:password in --vault: apt-get is given them (in an auth.conf),
        the password is shown nowhere; without credentials apt-get update fails with the 401."""
        tmp = tempfile.mkdtemp(prefix="av-auth-apt-")
        self.addCleanup(shutil.rmtree, tmp, True)
        htpasswd, tokens = write_credentials(tmp)
        d = support.Daemon([{"type": "apt", "config": {"prefix": "/debian/", "mirror_url": f"{apt_kit()}/{self.repo()}",
                                                       "access": "authenticated"}}], auth={"htpasswd": htpasswd})
        self.addCleanup(d.cleanup)
        d.start()
        items = ["--apt", f"deb [signed-by={apt_key()}] /debian/ stable main", "--deb", "av-pkg-01"]
        status, out = run_warm(f"http://alice:{PASSWORD}@127.0.0.1:{d.port}", *items)
        self.assertEqual(status, 0, out)
        self.assertRegex(out, r"apt av-pkg-01 +│ fetched +│ +1 │ +1 │")
        self.assertNotIn(PASSWORD, out)
        status, out = run_warm(d.base, *items)
        self.assertEqual(status, 1)
        self.assertIn("apt-get update failed", out)
        self.assertIn("401", out)


class LimitTests(TestCase):
    timeout = 120

    def test_failures_limited(self) -> None:
        """After max_failures wrong passwords from one address: 429 with Retry-After, even for a right
        password not verified before; one verified before still passes."""
        tmp = tempfile.mkdtemp(prefix="av-auth-limit-")
        self.addCleanup(shutil.rmtree, tmp, True)
        htpasswd, tokens = write_credentials(tmp)
        d = support.Daemon([{"type": "http", "config": {"prefix": "/files/", "base_url": support.upstream_url("files"),
                                                        "access": "authenticated"}}],
                           auth={"htpasswd": htpasswd, "max_failures": 3, "failure_window": "10m"})
        self.addCleanup(d.cleanup)
        d.start()
        url = d.url("/files/small.bin")
        self.assertEqual(curl("-u", f"alice:{PASSWORD}", url)[0], 200)
        for _ in range(3):
            self.assertEqual(curl("-u", "bob:guess", url)[0], 401)
        status, headers = curl("-u", f"bob:{PASSWORD}", url)
        self.assertEqual(status, 429)
        self.assertIn("retry-after: ", headers)
        self.assertEqual(curl("-u", f"alice:{PASSWORD}", url)[0], 200)


class ReloadTests(TestCase):
    timeout = 120

    def test_files_edited_while_running(self) -> None:
        """
        The tokens and htpasswd files edited while the daemon runs: a revoked
        token (verified and remembered a moment before) gets 401, a new token
        and a new user get 200; a file broken by hand leaves them in force.
        """
        tmp = tempfile.mkdtemp(prefix="av-auth-reload-")
        self.addCleanup(shutil.rmtree, tmp, True)
        htpasswd, tokens = write_credentials(tmp)
        d = support.Daemon([{"type": "http", "config": {"prefix": "/files/", "base_url": support.upstream_url("files"),
                                                        "access": "authenticated"}}],
                           auth={"htpasswd": htpasswd, "tokens_file": tokens})
        self.addCleanup(d.cleanup)
        d.start()
        url = d.url("/files/small.bin")
        self.assertEqual(curl("-H", f"Authorization: Bearer {TOKEN}", url)[0], 200)
        new_token = "ci-fedcba9876543210fedcba98"
        with open(tokens, "w") as f:
            f.write(f"ci:{new_token}\n")
        subprocess.run(["htpasswd", "-bB", "-C", "5", htpasswd, "carol", PASSWORD], check=True, capture_output=True)
        d.wait_log("credential files read again: 4 users, 1 tokens")
        self.assertEqual(curl("-H", f"Authorization: Bearer {TOKEN}", url)[0], 401)
        self.assertEqual(curl("-H", f"Authorization: Bearer {new_token}", url)[0], 200)
        self.assertEqual(curl("-u", f"carol:{PASSWORD}", url)[0], 200)
        with open(tokens, "a") as f:
            f.write("dave:short\n")
        d.wait_log(f"{tokens}: line 2: user dave: a token must be at least 16 characters")
        self.assertEqual(curl("-H", f"Authorization: Bearer {new_token}", url)[0], 200)
        self.assertNotIn(new_token, d.log())
