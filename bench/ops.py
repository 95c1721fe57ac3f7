#!/usr/bin/env python3
"""
Issue 9 benchmark: what watching the vault costs.

A. Small cache hits (4 KiB) per second with metrics on and off: two
   daemons on the kit's nginx, measured with wrk in alternating rounds
   (on, off, off, on, ...), the medians compared.
B. Scraping ``/-/metrics`` and ``/-/status.json`` with 100,000 entries in the
   cache (written straight to disk beforehand, learnt by the daemon's scan at
   start): client-side time of each answer over one kept-alive connection.

    .venv/bin/python bench/ops.py                 # ~3 min; a markdown table on stdout
    .venv/bin/python bench/ops.py --rounds 8 --seconds 8 --entries 100000

Runs under an exclusive lock on /tmp/av-bench.lock (one benchmark at a
time on this machine). Env: AV_KIT_DIR, AV_KIT_PORT_OFFSET as for the tests.
"""

from __future__ import annotations

import argparse
import fcntl
import http.client
import json
import os
import re
import secrets
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from artifactvault.cache.store import Entry, FileStore  # noqa: E402
from tests import support  # noqa: E402


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of process C{pid} so far."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def wrk(url: str, seconds: int, connections: int, pid: int | None = None) -> tuple[float, float | None]:
    """(requests/s, the daemon's CPU microseconds per request) of a wrk run."""
    before = cpu_seconds(pid) if pid else None
    out = subprocess.run(["wrk", "-t1", f"-c{connections}", f"-d{seconds}s", url],
                         capture_output=True, text=True, check=True).stdout
    m = re.search(r"Requests/sec:\s+([\d.]+)", out)
    n = re.search(r"(\d+) requests in", out)
    if m is None or n is None:
        raise RuntimeError(f"wrk said:\n{out}")
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if errors:
        raise RuntimeError(f"wrk saw errors:\n{out}")
    cpu = (cpu_seconds(pid) - before) * 1e6 / int(n.group(1)) if pid and before is not None else None
    return float(m.group(1)), cpu


def hits(rounds: int, seconds: int, connections: int) -> tuple[dict[str, list[float]], dict[str, list[float]]]:
    files = support.upstream_url("files")
    backends = [{"type": "http", "config": {"prefix": "/files/", "base_url": files}}]
    daemons = {"metrics on": support.Daemon(backends, log_level="warn"),
               "metrics off": support.Daemon(backends, log_level="warn", metrics=False)}
    results: dict[str, list[float]] = {name: [] for name in daemons}
    cpu: dict[str, list[float]] = {name: [] for name in daemons}
    try:
        for daemon in daemons.values():
            daemon.start()
            support.request("GET", daemon.url("/files/small.bin"))
            daemon.wait_stored(f"{files}/small.bin")
            wrk(daemon.url("/files/small.bin"), 2, connections)  # (warm-up)
        order = list(daemons)
        for i in range(rounds):
            for name in (order if i % 2 == 0 else order[::-1]):
                rate, us = wrk(daemons[name].url("/files/small.bin"), seconds, connections, daemons[name].proc.pid)
                results[name].append(rate)
                cpu[name].append(us)
                print(f"  round {i + 1} {name}: {rate:.0f} req/s, {us:.1f} µs CPU/request", file=sys.stderr)
    finally:
        for daemon in daemons.values():
            daemon.cleanup()
    return results, cpu


def fill(cache_dir: str, entries: int) -> None:
    """C{entries} small committed entries, written the way the store lays them out (no fsync)."""
    store = FileStore(cache_dir)
    store.open()
    store.close()
    now = time.time()
    for i in range(entries):
        key = f"http://upstream.example/pkg/{i // 1000}/artifact-{i}.tar.gz"
        kh = store.key_hash(key)
        size = 256 + (i * 7919) % 4096
        entry = Entry(key=key, data=f"{kh[:2]}/{kh}.{secrets.token_hex(8)}", size=size, stored_at=now,
                      url=key, label=f"/files/pkg/{i // 1000}/artifact-{i}.tar.gz")
        shard = os.path.join(store.data_dir, kh[:2])
        os.makedirs(shard, exist_ok=True)
        with open(store.data_path(entry), "wb") as f:
            f.write(b"\0" * size)
        with open(os.path.join(shard, kh + ".json"), "wb") as f:
            f.write(entry.to_json())


def scrape_times(entries: int, count: int) -> dict[str, list[float]]:
    work = tempfile.mkdtemp(prefix="av-bench-ops-")
    try:
        files = support.upstream_url("files")
        daemon = support.Daemon([{"type": "http", "config": {"prefix": "/files/", "base_url": files}}],
                                log_level="warn")
        t0 = time.monotonic()
        fill(daemon.cache_dir, entries)
        print(f"  wrote {entries} entries in {time.monotonic() - t0:.1f} s", file=sys.stderr)
        daemon.start()
        t0 = time.monotonic()
        while True:
            doc = json.loads(support.request("GET", daemon.url("/-/status.json"))[2])
            if doc["cache"]["entries"] >= entries:
                break
            time.sleep(0.2)
        print(f"  the daemon learnt them in {time.monotonic() - t0:.1f} s", file=sys.stderr)
        # some traffic, so that the pages have something to count
        for i in range(50):
            support.request("GET", daemon.url("/files/small.bin"))
        conn = http.client.HTTPConnection("127.0.0.1", daemon.port, timeout=30)
        times: dict[str, list[float]] = {"/-/metrics": [], "/-/status.json": []}
        sizes: dict[str, int] = {}
        for i in range(count):
            for path in times:
                t = time.perf_counter()
                conn.request("GET", path)
                body = conn.getresponse().read()
                times[path].append((time.perf_counter() - t) * 1000)
                sizes[path] = len(body)
        conn.close()
        for path, size in sizes.items():
            print(f"  {path}: {size} bytes", file=sys.stderr)
        daemon.cleanup()
        return times
    finally:
        shutil.rmtree(work, ignore_errors=True)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--rounds", type=int, default=6)
    p.add_argument("--seconds", type=int, default=5)
    p.add_argument("--connections", type=int, default=16)
    p.add_argument("--entries", type=int, default=100_000)
    p.add_argument("--scrapes", type=int, default=50)
    args = p.parse_args()
    lock = open("/tmp/av-bench.lock", "w")
    fcntl.flock(lock, fcntl.LOCK_EX)

    print("A. small hits, metrics on and off (alternating rounds)", file=sys.stderr)
    rates, cpu = hits(args.rounds, args.seconds, args.connections)
    print("B. scrapes with a large cache", file=sys.stderr)
    times = scrape_times(args.entries, args.scrapes)

    on, off = statistics.median(rates["metrics on"]), statistics.median(rates["metrics off"])
    print(f"\nSmall hits (4 KiB, wrk -t1 -c{args.connections}, {args.rounds} alternating rounds of "
          f"{args.seconds} s each; median, min-max; the daemon's CPU time per request):\n")
    print("| daemon | req/s (median) | min | max | CPU µs/request (median) | min | max |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for name, values in rates.items():
        c = cpu[name]
        print(f"| {name} | {statistics.median(values):.0f} | {min(values):.0f} | {max(values):.0f} "
              f"| {statistics.median(c):.1f} | {min(c):.1f} | {max(c):.1f} |")
    pairs = [a / b for a, b in zip(rates["metrics on"], rates["metrics off"])]
    cpu_pairs = [a / b for a, b in zip(cpu["metrics on"], cpu["metrics off"])]
    print(f"\nreq/s, metrics on / off: medians {on / off:.3f} ({(on / off - 1) * 100:+.1f} %), "
          f"median of the rounds' ratios {statistics.median(pairs):.3f}")
    print(f"CPU per request, metrics on / off: median of the rounds' ratios {statistics.median(cpu_pairs):.3f} "
          f"({(statistics.median(cpu_pairs) - 1) * 100:+.1f} %)")
    print(f"\nScrapes with {args.entries} entries in the cache ({args.scrapes} each, one kept-alive "
          f"connection, client-side ms):\n")
    print("| page | median | p95 | max |")
    print("|---|---:|---:|---:|")
    for path, values in times.items():
        values = sorted(values)
        p95 = values[min(len(values) - 1, int(len(values) * 0.95))]
        print(f"| `{path}` | {statistics.median(values):.2f} | {p95:.2f} | {max(values):.2f} |")


if __name__ == "__main__":
    main()
