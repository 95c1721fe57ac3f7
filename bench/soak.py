#!/usr/bin/env python3
"""
Issue 10 soak: 256 connections for 60 s of mixed traffic against one vault,
then its resources compared with their baseline.

Each connection (a thread with a kept-alive http.client connection, opened
again after every disconnect) picks, at random: a small hit (4 KiB), a large
hit (10 MiB), a ranged read of the large hit, a cold miss (a new name that
other connections ask for at the same moment: one new name a second), a 404, or a large hit abandoned mid-body (the client
closes its socket after 256 KiB). Every body is checked byte for byte; the
only errors allowed are the intended ones (the 404s, the abandoned reads).

Before (after a warm-up) and after (once the vault is idle again): the
daemon's open descriptors and RSS (/proc), its temp files (cache_dir/tmp)
and downloads in flight (/-/metrics).

    .venv/bin/python bench/soak.py                 # ~2 min; a markdown table on stdout
    .venv/bin/python bench/soak.py --connections 256 --seconds 60
    .venv/bin/python bench/soak.py --repeat 3      # three soaks in a row on one daemon
    .venv/bin/python bench/soak.py --repeat 3 --memory   # and where the RSS is (bench/memprobe.py)
    .venv/bin/python bench/soak.py --repeat 2 --memory --idle 65   # and the RSS after the heap trimmer's next run

Runs under an exclusive lock on /tmp/av-bench.lock (one benchmark at a time
on this machine). Env: AV_KIT_DIR, AV_KIT_PORT_OFFSET as for the tests (the
kit's nginx is the upstream).
"""

from __future__ import annotations

import argparse
import collections
import fcntl
import hashlib
import http.client
import json
import os
import random
import re
import socket
import statistics
import subprocess
import sys
import threading
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from tests import support  # noqa: E402
from vaultctl import this_interpreter  # noqa: E402

KINDS = ("small hit", "large hit", "range", "cold miss", "404", "abandoned")
WEIGHTS = (40, 10, 20, 10, 10, 10)


def resources(daemon: support.Daemon) -> dict[str, float]:
    """The daemon's open descriptors, RSS (MiB), temp files and downloads in flight now."""
    assert daemon.proc is not None
    pid = daemon.proc.pid
    with open(f"/proc/{pid}/status") as f:
        rss = int(re.search(r"VmRSS:\s+(\d+)", f.read()).group(1)) / 1024  # type: ignore[union-attr]
    _, _, body = support.request("GET", daemon.url("/-/metrics"))
    flights = sum(float(line.rsplit(" ", 1)[1]) for line in body.decode().splitlines()
                  if line.startswith("artifactvault_downloads_in_flight"))
    return {"open fds": len(os.listdir(f"/proc/{pid}/fd")), "RSS MiB": round(rss, 1),
            "temp files": len(os.listdir(os.path.join(daemon.cache_dir, "tmp"))), "flights": flights}


class Soak:
    def __init__(self, daemon: support.Daemon, www: str, seconds: float):
        self.daemon, self.www, self.seconds = daemon, www, seconds
        with open(os.path.join(www, "small.bin"), "rb") as f:
            self.small = f.read()
        with open(os.path.join(www, "medium.bin"), "rb") as f:
            self.large = f.read()
        self.large_sha = hashlib.sha256(self.large).hexdigest()
        self.counts: collections.Counter = collections.Counter()
        self.errors: list[str] = []
        self.latency: dict[str, list[float]] = collections.defaultdict(list)
        self.cold: list[str] = []
        self.cold_lock = threading.Lock()
        self.end = 0.0

    def cold_name(self) -> str:
        """The cold name of this second (made on first use: a hard link of medium.bin upstream)."""
        window = int(time.monotonic())
        name = f"soak-{os.getpid()}-{window}.bin"
        with self.cold_lock:
            path = os.path.join(self.www, name)
            if not os.path.exists(path):
                os.link(os.path.join(self.www, "medium.bin"), path)
                self.cold.append(path)
        return name

    def connection(self) -> http.client.HTTPConnection:
        return http.client.HTTPConnection("127.0.0.1", self.daemon.port, timeout=60)

    def run_one(self, rng: random.Random) -> None:
        conn = self.connection()
        while time.monotonic() < self.end:
            kind = rng.choices(KINDS, WEIGHTS)[0]
            started = time.monotonic()
            try:
                ok = self.one(conn, kind, rng)
            except (OSError, http.client.HTTPException) as e:
                ok = False
                self.errors.append(f"{kind}: {e!r}")
            if not ok or kind == "abandoned":
                conn.close()
                conn = self.connection()
            self.counts[kind] += 1
            self.latency[kind].append(time.monotonic() - started)
        conn.close()

    def one(self, conn: http.client.HTTPConnection, kind: str, rng: random.Random) -> bool:
        """One request of that kind; False (and an error recorded) if it was not answered as it must be."""
        headers = {}
        if kind == "small hit":
            path, want = "/files/small.bin", self.small
        elif kind in ("large hit", "abandoned"):
            path, want = "/files/medium.bin", self.large
        elif kind == "range":
            first = rng.randrange(len(self.large))
            last = min(first + rng.randrange(1, 512 * 1024), len(self.large) - 1)
            path, want, headers = "/files/medium.bin", self.large[first:last + 1], {"Range": f"bytes={first}-{last}"}
        elif kind == "cold miss":
            path, want = "/files/" + self.cold_name(), self.large
        else:
            path, want = f"/files/no-such-{rng.randrange(1 << 30)}.bin", None
        conn.request("GET", path, headers=headers)
        response = conn.getresponse()
        if kind == "abandoned":
            got = response.read(256 * 1024)
            if response.status != 200 or got != self.large[:len(got)]:
                self.errors.append(f"{kind}: {response.status}, {len(got)} bytes")
                return False
            return True  # (the caller closes the socket mid-body)
        h, n = hashlib.sha256(), 0
        while chunk := response.read(256 * 1024):
            h.update(chunk)
            n += len(chunk)
        expected = 404 if want is None else 206 if headers else 200
        right = want is None or (n == len(want) and
                                 h.hexdigest() == (self.large_sha if want is self.large else hashlib.sha256(want).hexdigest()))
        if response.status != expected or not right:
            self.errors.append(f"{kind} {path}: {response.status}, {n} bytes")
            return False
        return True

    def run(self, connections: int) -> float:
        self.end = time.monotonic() + self.seconds
        threads = [threading.Thread(target=self.run_one, args=(random.Random(i),), daemon=True)
                   for i in range(connections)]
        started = time.monotonic()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        return time.monotonic() - started

    def close(self) -> None:
        for path in self.cold:
            try:
                os.unlink(path)
            except OSError:
                pass


class Probe:
    """
    The daemon run under bench/memprobe.py (C{--memory}): what its memory
    holds at each step, live objects against what the allocator keeps.
    """

    def __init__(self, daemon: support.Daemon, trace: bool):
        self.dir = os.path.join(daemon.dir, "memprobe")
        os.mkdir(self.dir)
        launcher = os.path.join(daemon.dir, "twistd-probed")
        with open(launcher, "w") as f:
            f.write(f"#!/bin/sh\nexec {sys.executable} {'-X tracemalloc=1 ' if trace else ''}"
                    f"{os.path.join(REPO, 'bench', 'memprobe.py')} \"$@\"\n")
        os.chmod(launcher, 0o755)
        support.twistd = lambda: launcher  # (this process only starts this one daemon)
        self.env = {"AV_MEMPROBE_DIR": self.dir}
        self.reports: list[tuple[str, dict]] = []

    def ask(self, name: str, action: str = "snapshot", timeout: float = 120.0) -> dict:
        with open(os.path.join(self.dir, "ask-" + name), "w") as f:
            f.write(action)
        path = os.path.join(self.dir, name + ".json")
        deadline = time.monotonic() + timeout
        while not os.path.exists(path):
            if time.monotonic() > deadline:
                raise RuntimeError(f"the memory probe did not answer {name}")
            time.sleep(0.1)
        with open(path) as f:
            found = json.load(f)
        self.reports.append((name, found))
        return found

    def print(self) -> None:
        names = [name for name, _ in self.reports]
        print("\n| memory | " + " | ".join(names) + " |\n|---|" + "---:|" * len(names))
        rows = [("RSS MiB before a full gc.collect()", lambda r: r["before collecting"]["rss MiB"]),
                ("glibc in use MiB before it", lambda r: r["before collecting"].get("glibc in use MiB", "")),
                ("unreachable objects it found", lambda r: r["garbage"]["objects"]),
                ("their size MiB (getsizeof)", lambda r: r["garbage"]["MiB (getsizeof)"]),
                ("RSS MiB", lambda r: r["rss MiB"]),
                ("RSS after malloc_trim(0)", lambda r: r.get("rss MiB after trim", "")),
                ("malloc_trim ms", lambda r: r.get("malloc_trim ms", "")),
                ("live objects (gc, unfrozen)", lambda r: r["gc objects"]),
                ("threads", lambda r: r["threads"]),
                ("pymalloc arenas (1 MiB)", lambda r: r["pymalloc"].get("arenas now", "")),
                ("pymalloc bytes in use MiB", lambda r: round(r["pymalloc"].get("arena bytes in use", 0) / 2**20, 1)),
                ("glibc heap (arena) MiB", lambda r: r.get("mallinfo2 MiB", {}).get("arena", "")),
                ("glibc in use (uordblks) MiB", lambda r: r.get("mallinfo2 MiB", {}).get("uordblks", "")),
                ("glibc free (fordblks) MiB", lambda r: r.get("mallinfo2 MiB", {}).get("fordblks", "")),
                ("glibc mmapped (hblkhd) MiB", lambda r: r.get("mallinfo2 MiB", {}).get("hblkhd", "")),
                ("traced Python MiB", lambda r: r.get("traced MiB", {}).get("current", ""))]
        for label, get in rows:
            print(f"| {label} | " + " | ".join(str(get(r)) for _, r in self.reports) + " |")
        first, last = self.reports[0][1]["by type"], self.reports[-1][1]["by type"]
        grown = sorted(((last.get(t, 0) - first.get(t, 0), t) for t in set(first) | set(last)), reverse=True)
        print("\nlive objects by type, most grown from the first to the last: " + ", ".join(
            f"{t} {first.get(t, 0)} → {last.get(t, 0)}" for d, t in grown[:12] if d))
        for name, r in self.reports:
            if r["garbage"]["objects"]:
                print(f"unreachable at {name}: " + ", ".join(f"{t} {n}" for t, n in r["garbage"]["by type"].items()))
        if "traced top" in self.reports[-1][1]:
            print("\ntraced Python allocations at the end, largest lines:")
            for line in self.reports[-1][1]["traced top"][:15]:
                print("  " + line)


def settle(daemon: support.Daemon, baseline: dict[str, float], timeout: float = 60.0) -> dict[str, float]:
    """Poll until descriptors, temp files and flights are back to the baseline (or time runs out)."""
    deadline = time.monotonic() + timeout
    while True:
        now = resources(daemon)
        if (now["open fds"] <= baseline["open fds"] and now["temp files"] == 0 and now["flights"] == 0) \
                or time.monotonic() > deadline:
            return now
        time.sleep(0.2)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--connections", type=int, default=256)
    ap.add_argument("--seconds", type=float, default=60)
    ap.add_argument("--repeat", type=int, default=1,
                    help="soaks in a row on the same daemon (does RSS keep growing, or level off?)")
    ap.add_argument("--idle", type=float, default=0,
                    help="after each soak, also the RSS once the daemon has been idle this long "
                         "(65: after the heap trimmer's next run)")
    ap.add_argument("--memory", action="store_true",
                    help="run the daemon under bench/memprobe.py: live objects, allocator, malloc_trim")
    ap.add_argument("--tracemalloc", action="store_true", help="with --memory: and python -X tracemalloc")
    args = ap.parse_args()
    lock = open("/tmp/av-bench.lock", "w")
    fcntl.flock(lock, fcntl.LOCK_EX)
    files = support.upstream_url("files")
    www = os.path.join(support.upstream_dir("files"), "www")
    daemon = support.Daemon([{"type": "http", "config": {"prefix": "/files/", "base_url": files}}],
                            log_level="warn")
    probe = Probe(daemon, args.tracemalloc) if args.memory else None
    daemon.start(env=probe.env if probe else None)
    soaks = [Soak(daemon, www, args.seconds) for _ in range(args.repeat)]
    try:
        for path in ("/files/small.bin", "/files/medium.bin"):  # (the hits, stored)
            support.request("GET", daemon.url(path))
            daemon.wait_stored(files + path[len("/files"):])
        # warm-up: a few seconds of the same traffic, so that the baseline has the pools and buffers
        warm = Soak(daemon, www, 5)
        warm.run(32)
        warm.close()
        baseline = settle(daemon, {"open fds": 1 << 30})
        if probe:
            probe.ask("baseline")
        load = os.getloadavg()
        afters, walls = [], []
        for soak in soaks:
            walls.append(soak.run(args.connections))
            afters.append(settle(daemon, baseline))
            if args.idle:
                time.sleep(args.idle)
                afters[-1][f"RSS MiB, {args.idle:g} s idle"] = resources(daemon)["RSS MiB"]
            if probe:
                probe.ask(f"soak {len(afters)}")
        if probe:
            probe.ask("trimmed", "trim")
            time.sleep(5)  # (the RSS a little later: does it stay down while idle?)
            probe.ask("5 s later")
        soak, wall = soaks[0], walls[0]
        served = sum(soak.counts.values())
        commit = subprocess.run(["git", "-C", REPO, "rev-parse", "--short", "HEAD"],
                                capture_output=True, text=True).stdout.strip()
        print(f"# soak: commit {commit} on {this_interpreter()}, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, "
              f"{args.connections} connections for {args.seconds:g} s ({wall:.1f} s with the last answers), "
              f"load average before {load[0]:.1f}\n")
        print("| request | count | median ms | p99 ms |\n|---|---:|---:|---:|")
        for kind in KINDS:
            lat = sorted(soak.latency[kind])
            if lat:
                p99 = lat[min(len(lat) - 1, int(len(lat) * 0.99))]
                print(f"| {kind} | {soak.counts[kind]} | {statistics.median(lat) * 1000:.1f} | {p99 * 1000:.1f} |")
        print(f"| all | {served} ({served / wall:.0f}/s) | | |\n")
        if len(soaks) > 1:
            print("(the table is the first soak's; the others': " + ", ".join(
                f"{sum(s.counts.values())} requests in {w:.1f} s" for s, w in zip(soaks[1:], walls[1:])) + ")\n")
        all_errors = [e for s in soaks for e in s.errors]
        print(f"errors other than the intended ones: {len(all_errors)} "
              f"(in {len(soaks)} soak(s), {sum(sum(s.counts.values()) for s in soaks)} requests)")
        for e in collections.Counter(all_errors).most_common(10):
            print(f"  {e[1]} × {e[0]}")
        print("\n| resource | baseline | " + " | ".join(f"after soak {i + 1}" for i in range(len(soaks))) + " |")
        print("|---|---:|" + "---:|" * len(soaks))
        for key in afters[0]:
            print(f"| {key} | {baseline.get(key, baseline['RSS MiB']):g} | "
                  + " | ".join(f"{a[key]:g}" for a in afters) + " |")
        bad = [line for line in daemon.log().splitlines() if "Traceback" in line or "Unhandled" in line]
        print(f"\ntracebacks in the daemon's log: {len(bad)}")
        if probe:
            probe.print()
    finally:
        for soak in soaks:
            soak.close()
        daemon.cleanup()


if __name__ == "__main__":
    main()
