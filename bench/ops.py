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


def wrk(url: str, seconds: int, connections: int) -> float:
    out = subprocess.run(["wrk", "-t1", f"-c{connections}", f"-d{seconds}s", url],
                         capture_output=True, text=True, check=True).stdout
    m = re.search(r"Requests/sec:\s+([\d.]+)", out)
    if m is None:
        raise RuntimeError(f"wrk said:\n{out}")
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if errors:
        raise RuntimeError(f"wrk saw errors:\n{out}")
    return float(m.group(1))


def hits(rounds: int, seconds: int, connections: int) -> dict[str, list[float]]:
    files = support.upstream_url("files")
    backends = [{"type": "http", "config": {"prefix": "/files/", "base_url": files}}]
    daemons = {"metrics on": support.Daemon(backends, log_level="warn"),
               "metrics off": support.Daemon(backends, log_level="warn", metrics=False)}
    results: dict[str, list[float]] = {name: [] for name in daemons}
    try:
        for daemon in daemons.values():
            daemon.start()
            support.request("GET", daemon.url("/files/small.bin"))
            daemon.wait_stored(f"{files}/small.bin")
            wrk(daemon.url("/files/small.bin"), 2, connections)  # (warm-up)
        order = list(daemons)
        for i in range(rounds):
            for name in (order if i % 2 == 0 else order[::-1]):
                rate = wrk(daemons[name].url("/files/small.bin"), seconds, connections)
                results[name].append(rate)
                print(f"  round {i + 1} {name}: {rate:.0f} req/s", file=sys.stderr)
    finally:
        for daemon in daemons.values():
            daemon.cleanup()
    return results


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
    rates = hits(args.rounds, args.seconds, args.connections)
    print("B. scrapes with a large cache", file=sys.stderr)
    times = scrape_times(args.entries, args.scrapes)

    on, off = statistics.median(rates["metrics on"]), statistics.median(rates["metrics off"])
    print(f"\nSmall hits (4 KiB, wrk -t1 -c{args.connections}, {args.rounds} alternating rounds of "
          f"{args.seconds} s each; median, min-max):\n")
    print("| daemon | req/s (median) | min | max |")
    print("|---|---:|---:|---:|")
    for name, values in rates.items():
        print(f"| {name} | {statistics.median(values):.0f} | {min(values):.0f} | {max(values):.0f} |")
    print(f"\nmetrics on / off: {on / off:.3f} ({(on / off - 1) * 100:+.1f} %)")
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
