#!/usr/bin/env python3
"""
Warm ``skopeo copy --all`` of bench/workload.py's two images, one at a time,
through the vault and straight from the kit's registry, in turn; then the
vault's own durations of the requests of the last copies (its log lines).
Alone on the machine, this separates the vault's per-request cost from the
contention of workload.py's round (pip, curl and skopeo on one daemon).

    .venv/bin/python bench/skopeo_warm.py [ROUNDS]      # ~1 min

Env: AV_KIT_DIR, AV_KIT_PORT_OFFSET as for the tests.
"""

from __future__ import annotations

import argparse
import fcntl
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from tests import support  # noqa: E402

IMAGES = ("library/hello:latest", "team/tools:1.0")


def main() -> None:
    parser = argparse.ArgumentParser(description="Warm skopeo copies, through the vault and direct, in turn.")
    parser.add_argument("rounds", type=int, nargs="?", default=10, help="alternating rounds (default 10)")
    rounds = parser.parse_args().rounds
    lock = open("/tmp/av-bench.lock", "w")
    fcntl.flock(lock, fcntl.LOCK_EX)
    reg = support.upstream_url("reg")
    daemon = support.Daemon([{"type": "registry", "config": {"prefix": "/hub/", "registry_url": reg}}],
                            log_level="info")
    daemon.start()
    targets = {"vault": f"127.0.0.1:{daemon.port}/hub", "direct": reg[len("http://"):]}
    times: dict[str, list[float]] = {name: [] for name in targets}
    try:
        mark = 0
        for r in range(rounds + 1):  # (round 0 fills the cache)
            for name, base in targets.items():
                if r == rounds and name == "vault":
                    mark = len(daemon.log())
                for image in IMAGES:
                    work = tempfile.mkdtemp(prefix="av-skopeo-")
                    started = time.monotonic()
                    p = subprocess.run(["skopeo", "copy", "-q", "--all", "--src-tls-verify=false",
                                        f"docker://{base}/{image}", f"oci:{work}/image:latest"],
                                       capture_output=True, text=True)
                    seconds = time.monotonic() - started
                    shutil.rmtree(work)
                    if p.returncode:
                        raise SystemExit(f"skopeo copy from {name} failed: {p.stderr}")
                    if r:
                        times[name].append(seconds)
        load = os.getloadavg()[0]
        print(f"# warm skopeo copies, {rounds} rounds of {len(IMAGES)} images, load average {load:.1f}\n")
        print("| from | copies | median s | max s |\n|---|---:|---:|---:|")
        for name, values in times.items():
            print(f"| {name} | {len(values)} | {statistics.median(values):.3f} | {max(values):.3f} |")
        lines = re.findall(r"\] (GET|HEAD) (\S+) (\d+) (\S+) \d+ bytes ([\d.]+) ms", daemon.log()[mark:])
        ms = [float(m[4]) for m in lines]
        caches = sorted({m[3] for m in lines})
        print(f"\nthe vault's last {len(IMAGES)} copies: {len(lines)} requests "
              f"({sum(1 for m in lines if m[0] == 'HEAD')} HEAD), cache statuses {caches}, "
              f"its durations median {statistics.median(ms):.1f} ms, max {max(ms):.1f} ms")
    finally:
        daemon.cleanup()


if __name__ == "__main__":
    main()
