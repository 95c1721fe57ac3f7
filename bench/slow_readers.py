#!/usr/bin/env python3
"""Peak RSS of the proxy while slow clients read a big file it is downloading.

  slow_readers.py --www WWW --file large.bin --proxy BASE --pidfile PIDFILE [-n 20]
                  [--rate 10M] [--seconds 20]

Hard-links WWW/FILE to a never-fetched name; N clients, each throttled to
RATE by curl --limit-rate, read BASE/NAME at once (the first starts the
download, the others join it); the proxy's process tree is sampled every
50 ms (the peers' lib/rss.py) for SECONDS, then the clients are stopped.
Memory must not grow with the file's size or with the number of slow clients.
"""
import argparse
import json
import os
import signal
import subprocess
import sys
import time
import uuid

PEERS = os.environ.get("PEERS", os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..",
                                             "shared", "peers"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--www", required=True)
    ap.add_argument("--file", default="large.bin")
    ap.add_argument("--proxy", required=True)
    ap.add_argument("--pidfile", required=True)
    ap.add_argument("-n", type=int, default=20)
    ap.add_argument("--rate", default="10M")
    ap.add_argument("--seconds", type=float, default=20)
    ap.add_argument("--out", default="/tmp/av-slow-readers-rss.json")
    ap.add_argument("--json")
    args = ap.parse_args()
    name = f"slowread-{uuid.uuid4().hex[:10]}.bin"
    os.link(os.path.join(args.www, args.file), os.path.join(args.www, name))
    sampler = subprocess.Popen([sys.executable, os.path.join(PEERS, "lib", "rss.py"), "--pidfile",
                                args.pidfile, "--out", args.out], stdout=subprocess.DEVNULL)
    try:
        time.sleep(0.5)
        clients = [subprocess.Popen(["curl", "-s", "--noproxy", "*", "--limit-rate", args.rate, "-o",
                                     "/dev/null", f"{args.proxy}/{name}"]) for _ in range(args.n)]
        time.sleep(args.seconds)
        alive = sum(1 for c in clients if c.poll() is None)
        for c in clients:
            c.terminate()
            c.wait()
    finally:
        sampler.send_signal(signal.SIGINT)
        sampler.wait()
        os.unlink(os.path.join(args.www, name))
    peak = json.load(open(args.out))["peak_sum_rss_kb"] / 1024
    print(f"\nslow readers: {args.n} clients at {args.rate}B/s each on a cold {args.file}, "
          f"sampled for {args.seconds:g} s ({alive} still reading at the end)")
    print(f"| peak RSS of the vault (MiB) |\n|---:|\n| {peak:.1f} |")
    if args.json:
        with open(args.json, "a") as f:
            f.write(json.dumps({"label": "slow readers RSS", "n": args.n, "rate": args.rate,
                                "peak_rss_mib": peak, "still_reading": alive}) + "\n")


if __name__ == "__main__":
    main()
