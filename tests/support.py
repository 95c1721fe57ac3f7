"""
Helpers for integration tests: the real upstreams of the project's test kit
(``tests/upstreams``) and the real daemon, started as a subprocess on a free port.

Upstreams are started once per test run (their ``*-up`` scripts are
idempotent) under ``$AV_KIT_DIR`` (default ``/tmp/av-up``); count
requests they served with L{hits}. Nothing here talks to anything but
127.0.0.1.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from typing import Any

import yaml

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
UPSTREAMS = os.path.join(REPO, "tests", "upstreams")
UP_DIR = os.environ.get("AV_KIT_DIR", "/tmp/av-up")
#: The large file of files-up is made this big for tests (MiB).
LARGE_MB = int(os.environ.get("AV_TEST_LARGE_MB", "64"))

#: Ports of the upstreams; AV_KIT_PORT_OFFSET moves them all (for a
#: second checkout testing at the same time, with its own AV_KIT_DIR).
_OFFSET = int(os.environ.get("AV_KIT_PORT_OFFSET", "0"))
UPSTREAM_PORTS = {name: port + _OFFSET for name, port in
                  {"files": 18090, "pypi": 18081, "reg": 15000, "regauth": 15001,
                                   "apt": 18092, "slow": 18091, "npm": 14873, "tls": 18070}.items()}
TOKEN_PORT = 15002 + _OFFSET
#: The kit's S3 server (Ceph RGW) uses this port and the next nine.
S3_PORT = 17000 + _OFFSET

_started: set[str] = set()


class UpstreamUnavailable(Exception):
    pass


def upstream_dir(name: str) -> str:
    return os.path.join(UP_DIR, name)


def upstream_url(name: str) -> str:
    """
    Start upstream C{name} (files, pypi, reg, regauth, apt, slow, npm, tls)
    if needed; its base URL (``tls``: the one whose certificate its CA
    vouches for, L{tls_ca}; the next two ports serve a self-signed one and
    one for another name).
    """
    port = UPSTREAM_PORTS[name]
    if name not in _started:
        script = {"files": "files-up", "pypi": "pypi-up", "reg": "registry-up",
                  "regauth": "registry-auth-up", "apt": "apt-up", "slow": "slow-up",
                  "npm": "npm-up", "tls": "tls-up"}[name]
        args = [os.path.join(UPSTREAMS, script), upstream_dir(name), str(port)]
        if name == "regauth":
            args.append(str(TOKEN_PORT))
        if not os.path.exists(args[0]):
            raise UpstreamUnavailable(f"{args[0]} not found: the test kit is incomplete")
        env = dict(os.environ, UPSTREAMS_LARGE_MB=str(LARGE_MB), TLS_UP_PYTHON=sys.executable)
        p = subprocess.run(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        if p.returncode != 0:
            raise UpstreamUnavailable(f"{script} failed:\n{p.stdout[-2000:]}")
        _started.add(name)
    return f"{'https' if name == 'tls' else 'http'}://127.0.0.1:{port}"


def tls_ca() -> str:
    """The CA file that vouches for the certificate of upstream ``tls`` (started if needed)."""
    upstream_url("tls")
    return os.path.join(upstream_dir("tls"), "tls", "ca.pem")


class S3Kit:
    """
    The kit's S3 server (``tests/upstreams/s3-up``: Ceph RGW on a one-node
    cluster), started once per run: its endpoint, credentials and bucket.
    """

    def __init__(self) -> None:
        self.dir = upstream_dir("s3")
        self.port = S3_PORT
        self.start()
        with open(os.path.join(self.dir, "env"), encoding="utf-8") as f:
            self.env = dict(line.strip().split("=", 1) for line in f if "=" in line)
        self.endpoint = self.env["S3_ENDPOINT"]
        self.bucket = self.env["S3_BUCKET"]

    def start(self) -> None:
        """Start it (again: after L{stop_gateway}, the cluster comes back with its objects)."""
        script = os.path.join(UPSTREAMS, "s3-up")
        env = dict(os.environ, S3_UP_PYTHON=sys.executable, UPSTREAMS_S3_CHECK_MB="0")
        p = subprocess.run([script, self.dir, str(self.port)], env=env, stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT, text=True)
        if p.returncode != 0:
            if shutil.which("radosgw") is None:
                raise UpstreamUnavailable(f"this machine cannot run Ceph (radosgw could not be installed):\n"
                                          f"{p.stdout[-1500:]}")
            raise RuntimeError(f"s3-up failed:\n{p.stdout[-2000:]}")

    def store(self, prefix: str, **settings: Any) -> dict[str, Any]:
        """A daemon's ``store:`` section for this bucket, under C{prefix}."""
        return {"type": "s3", "endpoint_url": self.endpoint, "bucket": self.bucket, "prefix": prefix,
                "access_key_id_env": "AWS_ACCESS_KEY_ID", "secret_access_key_env": "AWS_SECRET_ACCESS_KEY",
                **settings}

    def daemon_env(self) -> dict[str, str]:
        return {k: v for k, v in self.env.items() if k.startswith("AWS_")}

    def gateway_pid(self) -> int | None:
        try:
            with open(os.path.join(self.dir, "pid")) as f:
                return int(f.read().split()[0])
        except (OSError, ValueError, IndexError):
            return None

    def stop_gateway(self) -> None:
        """Stop radosgw alone (the store goes away; the cluster keeps its objects)."""
        pid = self.gateway_pid()
        if pid is not None:
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                return
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline:
                try:
                    os.kill(pid, 0)
                except ProcessLookupError:
                    return
                time.sleep(0.05)

    def hits(self, pattern: str) -> int:
        """Requests radosgw logged since it started whose request line matches C{pattern}."""
        return hits("s3", pattern)

    def close(self) -> None:
        """Left running for the rest of the run (and later runs: a warm start is 4 s)."""


_s3_unavailable: list[UpstreamUnavailable] = []


def s3_kit() -> S3Kit:
    """The kit's S3 server, started on first use (L{UpstreamUnavailable} if this machine cannot run it)."""
    if _s3_unavailable:
        raise _s3_unavailable[0]
    try:
        return shared_fixture(S3Kit)
    except UpstreamUnavailable as e:
        _s3_unavailable.append(e)
        raise


#: Upstreams of their own for tests that stop them (the usual ones stay up for
#: every other test): (script, port), under $AV_KIT_DIR/<name>.
OWN_UPSTREAMS = {"files-own": ("files-up", 18095 + _OFFSET), "pypi-own": ("pypi-up", 18085 + _OFFSET),
                 "reg-own": ("registry-up", 15010 + _OFFSET)}


def own_upstream(name: str) -> str:
    """Start (if needed) an upstream of L{OWN_UPSTREAMS} that a test may stop; its base URL."""
    script, port = OWN_UPSTREAMS[name]
    env = dict(os.environ, UPSTREAMS_LARGE_MB=str(LARGE_MB))
    p = subprocess.run([os.path.join(UPSTREAMS, script), upstream_dir(name), str(port)], env=env,
                       stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if p.returncode != 0:
        raise UpstreamUnavailable(f"{script} failed:\n{p.stdout[-2000:]}")
    return f"http://127.0.0.1:{port}"


def stop_upstream(name: str) -> None:
    subprocess.run([os.path.join(UPSTREAMS, "down"), upstream_dir(name)],
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True)
    _started.discard(name)


def hits(name: str, pattern: str, log: str | None = None) -> int:
    """How many requests upstream C{name} has logged that match C{pattern}."""
    args = [os.path.join(UPSTREAMS, "hits"), upstream_dir(name), pattern] + ([log] if log else [])
    return int(subprocess.run(args, capture_output=True, text=True, check=True).stdout)


def wait_for_hits(name: str, pattern: str, expected: int, timeout: float = 5.0) -> int:
    """Poll until C{hits} reaches C{expected} (servers log right after responding)."""
    deadline = time.monotonic() + timeout
    while True:
        n = hits(name, pattern)
        if n >= expected or time.monotonic() > deadline:
            return n
        time.sleep(0.05)


class AccessLog:
    """
    What upstream C{name} of the kit logged from now on: (method, path,
    status, length) per request (where L{hits} counts request lines only).
    """

    LINE = re.compile(r'"([A-Z]+) (\S+) HTTP/[0-9.]+" (\d{3}) (\S+)')

    def __init__(self, name: str):
        self.path = os.path.join(upstream_dir(name), "access.log")
        self.start = os.path.getsize(self.path) if os.path.exists(self.path) else 0

    def wait(self, path_pattern: str, count: int, timeout: float = 10.0) -> list[tuple[str, str, int, str]]:
        """Poll until C{count} requests matching are logged (servers log as they answer); those requests."""
        deadline = time.monotonic() + timeout
        while len(found := self.requests(path_pattern)) < count and time.monotonic() < deadline:
            time.sleep(0.02)
        return found

    def requests(self, path_pattern: str = "") -> list[tuple[str, str, int, str]]:
        with open(self.path, "rb") as f:
            f.seek(self.start)
            lines = f.read().decode("utf-8", "replace").splitlines()
        out = []
        for line in lines:
            m = self.LINE.search(line)
            if m and re.search(path_pattern, m.group(2)):
                out.append((m.group(1), m.group(2), int(m.group(3)), m.group(4)))
        return out


def new_upstream_file(source: str = "medium.bin", suffix: str = ".bin") -> tuple[str, str]:
    """
    A name the vault has never seen for an existing file of files-up (a hard
    link, so no copy): returns (name, sha256 hex). Remove with L{drop_upstream_file}.
    """
    upstream_url("files")
    www = os.path.join(upstream_dir("files"), "www")
    name = f"t-{uuid.uuid4().hex[:12]}{suffix}"
    os.link(os.path.join(www, source), os.path.join(www, name))
    return name, sha256_file(os.path.join(www, name))


def write_upstream_file(data: bytes, suffix: str = ".bin") -> str:
    upstream_url("files")
    name = f"t-{uuid.uuid4().hex[:12]}{suffix}"
    with open(os.path.join(upstream_dir("files"), "www", name), "wb") as f:
        f.write(data)
    return name


def drop_upstream_file(name: str) -> None:
    try:
        os.unlink(os.path.join(upstream_dir("files"), "www", name))
    except FileNotFoundError:
        pass


_sha_memo: dict[tuple[str, float, int], str] = {}


def sha256_file(path: str) -> str:
    st = os.stat(path)
    memo = (path, st.st_mtime, st.st_ino)
    if memo not in _sha_memo:
        h = hashlib.sha256()
        with open(path, "rb") as f:
            while chunk := f.read(1 << 20):
                h.update(chunk)
        _sha_memo[memo] = h.hexdigest()
    return _sha_memo[memo]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def twistd() -> str:
    return os.path.join(os.path.dirname(sys.executable), "twistd")


class Daemon:
    """The real daemon, as ``twistd -n artifactvault --config FILE``."""

    def __init__(self, backends: list[dict[str, Any]], **top: Any):
        self.dir = tempfile.mkdtemp(prefix="av-daemon-")
        self.port = free_port()
        self.cache_dir = os.path.join(self.dir, "cache")
        # (a short graceful stop: most tests stop a daemon with downloads still in flight)
        self.config = {"http_host": "127.0.0.1", "http_port": self.port,
                       "cache_dir": self.cache_dir, "log_level": "debug", "shutdown_timeout": 2,
                       "backends": backends, **top}
        self.config_path = os.path.join(self.dir, "config.yml")
        self.log_path = os.path.join(self.dir, "twistd.log")
        self.proc: subprocess.Popen | None = None
        #: The CA of the daemon's certificate when it serves HTTPS (then C{base} is https).
        self.ca_file: str | None = None

    @property
    def base(self) -> str:
        return f"{'https' if self.ca_file else 'http'}://127.0.0.1:{self.port}"

    def url(self, path: str) -> str:
        return self.base + path

    def write_config(self) -> None:
        with open(self.config_path, "w") as f:
            yaml.safe_dump(self.config, f)

    def start(self, timeout: float = 20.0, env: dict[str, str] | None = None,
              args: list[str] | tuple[str, ...] = ()) -> "Daemon":
        """Start it (with C{args}, more options of the artifactvault command); poll until it answers."""
        self.write_config()
        log = open(self.log_path, "ab")
        logged = log.tell()
        self.proc = subprocess.Popen(
            [twistd(), "-n", "--pidfile=", "artifactvault", "--config", self.config_path, *args],
            stdout=log, stderr=subprocess.STDOUT, cwd=self.dir,
            env={**os.environ, **(env or {})})
        log.close()
        if wait_http(self.url("/-/health"), timeout, self.proc, ca_file=self.ca_file) != 200 \
                or not self._listening(timeout, logged):
            raise RuntimeError(f"daemon did not come up (exit status {self.proc.poll()}):\n"
                               f"{self.log()[-3000:]}")
        return self

    def _listening(self, timeout: float, logged: int) -> bool:
        """
        Whether it is this daemon that answers on its port: another one, of a
        test suite running beside this one, may have been given the same free
        port and answered the health check while this one failed to bind.
        """
        deadline = time.monotonic() + timeout
        line = re.compile(rb"starting on %d\b" % self.port)  # (plain and JSON-lines logs)
        while not line.search(self._log_since(logged)):
            if self.proc.poll() is not None or time.monotonic() > deadline:  # type: ignore[union-attr]
                return False
            time.sleep(0.02)
        return True

    def wait_stored(self, key: str, timeout: float = 30.0) -> None:
        """Poll until the entry for cache key C{key} is committed (its metadata exists)."""
        kh = hashlib.sha256(key.encode()).hexdigest()
        meta = os.path.join(self.cache_dir, "data", kh[:2], kh + ".json")
        deadline = time.monotonic() + timeout
        while not os.path.exists(meta):
            if time.monotonic() > deadline:
                raise AssertionError(f"{key} was not stored within {timeout} s")
            time.sleep(0.02)

    def wait_log(self, text: str, timeout: float = 30.0) -> None:
        """
        Poll until the daemon's log has C{text}. (After L{wait_stored}, the
        download that stored an entry may still be ending on the reactor: a
        request then joins it instead of reading the entry; its "stored …"
        line is logged once it has ended.)
        """
        deadline = time.monotonic() + timeout
        while text not in self.log():
            if time.monotonic() > deadline:
                raise AssertionError(f"{text!r} not logged within {timeout} s")
            time.sleep(0.02)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def kill9(self) -> None:
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait()
        self.proc = None

    def cleanup(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)

    def _log_since(self, offset: int) -> bytes:
        with open(self.log_path, "rb") as f:
            f.seek(offset)
            return f.read()

    def log(self) -> str:
        try:
            with open(self.log_path, encoding="utf-8", errors="replace") as f:
                return f.read()
        except FileNotFoundError:
            return ""


def wait_http(url: str, timeout: float = 20.0, proc: subprocess.Popen | None = None,
              ca_file: str | None = None) -> int | None:
    """Poll C{url} until it answers; its status, or None if C{proc} died or time ran out."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            return None
        try:
            return request("GET", url, timeout=1, ca_file=ca_file)[0]
        except OSError:
            time.sleep(0.05)
    return None


def request(method: str, url: str, headers: dict[str, str] | None = None,
            timeout: float = 60.0, body: bytes | None = None,
            ca_file: str | None = None) -> tuple[int, dict[str, str], bytes]:
    """
    One HTTP request with a fresh connection: (status, lower-cased headers,
    body). An https URL is verified against C{ca_file}.
    """
    scheme, _, rest = url.partition("://")
    assert scheme in ("http", "https") and (rest.startswith("127.0.0.1:") or rest.startswith("[::1]:")), url
    hostport, _, path = rest.partition("/")
    host, _, port = hostport.rpartition(":")
    if scheme == "https":
        import ssl
        context = ssl.create_default_context(cafile=ca_file)
        conn: http.client.HTTPConnection = http.client.HTTPSConnection(
            host.strip("[]"), int(port), timeout=timeout, context=context)
    else:
        conn = http.client.HTTPConnection(host.strip("[]"), int(port), timeout=timeout)
    try:
        conn.request(method, "/" + path, body=body, headers=headers or {})
        resp = conn.getresponse()
        body = resp.read()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, body
    finally:
        conn.close()


def get_json(url: str, headers: dict[str, str] | None = None) -> Any:
    status, _, body = request("GET", url, headers)
    assert status == 200, (status, body[:200])
    return json.loads(body)


def no_proxy_env() -> dict[str, str]:
    """
    This process's environment without its proxy variables (C{http_proxy},
    C{NO_PROXY}, …): a client run in it talks to the vault directly, or
    through the proxy its own options name (a C{no_proxy} that lists
    127.0.0.1 would bypass even that).
    """
    return {k: v for k, v in os.environ.items() if not k.lower().endswith("_proxy")}


def pip_env() -> dict[str, str]:
    """An environment in which pip sees only the index it is given."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIP_")}
    env["PIP_CONFIG_FILE"] = os.devnull
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    env["UV_NO_CONFIG"] = "1"
    return env


_fixtures: dict[Any, Any] = {}


def shared_fixture(factory: Any) -> Any:
    """
    One C{factory()} for the whole test run (trial has no setUpClass), made
    on first use; its C{close()} runs at exit.
    """
    if factory not in _fixtures:
        import atexit
        _fixtures[factory] = fixture = factory()
        atexit.register(fixture.close)
    return _fixtures[factory]


def fake_behind_daemon(testcase: Any) -> tuple[Any, Daemon]:
    """
    A scripted upstream (L{tests.fakeupstream.FakeUpstream}) behind the real
    daemon's http backend at C{/fake/}, started; both cleaned up after C{testcase}.
    """
    from tests.fakeupstream import FakeUpstream
    fake = FakeUpstream()
    testcase.addCleanup(fake.close)
    daemon = Daemon([{"type": "http", "config": {"prefix": "/fake/", "base_url": fake.base}}])
    testcase.addCleanup(daemon.cleanup)
    daemon.start()
    return fake, daemon


def download_temp_files(cache_dir: str) -> list[str]:
    """
    The daemon's temp files holding bytes: its downloads'. The empty ones are
    made ahead for the next downloads (Spool.prepare), never more than READY.
    """
    from artifactvault.cache.spool import READY
    tmp = os.path.join(cache_dir, "tmp")
    names = os.listdir(tmp)
    # (a few downloads may be under way besides: more would be temp files left behind, empty ones too)
    assert len(names) <= READY + 4, f"more temp files than those made ahead and a few downloads: {names}"
    out = []
    for name in names:
        try:
            if os.path.getsize(os.path.join(tmp, name)) > 0:
                out.append(name)
        except FileNotFoundError:
            pass  # (removed while we looked)
    return sorted(out)


# -- descriptors -----------------------------------------------------------------

def descriptors(pid: int) -> dict[int, str]:
    """Process C{pid}'s open descriptors: number → what it refers to (a path, ``socket:[inode]``…)."""
    out = {}
    base = f"/proc/{pid}/fd"
    for name in os.listdir(base):
        try:
            out[int(name)] = os.readlink(f"{base}/{name}")
        except FileNotFoundError:
            pass  # closed while we looked
    return out


def outgoing_sockets(pid: int, port: int) -> set[str]:
    """The ``socket:[inode]`` names of C{pid}'s TCP sockets whose local port is not C{port}."""
    out = set()
    for table in ("tcp", "tcp6"):
        try:
            with open(f"/proc/{pid}/net/{table}") as f:
                rows = f.read().splitlines()[1:]
        except FileNotFoundError:
            continue
        for row in rows:
            fields = row.split()
            if int(fields[1].rpartition(":")[2], 16) != port:
                out.add(f"socket:[{fields[9]}]")
    return out


def wait_descriptors_released(daemon: Daemon, before: dict[int, str], timeout: float = 10.0) -> None:
    """
    Poll until every descriptor the daemon opened since C{before} (a
    L{descriptors} snapshot) is closed again, or fail naming the ones still
    open. Connections to upstreams are left out: the connection pool keeps
    idle ones by design (a bounded number per host).
    """
    assert daemon.proc is not None
    pid = daemon.proc.pid
    deadline = time.monotonic() + timeout
    while True:
        now = descriptors(pid)
        opened = {(fd, what) for fd, what in now.items() if before.get(fd) != what}
        if opened:
            upstream = outgoing_sockets(pid, daemon.port)
            opened = {(fd, what) for fd, what in opened if what not in upstream}
        if not opened:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"the daemon still holds {len(opened)} descriptors opened during the "
                                 f"exchange {timeout} s later: {sorted(opened)}")
        time.sleep(0.02)
