#!/usr/bin/env python3
"""npm benchmark (issue 12): the vault beside verdaccio as a caching proxy, both
in front of the same upstream registry (verdaccio, tests/upstreams/npm-up),
and npm straight from that upstream ("direct"), in alternating rounds
(A B C, B C A, ...), medians and per-round ratios.

  bench/npm_bench.py [--rounds 5] [--parts wrk,ci,big,conc,rss] > npm.md

Parts:
  wrk   cached package document, requests/s: wrk -t2 -c16 -d10s, npm install's Accept
  ci    npm ci of a project of ~200 packages (synthetic ones published to the
        upstream here, plus a few real ones packed from the npm registry with
        npm pack, if it can be reached), fresh npm cache each time, from a
        lockfile whose resolved URLs are the public registry's (as real ones
        are; npm's replace-registry-host sends it to each target): warm, and
        cold (the proxy emptied and restarted before each run, not timed)
  big   a 50 MiB tarball, cold, curl to a file: MB/s
  conc  20 concurrent cold requests for one 8 MiB tarball: upstream GETs, wall time
  rss   peak RSS of the vault (and of the verdaccio proxy) while 50 clients fetch
        a 20 MB package document at once, cold and then warm

Servers (127.0.0.1 only; data under /tmp/av-anchors): the upstream on 31873
(tests/upstreams/npm-up), the verdaccio proxy on 31874 (bench/peers/verdaccio.sh),
the vault on 31730 (bench/vault-ctl.sh, /npm/). They are stopped at the end
(the upstream too unless KEEP_UPSTREAM=1). Runs under /tmp/av-bench.lock.
"""

from __future__ import annotations

import argparse
import base64
import fcntl
import hashlib
import importlib.util
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import threading
import time
import urllib.request
from typing import Any, Callable

from vaultctl import interpreter

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
UP = os.path.join(REPO, "tests", "upstreams")
BASE = os.environ.get("AV_BENCH_DIR", "/tmp/av-anchors")
UP_DIR, PEER_DIR, VAULT_DIR = (os.path.join(BASE, d) for d in ("npm-up", "npm-peer", "vault-npm"))
UP_PORT, PEER_PORT, VAULT_PORT = 31873, 31874, 31730
UPSTREAM = f"http://127.0.0.1:{UP_PORT}/"
TARGETS = {"direct": UPSTREAM, "verdaccio": f"http://127.0.0.1:{PEER_PORT}/",
           "vault": f"http://127.0.0.1:{VAULT_PORT}/npm/"}
CORGI = "application/vnd.npm.install-v1+json; q=1.0, application/json; q=0.8, */*"
SYNTHETIC = 200
REAL = ["lodash@4.17.21", "is-number@7.0.0", "ms@2.1.3", "semver@7.6.3", "debug@4.3.7"]
BIG_MIB, MID_MIB, HUGE_MB = 50, 8, 20

_spec = importlib.util.spec_from_file_location("npm_publish", os.path.join(UP, "npm-publish.py"))
npm_publish = importlib.util.module_from_spec(_spec)  # type: ignore[arg-type]
_spec.loader.exec_module(npm_publish)  # type: ignore[union-attr]


def log(*args: Any) -> None:
    print(*args, file=sys.stderr, flush=True)


def run(*cmd: str, check: bool = True, **kw: Any) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, check=check, text=True, capture_output=True, **kw)


def http(url: str, headers: dict[str, str] | None = None) -> tuple[int, bytes]:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    req = urllib.request.Request(url, headers=headers or {})
    try:
        with opener.open(req, timeout=300) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def hits(directory: str, pattern: str) -> int:
    return int(run(os.path.join(UP, "hits"), directory, pattern).stdout)


# -- servers ------------------------------------------------------------------------

def vault(cmd: str) -> None:
    os.makedirs(VAULT_DIR, exist_ok=True)
    with open(os.path.join(VAULT_DIR, "config.yml"), "w") as f:
        f.write(f"cache_dir: {VAULT_DIR}/cache\nbackends:\n  - type: npm\n"
                f"    config: {{prefix: /npm/, registry_url: \"{UPSTREAM}\", metadata_ttl: 5m}}\n")
    run(os.path.join(REPO, "bench", "vault-ctl.sh"), cmd, VAULT_DIR, str(VAULT_PORT))


def peer(cmd: str) -> None:
    run(os.path.join(REPO, "bench", "peers", "verdaccio.sh"), cmd, PEER_DIR, str(PEER_PORT), UPSTREAM)


def reset(target: str) -> None:
    """
    A cold target: the proxy emptied and restarted (the upstream is left
    alone), then one small tarball that no measurement uses is fetched
    through it, so that "cold" means nothing measured is cached, not a
    process that has yet to serve its first request (its first costs tens
    of ms more).
    """
    if target == "direct":
        return
    vault("reset") if target == "vault" else peer("reset")
    status, _ = http(TARGETS[target] + "bench-warmup/-/bench-warmup-1.0.0.tgz")
    if status != 200:
        raise RuntimeError(f"warm-up through {target}: {status}")
    run("sync")


def pid_of(target: str) -> int:
    path = os.path.join(VAULT_DIR, "twistd.pid") if target == "vault" else os.path.join(PEER_DIR, "pid")
    with open(path) as f:
        return int(f.read().strip())


# -- data ---------------------------------------------------------------------------

def synthetic_spec() -> list[dict[str, Any]]:
    """200 small packages in a binary tree of dependencies (every fifth scoped), 1-24 KiB each."""
    names = [f"@bench/p{i:03d}" if i % 5 == 0 else f"bench-p{i:03d}" for i in range(SYNTHETIC)]
    spec = []
    for i, name in enumerate(names):
        deps = {names[c]: "^1.0.0" for c in (2 * i + 1, 2 * i + 2) if c < SYNTHETIC}
        spec.append({"name": name, "version": "1.0.0", "dependencies": deps, "size": 1024 * (1 + i % 24)})
    return spec


def huge_packument(path: str) -> None:
    """A package document of ~20 MB written into the upstream's storage (thousands of versions)."""
    versions, times = {}, {}
    n = HUGE_MB * 1024 * 1024 // 10500
    for i in range(n):
        v = f"1.0.{i}"
        fake = hashlib.sha512(v.encode()).digest()
        versions[v] = {"name": "bench-huge", "version": v, "_id": f"bench-huge@{v}",
                       "description": base64.b64encode(hashlib.shake_256(v.encode()).digest(7500)).decode(),
                       "dependencies": {"bench-p001": "^1.0.0"},
                       "dist": {"integrity": "sha512-" + base64.b64encode(fake).decode(),
                                "shasum": hashlib.sha1(fake).hexdigest(),
                                "tarball": f"{UPSTREAM}bench-huge/-/bench-huge-{v}.tgz"}}
        times[v] = "2020-01-01T00:00:00.000Z"
    doc = {"name": "bench-huge", "versions": versions, "time": {"modified": "2020-01-01T00:00:00.000Z", **times},
           "users": {}, "dist-tags": {"latest": f"1.0.{n - 1}"}, "_uplinks": {}, "_distfiles": {},
           "_attachments": {}, "_rev": "1-0000000000000000", "_id": "bench-huge", "readme": ""}
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path + ".tmp", "w") as f:
        json.dump(doc, f)
    os.replace(path + ".tmp", path)


def real_tarballs() -> list[bytes]:
    """A few real packages, packed once from the npm registry (none if it cannot be reached)."""
    cache = os.path.join(BASE, "npm-real")
    os.makedirs(cache, exist_ok=True)
    out = []
    for spec in REAL:
        name, _, version = spec.rpartition("@")
        path = os.path.join(cache, f"{name}-{version}.tgz")
        if not os.path.exists(path):
            p = run("npm", "pack", spec, "--pack-destination", cache, "--loglevel=error", check=False, timeout=120)
            if p.returncode != 0 or not os.path.exists(path):
                log(f"npm pack {spec} failed (no npm registry?): {p.stderr[-300:]}")
                continue
        with open(path, "rb") as f:
            out.append(f.read())
    return out


def setup() -> dict[str, Any]:
    os.makedirs(BASE, exist_ok=True)
    log(run(os.path.join(UP, "npm-up"), UP_DIR, str(UP_PORT)).stdout.strip().splitlines()[-1])
    marker = os.path.join(UP_DIR, ".bench-published")
    reals = real_tarballs()
    if not os.path.exists(marker):
        token = npm_publish.login(UPSTREAM.rstrip("/"))
        log("publishing 200 synthetic packages, the real ones, a 50 MiB and an 8 MiB one")
        for p in synthetic_spec():
            npm_publish.publish(UPSTREAM.rstrip("/"), token, p["name"], p["version"], p["dependencies"], p["size"])
        for data in reals:
            npm_publish.publish_tarball(UPSTREAM.rstrip("/"), token, data)
        npm_publish.publish(UPSTREAM.rstrip("/"), token, "bench-warmup", "1.0.0", {}, 1024)
        npm_publish.publish(UPSTREAM.rstrip("/"), token, "bench-big", "1.0.0", {}, BIG_MIB << 20)
        npm_publish.publish(UPSTREAM.rstrip("/"), token, "bench-mid", "1.0.0", {}, MID_MIB << 20)
        huge_packument(os.path.join(UP_DIR, "storage", "bench-huge", "package.json"))
        with open(marker, "w") as f:
            f.write("done\n")
    real_names = [spec.rpartition("@")[0] for spec in REAL
                  if os.path.exists(os.path.join(BASE, "npm-real", spec.replace("@", "-") + ".tgz"))]
    vault("reset")
    peer("reset")
    project = make_project(real_names)
    return {"project": project, "real": real_names}


# -- npm ------------------------------------------------------------------------------

def npm_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.lower().startswith("npm_config_")}


def npm(cwd: str, registry: str, *args: str, cache: str | None = None) -> subprocess.CompletedProcess:
    empty = os.path.join(BASE, "npm-empty.npmrc")
    empty_global = os.path.join(BASE, "npm-empty-global.npmrc")
    for path in (empty, empty_global):
        open(path, "a").close()
    cache = cache or os.path.join(cwd, ".npm-cache")
    shutil.rmtree(cache, ignore_errors=True)
    command = ["npm", *args, "--registry", registry, "--cache", cache, "--userconfig", empty,
               "--globalconfig", empty_global, "--no-audit", "--no-fund", "--no-update-notifier",
               "--ignore-scripts", "--loglevel=error", "--proxy", "http://127.0.0.1:9/",
               "--https-proxy", "http://127.0.0.1:9/", "--noproxy", "127.0.0.1"]
    p = subprocess.run(command, cwd=cwd, env=npm_env(), text=True, capture_output=True, timeout=900)
    if p.returncode != 0:
        raise RuntimeError(f"npm {' '.join(args)} via {registry} failed: {p.stderr[-2000:]}")
    return p


def make_project(real: list[str]) -> str:
    """The benchmark project and its lockfile (made against the upstream, resolved URLs made public)."""
    project = os.path.join(BASE, "npm-proj")
    lock = os.path.join(project, "package-lock.json")
    if os.path.exists(lock):
        return project
    os.makedirs(project, exist_ok=True)
    deps = {"@bench/p000": "^1.0.0", **{name: "*" for name in real}}
    with open(os.path.join(project, "package.json"), "w") as f:
        json.dump({"name": "bench-proj", "version": "1.0.0", "private": True, "dependencies": deps}, f)
    npm(project, UPSTREAM, "install")
    with open(lock) as f:
        text = f.read().replace(UPSTREAM, "https://registry.npmjs.org/")
    with open(lock, "w") as f:
        f.write(text)
    packages = len(json.loads(text)["packages"]) - 1
    log(f"project: {packages} packages in its lockfile")
    return project


def npm_ci(project: str, registry: str) -> float:
    shutil.rmtree(os.path.join(project, "node_modules"), ignore_errors=True)
    t0 = time.monotonic()
    npm(project, registry, "ci")
    return time.monotonic() - t0


# -- measurements ----------------------------------------------------------------------

def alternate(rounds: int, targets: list[str], measure: Callable[[str], float],
              before: Callable[[str], None] | None = None) -> dict[str, list[float]]:
    """measure(target) for every target, rounds times, the order rotated each round."""
    out: dict[str, list[float]] = {t: [] for t in targets}
    for r in range(rounds):
        order = targets[r % len(targets):] + targets[:r % len(targets)]
        for t in order:
            if before:
                before(t)
            out[t].append(measure(t))
        log(f"  round {r + 1}: " + ", ".join(f"{t} {out[t][-1]:.3g}" for t in targets))
    return out


def table(title: str, unit: str, results: dict[str, list[float]], ref: str, higher_better: bool) -> str:
    lines = [f"\n{title}", f"| target | median {unit} | min | max | ratio to {ref} (median [min–max]) |",
             "|---|---:|---:|---:|---:|"]
    for t, values in results.items():
        ratios = [v / r for v, r in zip(values, results[ref])]
        lines.append(f"| {t} | {statistics.median(values):,.3g} | {min(values):,.3g} | {max(values):,.3g} | "
                     + ("1 (ref)" if t == ref else
                        f"{statistics.median(ratios):.2f} [{min(ratios):.2f}–{max(ratios):.2f}]") + " |")
    lines.append(f"({'higher' if higher_better else 'lower'} is better; {len(results[ref])} rounds, "
                 f"load average {os.getloadavg()[0]:.1f} at the end)")
    return "\n".join(lines)


def part_wrk(rounds: int, duration: int, real: list[str]) -> str:
    name = "lodash" if "lodash" in real else "bench-p001"
    urls = {t: base + name for t, base in TARGETS.items()}
    for url in urls.values():
        http(url, {"accept": CORGI})

    def measure(t: str) -> float:
        p = run("wrk", "-t2", "-c16", f"-d{duration}s", "-H", f"Accept: {CORGI}", urls[t])
        m = re.search(r"Requests/sec:\s*([\d.]+)", p.stdout)
        errors = re.search(r"Non-2xx or 3xx responses: (\d+)", p.stdout)
        if m is None or errors:
            raise RuntimeError(f"wrk on {t}: {p.stdout}")
        return float(m.group(1))
    res = alternate(rounds, list(TARGETS), measure)
    return table(f"wrk: cached package document /{name} (abbreviated), wrk -t2 -c16 -d{duration}s",
                 "req/s", res, "verdaccio", True)


def part_ci(rounds: int, project: str) -> str:
    for t, reg in TARGETS.items():  # warm every proxy once
        npm_ci(project, reg)
    warm = alternate(rounds, list(TARGETS), lambda t: npm_ci(project, TARGETS[t]))
    cold = alternate(rounds, list(TARGETS), lambda t: npm_ci(project, TARGETS[t]), before=reset)
    with open(os.path.join(project, "package-lock.json")) as f:
        n = len(json.load(f)["packages"]) - 1
    return (table(f"npm ci, {n} packages, warm proxy (fresh npm cache each run)", "s", warm, "direct", False)
            + "\n" + table(f"npm ci, {n} packages, cold proxy (emptied and restarted before each run, "
                           f"not timed)", "s", cold, "direct", False))


def curl_mbs(url: str, size: int) -> float:
    out = os.path.join(BASE, "npm-dl.bin")
    p = run("curl", "-s", "--noproxy", "*", "-o", out, "-w", "%{time_total} %{size_download} %{http_code}", url)
    seconds, got, code = p.stdout.split()
    os.unlink(out)
    if code != "200" or int(got) != size:
        raise RuntimeError(f"{url}: {code}, {got} of {size} bytes")
    return size / float(seconds) / 1e6


def part_big(rounds: int) -> str:
    status, doc = http(UPSTREAM + "bench-big")
    size = len(http(UPSTREAM + "bench-big/-/bench-big-1.0.0.tgz")[1])
    urls = {t: base + "bench-big/-/bench-big-1.0.0.tgz" for t, base in TARGETS.items()}
    res = alternate(rounds, list(TARGETS), lambda t: curl_mbs(urls[t], size), before=reset)
    return table(f"a {size / 2**20:.0f} MiB tarball, cold, curl to a file (the proxy's package document "
                 f"fetch included)", "MB/s", res, "direct", True)


def part_conc(reps: int, n: int = 20) -> str:
    path = "bench-mid/-/bench-mid-1.0.0.tgz"
    good = http(UPSTREAM + path)[1]
    lines = [f"\n{n} concurrent cold requests for one {len(good) / 2**20:.0f} MiB tarball ({reps} reps)",
             "| target | upstream GETs of the tarball (per rep) | all byte-exact | wall time median s |",
             "|---|---|---|---:|"]
    for t in ("vault", "verdaccio"):
        gets, exact, walls = [], True, []
        for _ in range(reps):
            reset(t)
            before = hits(UP_DIR, f"^GET /{re.escape(path)}$")
            bodies: list[bytes | None] = [None] * n
            barrier = threading.Barrier(n)

            def fetch(i: int) -> None:
                barrier.wait()
                bodies[i] = http(TARGETS[t] + path)[1]
            threads = [threading.Thread(target=fetch, args=(i,)) for i in range(n)]
            t0 = time.monotonic()
            for th in threads:
                th.start()
            for th in threads:
                th.join()
            walls.append(time.monotonic() - t0)
            time.sleep(0.5)  # (verdaccio logs after the response; let the last lines land)
            gets.append(hits(UP_DIR, f"^GET /{re.escape(path)}$") - before)
            exact = exact and all(b == good for b in bodies)
        lines.append(f"| {t} | {', '.join(map(str, gets))} | {'yes' if exact else 'NO'} | "
                     f"{statistics.median(walls):.2f} |")
    return "\n".join(lines)


class RssSampler:
    """Peak VmRSS of a process and its children, sampled every 50 ms."""

    def __init__(self, pid: int):
        self.pid = pid
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _rss(self) -> int:
        total = 0
        pids = [self.pid] + [int(p) for p in run("pgrep", "-P", str(self.pid), check=False).stdout.split()]
        for pid in pids:
            try:
                with open(f"/proc/{pid}/status") as f:
                    total += next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))
            except (OSError, StopIteration):
                pass
        return total * 1024

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self._rss())
            self._stop.wait(0.05)

    def __enter__(self) -> "RssSampler":
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self._rss())


def part_rss(n: int = 50) -> str:
    size = len(http(UPSTREAM + "bench-huge", {"accept": "application/json"})[1])
    lines = [f"\npeak RSS, {n} clients at once fetching a {size / 1e6:.1f} MB package document (full)",
             "| target | idle before | peak, cold (first fetch + transform) | peak, warm (2 requests each) | "
             "wall cold s | wall warm s |", "|---|---:|---:|---:|---:|---:|"]
    for t in ("vault", "verdaccio"):
        reset(t)
        url = TARGETS[t] + "bench-huge"
        idle = RssSampler(pid_of(t))._rss()
        sizes: list[int] = []

        def clients(times: int) -> float:
            barrier = threading.Barrier(n)

            def fetch() -> None:
                barrier.wait()
                for _ in range(times):
                    sizes.append(len(http(url, {"accept": "application/json"})[1]))
            threads = [threading.Thread(target=fetch) for _ in range(n)]
            t0 = time.monotonic()
            for th in threads:
                th.start()
            for th in threads:
                th.join()
            return time.monotonic() - t0
        with RssSampler(pid_of(t)) as cold:
            cold_wall = clients(1)
        with RssSampler(pid_of(t)) as warm:
            warm_wall = clients(2)
        if len(set(sizes)) != 1 or len(sizes) != 3 * n:
            log(f"rss {t}: sizes {sorted(set(sizes))[:5]}")
        lines.append(f"| {t} | {idle / 2**20:.1f} MiB | {cold.peak / 2**20:.1f} MiB | {warm.peak / 2**20:.1f} MiB | "
                     f"{cold_wall:.2f} | {warm_wall:.2f} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--wrk-duration", type=int, default=10)
    ap.add_argument("--parts", default="wrk,ci,big,conc,rss")
    args = ap.parse_args()
    lock = open("/tmp/av-bench.lock", "w")
    fcntl.flock(lock, fcntl.LOCK_EX)
    parts = args.parts.split(",")
    try:
        env = setup()
        commit = run("git", "-C", REPO, "rev-parse", "--short", "HEAD").stdout.strip()
        print(f"# bench/npm_bench.py at {commit} on {interpreter()}, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; "
              f"node {run('node', '--version').stdout.strip()}, npm {run('npm', '--version').stdout.strip()}, "
              f"verdaccio 6.8.0; real packages: {', '.join(env['real']) or 'none'}", flush=True)
        if "wrk" in parts:
            print(part_wrk(args.rounds, args.wrk_duration, env["real"]), flush=True)
        if "ci" in parts:
            print(part_ci(args.rounds, env["project"]), flush=True)
        if "big" in parts:
            print(part_big(args.rounds), flush=True)
        if "conc" in parts:
            print(part_conc(3), flush=True)
        if "rss" in parts:
            print(part_rss(), flush=True)
    finally:
        vault("stop")
        peer("stop")
        if os.environ.get("KEEP_UPSTREAM") != "1":
            run(os.path.join(UP, "down"), UP_DIR, check=False)


if __name__ == "__main__":
    main()
