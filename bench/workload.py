#!/usr/bin/env python3
"""
Issue 10: a realistic mixed workload through one vault, against the same
workload straight from the upstreams.

One round starts at once: a ``pip install`` of a few dozen packages (into a
fresh ``--target``, no pip cache, every dependency resolved against the
index), ``skopeo copy --all`` of two images, and curl downloads of the kit's
files (4 KiB, 10 MiB and 64 MiB); the round ends when the last client does.
Ten rounds through one vault (the first one cold: the cache empty; then
warm) and ten straight from the upstreams, alternating (vault, direct,
direct, vault, …). Reported: each round's wall time and throughput (the
bytes the clients got: the wheels pip installed, the blobs skopeo wrote, the
files curl saved), and per client kind the median and p99 of its wall time.

The upstreams are the test kit's: nginx (files-up), the distribution
registry (registry-up) and a pypiserver of its own (pypi-up in
``$AV_KIT_DIR/pypi-bench``, with the wheels named in PACKAGES copied from
``$WHEELS`` (default /opt/pypi/files, this machine's local mirror) beside
the kit's set).

    .venv/bin/python bench/workload.py             # ~5 min; markdown on stdout
    .venv/bin/python bench/workload.py --rounds 10 --curl 12

Runs under an exclusive lock on /tmp/av-bench.lock. Env: AV_KIT_DIR,
AV_KIT_PORT_OFFSET as for the tests.
"""

from __future__ import annotations

import argparse
import fcntl
import glob
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from tests import support  # noqa: E402
from vaultctl import this_interpreter  # noqa: E402

#: What pip installs (with their dependencies, all among them or the kit's set).
PACKAGES = ("requests flask pytest beautifulsoup4 python-dateutil pytz tzdata pyyaml docutils pygments "
            "tabulate colorama decorator wrapt more-itertools importlib-metadata toml tomli pyparsing "
            "packaging cachetools distro platformdirs filelock chardet attrs six").split()
#: Wheels copied into the bench's index (file name prefixes in $WHEELS).
WHEELS = PACKAGES + ("urllib3 idna certifi charset_normalizer click itsdangerous markupsafe jinja2 "
                     "werkzeug blinker typing_extensions zipp iniconfig pluggy exceptiongroup "
                     "soupsieve").split()
IMAGES = ("library/hello:latest", "team/tools:1.0")
FILES = ("small.bin", "medium.bin", "large.bin")
PYPI_PORT = 18087 + int(os.environ.get("AV_KIT_PORT_OFFSET", "0"))


def bench_index() -> str:
    """The bench's pypiserver (started if needed) with the wheels of WHEELS; its /simple/ URL."""
    directory = support.upstream_dir("pypi-bench")
    p = subprocess.run([os.path.join(support.UPSTREAMS, "pypi-up"), directory, str(PYPI_PORT)],
                       stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if p.returncode != 0:
        raise SystemExit(f"pypi-up failed:\n{p.stdout[-2000:]}")
    source = os.environ.get("WHEELS", "/opt/pypi/files")
    for prefix in WHEELS:
        name = prefix.replace("-", "_")
        found = sorted(f for f in os.listdir(source) if f.lower().startswith(name.lower() + "-")
                       and f.endswith(".whl") and ("none-any" in f or "cp311-cp311-manylinux" in f))
        if not found:
            raise SystemExit(f"no wheel of {prefix} in {source}")
        target = os.path.join(directory, "packages", found[-1])
        if not os.path.exists(target):
            shutil.copy(os.path.join(source, found[-1]), target)
    return f"http://127.0.0.1:{PYPI_PORT}/simple/"


class Client(threading.Thread):
    """One client of a round: a command, its wall time, the bytes it got."""

    def __init__(self, kind: str, argv: list[str], measure, env: dict[str, str] | None = None):  # type: ignore[no-untyped-def]
        super().__init__(daemon=True)
        self.kind, self.argv, self.measure, self.env = kind, argv, measure, env
        self.seconds = 0.0
        self.bytes = 0
        self.error: str | None = None

    def run(self) -> None:
        started = time.monotonic()
        p = subprocess.run(self.argv, capture_output=True, text=True, env=self.env, timeout=600)
        self.seconds = time.monotonic() - started
        if p.returncode != 0:
            self.error = f"{self.kind}: exit {p.returncode}: {p.stderr[-400:]}"
            return
        self.bytes = self.measure()


def tree_size(path: str) -> int:
    return sum(os.path.getsize(f) for f in glob.glob(os.path.join(path, "**"), recursive=True) if os.path.isfile(f))


def round_clients(work: str, index: str, registry: str, files: str, curls: int,
                  packages_dir: str) -> list[Client]:
    """The clients of one round against those bases (fresh directories under C{work})."""
    clients = []
    target, report = os.path.join(work, "pip"), os.path.join(work, "pip-report.json")

    def pip_bytes() -> int:
        with open(report) as f:
            installed = json.load(f)["install"]
        total = 0
        for item in installed:
            url = item["download_info"]["url"]
            name = url.rpartition("/")[2].partition("#")[0]
            total += os.path.getsize(os.path.join(packages_dir, name))
        return total

    clients.append(Client("pip", [sys.executable, "-m", "pip", "install", "-q", "--isolated", "--no-cache-dir",
                                  "--target", target, "--index-url", index, "--report", report, *PACKAGES],
                          pip_bytes, env=support.pip_env()))
    for i, image in enumerate(IMAGES):
        dest = os.path.join(work, f"image{i}")
        clients.append(Client("skopeo", ["skopeo", "copy", "-q", "--all", "--src-tls-verify=false",
                                         f"docker://{registry}/{image}", f"oci:{dest}:latest"],
                              lambda dest=dest: tree_size(os.path.join(dest, "blobs"))))
    for i in range(curls):
        name = FILES[i % len(FILES)]
        out = os.path.join(work, f"curl{i}")
        clients.append(Client("curl", ["curl", "-sf", "--noproxy", "*", "-o", out, f"{files}/{name}"],
                              lambda out=out: os.path.getsize(out)))
    return clients


def run_round(clients: list[Client]) -> float:
    started = time.monotonic()
    for c in clients:
        c.start()
    for c in clients:
        c.join()
    return time.monotonic() - started


def pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(round(q * (len(values) - 1))))]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--curl", type=int, default=12, help="curl downloads per round (small, medium, large in turn)")
    args = ap.parse_args()
    lock = open("/tmp/av-bench.lock", "w")
    fcntl.flock(lock, fcntl.LOCK_EX)
    index = bench_index()
    packages_dir = os.path.join(support.upstream_dir("pypi-bench"), "packages")
    reg = support.upstream_url("reg")
    files = support.upstream_url("files")
    daemon = support.Daemon([
        {"type": "http", "config": {"prefix": "/files/", "base_url": files}},
        {"type": "pypi", "config": {"prefix": "/pypi/", "index_url": index}},
        {"type": "registry", "config": {"prefix": "/hub/", "registry_url": reg}},
    ], log_level="warn")
    daemon.start()
    targets = {
        "vault": (f"{daemon.base}/pypi/", f"127.0.0.1:{daemon.port}/hub", f"{daemon.base}/files"),
        "direct": (index, reg[len("http://"):], files),
    }
    results: dict[str, list[tuple[float, int, dict[str, list[float]]]]] = {"vault": [], "direct": []}
    errors: list[str] = []
    load = []
    try:
        for r in range(args.rounds):
            order = ("vault", "direct") if r % 2 == 0 else ("direct", "vault")
            for name in order:
                work = tempfile.mkdtemp(prefix=f"av-workload-{name}-")
                try:
                    clients = round_clients(work, *targets[name], args.curl, packages_dir)
                    load.append(os.getloadavg()[0])
                    wall = run_round(clients)
                    errors += [c.error for c in clients if c.error]
                    kinds: dict[str, list[float]] = {}
                    for c in clients:
                        kinds.setdefault(c.kind, []).append(c.seconds)
                    results[name].append((wall, sum(c.bytes for c in clients), kinds))
                finally:
                    shutil.rmtree(work, ignore_errors=True)
        commit = subprocess.run(["git", "-C", REPO, "rev-parse", "--short", "HEAD"],
                                capture_output=True, text=True).stdout.strip()
        print(f"# workload: commit {commit} on {this_interpreter()}, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, "
              f"{args.rounds} rounds each, alternating; per round 1 pip install ({len(PACKAGES)} packages "
              f"named), {len(IMAGES)} skopeo copies, {args.curl} curl downloads, all at once; "
              f"load average {min(load):.1f} to {max(load):.1f}\n")
        print("| round | vault wall s | vault MB/s | direct wall s | direct MB/s |\n|---|---:|---:|---:|---:|")
        for r in range(args.rounds):
            (vw, vb, _), (dw, db, _) = results["vault"][r], results["direct"][r]
            label = f"{r + 1}" + (" (vault cold)" if r == 0 else "")
            print(f"| {label} | {vw:.2f} | {vb / vw / 1e6:.1f} | {dw:.2f} | {db / dw / 1e6:.1f} |")
        print("\n| client | target | samples | median s | p99 s | max s |\n|---|---|---:|---:|---:|---:|")
        for kind in ("pip", "skopeo", "curl"):
            for name in ("vault", "direct"):
                warm = [s for _, _, k in results[name][1:] for s in k[kind]]
                print(f"| {kind} | {name} (rounds 2-{args.rounds}) | {len(warm)} | "
                      f"{statistics.median(warm):.2f} | {pct(warm, 0.99):.2f} | {max(warm):.2f} |")
            cold = results["vault"][0][2][kind]
            print(f"| {kind} | vault, round 1 (cold) | {len(cold)} | {statistics.median(cold):.2f} | "
                  f"{pct(cold, 0.99):.2f} | {max(cold):.2f} |")
        walls = {n: [w for w, _, _ in results[n][1:]] for n in results}
        ratios = [v / d for v, d in zip(walls["vault"], walls["direct"])]
        print(f"\nwarm rounds, wall time vault / direct: median of the rounds' ratios "
              f"{statistics.median(ratios):.3f} (min {min(ratios):.3f}, max {max(ratios):.3f})")
        print(f"bytes per round: vault {results['vault'][1][1] / 1e6:.1f} MB, "
              f"direct {results['direct'][1][1] / 1e6:.1f} MB")
        print(f"client errors: {len(errors)}")
        for e in errors[:10]:
            print("  " + e)
    finally:
        daemon.cleanup()


if __name__ == "__main__":
    main()
