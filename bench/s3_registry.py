#!/usr/bin/env python3
"""
Issue 11 peer benchmark: a fleet pulling one cold image through two nodes at once.

    .venv/bin/python bench/s3_registry.py [--mb 200] [--rounds 2] [--json FILE]

The peer is the distribution registry (Debian's docker-registry 2.8) in proxy
mode (a pull-through cache) with its S3 driver: two instances on the same
RGW bucket and root directory. The vault: two nodes on the same bucket
(another prefix) with a registry backend. The upstream is the kit's
registry-up with one more image pushed, of --mb MiB in two incompressible
layers. Each round, against a fresh cache (a new root directory / prefix),
``skopeo copy`` runs through both nodes at once; reported: wall time until
both are done, and the blob GETs the upstream served (per layer: 1 is one
download for the fleet). Then peak RSS of each node.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tarfile
import tempfile
import time
import uuid

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
UPSTREAMS = os.path.join(REPO, "tests", "upstreams")
BASE = int(os.environ.get("BENCH_PORT_BASE", "31800"))
AV = os.environ.get("AV", "/tmp/av-anchors")


def run(*args: str, env: dict | None = None) -> str:
    p = subprocess.run(list(args), capture_output=True, text=True, env=env)
    if p.returncode != 0:
        sys.exit(f"{args[0]} failed:\n{p.stdout[-2000:]}\n{p.stderr[-2000:]}")
    return p.stdout


def make_image(out: str, mb: int) -> list[str]:
    """An OCI layout of an image with two incompressible layers of mb/2 MiB each; their digests."""
    if os.path.exists(os.path.join(out, "index.json")):
        with open(os.path.join(out, "layers.json")) as f:
            return json.load(f)
    blobs = os.path.join(out, "blobs", "sha256")
    os.makedirs(blobs, exist_ok=True)

    def blob(data: bytes) -> tuple[str, int]:
        digest = hashlib.sha256(data).hexdigest()
        with open(os.path.join(blobs, digest), "wb") as f:
            f.write(data)
        return "sha256:" + digest, len(data)

    layers = []
    for i in range(2):
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
            payload = os.urandom(mb * 1024 * 1024 // 2)
            info = tarfile.TarInfo(f"big{i}.bin")
            info.size, info.mtime = len(payload), 0
            tar.addfile(info, io.BytesIO(payload))
        layers.append(blob(buf.getvalue()))
    diff_ids = [d for d, _ in layers]  # (uncompressed tar layers: the diff id is the digest)
    config = json.dumps({"architecture": "amd64", "os": "linux", "config": {},
                         "rootfs": {"type": "layers", "diff_ids": diff_ids}}).encode()
    cdigest, csize = blob(config)
    manifest = json.dumps({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
                           "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                                      "digest": cdigest, "size": csize},
                           "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": d,
                                       "size": s} for d, s in layers]}).encode()
    mdigest, msize = blob(manifest)
    with open(os.path.join(out, "index.json"), "w") as f:
        json.dump({"schemaVersion": 2, "manifests": [
            {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": mdigest, "size": msize,
             "annotations": {"org.opencontainers.image.ref.name": "big"}}]}, f)
    with open(os.path.join(out, "oci-layout"), "w") as f:
        json.dump({"imageLayoutVersion": "1.0.0"}, f)
    with open(os.path.join(out, "layers.json"), "w") as f:
        json.dump(diff_ids, f)
    return diff_ids


class Proc:
    def __init__(self, name: str, args: list[str], env: dict | None = None):
        self.dir = os.path.join(AV, "s3reg", name)
        os.makedirs(self.dir, exist_ok=True)
        self.args, self.env = args, env
        self.proc: subprocess.Popen | None = None

    def start(self, health: str) -> "Proc":
        log = open(os.path.join(self.dir, "log"), "ab")
        # (distribution's AWS SDK panics on an AWS_CA_BUNDLE with its own HTTP transport)
        env = {k: v for k, v in os.environ.items() if k != "AWS_CA_BUNDLE"}
        self.proc = subprocess.Popen(self.args, stdout=log, stderr=subprocess.STDOUT, cwd=self.dir,
                                     env={**env, **(self.env or {})})
        deadline = time.monotonic() + 30
        while subprocess.run(["curl", "-s", "--noproxy", "*", "-o", "/dev/null", health]).returncode:
            if time.monotonic() > deadline or self.proc.poll() is not None:
                sys.exit(f"{self.args[0]} did not start: see {self.dir}/log")
            time.sleep(0.1)
        return self

    def peak_rss_mb(self) -> float:
        with open(f"/proc/{self.proc.pid}/status") as f:
            return next(int(line.split()[1]) for line in f if line.startswith("VmHWM")) / 1024

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()


def main() -> None:
    if not os.environ.get("AV_BENCH_LOCKED"):  # one benchmark at a time on this machine (as bench/*.sh)
        os.execvpe("flock", ["flock", "-o", "/tmp/av-bench.lock", sys.executable, *sys.argv],
                   {**os.environ, "AV_BENCH_LOCKED": "1"})
    ap = argparse.ArgumentParser()
    ap.add_argument("--mb", type=int, default=200)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--json")
    args = ap.parse_args()
    s3dir, regdir = os.path.join(AV, "s3"), os.path.join(AV, "s3reg-upstream")
    run(os.path.join(UPSTREAMS, "s3-up"), s3dir, str(BASE),
        env={**os.environ, "S3_UP_PYTHON": sys.executable, "UPSTREAMS_S3_CHECK_MB": "0"})
    up = BASE + 40
    run(os.path.join(UPSTREAMS, "registry-up"), regdir, str(up))
    layers = make_image(os.path.join(AV, "s3reg-image"), args.mb)
    run("skopeo", "copy", "-q", "--dest-tls-verify=false", f"oci:{os.path.join(AV, 's3reg-image')}:big",
        f"docker://127.0.0.1:{up}/bench/big:latest")
    # (skopeo may have compressed the layers on the way: the registry's manifest names them)
    manifest = json.loads(run("curl", "-sf", "--noproxy", "*", "-H",
                              "Accept: application/vnd.oci.image.manifest.v1+json",
                              f"http://127.0.0.1:{up}/v2/bench/big/manifests/latest"))
    layers = [layer["digest"] for layer in manifest["layers"]]
    env = dict(line.strip().split("=", 1) for line in open(os.path.join(s3dir, "env")) if "=" in line)
    aws = {k: v for k, v in env.items() if k.startswith("AWS_")}
    access_log = os.path.join(regdir, "access.log")
    results = []

    def blob_gets() -> int:
        with open(access_log, errors="replace") as f:
            text = f.read()
        return sum(len(re.findall(rf'"GET /v2/bench/big/blobs/{re.escape(layer)} HTTP', text)) for layer in layers)

    def pull_both(hosts: list[str]) -> float:
        dest = tempfile.mkdtemp(prefix="s3reg-pull-")
        t = time.monotonic()
        procs = [subprocess.Popen(["skopeo", "copy", "-q", "--src-tls-verify=false", f"docker://{h}/bench/big:latest",
                                   f"oci:{dest}/{i}:latest"], stderr=subprocess.PIPE)
                 for i, h in enumerate(hosts)]
        for p in procs:
            if p.wait() != 0:
                sys.exit(f"skopeo failed: {p.stderr.read().decode()[-1500:]}")
        seconds = time.monotonic() - t
        shutil.rmtree(dest, ignore_errors=True)
        return seconds

    for r in range(args.rounds):
        for who in ("distribution", "vault"):
            root = f"bench-{uuid.uuid4().hex[:8]}"
            nodes = []
            for i in range(2):
                port = BASE + 41 + i + (0 if who == "distribution" else 2)
                if who == "distribution":
                    config = {"version": 0.1, "log": {"level": "warn", "accesslog": {"disabled": True}},
                              "storage": {"s3": {"accesskey": env["AWS_ACCESS_KEY_ID"],
                                                 "secretkey": env["AWS_SECRET_ACCESS_KEY"], "region": "us-east-1",
                                                 "regionendpoint": env["S3_ENDPOINT"], "bucket": env["S3_BUCKET"],
                                                 "rootdirectory": f"/{root}", "secure": False, "v4auth": True},
                                          "cache": {"blobdescriptor": "inmemory"}},
                              "http": {"addr": f"127.0.0.1:{port}"},
                              "proxy": {"remoteurl": f"http://127.0.0.1:{up}"}}
                    proc = Proc(f"dist{i}", ["docker-registry", "serve", f"{AV}/s3reg/dist{i}/config.yml"])
                    with open(os.path.join(proc.dir, "config.yml"), "w") as f:
                        json.dump(config, f)
                    nodes.append(proc.start(f"http://127.0.0.1:{port}/v2/"))
                else:
                    proc = Proc(f"vault{i}", [os.path.join(os.path.dirname(sys.executable), "twistd"), "-n",
                                              "--pidfile=", "artifactvault", "--config",
                                              f"{AV}/s3reg/vault{i}/config.yml"], env=aws)
                    shutil.rmtree(os.path.join(proc.dir, "cache"), ignore_errors=True)
                    config = {"http_host": "127.0.0.1", "http_port": port, "cache_dir": os.path.join(proc.dir, "cache"),
                              "log_level": "info",
                              "store": {"type": "s3", "endpoint_url": env["S3_ENDPOINT"], "bucket": env["S3_BUCKET"],
                                        "prefix": root, "access_key_id_env": "AWS_ACCESS_KEY_ID",
                                        "secret_access_key_env": "AWS_SECRET_ACCESS_KEY"},
                              "backends": [{"type": "registry", "config": {"prefix": "/hub/", "mirror": True,
                                                                           "registry_url": f"http://127.0.0.1:{up}"}}]}
                    with open(os.path.join(proc.dir, "config.yml"), "w") as f:
                        json.dump(config, f)
                    nodes.append(proc.start(f"http://127.0.0.1:{port}/-/health"))
            before = blob_gets()
            hosts = [f"127.0.0.1:{BASE + 41 + i + (0 if who == 'distribution' else 2)}" for i in range(2)]
            seconds = pull_both(hosts)
            time.sleep(0.5)  # (the registry logs as it answers)
            row = {"what": f"cold skopeo copy of {args.mb} MiB through 2 nodes at once", "who": who, "round": r,
                   "seconds": round(seconds, 2), "upstream_blob_gets": blob_gets() - before,
                   "layers": len(layers), "peak_rss_mb": [round(n.peak_rss_mb(), 1) for n in nodes]}
            results.append(row)
            print(json.dumps(row), flush=True)
            if args.json:
                with open(args.json, "a") as f:
                    f.write(json.dumps(row) + "\n")
            for n in nodes:
                n.stop()


if __name__ == "__main__":
    main()
