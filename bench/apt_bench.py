#!/usr/bin/env python3
"""
apt benchmark (issue 13): the vault beside apt-cacher-ng (Debian's package,
the tool teams use today), both in front of the same local signed repository
(tests/upstreams/apt-up, 50 packages and a 200 MiB one), and the repository
served directly, in alternating rounds:

- ``apt-get update`` + ``apt-get install --download-only`` of the 50
  packages, cold (empty caches) and warm, by a fresh apt client each time;
- 20 clients running ``apt-get update`` in a loop while the repository is
  re-signed and flaps between its two versions: hash mismatches counted
  (clients asking by hash, as apt does by default, and by name,
  ``Acquire::By-Hash "no"``, as older apt and apt-cacher-ng's users often do);
- a 200 MiB ``.deb`` cold (after an update, so the vault knows its hash)
  written to disk by curl, against the same download direct;
- the vault's peak RSS (VmHWM) over the whole run;
- which of direct's runs had a TCP stall (a request nginx took 30 ms or more
  over, by its access log's request time: apt sent its start in a small
  segment and the rest waited for nginx's delayed ACK, ~40 ms), and the
  vault against direct's runs without one (``stall_free``): direct's
  figures are bimodal, and which half holds the median sets the ratio;
- with ``--delay-ms N``: the cold run again, direct and through the vault,
  with the repository N ms away (bench/delay_relay.py waits that long
  before passing on each request): where apt's pipelined downloads, fetched
  ahead by the vault, pay a mirror's round trip.

    bench/apt_bench.py [--rounds 3] [--delay-ms 20]      ~5 min; a table on stdout

Loopback only; ports 31097 (repository), 31720 (vault), 31721 (apt-cacher-ng),
31722 (the delaying relay, with --delay-ms);
data in $AV (default /tmp/av-anchors)/apt-bench (what a run empties or
removes goes into its trash/, removed at the end: see ``discard``).
Installs apt-cacher-ng with apt-get if missing (its packaged service kept
from starting). Every process started here is stopped by its pid.
"""

from __future__ import annotations

import argparse
import atexit
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import threading
import time

from vaultctl import interpreter

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
KIT = os.path.join(REPO, "tests", "upstreams")
AV = os.path.join(os.environ.get("AV", "/tmp/av-anchors"), "apt-bench")
UP_PORT, VAULT_PORT, ACNG_PORT, RELAY_PORT = 31097, 31720, 31721, 31722
UP_DIR = os.path.join(AV, "repo")
VAULT_DIR = os.path.join(AV, "vault")
ACNG_DIR = os.path.join(AV, "acng")
PACKAGES = [f"av-pkg-{i:02d}" for i in range(1, 51)]
MISMATCH = ("Hash Sum mismatch", "Hashes do not match", "File has unexpected size")
BIG = "pool/main/a/av-big/av-big_1.0-1_all.deb"


TRASH = os.path.join(AV, "trash")


def discard(path: str) -> None:
    """
    Empty a cache or remove an apt client's files by moving C{path} into
    L{TRASH}, removed only when the benchmark ends, never between timed runs.
    This machine's ext4 has no journal, and without one the kernel's inode
    allocator passes over every free inode freed in the last 60 seconds (360
    while its inode table block is not yet written back: C{recently_deleted()}
    in fs/ext4/ialloc.c, which reads each one's inode table entry): after an
    C{rm -rf} of a cache of a few hundred files, each file created in the next
    minutes paid a scan over them. That made a burst of 50 cold misses cost
    the vault's commit thread up to 62 instead of 24-33 ms of CPU (perf:
    C{ext4_create} < C{__ext4_new_inode} < C{find_inode_bit} <
    C{recently_deleted}), on 2 cores shared with apt; apt-cacher-ng and apt
    itself paid it too. No real cache is emptied minutes before its cold run
    (and with a journal, as Debian makes ext4, the kernel does not look).
    Files of 1 MiB or more are truncated first (their space back at once;
    truncating frees no inode).
    """
    if not os.path.lexists(path):
        return
    for top, _dirs, files in os.walk(path):
        for name in files:
            f = os.path.join(top, name)
            if not os.path.islink(f) and os.path.getsize(f) >= 1 << 20:
                os.truncate(f, 0)
    os.makedirs(TRASH, exist_ok=True)
    os.rename(path, os.path.join(TRASH, str(time.monotonic_ns())))


def empty_trash() -> None:
    """
    Remove the trash, and write the freed inodes back (os.sync): a run that
    follows within 60 s still pays for them (see L{discard}); one within
    360 s would without the sync.
    """
    if os.path.exists(TRASH):
        shutil.rmtree(TRASH, ignore_errors=True)
        os.sync()


atexit.register(empty_trash)


def sh(*args: str, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(args, check=True, **kw)


def wait_http(url: str, secs: float = 30) -> None:
    deadline = time.monotonic() + secs
    while time.monotonic() < deadline:
        if subprocess.run(["curl", "-s", "--noproxy", "*", "-o", "/dev/null", "--max-time", "1", url]).returncode == 0:
            return
        time.sleep(0.05)
    raise RuntimeError(f"{url} did not answer")


# -- the servers -------------------------------------------------------------------

def repo_up() -> None:
    env = dict(os.environ, APT_UP_PACKAGES="50", APT_UP_BIG_MB="200")
    sh(os.path.join(KIT, "apt-up"), UP_DIR, str(UP_PORT), env=env, stdout=subprocess.DEVNULL)
    flap = os.path.join(UP_DIR, "www", "flap")
    if not os.path.islink(flap):
        os.symlink("../repos/v1", flap)


def vault(cmd: str, mirror_port: int = UP_PORT) -> None:
    os.makedirs(VAULT_DIR, exist_ok=True)
    with open(os.path.join(VAULT_DIR, "config.yml"), "w") as f:
        f.write(f"cache_dir: {VAULT_DIR}/cache\nbackends:\n"
                f"  - type: apt\n    config: {{prefix: /debian/, mirror_url: 'http://127.0.0.1:{mirror_port}/debian'}}\n"
                f"  - type: apt\n    config: {{prefix: /flap/, mirror_url: 'http://127.0.0.1:{UP_PORT}/flap', "
                f"index_ttl: 0}}\n")
    if cmd == "reset":  # (stopped before its cache is taken away, so that nothing writes into the old one)
        sh(os.path.join(REPO, "bench", "vault-ctl.sh"), "stop", VAULT_DIR, str(VAULT_PORT))
        discard(os.path.join(VAULT_DIR, "cache"))
    sh(os.path.join(REPO, "bench", "vault-ctl.sh"), cmd, VAULT_DIR, str(VAULT_PORT))


def vault_pid() -> int:
    return int(open(os.path.join(VAULT_DIR, "twistd.pid")).read())


def acng_install() -> None:
    if shutil.which("apt-cacher-ng"):
        return
    policy = "/usr/sbin/policy-rc.d"
    made = not os.path.exists(policy)
    if made:
        with open(policy, "w") as f:
            f.write("#!/bin/sh\nexit 101\n")
        os.chmod(policy, 0o755)
    try:
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        sh("apt-get", "install", "-y", "-qq", "--no-install-recommends", "apt-cacher-ng", env=env,
           stdout=subprocess.DEVNULL)
    finally:
        if made:
            os.unlink(policy)


_acng: subprocess.Popen | None = None


def acng_start() -> None:
    global _acng
    conf = os.path.join(ACNG_DIR, "conf")
    os.makedirs(conf, exist_ok=True)
    for d in ("cache", "log"):
        os.makedirs(os.path.join(ACNG_DIR, d), exist_ok=True)
    with open(os.path.join(conf, "acng.conf"), "w") as f:
        f.write(f"CacheDir: {ACNG_DIR}/cache\nLogDir: {ACNG_DIR}/log\nPort: {ACNG_PORT}\n"
                f"BindAddress: 127.0.0.1\nForeGround: 1\n"
                f"Remap-avtest: /avtest ; http://127.0.0.1:{UP_PORT}/debian\n"
                f"Remap-avflap: /avflap ; http://127.0.0.1:{UP_PORT}/flap\n")
    log = open(os.path.join(ACNG_DIR, "server.log"), "ab")
    _acng = subprocess.Popen(["/usr/sbin/apt-cacher-ng", "-c", conf], stdout=log, stderr=log,
                             start_new_session=True)
    wait_http(f"http://127.0.0.1:{ACNG_PORT}/acng-report.html")


def acng_stop() -> None:
    global _acng
    if _acng is not None and _acng.poll() is None:
        _acng.terminate()
        try:
            _acng.wait(10)
        except subprocess.TimeoutExpired:
            _acng.kill()
            _acng.wait()
    _acng = None


def acng_reset() -> None:
    acng_stop()
    discard(os.path.join(ACNG_DIR, "cache"))
    acng_start()


def peak_rss_mib(pid: int) -> float:
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


# -- apt clients -------------------------------------------------------------------

class Client:
    def __init__(self, url: str, **options: str):
        self.root = os.path.join(AV, "clients", f"c{time.monotonic_ns()}")
        for d in ("lists/partial", "archives/partial", "etc/no-parts", "out"):
            os.makedirs(os.path.join(self.root, d))
        open(os.path.join(self.root, "status"), "w").close()
        key = os.path.join(UP_DIR, "gpg", "key.gpg")
        with open(os.path.join(self.root, "etc", "sources.list"), "w") as f:
            f.write(f"deb [signed-by={key}] {url} stable main\n")
        opts = {"Dir::Etc::Parts": f"{self.root}/etc/no-parts", "Dir::Etc::Main": "/dev/null",
                "Dir::Etc::SourceList": f"{self.root}/etc/sources.list", "Dir::Etc::SourceParts": "/dev/null",
                "Dir::State::Lists": f"{self.root}/lists", "Dir::Cache::Archives": f"{self.root}/archives",
                "Dir::Cache": f"{self.root}/cache", "Dir::State::Status": f"{self.root}/status",
                "Acquire::Languages": "none", "APT::Sandbox::User": "root", "Acquire::Retries": "0",
                "Acquire::http::Proxy": "DIRECT", **options}
        self.config = os.path.join(self.root, "etc", "apt.conf")
        with open(self.config, "w") as f:
            f.writelines(f'{k} "{v}";\n' for k, v in opts.items())

    def run(self, *args: str) -> subprocess.CompletedProcess:
        env = {k: v for k, v in os.environ.items() if not k.lower().endswith("_proxy")}
        env.update(APT_CONFIG=self.config, LC_ALL="C")
        return subprocess.run(["apt-get", "-q", *args], env=env, capture_output=True, text=True,
                              cwd=os.path.join(self.root, "out"))

    def ok(self, *args: str) -> None:
        p = self.run(*args)
        if p.returncode != 0 or "W: " in p.stderr:
            raise RuntimeError(f"apt-get {args[0]} failed:\n{(p.stdout + p.stderr)[-1500:]}")

    def close(self) -> None:
        discard(self.root)


URLS = {"direct": f"http://127.0.0.1:{UP_PORT}/debian", "vault": f"http://127.0.0.1:{VAULT_PORT}/debian",
        "apt-cacher-ng": f"http://127.0.0.1:{ACNG_PORT}/avtest"}
FLAP_URLS = {"vault": f"http://127.0.0.1:{VAULT_PORT}/flap", "apt-cacher-ng": f"http://127.0.0.1:{ACNG_PORT}/avflap"}
RESET = {"direct": lambda: None, "vault": lambda: vault("reset"), "apt-cacher-ng": acng_reset}


#: A request nginx took this long over is a TCP stall (its files are ~1 KB; a stall costs ~40 ms).
STALL = 0.030
_REQUEST_TIME = re.compile(r" rt=([0-9.]+)")


def nginx_stalls(since: int) -> int:
    """
    How many requests the repository's nginx logged after byte C{since} of
    its access log that took it C{STALL} seconds or more (the kit's log
    format ends with ``rt=$request_time``).
    """
    with open(os.path.join(UP_DIR, "access.log"), "rb") as f:
        f.seek(since)
        return sum(float(m.group(1)) >= STALL for line in f.read().decode("latin-1").splitlines()
                   if (m := _REQUEST_TIME.search(line)))


def log_size() -> int:
    """Where the repository's access log ends now (L{nginx_stalls} counts from there)."""
    return os.path.getsize(os.path.join(UP_DIR, "access.log"))


def stall_free(runs: list[float], stalls: list[int]) -> list[float]:
    """The runs (of direct) in which nginx logged no stall."""
    return [run for run, n in zip(runs, stalls) if n == 0]


def update_install(target: str, url: str | None = None) -> float:
    c = Client(url or URLS[target])
    try:
        t0 = time.monotonic()
        c.ok("update")
        c.ok("install", "--download-only", "-y", *PACKAGES)
        return time.monotonic() - t0
    finally:
        c.close()


def big(target: str) -> float:
    """MB/s of the 200 MiB .deb written to disk (after an update, as apt does)."""
    c = Client(URLS[target])
    try:
        c.ok("update")
        out = os.path.join(c.root, "big.deb")
        t0 = time.monotonic()
        sh("curl", "-sf", "--noproxy", "*", "-o", out, f"{URLS[target]}/{BIG}")
        seconds = time.monotonic() - t0
        size = os.path.getsize(out)
        return size / seconds / 1e6
    finally:
        c.close()
        subprocess.run(["sync"])


def flap(target: str, options: dict[str, str], clients: int = 20, seconds: float = 8.0) -> tuple[int, int, int]:
    """(updates, failed updates, updates with a hash mismatch) while the repository flaps v1/v2."""
    link = os.path.join(UP_DIR, "www", "flap")

    def point(version: str) -> None:
        tmp = link + ".new"
        os.symlink(f"../repos/{version}", tmp)
        os.replace(tmp, link)

    point("v1")
    cs = [Client(FLAP_URLS[target], **options) for _ in range(clients)]
    counts = {"updates": 0, "failed": 0, "mismatch": 0}
    lock = threading.Lock()
    stop = threading.Event()

    def loop(c: Client) -> None:
        while not stop.is_set():
            p = c.run("update")
            out = p.stdout + p.stderr
            with lock:
                counts["updates"] += 1
                counts["failed"] += p.returncode != 0 or "W: " in p.stderr
                counts["mismatch"] += any(m in out for m in MISMATCH)

    threads = [threading.Thread(target=loop, args=(c,)) for c in cs]
    for t in threads:
        t.start()
    deadline = time.monotonic() + seconds
    version = "v1"
    while time.monotonic() < deadline:
        time.sleep(0.15)
        version = "v2" if version == "v1" else "v1"
        point(version)
    stop.set()
    for t in threads:
        t.join()
    for c in cs:
        c.close()
    point("v1")
    return counts["updates"], counts["failed"], counts["mismatch"]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--delay-ms", type=float, default=0.0)
    a = ap.parse_args()
    os.makedirs(AV, exist_ok=True)
    repo_up()
    acng_install()
    vault("start")
    acng_start()
    targets = ["direct", "vault", "apt-cacher-ng"]
    cold: dict[str, list[float]] = {t: [] for t in targets}
    warm: dict[str, list[float]] = {t: [] for t in targets}
    bigs: dict[str, list[float]] = {t: [] for t in targets}
    #: Per direct run, how many of its requests stalled in nginx (cold, warm).
    stalls: dict[str, list[int]] = {"cold": [], "warm": []}
    try:
        for r in range(a.rounds):
            order = targets[r % 3:] + targets[:r % 3]
            for t in order:
                RESET[t]()
                for phase, runs in (("cold", cold), ("warm", warm)):
                    since = log_size()
                    runs[t].append(update_install(t))
                    if t == "direct":
                        stalls[phase].append(nginx_stalls(since))
            for t in order:
                RESET[t]()
                bigs[t].append(big(t))
            print(f"round {r + 1}: cold {[round(cold[t][-1], 2) for t in targets]} "
                  f"warm {[round(warm[t][-1], 2) for t in targets]} big {[round(bigs[t][-1]) for t in targets]}",
                  file=sys.stderr)
        flaps = {}
        for label, options in (("by hash", {}), ("by name", {"Acquire::By-Hash": "no"})):
            for t in ("vault", "apt-cacher-ng"):
                RESET[t]()
                flaps[(t, label)] = flap(t, options)
                print(f"flap {t} {label}: {flaps[(t, label)]}", file=sys.stderr)
        rss = peak_rss_mib(vault_pid())
        far: dict[str, list[float]] = {"direct": [], "vault": []}
        if a.delay_ms:
            relay = subprocess.Popen([sys.executable, os.path.join(REPO, "bench", "delay_relay.py"),
                                      str(RELAY_PORT), str(UP_PORT), str(a.delay_ms)], start_new_session=True)
            try:
                wait_http(f"http://127.0.0.1:{RELAY_PORT}/debian/dists/stable/InRelease")
                for r in range(a.rounds):
                    for t in (["direct", "vault"] if r % 2 == 0 else ["vault", "direct"]):
                        if t == "vault":
                            vault("reset", RELAY_PORT)
                        far[t].append(update_install(t, f"http://127.0.0.1:{RELAY_PORT}/debian"
                                                     if t == "direct" else None))
                    print(f"round {r + 1}, mirror {a.delay_ms:g} ms away: cold "
                          f"{[round(far[t][-1], 2) for t in far]}", file=sys.stderr)
            finally:
                relay.terminate()
                relay.wait()
    finally:
        vault("stop")
        acng_stop()

    med = statistics.median
    sha = subprocess.run(["git", "-C", REPO, "rev-parse", "--short", "HEAD"], capture_output=True,
                         text=True).stdout.strip()
    print(f"# apt benchmark: commit {sha}, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, "
          f"{a.rounds} alternating rounds; the vault on {interpreter()}\n")
    print("| update + install --download-only of 50 packages | direct | vault | apt-cacher-ng | vault/direct | "
          "vault/apt-cacher-ng |")
    print("|---|---|---|---|---|---|")
    for label, runs in (("cold (empty caches), s", cold), ("warm, s", warm)):
        d, v, n = med(runs["direct"]), med(runs["vault"]), med(runs["apt-cacher-ng"])
        print(f"| {label} | {d:.2f} | {v:.2f} | {n:.2f} | {v / d:.2f}× | {v / n:.2f}× |")
    # (every cold round, not only the medians: direct's are bimodal, ~40 ms more for each TCP stall
    # between apt and nginx, and which half holds the median sets the ratio: docs/benchmarks.md)
    print("\ncold rounds, s, sorted: " + "; ".join(
        f"{t} " + " ".join(f"{x:.3f}" for x in sorted(cold[t])) for t in ("direct", "vault", "apt-cacher-ng")))
    print(f"\n| against direct's runs without a TCP stall (no request nginx took {STALL * 1000:.0f} ms or more over) "
          f"| direct's runs without one | direct, s | vault, s | vault/direct |\n|---|---|---|---|---|")
    for label, runs in (("cold", cold), ("warm", warm)):
        free = stall_free(runs["direct"], stalls[label])
        if free:
            d, v = med(free), med(runs["vault"])
            print(f"| {label} | {len(free)} of {len(runs['direct'])} | {d:.3f} | {v:.3f} | {v / d:.2f}× |")
        else:
            print(f"| {label} | 0 of {len(runs['direct'])} | | | |")
    d, v, n = med(bigs["direct"]), med(bigs["vault"]), med(bigs["apt-cacher-ng"])
    print(f"\n| 200 MiB .deb cold, written to disk | direct | vault | apt-cacher-ng |\n|---|---|---|---|\n"
          f"| MB/s (median) | {d:.0f} | {v:.0f} ({v / d:.2f}× direct) | {n:.0f} ({n / d:.2f}× direct) |")
    print("\n| 20 clients updating while the repository flaps v1/v2 (8 s) | updates | failed | hash mismatches |")
    print("|---|---|---|---|")
    for (t, label), (n_up, failed, mism) in flaps.items():
        print(f"| {t}, index files {label} | {n_up} | {failed} | {mism} |")
    print(f"\nvault peak RSS (VmHWM) over the run: {rss:.1f} MiB")
    if a.delay_ms:
        d, v = med(far["direct"]), med(far["vault"])
        print(f"\n| cold update + install of 50 packages, the repository {a.delay_ms:g} ms away | direct | vault "
              f"| vault/direct |\n|---|---|---|---|\n| s (median) | {d:.2f} | {v:.2f} | {v / d:.2f}× |")


if __name__ == "__main__":
    main()
