#!/usr/bin/env python3
"""
Issue 11 benchmark: vault nodes on one S3 bucket (the kit's Ceph RGW).

    .venv/bin/python bench/s3.py [--mb 512] [--rounds 3] [--json FILE]

Starts (if needed) the kit's RGW (tests/upstreams/s3-up) and files-up with a
large file of --mb MiB, then, in alternating rounds:

- hit: the whole entry through a vault node whose store is the bucket (no
  local tier) against a direct GET of the same object from RGW with curl
  (presigned URL); and through a node with local_cache (after its copy)
  against a hit of a vault on the local disk (store: disk);
- cold miss into the bucket against curl's direct download of the file to
  disk (and a vault on the local disk); and how long after the client's
  last byte the entry is visible to other nodes (its metadata object exists);
- peak RSS (VmHWM) of every vault node after all of it.

Prints a table; --json appends one JSON line per measurement. Needs the
project's .venv (boto3) and curl. Ports: $BENCH_PORT_BASE (31800) and up.
Runs under flock -o /tmp/av-bench.lock (one benchmark at a time on this machine).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid

from vaultctl import this_interpreter

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
UPSTREAMS = os.path.join(REPO, "tests", "upstreams")
BASE = int(os.environ.get("BENCH_PORT_BASE", "31800"))
AV = os.environ.get("AV", "/tmp/av-anchors")


def run(*args: str, env: dict | None = None) -> str:
    p = subprocess.run(list(args), capture_output=True, text=True, env=env)
    if p.returncode != 0:
        sys.exit(f"{args[0]} failed:\n{p.stdout[-2000:]}\n{p.stderr[-2000:]}")
    return p.stdout


def curl(url: str, out: str = "/dev/null") -> tuple[float, int]:
    """(seconds, bytes) of one GET with curl."""
    t = time.monotonic()
    p = subprocess.run(["curl", "-sf", "--noproxy", "*", "-o", out, "-w", "%{size_download}", url],
                       capture_output=True, text=True)
    if p.returncode != 0:
        sys.exit(f"curl {url.split('?')[0]} failed: {p.returncode} {p.stderr}")
    return time.monotonic() - t, int(p.stdout)


class Node:
    def __init__(self, name: str, port: int, store: dict, files: str):
        self.dir = os.path.join(AV, "s3bench", name)
        shutil.rmtree(self.dir, ignore_errors=True)
        os.makedirs(self.dir)
        self.port = port
        config = {"http_host": "127.0.0.1", "http_port": port, "cache_dir": os.path.join(self.dir, "cache"),
                  "log_level": "info", "store": store,
                  "backends": [{"type": "http", "config": {"prefix": "/files/", "base_url": files}}]}
        if store.get("local_cache") == "here":
            store["local_cache"] = {"dir": os.path.join(self.dir, "local"), "max_size": "4G"}
        with open(os.path.join(self.dir, "config.yml"), "w") as f:
            json.dump(config, f)  # (JSON is YAML)
        self.proc: subprocess.Popen | None = None

    def start(self, env: dict) -> "Node":
        log = open(os.path.join(self.dir, "twistd.log"), "ab")
        self.proc = subprocess.Popen([os.path.join(os.path.dirname(sys.executable), "twistd"), "-n", "--pidfile=",
                                      "artifactvault", "--config", os.path.join(self.dir, "config.yml")],
                                     stdout=log, stderr=subprocess.STDOUT, env={**os.environ, **env},
                                     cwd=self.dir)
        deadline = time.monotonic() + 30
        while subprocess.run(["curl", "-sf", "--noproxy", "*", "-o", "/dev/null", self.url("/-/health")]).returncode:
            if time.monotonic() > deadline or self.proc.poll() is not None:
                sys.exit(f"node {self.dir} did not start")
            time.sleep(0.1)
        return self

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def peak_rss_mb(self) -> float:
        with open(f"/proc/{self.proc.pid}/status") as f:
            return next(int(line.split()[1]) for line in f if line.startswith("VmHWM")) / 1024

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(20)


def main() -> None:
    if not os.environ.get("AV_BENCH_LOCKED"):  # one benchmark at a time on this machine (as bench/*.sh)
        os.execvpe("flock", ["flock", "-o", "/tmp/av-bench.lock", sys.executable, *sys.argv],
                   {**os.environ, "AV_BENCH_LOCKED": "1"})
    ap = argparse.ArgumentParser()
    ap.add_argument("--mb", type=int, default=512)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--json")
    args = ap.parse_args()

    s3dir, filesdir = os.path.join(AV, "s3"), os.path.join(AV, "s3files")
    run(os.path.join(UPSTREAMS, "s3-up"), s3dir, str(BASE),
        env={**os.environ, "S3_UP_PYTHON": sys.executable, "UPSTREAMS_S3_CHECK_MB": "0"})
    run(os.path.join(UPSTREAMS, "files-up"), filesdir, str(BASE + 20),
        env={**os.environ, "UPSTREAMS_LARGE_MB": str(args.mb)})
    files = f"http://127.0.0.1:{BASE + 20}"
    env = dict(line.strip().split("=", 1) for line in open(os.path.join(s3dir, "env")) if "=" in line)
    aws = {k: v for k, v in env.items() if k.startswith("AWS_")}
    import boto3
    from botocore.config import Config
    s3 = boto3.client("s3", endpoint_url=env["S3_ENDPOINT"], region_name="us-east-1",
                      aws_access_key_id=env["AWS_ACCESS_KEY_ID"], aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"],
                      config=Config(signature_version="s3v4", s3={"addressing_style": "path"}))
    results: list[dict] = []

    def record(what: str, who: str, seconds: float, size: int, **extra: object) -> None:
        row = {"what": what, "who": who, "seconds": round(seconds, 3), "MBps": round(size / seconds / 1e6, 1), **extra}
        results.append(row)
        if args.json:
            with open(args.json, "a") as f:
                f.write(json.dumps(row) + "\n")

    store = {"type": "s3", "endpoint_url": env["S3_ENDPOINT"], "bucket": env["S3_BUCKET"],
             "access_key_id_env": "AWS_ACCESS_KEY_ID", "secret_access_key_env": "AWS_SECRET_ACCESS_KEY"}
    nodes: list[Node] = []
    tmp = tempfile.mkdtemp(prefix="s3bench-")
    try:
        for r in range(args.rounds):
            prefix = f"bench-{uuid.uuid4().hex[:8]}"
            a = Node("a", BASE + 30, {**store, "prefix": prefix}, files).start(aws)
            b = Node("b", BASE + 31, {**store, "prefix": prefix}, files).start(aws)
            local = Node("local", BASE + 32, {**store, "prefix": prefix, "local_cache": "here"}, files).start(aws)
            disk = Node("disk", BASE + 33, {"type": "disk"}, files).start({})
            nodes += [a, b, local, disk]
            # cold miss into the bucket vs a direct download to disk (alternating), and
            # into a vault on the local disk (what the vault costs without the upload)
            direct_s, size = curl(f"{files}/large.bin", os.path.join(tmp, "direct.bin"))
            record("cold miss", "curl direct to disk", direct_s, size)
            disk_s, size = curl(disk.url("/files/large.bin"), os.path.join(tmp, "disk.bin"))
            record("cold miss", "vault into disk store", disk_s, size)
            t0 = time.monotonic()
            miss_s, size = curl(a.url("/files/large.bin"), os.path.join(tmp, "miss.bin"))
            key = hashlib.sha256(f"{files}/large.bin".encode()).hexdigest()
            meta = f"{prefix}/meta/{key[:2]}/{key}.json"
            while True:
                try:
                    s3.head_object(Bucket=env["S3_BUCKET"], Key=meta)
                    break
                except Exception:
                    time.sleep(0.02)
            visible = time.monotonic() - t0 - miss_s
            record("cold miss", "vault into S3", miss_s, size, visible_after_last_byte=round(visible, 3))
            data_key = json.loads(s3.get_object(Bucket=env["S3_BUCKET"], Key=meta)["Body"].read())["data"]
            direct_url = s3.generate_presigned_url("get_object", Params={"Bucket": env["S3_BUCKET"],
                                                                         "Key": f"{prefix}/data/{data_key}"})
            # hits from the bucket: vault (other node, no local tier) vs curl straight from RGW
            for who, url in (("curl direct from RGW", direct_url), ("vault hit from S3", b.url("/files/large.bin")),
                             ("curl direct from RGW", direct_url), ("vault hit from S3", b.url("/files/large.bin"))):
                s, size = curl(url)
                record("hit 512 MiB" if args.mb == 512 else f"hit {args.mb} MiB", who, s, size)
            # the local tier (filled by the first hit) vs a disk-store vault's hit
            curl(local.url("/files/large.bin"))
            deadline = time.monotonic() + 60
            while not any(n.endswith(".json") for _, _, ns in os.walk(os.path.join(local.dir, "local")) for n in ns):
                if time.monotonic() > deadline:
                    sys.exit("the local tier was not filled")
                time.sleep(0.05)
            for who, node in (("vault disk store hit", disk), ("vault local tier hit", local)) * 2:
                s, size = curl(node.url("/files/large.bin"))
                record("hit (local)", who, s, size)
            for node in (a, b, local, disk):
                results.append({"what": "peak RSS", "who": os.path.basename(node.dir), "MB": round(node.peak_rss_mb(), 1),
                                "round": r})
                node.stop()
    finally:
        for node in nodes:
            node.stop()
        shutil.rmtree(tmp, ignore_errors=True)

    print(f"# bench/s3.py: {args.mb} MiB, {args.rounds} rounds, vault {run('git', '-C', REPO, 'rev-parse', '--short', 'HEAD').strip()} "
          f"on {this_interpreter()}")
    groups: dict[tuple[str, str], list[dict]] = {}
    for row in results:
        groups.setdefault((row["what"], row["who"]), []).append(row)
    print(f"| {'measurement':<14} | {'who':<24} | median | runs |")
    print("|---|---|---|---|")
    for (what, who), rows in groups.items():
        if what == "peak RSS":
            print(f"| {what:<14} | node {who:<19} | {max(r['MB'] for r in rows):.0f} MB (max) | {len(rows)} |")
            continue
        mbps = statistics.median(r["MBps"] for r in rows)
        extra = ""
        if "visible_after_last_byte" in rows[0]:
            extra = f", visible {statistics.median(r['visible_after_last_byte'] for r in rows):.2f} s after the last byte"
        print(f"| {what:<14} | {who:<24} | {mbps:.0f} MB/s{extra} | {len(rows)} |")


if __name__ == "__main__":
    main()
